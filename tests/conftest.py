import os
import sys

import pytest
import torch

# no GPU: run the Triton kernels under Triton's interpreter, on CPU tensors (read when a kernel's
# module is imported: on its first use, grpo_kernels.kernel)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runner  # noqa: E402  (after the path)
from tiny_runs import DDP, torchrun_train  # noqa: E402  (it imports the project: r1.jobs)

runner.flush_denormals()  # as runner.session does


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory):
    """A 2-step run of train.py under a 2-process torchrun (tiny_runs.DDP), reporting to TensorBoard
    and W&B offline -> (its tmp directory, the run's directory, its stdout). Shared by test_runs
    and test_trackers: copy it (tiny_runs.copy_run) before writing to it."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = str(tmp / "out")
    stdout = torchrun_train([*DDP, "--out_dir", out, "--run_name", "ddp-straight", "--rl_steps", "2",
                             "--report_to", "tensorboard,wandb"], tmp)
    return tmp, os.path.join(out, "ddp-straight"), stdout

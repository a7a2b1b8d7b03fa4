"""torchrun on this CPU: 2 gloo processes against 1, through the real train.py code paths (a
torchrun run resumed exactly, and at another world size: tests/test_runs.py)."""

import os
import subprocess
import sys

import pytest
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# one GRPO update on the same rollout: token loss, KL to a reference, micro-batches of 3 rows
UPDATE = ["--loss_type", "token", "--beta", "0.1", "--micro_batch", "3"]


def run(cmd, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return res.returncode, res.stdout + res.stderr


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The update of 1 process on all 16 rows (what the 2-process runs must make)."""
    path = tmp_path_factory.mktemp("dist") / "one.pt"
    rc, log = run([sys.executable, "tests/dist_worker.py", str(path), *UPDATE])
    assert rc == 0, log
    return torch.load(path)


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_two_processes_make_the_update_of_one(tmp_path, wrapper, one_process):
    # 2 processes on 8 rows each: DDP replicas or FSDP2 shards
    rc, log = run([*TORCHRUN, "tests/dist_worker.py", str(tmp_path / "two.pt"), *UPDATE,
                   *(["--fsdp"] if wrapper == "fsdp" else [])])
    assert rc == 0, log
    one, two = one_process, torch.load(tmp_path / "two.pt")
    assert (one["world"], two["world"]) == (1, 2)
    moved = 0.0
    for name, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], w, atol=1e-6, rtol=1e-5)
        moved += w.abs().sum().item()
    for key in ("loss", "grad_norm", "kl", "entropy", "ratio"):  # the logged numbers, all-reduced
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-7), key
    assert one["metrics"]["grad_norm"] > 0 and one["metrics"]["kl"] > 0


def test_a_crashed_rank_ends_the_job(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        f"import sys; sys.path.insert(0, {ROOT!r})\n"
        "import dist\n"
        "rank, world, _ = dist.setup('cpu')\n"
        "if rank == 1:\n"
        "    raise RuntimeError('boom on rank 1')\n"
        "dist.barrier()  # rank 0 waits for a rank that is gone\n")
    rc, log = run([*TORCHRUN, str(script)], timeout=120)
    assert rc != 0 and "boom on rank 1" in log


def test_batch_must_split_across_processes(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun sets it
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--questions", "4"])
    assert e.value.code == 2 and "--questions 4 does not split across 3 processes" in capsys.readouterr().err

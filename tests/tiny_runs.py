"""What the tests that run train.py for real, in seconds, share: the flags, and the 2-process torchrun
run that tests/test_runs.py resumes and tests/test_trackers.py reads the trackers of (conftest.py's
ddp_run fixture: one run, made once per session, instead of one per module)."""

import os
import shutil
import subprocess
import sys

from r1.jobs import cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tiny: seconds per run. 2 mini-batches (the shuffler draws), a reference reset at step 3, beta > 0
TINY = ["--base_steps", "10", "--base_batch", "4", "--questions", "2", "--group_size", "4", "--max_new_tokens", "24",
        "--eval_every", "2", "--eval_problems", "2", "--eval_samples", "1", "--n_test", "4", "--minibatches", "2",
        "--ref_update_every", "3", "--beta", "0.1", "--lr", "1e-3", "--seed", "0", "--no_plot"]
DDP = [*TINY, "--questions", "4", "--eval_problems", "4", "--eval_every", "1"]  # questions and evaluations split across 2 ranks
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def wandb_offline(tmp):
    """W&B offline, with every directory of its own under tmp (nothing in the home directory)."""
    return {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
            "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_DATA_DIR": str(tmp / "wandb-data")}


def thread_share(n_procs):
    """Threads for each of n_procs processes that run at once: the cores this process may use
    (r1.jobs.cores) split among them, never more than OMP_NUM_THREADS allows. torchrun sets
    OMP_NUM_THREADS=1 only where it is unset: a test run under OMP_NUM_THREADS=2 on 2 cores would
    start 2 workers of 2 threads each, 4 threads on 2 cores."""
    allowed = int(os.environ.get("OMP_NUM_THREADS") or 0) or cores()
    return max(1, min(allowed, cores() // n_procs))


def torchrun_train(flags, tmp=None):
    """train.py under a 2-process torchrun (W&B offline under tmp when given) -> its stdout; fails the test if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK") and not k.startswith("WANDB_")}
    env["OMP_NUM_THREADS"] = str(thread_share(2))  # its 2 workers share the cores
    res = subprocess.run([*TORCHRUN, "train.py", *flags], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**env, **(wandb_offline(tmp) if tmp else {})})
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def copy_run(run_dir, out_dir):
    """The run copied into out_dir under its own name (to resume or change it there) -> the copy's directory."""
    return shutil.copytree(run_dir, os.path.join(out_dir, os.path.basename(run_dir)))

"""torchrun on this CPU: 2 gloo processes against 1, through the real train.py code paths."""

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def run(cmd, timeout=240):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return res.returncode, res.stdout + res.stderr


@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_two_processes_make_the_update_of_one(tmp_path, wrapper):
    # one GRPO update on the same rollout: 1 process on all 16 rows, or 2 processes on 8 rows each
    # (DDP replicas or FSDP2 shards); token loss, KL to a reference, micro-batches of 3 rows
    flags = ["--loss_type", "token", "--beta", "0.1", "--micro_batch", "3"]
    rc, log = run([sys.executable, "tests/dist_worker.py", str(tmp_path / "one.pt"), *flags])
    assert rc == 0, log
    rc, log = run([*TORCHRUN, "tests/dist_worker.py", str(tmp_path / "two.pt"), *flags,
                   *(["--fsdp"] if wrapper == "fsdp" else [])])
    assert rc == 0, log
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world"], two["world"]) == (1, 2)
    moved = 0.0
    for name, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], w, atol=1e-6, rtol=1e-5)
        moved += w.abs().sum().item()
    for key in ("loss", "grad_norm", "kl", "entropy", "ratio"):  # the logged numbers, all-reduced
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-5, abs=1e-7), key
    assert one["metrics"]["grad_norm"] > 0 and one["metrics"]["kl"] > 0


def test_torchrun_train_runs_and_only_rank_0_writes(tmp_path):
    rc, log = run([*TORCHRUN, "train.py", "--base_steps", "20", "--base_batch", "8", "--rl_steps", "2", "--questions", "4",
                   "--group_size", "4", "--eval_problems", "4", "--eval_samples", "1", "--n_test", "8",
                   "--max_new_tokens", "16", "--out_dir", str(tmp_path), "--run_name", "ddp", "--no_plot"])
    assert rc == 0, log
    assert log.count("run: ") == 1 and "(2 processes)" in log and log.count("step   2/2") == 1
    with open(tmp_path / "ddp" / "log.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [0, 1, 2]
    from model import load_checkpoint
    model, _ = load_checkpoint(str(tmp_path / "ddp" / "ckpt.pt"))  # a full checkpoint, loaded in 1 process
    assert sum(p.numel() for p in model.parameters()) > 0


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


def test_batch_must_split_across_processes():
    env = {**os.environ, "WORLD_SIZE": "3"}
    res = subprocess.run([sys.executable, "train.py", "--questions", "4"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode == 2 and "--questions 4 does not split across 3 processes" in res.stderr


def test_resume_at_another_world_size(tmp_path):
    small = ["--base_steps", "20", "--base_batch", "8", "--questions", "4", "--group_size", "4", "--eval_problems", "4",
             "--eval_samples", "1", "--n_test", "8", "--max_new_tokens", "16", "--out_dir", str(tmp_path), "--run_name", "r",
             "--no_plot", "--eval_every", "2", "--beta", "0.1", "--lr", "1e-2"]
    rc, log = run([*TORCHRUN, "train.py", *small, "--rl_steps", "3"])  # checkpoints at steps 2 and 3
    assert rc == 0, log
    ckpt = torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["optim"]["state"] and ckpt["ref"] is not None
    # as if it had crashed after step 3's checkpoint and a step-4 log line: go on alone, to step 4
    with open(tmp_path / "r" / "log.jsonl", "a") as f:
        f.write('{"step": 4, "crashed": true}\n')
    rc, log = run([sys.executable, "train.py", *small, "--rl_steps", "4", "--resume"])
    assert rc == 0, log
    # nothing written is lost: the line past the checkpoint is set aside, the run's args.json kept
    assert (tmp_path / "r" / "log-after-step-3.jsonl").read_text() == '{"step": 4, "crashed": true}\n'
    assert json.loads((tmp_path / "r" / "args.json").read_text())["world_size"] == 2
    assert (tmp_path / "r" / "args-resume-4.json").exists()
    assert "resuming" in log and "step   4/4" in log and "step   1/4" not in log
    with open(tmp_path / "r" / "log.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [0, 1, 2, 3, 4]
    assert torch.load(tmp_path / "r" / "ckpt.pt", weights_only=True)["step"] == 4
    rc, log = run([sys.executable, "train.py", *small, "--rl_steps", "4"])  # without --resume: refused
    assert rc == 2 and "already holds a run" in log

"""End to end: a short run of train.py with a fixed seed, on the real code path."""

import json
import os
import subprocess
import sys

import pytest

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# small enough for a test; the base model learns the format but rarely gets a sum right, so the
# reward that rises here is mostly the format reward
SMALL = ["--base_steps", "200", "--base_batch", "16", "--base_lr", "5e-3", "--template_frac", "1.0", "--rl_steps", "16", "--questions", "4", "--group_size", "8",
         "--max_new_tokens", "48", "--eval_every", "8", "--eval_problems", "8", "--eval_samples", "2", "--n_test", "8",
         "--max_digits", "3", "--seed", "0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out"))
    return train.main(SMALL + ["--out_dir", out, "--run", "e2e"]), out


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_reward_rises_and_everything_is_logged(run):
    run_dir, _ = run
    log = read_log(run_dir)
    steps = [r for r in log if r["step"] > 0]
    assert [r["step"] for r in log] == list(range(17))
    for key in ("reward", "accuracy", "format", "length", "kl", "clip_frac", "tokens_per_s", "rollout_s",
                "train_s", "truncated", "zero_var_groups", "grad_norm", "sampler_logp_diff"):
        assert all(key in r for r in steps), key
    assert "eval_accuracy" in log[0] and "eval_accuracy" in log[-1]
    first, last = steps[:5], steps[-5:]
    mean = lambda rs: sum(r["reward"] for r in rs) / len(rs)
    assert mean(last) > mean(first) + 0.1, (mean(first), mean(last))
    # one update per rollout: the trainer recomputes the sampler's log-probs
    assert max(r["sampler_logp_diff"] for r in steps) < 1e-4
    for name in ("curves.png", "ckpt.pt", "samples.jsonl", "args.json"):
        assert os.path.getsize(os.path.join(run_dir, name)) > 0


def test_base_model_is_cached_and_runs_are_reproducible(run):
    run_dir, out = run
    assert len(os.listdir(os.path.join(out, "cache"))) == 1
    second = subprocess.run([sys.executable, "train.py", *SMALL, "--out_dir", out, "--run", "again", "--rl_steps", "3",
                             "--no_plot"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "base model: reusing" in second.stdout
    # same seed, same base model: the same rollouts and updates, step for step
    again = read_log(os.path.join(out, "again"))
    first = read_log(run_dir)
    for key in ("reward", "length", "loss", "grad_norm"):
        assert [r[key] for r in again[1:3]] == [r[key] for r in first[1:3]], key


def test_sample_cli_reads_the_checkpoint(run):
    run_dir, _ = run
    res = subprocess.run([sys.executable, "sample.py", "--ckpt", os.path.join(run_dir, "ckpt.pt"), "--prompt",
                          "Compute 12 + 34", "--num_samples", "2", "--max_new_tokens", "40"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("--- sample") == 2


@pytest.mark.parametrize("argv, message", [
    (["--group_size", "1"], "--group_size must be at least 2"),
    (["--lr", "fast"], "invalid float value"),
    (["--no_such_flag"], "unrecognized arguments"),
    (["--eval_problems", "500"], "--eval_problems must be between 1 and --n_test"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_and_too_long_prompt_errors(run):
    run_dir, _ = run
    res = subprocess.run([sys.executable, "sample.py", "--ckpt", "nowhere/ckpt.pt", "--prompt", "hi"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and "checkpoint not found: nowhere/ckpt.pt" in res.stderr
    res = subprocess.run([sys.executable, "sample.py", "--ckpt", os.path.join(run_dir, "ckpt.pt"), "--prompt", "x" * 700],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode != 0 and "longer than the model's context" in res.stderr

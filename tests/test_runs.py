"""Runs that survive (runner.py, train.py): exact resume, checkpoints on a schedule and on a signal, a
kill -9, non-finite steps, checkpoints that say what they are, torn logs, and bad input caught first."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

import plot
import pretrain
import train
from checkpoint import load_checkpoint
from runner import atomic_write
from tiny_runs import DDP, ROOT, TINY, copy_run, torchrun_train

CLOCKS = {"tokens_per_s", "rollout_s", "train_s", "elapsed"}  # wall-clock times: the only things that may differ


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def metrics(log):
    return [{k: v for k, v in r.items() if k not in CLOCKS} for r in log]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """An out_dir whose base model is cached, and a run of 4 steps straight."""
    out = str(tmp_path_factory.mktemp("out"))
    train.main(TINY + ["--out_dir", out, "--run_name", "straight", "--rl_steps", "4"])
    return out


def assert_same_state(a, b):
    ca, cb = (torch.load(os.path.join(d, "ckpt.pt"), weights_only=True) for d in (a, b))
    assert ca["step"] == cb["step"]
    for part in ("model", "ref"):
        assert ca[part].keys() == cb[part].keys()
        assert all(torch.equal(ca[part][k], cb[part][k]) for k in ca[part]), part
    sa, sb = ca["optim"]["state"], cb["optim"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[p][k], sb[p][k]) for p in sa for k in sa[p])


def test_a_resumed_run_is_the_uninterrupted_one_bit_for_bit(out):
    straight = os.path.join(out, "straight")
    part = train.main(TINY + ["--out_dir", out, "--run_name", "part", "--rl_steps", "2"])
    train.main(TINY + ["--out_dir", out, "--run_name", "part", "--rl_steps", "4", "--resume"])
    a, b = read_log(straight), read_log(part)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    assert metrics(a) == metrics(b)  # reward, KL, loss, grad norm, held-out accuracy ...: every number
    assert_same_state(straight, part)  # weights, reference, optimiser state
    with open(os.path.join(straight, "samples.jsonl")) as f, open(os.path.join(part, "samples.jsonl")) as g:
        assert f.read() == g.read()
    ckpt = torch.load(os.path.join(part, "ckpt.pt"), weights_only=True)
    # a checkpoint that says what it is: format, code version, every flag, tokenizer identity
    assert ckpt["format"] == 2 and "commit" in ckpt and ckpt["args"]["rl_steps"] == 4
    assert ckpt["tokenizer"] == "aha" and ckpt["vocab_size"] == ckpt["config"]["vocab_size"] == 487


def test_sampling_streams_matter(out):
    # the check above can fail: a resume that re-seeds the sampling stream (another world size)
    # is a different run from the first step after the checkpoint
    run = train.main(TINY + ["--out_dir", out, "--run_name", "reseed", "--rl_steps", "2"])
    ckpt_path = os.path.join(run, "ckpt.pt")
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["random"]["own"]["sampling"] *= 2  # as if written by 2 processes
    torch.save(ckpt, ckpt_path)
    train.main(TINY + ["--out_dir", out, "--run_name", "reseed", "--rl_steps", "3", "--resume"])
    assert metrics(read_log(run))[3] != metrics(read_log(os.path.join(out, "straight")))[3]


def test_a_resumed_torchrun_run_is_the_uninterrupted_one_bit_for_bit(ddp_run, out, capsys):
    # 2 gloo processes, each with its own sampling stream: the checkpoint holds both, each restores its own
    _, straight, printed = ddp_run  # 2 steps straight (conftest.py), its trackers on: they change no number
    beside = [*DDP, "--out_dir", os.path.dirname(straight)]  # its base model: the one the straight run cached
    torchrun_train(beside + ["--run_name", "ddp-part", "--rl_steps", "1"])
    torchrun_train(beside + ["--run_name", "ddp-part", "--rl_steps", "2", "--resume"])
    a, b = copy_run(straight, out), os.path.join(os.path.dirname(straight), "ddp-part")
    assert metrics(read_log(a)) == metrics(read_log(b)) and len(read_log(b)) == 3
    assert_same_state(a, b)
    assert len(torch.load(os.path.join(b, "ckpt.pt"), weights_only=True)["random"]["own"]["sampling"]) == 2
    # only rank 0 prints and writes
    assert printed.count("run: ") == 1 and "(2 processes)" in printed and printed.count("step   2/2") == 1

    # at another world size: as if the 2-process run had crashed after its step-2 checkpoint and a
    # step-3 log line, it goes on in 1 process (a full checkpoint loads anywhere) with new sampling streams
    with open(os.path.join(a, "log.jsonl"), "a") as f:
        f.write('{"step": 3, "crashed": true}\n')
    capsys.readouterr()
    train.main([*DDP, "--out_dir", out, "--run_name", "ddp-straight", "--rl_steps", "3", "--resume", "--report_to", "none"])
    printed = capsys.readouterr().out
    assert "resuming" in printed and "written by 2 processes, not 1" in printed and "step   3/3" in printed
    # nothing written is lost: the line past the checkpoint is set aside, the run's args.json kept
    assert open(os.path.join(a, "log-after-step-2.jsonl")).read() == '{"step": 3, "crashed": true}\n'
    assert json.load(open(os.path.join(a, "args.json")))["world_size"] == 2 and os.path.isfile(os.path.join(a, "args-resume-3.json"))
    assert [r["step"] for r in read_log(a)] == [0, 1, 2, 3]
    assert torch.load(os.path.join(a, "ckpt.pt"), weights_only=True)["step"] == 3


def start(out, name, *flags):
    return subprocess.Popen([sys.executable, "train.py", *TINY, "--out_dir", out, "--run_name", name, "--rl_steps", "200",
                             *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc, run_dir, step, timeout=120):
    path, t0 = os.path.join(run_dir, "log.jsonl"), time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        if os.path.isfile(path) and sum(1 for _ in open(path)) > step:
            return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no step {step} in {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_at_the_next_step_and_exits_0(out, sig):
    name = f"signal-{sig.name}"
    run_dir = os.path.join(out, name)
    proc = start(out, name, "--save_every", "0")  # no scheduled checkpoint: only the signal's
    wait_for_step(proc, run_dir, 1)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {sig.name} after step ") and "resume with python train.py --resume" in last
    step = torch.load(os.path.join(run_dir, "ckpt.pt"), weights_only=True)["step"]
    assert step >= 1 and read_log(run_dir)[-1]["step"] == step  # the checkpoint is the last logged step
    if sig == signal.SIGINT:
        return  # the same path on: resumed once, below
    train.main(TINY + ["--out_dir", out, "--run_name", name, "--rl_steps", str(step + 1), "--resume"])
    assert [r["step"] for r in read_log(run_dir)] == list(range(step + 2))


def test_a_signal_in_the_base_stage_stops_it_with_one_line(out):
    proc = start(out, "base-signal", "--base_steps", "3000", "--no_cache")
    while not (line := proc.stdout.readline()).startswith("base "):  # the first base step is done
        assert line, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in stderr
    assert stderr.strip().startswith("stopped by SIGTERM in the base stage at step "), stderr


def test_kill_9_loses_only_the_steps_since_the_last_checkpoint(out):
    run_dir = os.path.join(out, "killed")
    proc = start(out, "killed", "--save_every", "1")
    wait_for_step(proc, run_dir, 2)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate()
    model, tok, ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"), full=True)  # whole, and loads
    step = ckpt["step"]
    assert step >= 1
    train.main(TINY + ["--out_dir", out, "--run_name", "killed", "--rl_steps", str(step + 1), "--resume"])
    assert [r["step"] for r in read_log(run_dir)] == list(range(step + 2))
    # the log lines of the steps after the checkpoint are set aside, not lost
    after = os.path.join(run_dir, f"log-after-step-{step}.jsonl")
    assert not os.path.exists(after) or all(json.loads(line)["step"] > step for line in open(after) if line.endswith("}\n"))


def test_non_finite_steps_are_skipped_and_too_many_end_the_run(out, monkeypatch, capsys):
    # fault injection: the real gradient norm, replaced by inf on the chosen calls (2 per step here)
    real, calls, bad = torch.nn.utils.clip_grad_norm_, [0], set()

    def clip(*a, **k):
        calls[0] += 1
        norm = real(*a, **k)
        return torch.full_like(norm, float("inf")) if calls[0] in bad else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    bad.update({3, 4})  # step 2's updates: skipped, and the run goes on
    log = read_log(train.main(TINY + ["--out_dir", out, "--run_name", "one-bad", "--rl_steps", "3"]))
    assert [r["skipped_steps"] for r in log[1:]] == [0, 2, 0]
    assert "2 update(s) skipped" in capsys.readouterr().out
    calls[0], bad = 0, set(range(1, 100))  # every update: --max_skips steps in a row end the run
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--out_dir", out, "--run_name", "all-bad", "--rl_steps", "6", "--max_skips", "2"])
    assert "2 steps in a row had a non-finite loss or gradient norm" in str(e.value.code) and "\n" not in str(e.value.code)
    run_dir = os.path.join(out, "all-bad")
    assert [r["skipped_steps"] for r in read_log(run_dir)[1:]] == [2, 2]
    ckpt = torch.load(os.path.join(run_dir, "ckpt.pt"), weights_only=True)
    base = torch.load(pretrain.cache_path(train.parse_args(TINY + ["--out_dir", out])), weights_only=True)
    assert ckpt["step"] == 2 and all(torch.equal(ckpt["model"][k], base["model"][k]) for k in base["model"])


# --- checkpoints that say what they are ---

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask):
    """Whatever the writer (safetensors' own makes 0600) and a stale .tmp of 0600 left by a crash:
    the file is 0666 less the umask, readable by others under a usual umask and not under 0o077."""
    (tmp_path / "b.bin.tmp").write_bytes(b"torn")
    os.chmod(tmp_path / "b.bin.tmp", 0o600)
    writers = {"a.txt": "text", "b.bin": b"bytes", "c.safetensors": lambda p: save_file({"w": torch.ones(2)}, p),
               "d.pt": lambda p: torch.save({"w": torch.ones(2)}, p)}
    old = os.umask(umask)
    try:
        for name, data in writers.items():
            atomic_write(str(tmp_path / name), data)
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in writers}
    assert modes == dict.fromkeys(writers, 0o666 & ~umask) and sorted(os.listdir(tmp_path)) == sorted(writers)


def test_checkpoint_mismatches_are_one_line(out, tmp_path):
    path = os.path.join(out, "straight", "ckpt.pt")
    ckpt = torch.load(path, weights_only=True)
    cases = {
        "newer": ({**ckpt, "format": 99}, {}, "has checkpoint format 99, newer than this code's 2"),
        "tokenizer": (ckpt, {"tokenizer": "gpt2"}, "was written with --tokenizer aha, not gpt2"),
        "shape": (ckpt, {"config": {"n_layer": 12}}, "another shape (n_layer=4, not 12)"),
        "weights": ({**ckpt, "config": {**ckpt["config"], "n_embd": 64}}, {}, "weights do not fit the config"),
        "vocab": ({**ckpt, "config": {**ckpt["config"], "vocab_size": 300}}, {}, "tokenizer of 300 tokens, this one has 487"),
    }
    for name, (c, expect, message) in cases.items():
        p = str(tmp_path / f"{name}.pt")
        torch.save(c, p)
        with pytest.raises(ValueError) as e:  # bad input from library code (runner.py's convention)
            load_checkpoint(p, **expect)
        assert message in str(e.value) and "\n" not in str(e.value), name
    with open(path, "rb") as f:  # a torn file: what a kill during a non-atomic write would leave
        (tmp_path / "torn.pt").write_bytes(f.read()[:5000])
    with pytest.raises(ValueError) as e:
        load_checkpoint(str(tmp_path / "torn.pt"))
    assert "is not a checkpoint of this code" in str(e.value)


# --- logs that survive ---

def test_plot_skips_a_torn_line_and_follows_a_run(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [json.dumps({"step": s, "reward": s / 10, "accuracy": 0.1, "length": 50}) for s in range(3)]
    (run_dir / "log.jsonl").write_text("\n".join(lines) + '\n{"step": 3, "rew')  # killed mid-write
    assert plot.read_log(str(run_dir)) == [json.loads(line) for line in lines]
    assert "skipped 1 torn line(s)" in capsys.readouterr().err
    png, seen = run_dir / "curves.png", []

    def sleep(s):  # the run goes on between redraws; the second wait is a Ctrl-C
        seen.append(png.stat().st_mtime_ns)
        if len(seen) == 2:
            raise KeyboardInterrupt
        with open(run_dir / "log.jsonl", "w") as f:
            f.write("\n".join(lines + [json.dumps({"step": 3, "reward": 0.3, "length": 60})]) + "\n")
        os.utime(png, ns=(0, 0))

    monkeypatch.setattr(plot.time, "sleep", sleep)
    plot.main([str(run_dir), "--follow", "--every", "0.1"])
    assert seen[1] > 0  # redrawn after the run moved on
    assert len(plot.read_log(str(run_dir))) == 4


def test_a_figure_drawn_after_a_session_prints_no_warning():
    """runner.session flushes denormals; numpy, asked for a float type's limits afterwards (as
    matplotlib's import asks), would warn at the end of every run that they are zero."""
    code = ("import runner, plot\n"
            "with runner.session('cpu'):\n"
            "    plot.pyplot()\n")
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr[-500:]

# --- every bad input caught before the work starts ---

BAD = [  # argv, the flag the one line must name, and a part of its message
    (["--model", "qwen9"], "--model qwen9", "choose from tiny"),
    (["--tokenizer", "nope"], "--tokenizer nope", "unknown tokenizer"),
    (["--tokenizer", "cl100k_base", "--tokenizer_dir", "{tmp}"], "--tokenizer cl100k_base", "needs {tmp}/cl100k_base.tiktoken"),
    (["--max_new_tokens", "700"], "--max_new_tokens 700", "use at most 551"),
    (["--min_digits", "13", "--max_digits", "13", "--no_cache"], "--task addition", "longest document (688 tokens)"),
    (["--min_digits", "3", "--max_digits", "2"], "--min_digits", "between 1 and --max_digits"),
    (["--n_test", "9999", "--min_digits", "1", "--max_digits", "1"], "--n_test", "more than half"),
    (["--device", "tpu"], "--device tpu", "use cpu, cuda or cuda:N"),
    (["--device", "cpu:1"], "--device cpu:1", "use cpu, cuda or cuda:N"),
    (["--resume"], "--resume", "needs the --run_name of a run with a checkpoint"),
    (["--resume", "--run_name", "nothing"], "--resume", "none at"),
    (["--run_name", "straight"], "--run_name", "already holds a run"),
    (["--resume", "--run_name", "straight", "--model", "gpt2-small"], "--resume", "another shape"),
    (["--out_dir", "{tmp}/file/runs"], "--out_dir {tmp}/file/runs", "not a writable directory"),
    (["--save_every", "-1"], "--save_every", "cannot be negative"),
    (["--max_skips", "0"], "--max_skips", "at least 1"),
    (["--lr", "0"], "--lr", "must be > 0"),
    (["--lr", "fast"], "--lr", "invalid float value"),
    (["--eval_top_p", "0"], "--eval_top_p", "(0, 1]"),
    (["--eval_problems", "500"], "--eval_problems 500", "the held-out set has 4 problems"),
    (["--rewards", "accuracy:1,acc:1"], "--rewards", "unknown reward 'acc'"),
    (["--questions", "3", "--run_name", "x", "WORLD_SIZE=2"], "--questions 3", "does not split across 2 processes"),
    (["--run_name", "x", "WORLD_SIZE=2", "--fsdp"], "--fsdp", "needs a distributed launch"),
    (["--group_size", "1"], "--group_size", "at least 2"),
    (["--init", "hf:{tmp}/nowhere"], "--init hf:{tmp}/nowhere", "no such model directory"),
    (["--init", "hf:{tmp}"], "--init hf:{tmp}", "config.json"),
    (["--init", "{tmp}/none.pt"], "--init {tmp}/none.pt", "no such checkpoint"),
    (["--init", "hf:{tmp}", "--tokenizer", "gpt2"], "--tokenizer", "brings its own tokenizer"),
    (["--init", "gguf:{tmp}/m.gguf", "--tokenizer", "gpt2"], "--tokenizer", "brings its own tokenizer"),
    (["--task", "gsm8k"], "--test_file", "reads its held-out problems from a file"),
    (["--task", "linear"], "--task linear", "no base corpus"),
    (["--task", "nope"], "--task", "invalid choice"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "--device cuda", "no CUDA device here")])


@pytest.mark.parametrize("argv, flag, message", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_input_is_one_line_naming_the_flag(argv, flag, message, out, tmp_path, monkeypatch, capsys):
    argv, flag = [a.replace("{tmp}", str(tmp_path)) for a in argv], flag.replace("{tmp}", str(tmp_path))
    (tmp_path / "file").write_text("a file, not a directory")
    for a in [a for a in argv if a.startswith("WORLD_SIZE=")]:
        monkeypatch.setenv("WORLD_SIZE", a.split("=")[1])
        argv.remove(a)
    t0 = time.time()
    with pytest.raises(SystemExit) as e:
        train.main(TINY + ["--out_dir", out] + argv if "--out_dir" not in argv else TINY + argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and time.time() - t0 < 10  # before any work
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert flag in err and message.replace("{tmp}", str(tmp_path)) in err, err


@pytest.mark.parametrize("cli, argv, message", [
    ("plot", ["nowhere"], "no log found: nowhere/log.jsonl"),
    ("plot", ["{out}/straight", "--every", "0"], "--every must be > 0"),
    ("sample", ["--ckpt", "{tmp}/torn.pt", "--prompt", "hi"], "is not a checkpoint of this code"),
    ("evaluation", ["--ckpt", "{tmp}/torn.pt"], "is not a checkpoint of this code"),
    ("evaluation", ["--ckpt", "{tmp}/none.pt"], "checkpoint not found"),
    ("evaluation", ["--ckpt", "hf:{tmp}/nowhere"], "no such model directory"),
    ("evaluation", ["--ckpt", "{out}/straight/ckpt.pt", "--eval_top_p", "0"], "--eval_top_p must be in (0, 1]"),
    ("evaluation", ["--ckpt", "{out}/straight/ckpt.pt", "--eval_samples", "0"], "--eval_samples must be at least 1"),
    ("evaluation", ["--ckpt", "{out}/straight/ckpt.pt", "--max_new_tokens", "700"], "longer than the model's context"),
    ("sample", ["--ckpt", "hf:{tmp}/nowhere", "--prompt", "hi"], "no such model directory"),
    ("sample", ["--ckpt", "{out}/straight/ckpt.pt", "--prompt", "hi", "--num_samples", "0"], "--num_samples must be at least 1"),
    ("sample", ["--ckpt", "{out}/straight/ckpt.pt", "--prompt", "hi", "--top_k", "-1"], "--top_k cannot be negative"),
    ("sample", ["--ckpt", "{out}/straight/ckpt.pt", "--prompt", "hi", "--top_p", "0"], "--top_p must be in (0, 1]"),
    ("sample", ["--ckpt", "{out}/straight/ckpt.pt", "--prompt", "hi", "--temperature", "-1"], "--temperature must be >= 0"),
    ("sample", ["--ckpt", "{out}/straight/ckpt.pt", "--prompt", "hi", "--max_new_tokens", "700"], "longer than the model's context"),
    ("checkpoint", ["export", "{tmp}/none.pt", "{tmp}/exported"], "checkpoint not found"),
    ("checkpoint", ["export", "{tmp}/torn.pt", "{tmp}/exported"], "torn.pt"),
])
def test_other_clis_bad_input_is_one_line(cli, argv, message, out, tmp_path, monkeypatch, capsys):
    (tmp_path / "torn.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{out}", out) for a in argv]
    module = __import__(cli)
    monkeypatch.setattr(sys, "argv", [f"{cli}.py"] + argv)
    with pytest.raises(SystemExit) as e:
        module.main(argv)
    text = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err
    assert message in text and text.strip().count("\n") == 0, text

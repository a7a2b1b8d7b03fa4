"""sft.py: the loss is on completion tokens only, a short real run lowers it and writes a checkpoint the
other CLIs take, a SIGTERM checkpoints and --resume continues exactly, bad input is one line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import sft
from model import make_model, save_checkpoint
from sample import pack
from tasks import AdditionTask
from tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(n_layer=2, n_head=2, n_kv_head=2, n_embd=64, ffn_hidden=128)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random small model's ckpt.pt and 48 worked addition examples (textbook ones: short prompts), as JSONL."""
    d = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    tok = get_tokenizer("byte")
    save_checkpoint(str(d / "init.pt"), make_model("tiny", tok.vocab_size, **SMALL), "byte")
    with open(d / "data.jsonl", "w") as f:
        for p, c in AdditionTask(n_test=20).textbook(48, seed=0):
            f.write(json.dumps({"prompt": p, "completion": c}) + "\n")
    return d


def cli(*argv, timeout=120):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_loss_is_on_completion_tokens_only():
    tok = get_tokenizer("byte")
    torch.manual_seed(0)
    model = make_model("tiny", tok.vocab_size, **SMALL)
    prompts, completions = ["User: Compute 1 + 2. Assistant:", "User: Compute 30 + 4. Assistant:"], [" <answer> 3 </answer>", " 34"]
    batch = pack([tok.encode(p) for p in prompts], [tok.encode(c) + [tok.eot] for c in completions], tok.pad)
    targets, mask = sft.targets_and_mask(batch)
    # exactly the completion tokens count, each row's <|endoftext|> included
    assert mask.sum(1).tolist() == [len(tok.encode(c)) + 1 for c in completions]

    def grads(t):
        model.zero_grad()
        sft.sft_loss(model, batch, t, mask, mask.sum()).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    base = grads(targets)
    prompt_col = batch.R - 3  # a target inside the prompt: the label of a prompt token
    assert mask[0, prompt_col] == 0 and batch.valid[0, prompt_col + 1]
    changed = targets.clone()
    changed[0, prompt_col] = (changed[0, prompt_col] + 1) % tok.vocab_size
    assert torch.equal(grads(changed), base)
    comp_col = batch.R  # the second completion token's label
    changed = targets.clone()
    changed[0, comp_col] = (changed[0, comp_col] + 1) % tok.vocab_size
    assert not torch.allclose(grads(changed), base)


def test_cli_lowers_the_loss_and_its_checkpoint_is_taken_everywhere(files):
    out = str(files / "out")
    res = cli("sft.py", "--init", str(files / "init.pt"), "--data", str(files / "data.jsonl"), "--out_dir", out,
              "--run_name", "a", "--epochs", "3", "--batch", "8", "--micro_batch", "4", "--lr", "3e-3",
              "--eval_problems", "2", "--eval_samples", "1", "--n_test", "20", "--max_new_tokens", "16")
    assert res.returncode == 0, res.stderr
    log = read_log(os.path.join(out, "a"))
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 19))
    assert sum(r["loss"] for r in steps[-3:]) < 0.8 * sum(r["loss"] for r in steps[:3])
    assert "eval_accuracy" in log[-1]
    ckpt = os.path.join(out, "a", "ckpt.pt")
    res = cli("rollout.py", "--ckpt", ckpt, "--eval_problems", "2", "--eval_samples", "1", "--max_new_tokens", "8", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["settings"]["step"] == 18
    res = cli("train.py", "--init", ckpt, "--out_dir", out, "--run_name", "rl", "--rl_steps", "1", "--questions", "2",
              "--group_size", "2", "--max_new_tokens", "8", "--eval_problems", "2", "--eval_samples", "1", "--n_test", "20",
              "--no_plot")
    assert res.returncode == 0, res.stderr
    # and sft.py --init takes it too: a second SFT (rejection sampling's) on the cold start's
    res = cli("sft.py", "--init", ckpt, "--data", str(files / "data.jsonl"), "--out_dir", out, "--run_name", "b",
              "--epochs", "1", "--batch", "24")
    assert res.returncode == 0, res.stderr


def test_sigterm_checkpoints_and_resume_continues_exactly(files):
    out, argv = str(files / "out"), ["--init", str(files / "init.pt"), "--data", str(files / "data.jsonl"), "--epochs", "2",
                                     "--batch", "8", "--lr", "3e-3"]
    assert cli("sft.py", *argv, "--out_dir", out, "--run_name", "straight").returncode == 0
    proc = subprocess.Popen([sys.executable, "sft.py", *argv, "--out_dir", out, "--run_name", "cut"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = os.path.join(out, "cut", "log.jsonl")
    while not (os.path.isfile(log) and len(open(log).readlines()) >= 3):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "resume with python sft.py --resume" in stdout
    stopped = len(read_log(os.path.join(out, "cut")))
    assert stopped < 12
    res = cli("sft.py", "--out_dir", out, "--run_name", "cut", "--resume")  # its flags come from args.json
    assert res.returncode == 0, res.stderr
    straight, resumed = read_log(os.path.join(out, "straight")), read_log(os.path.join(out, "cut"))
    assert [r["step"] for r in resumed] == list(range(1, 13))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


@pytest.mark.parametrize("argv, fragment", [
    (["--init", "{d}/nope.pt"], "no such checkpoint"),
    (["--data", "{d}/nope.jsonl"], "--data {d}/nope.jsonl: no such file"),
    (["--data", "{d}/data.jsonl,{d}/bad.jsonl"], "{d}/bad.jsonl:2: missing field 'completion'"),
    (["--data", "{d}/torn.jsonl"], "{d}/torn.jsonl:1: not a JSON object"),
    (["--data", "{d}/empty.jsonl"], "no examples"),
    (["--batch", "1000"], "--batch 1000: the data has only 48 examples"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--run_name", "missing", "--resume"], "--resume needs the --run_name of a run with a checkpoint"),
])
def test_bad_input_is_one_line(files, argv, fragment):
    d = str(files)
    (files / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    (files / "torn.jsonl").write_text('{"prompt": "a", "compl\n')
    (files / "empty.jsonl").write_text("\n")
    flags = {"--init": f"{d}/init.pt", "--data": f"{d}/data.jsonl", "--out_dir": f"{d}/out"}
    argv = [a.format(d=d) for a in argv]
    for k, v in flags.items():
        if k not in argv:
            argv += [k, v]
    res = cli("sft.py", *argv)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment.format(d=d) in lines[0], res.stderr

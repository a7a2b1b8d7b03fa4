"""r1/sft.py: the loss is on completion tokens only, a short real run lowers it and writes a checkpoint the
other CLIs take, a SIGTERM checkpoints and --resume continues exactly, bad input is one line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import evaluation
from r1 import reject
from r1 import sft
import train
from batch import pack
from checkpoint import save_checkpoint
from model import make_model
from tasks import AdditionTask
from tiny_runs import thread_share
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


def one_line_error(capsys, main, argv):
    """The message of a CLI's one-line error, called in-process: parser errors go to stderr, others
    are the SystemExit's text."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip() or str(e.value.code)
    assert e.value.code not in (0, None) and "\n" not in err and "Traceback" not in err, err
    return err


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


def test_cli_lowers_the_loss_and_its_checkpoint_is_taken_everywhere(files, capsys):
    # each CLI's main(argv), in-process: the code a command line runs, without a new interpreter each
    out = str(files / "out")
    sft.main(["--init", str(files / "init.pt"), "--data", str(files / "data.jsonl"), "--out_dir", out,
              "--run_name", "a", "--epochs", "2", "--batch", "8", "--micro_batch", "4", "--lr", "3e-3",
              "--eval_problems", "1", "--eval_samples", "1", "--n_test", "20", "--max_new_tokens", "16"])
    log = read_log(os.path.join(out, "a"))
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert sum(r["loss"] for r in steps[-3:]) < 0.8 * sum(r["loss"] for r in steps[:3])
    assert "eval_accuracy" in log[-1]
    ckpt = os.path.join(out, "a", "ckpt.pt")
    capsys.readouterr()
    evaluation.main(["--ckpt", ckpt, "--eval_problems", "2", "--eval_samples", "1", "--max_new_tokens", "8", "--json"])
    assert json.loads(capsys.readouterr().out)["settings"]["step"] == 12
    rl = train.main(["--init", ckpt, "--out_dir", out, "--run_name", "rl", "--rl_steps", "1", "--questions", "2",
                     "--group_size", "2", "--max_new_tokens", "8", "--eval_problems", "2", "--eval_samples", "1",
                     "--n_test", "20", "--no_plot"])
    assert [r["step"] for r in read_log(rl)] == [0, 1]
    # and r1/sft.py --init takes it too: a second SFT (rejection sampling's) on the cold start's
    b = sft.main(["--init", ckpt, "--data", str(files / "data.jsonl"), "--out_dir", out, "--run_name", "b",
                  "--epochs", "1", "--batch", "24"])
    assert [r["step"] for r in read_log(b)] == [1, 2]


def test_sigterm_checkpoints_and_resume_continues_exactly(files):
    out, argv = str(files / "out"), ["--init", str(files / "init.pt"), "--data", str(files / "data.jsonl"), "--epochs", "1",
                                     "--batch", "8", "--lr", "3e-3"]
    sft.main(argv + ["--out_dir", out, "--run_name", "straight"])
    proc = subprocess.Popen([sys.executable, "-m", "r1.sft", *argv, "--out_dir", out, "--run_name", "cut"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = os.path.join(out, "cut", "log.jsonl")
    while not (os.path.isfile(log) and len(open(log).readlines()) >= 2):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "resume with python -m r1.sft --resume" in stdout
    stopped = len(read_log(os.path.join(out, "cut")))
    assert stopped < 6
    sft.main(["--out_dir", out, "--run_name", "cut", "--resume"])  # its flags come from args.json
    straight, resumed = read_log(os.path.join(out, "straight")), read_log(os.path.join(out, "cut"))
    assert [r["step"] for r in resumed] == list(range(1, 7))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


def test_torchrun_two_processes_make_the_same_updates(files):
    """2 gloo processes, each half of every batch: the losses of the one-process run, step for step."""
    out, argv = str(files / "out"), ["--init", str(files / "init.pt"), "--data", str(files / "data.jsonl"), "--epochs", "1",
                                     "--batch", "8", "--micro_batch", "2", "--lr", "3e-3"]
    sft.main(argv + ["--out_dir", out, "--run_name", "one"])
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "r1.sft",
                          *argv, "--out_dir", out, "--run_name", "two"], cwd=ROOT, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "OMP_NUM_THREADS": str(thread_share(2))})
    assert res.returncode == 0, res.stderr
    one, two = (read_log(os.path.join(out, r)) for r in ("one", "two"))
    assert len(one) == len(two) == 6
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)


@pytest.mark.parametrize("argv, fragment", [
    (["--init", "{d}/nope.pt"], "no such checkpoint"),
    (["--data", "{d}/nope.jsonl"], "--data {d}/nope.jsonl: no such file"),
    (["--data", "{d}/data.jsonl,{d}/bad.jsonl"], "{d}/bad.jsonl:2: missing field 'completion'"),
    (["--data", "{d}/torn.jsonl"], "{d}/torn.jsonl:1: not a JSON object"),
    (["--data", "{d}/empty.jsonl"], "no examples"),
    (["--micro_batch", "-1"], "--micro_batch at least 0"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--run_name", "missing", "--resume"], "--resume needs the --run_name of a run with a checkpoint"),
])
def test_bad_input_is_one_line(files, argv, fragment, capsys):
    d = str(files)
    (files / "bad.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    (files / "torn.jsonl").write_text('{"prompt": "a", "compl\n')
    (files / "empty.jsonl").write_text("\n")
    flags = {"--init": f"{d}/init.pt", "--data": f"{d}/data.jsonl", "--out_dir": f"{d}/out"}
    argv = [a.format(d=d) for a in argv]
    for k, v in flags.items():
        if k not in argv:
            argv += [k, v]
    assert fragment.format(d=d) in one_line_error(capsys, sft.main, argv)


# --- r1/reject.py: the filters of rejection sampling, on hand-made completions ---

GOOD = " <think> Compute 82 + 97 in columns. 2+7=9, so 9. 8+9=17, so 79, carry 1. Carry 1 left, so 179. </think> <answer> 179 </answer>"
BAD = {  # each fails exactly the filter it names
    "correct": GOOD.replace("<answer> 179", "<answer> 178"),
    "format": GOOD.replace("</think> <answer>", "</think> So the sum is <answer>"),
    "language": " <think> 计算 82 + 97 按列 相加 2+7=9 所以 9 8+9=17 所以 179 </think> <answer> 179 </answer>",
    "repeats": GOOD.replace("so 9.", "so 9. 2+7=9, so 9."),
    "length": GOOD.replace("</think>", "Done, the sum is found. </think>"),
}


def reject_args(**kw):
    import argparse
    return argparse.Namespace(**{"min_language": 0.95, "repeat_words": 3, "min_tokens": 1, "max_tokens": len(GOOD) + 5, **kw})


def test_repeated_block():
    from r1.reject import repeated_block
    assert not repeated_block(GOOD)
    assert repeated_block(BAD["repeats"])  # a sentence twice
    assert repeated_block(" <think> so the sum is so the sum is 179 </think>")  # a 4-word run back to back
    assert not repeated_block(" <think> so so 179 </think>")  # a 1-word stutter is shorter than --repeat_words
    # a recheck restates earlier steps, apart from them: reflection, not a loop
    recheck = (" <think> Compute 16 + 51 in columns. 6+1=7, so 7. 1+5=6, so 67. Wait, let me recheck. 6+1=7, so 7. "
               "1+5=6, so 67. So 67, as before. </think> <answer> 67 </answer>")
    assert not repeated_block(recheck) and repeated_block(recheck.replace("so 7. 1+5", "so 7. 6+1=7, so 7. 1+5", 1))
    assert repeated_block(" <think> so so 179 </think>", min_words=1)


def test_rejection_keeps_only_what_passes_every_filter():
    from r1.reject import filters, select
    from rewards import accuracy_reward, format_reward, language_reward
    texts = [GOOD, *BAD.values(), GOOD.replace("in columns.", "in columns, digit by digit.")]
    lengths = [len(t) for t in texts]  # byte tokenizer: a token per byte (of ASCII)
    scores = {"accuracy": accuracy_reward([""] * 7, texts, answer=["179"] * 7),
              "format": format_reward([""] * 7, texts), "language": language_reward([""] * 7, texts)}
    passed = filters(texts, lengths, [False] * 7, scores, reject_args(max_tokens=len(GOOD) + 20))
    for name, bad in BAD.items():  # each bad completion fails its own filter and passes the others
        i = texts.index(bad)
        assert [name for name, ok in passed.items() if not ok[i]] == [name], name
    assert all(ok[0] and ok[-1] for ok in passed.values())
    problems = [{"prompt": "Compute 82 + 97", "answer": "179"}]
    rows = select(problems, ["P"] * 7, texts, passed, k=7, keep=2)
    assert [r["completion"] for r in rows] == [GOOD, texts[-1]]
    assert [r["completion"] for r in select(problems, ["P"] * 7, texts, passed, k=7, keep=1)] == [GOOD]
    # a completion cut off at the generation limit fails the length filter, whatever its length
    cut = filters([GOOD], [len(GOOD)], [True], {k: v[:1] for k, v in scores.items()}, reject_args(max_tokens=len(GOOD) + 20))
    assert [name for name, ok in cut.items() if not ok[0]] == ["length"]


def test_reject_cli_bad_input_is_one_line(files, capsys):
    for argv, fragment in [(["--ckpt", str(files / "nope.pt"), "--out", str(files / "rs.jsonl")], "checkpoint not found"),
                           (["--ckpt", str(files / "init.pt"), "--out", str(files / "no" / "rs.jsonl")], "no such directory"),
                           (["--ckpt", str(files / "init.pt"), "--out", str(files / "rs.jsonl"), "--k", "0"], "--k must be"),
                           (["--ckpt", str(files / "init.pt"), "--out", str(files / "rs.jsonl"), "--stats",
                             str(files / "no" / "f.json")], "--stats")]:
        assert fragment in one_line_error(capsys, reject.main, argv)


def test_cold_start_data_is_correct_formatted_and_fits(tmp_path):
    # the miniature's curated cold-start data (r1/cold_start.py): the task's written solution, rechecked,
    # for training problems only, each completion (and its end of text) within the generation limit
    from r1 import cold_start
    from rewards import accuracy_reward, format_reward
    from reflection import reflects
    cold_start.main(["--out", str(tmp_path / "cold.jsonl"), "--examples", "40", "--max_tokens", "96"])
    rows = [json.loads(line) for line in open(tmp_path / "cold.jsonl")]
    tok, task = get_tokenizer(), AdditionTask(seed=1337)
    assert 0 < len(rows) < 40  # some of the 40 are longer than 96 tokens: left out
    assert all(len(tok.encode(r["completion"])) + 1 <= 96 for r in rows)
    answers = [str(eval(r["prompt"].split("User: Compute ")[1].split(". Assistant:")[0])) for r in rows]
    completions = [r["completion"] for r in rows]
    assert accuracy_reward(None, completions, answer=answers) == [1.0] * len(rows) == format_reward(None, completions)
    assert all(reflects(c) for c in completions)  # every one rechecks its first attempt
    held_out = {p["prompt"] for p in task.test_set}
    assert not any(r["prompt"].split("User: ")[1].split(". Assistant:")[0] in held_out for r in rows)
    # seeded: the same data for the same seed, other problems for another
    assert cold_start.cold_start_data(40, 1, 96) == [(r["prompt"], r["completion"]) for r in rows]
    assert cold_start.cold_start_data(40, 2, 96) != cold_start.cold_start_data(40, 1, 96)

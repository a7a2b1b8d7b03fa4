"""The course exercises are sound both ways: every check passes on the project's own functions,
and fails with a message that helps on the untouched stub and on a typical wrong answer. Student
files go to a tmp directory (EXERCISES_WORK), never to exercises/work/."""

import os
import subprocess
import sys

import pytest

import exercises as ex

WRONG = {  # exercise -> (a typical wrong answer, words the message must contain)
    1: ("import torch\n"
        "def group_advantages(rewards, group_size, scale='std', eps=1e-4):\n"
        "    r = torch.as_tensor(rewards, dtype=torch.float).view(-1, group_size)\n"
        "    std = r.std(1, keepdim=True, unbiased=False)  # population std: the spec asks for the sample std\n"
        "    return ((r - r.mean(1, keepdim=True)) / (std + eps)).view(-1)\n",
        "your advantages for a group of rewards 0, 1, 2: -1.22"),
    2: ("import torch\n"
        "def kl_k3(logp, ref_logp):\n"
        "    d = logp - ref_logp  # arguments swapped\n"
        "    return torch.exp(d) - d - 1\n",
        "your KL per token of random log-probs"),
    3: ("import torch\n"
        "def clipped_surrogate(logp, old_logp, advantages, eps_low=0.2, eps_high=None):\n"
        "    eps_high = eps_low if eps_high is None else eps_high\n"
        "    ratio = torch.exp(logp - old_logp)  # no min with the unclipped term\n"
        "    return ratio.clamp(1 - eps_low, 1 + eps_high) * advantages[:, None]\n",
        "your surrogate for ratios 1.65, 0.61, 1, 1.25"),
    4: ("from grpo import loss_normalizer as right\n"
        "def loss_normalizer(loss_type, mask, max_len=None):\n"
        "    return float(mask.numel()) if loss_type == 'token' else right(loss_type, mask, max_len)  # mask forgotten\n"
        "SHORT_OVER_LONG_GRPO, SHORT_OVER_LONG_TOKEN = 5, 1\n",
        "your normalizer for loss_type='token' and a ragged (6, 9) mask: 54"),
    5: ("from grpo import loss_normalizer\n"
        "def token_weights(mask, loss_type='grpo', normalizer=None):\n"
        "    w = mask / loss_normalizer(loss_type, mask)  # its own normaliser, not the step's\n"
        "    return w / mask.sum(1, keepdim=True).clamp(min=1) if loss_type == 'grpo' else w\n",
        "on micro-batch rows 0-0"),
    6: ("def token_logprobs_reference(logits, targets, temperature=1.0):\n"
        "    p = (logits.float() / temperature).exp()  # no max subtraction: exp(1e4) overflows\n"
        "    return (p / p.sum(-1, keepdim=True)).log().gather(-1, targets.unsqueeze(-1)).squeeze(-1)\n",
        "your log-probs for logits of +-1e4: NaN"),
    7: ("import torch\n"
        "from grpo_kernels import token_logprobs\n"
        "def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):\n"
        "    if temperature == 0:\n"
        "        tok = logits.argmax(-1)\n"
        "        return tok, token_logprobs(logits, tok)\n"
        "    z = logits.float() / temperature\n"
        "    if top_k:\n"
        "        z = z.masked_fill(z < z.topk(min(top_k, z.size(-1)), dim=-1).values[:, -1:], float('-inf'))\n"
        "    if top_p < 1.0:\n"
        "        zs, order = z.sort(dim=-1, descending=True)\n"
        "        drop = zs.softmax(-1).cumsum(-1) > top_p  # off by one: drops the token that crosses top_p\n"
        "        z = z.scatter(-1, order, zs.masked_fill(drop, float('-inf')))\n"
        "    tok = torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(-1)\n"
        "    return tok, token_logprobs(logits, tok, temperature)\n",
        "with {'temperature': 1.0, 'top_p': 0.8} you draw token"),
    8: ("from model import KVCache as Right\n"
        "class KVCache(Right):\n"
        "    def extend(self, k, v):\n"
        "        super().extend(k, v)\n"
        "        return k, v  # only the new positions\n",
        "the keys extend returns after one new position (all positions so far): shape (2, 3, 1, 4)"),
    9: ("import re\n"
        "from rewards import extract_answer\n"
        "def is_formatted(text):\n"
        "    m = re.fullmatch(r'\\s*<think>.*</think>\\s*<answer>(.*)</answer>\\s*', text, re.DOTALL)\n"
        "    return bool(m) and m.group(1).strip() != ''  # the tags are not counted\n",
        "is_formatted('<think>x</think> <answer>1</answer> <answer>2</answer>') is True; expected False"),
    10: ("import dataclasses\n"
         "from grpo_update import grpo_update as right\n"
         "def grpo_update(policy, ref, opt, samples, advantages, cfg, generator):\n"
         "    cfg = dataclasses.replace(cfg, mask_truncated=False)  # the truncation mask forgotten\n"
         "    return right(policy, ref, opt, samples, advantages, cfg, generator)\n",
         "with {'minibatches': 2, 'micro_batch': 2, 'ppo_epochs': 2, 'mask_truncated': True}, the weights"),
    12: ("def assemble(turns):\n"
         "    ids, logps, tool = [], [], []\n"
         "    for t, lp in turns:\n"
         "        ids, logps = ids + t, logps + ([0.0] * len(t) if lp is None else lp)\n"
         "        tool += [lp is not None] * len(t)  # the mask inverted: True on what the policy sampled\n"
         "    return ids, logps, tool\n",
         "your tool mask for the row with a call in the middle"),
    13: ("import torch\n"
         "def sequence_surrogate(logp, old_logp, advantages, mask, eps_low=3e-4, eps_high=4e-4):\n"
         "    s = torch.exp((logp - old_logp).mean(1))  # the mean over every column, padding included\n"
         "    A = advantages\n"
         "    return torch.min(s * A, s.clamp(1 - eps_low, 1 + eps_high) * A)[:, None].expand_as(logp)\n",
         "your surrogate for rows with padding after their tokens"),
}
EXERCISES = list(WRONG)  # every exercise with a file to write: all but the finale (11)


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setenv("EXERCISES_WORK", str(tmp_path))
    return tmp_path


def write(n, text):
    ex.student_file(n).write_text(text)


def test_there_are_twelve_exercises_and_a_finale_each_with_stub_checks_and_hint():
    assert len(ex.NAMES) == 13
    for n, name in enumerate(ex.NAMES, 1):
        s = ex.spec(n)
        assert (ex.HERE / "hints" / f"{name}.md").is_file()
        assert hasattr(s, "verdict") or (ex.HERE / "stubs" / f"{name}.py").is_file()
        assert s.TITLE and s.EQUATION and s.PROJECT
    assert set(WRONG) == set(range(1, 14)) - {11}


@pytest.mark.parametrize("n", EXERCISES)
def test_check_passes_on_the_project_and_fails_on_the_stub_and_a_wrong_answer(n, work):
    assert ex.check(n) == (False, f"not started: python -m exercises start {n}")
    ex.start(n)
    assert ex.check(n) == (False, f"not implemented yet: fill in the TODO in {ex.student_file(n)}")
    write(n, ex.spec(n).REFERENCE + "\n")
    assert ex.check(n) == (True, "PASS")
    wrong, words = WRONG[n]
    write(n, wrong)
    ok, msg = ex.check(n)
    assert not ok and words in msg and f"(hint: python -m exercises hint {n})" in msg, msg


def test_a_student_error_is_one_line_that_says_where(work):
    write(2, "def kl_k3(logp, ref_logp):\n    return logp.nope\n")
    ok, msg = ex.check(2)
    assert not ok and msg.startswith("your code raised AttributeError") and "ex02_kl.py:2" in msg


def test_cli_start_never_overwrites_and_check_sets_the_exit_status(work, capsys):
    from exercises.__main__ import main
    assert main(["start", "2"]) == 0
    write(2, "# my work\n")
    assert main(["start", "2"]) == 2 and "exists (your work)" in capsys.readouterr().err
    assert ex.student_file(2).read_text() == "# my work\n"
    assert main(["start", "2", "--force"]) == 0 and "NotImplementedError" in ex.student_file(2).read_text()
    capsys.readouterr()
    assert main(["check", "2"]) == 1 and "not implemented yet" in capsys.readouterr().out
    write(2, ex.spec(2).REFERENCE + "\n")
    assert main(["check", "2"]) == 0
    assert main(["check", "14"]) == 2
    assert capsys.readouterr().err.strip() == "error: there is no exercise 14: they are numbered 1 to 13 (python -m exercises list)"
    assert main(["list"]) == 0 and "grpo.py: kl_k3" in capsys.readouterr().out
    # the entry point itself, once
    r = subprocess.run([sys.executable, "-m", "exercises", "hint", "2"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("# Hint: the k3 KL estimator")


def test_use_exercises_refuses_in_one_line_when_an_exercise_does_not_pass(work, capsys):
    import train
    with pytest.raises(SystemExit):
        train.main(["--use_exercises"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert ("error: --use_exercises: exercise 1 (group-normalised advantages) does not pass: not started: "
            "python -m exercises start 1; python -m exercises check 1") in err


def test_plug_in_puts_the_students_functions_where_the_run_looks(work, monkeypatch):
    import types

    import evaluation
    import grpo
    import grpo_update
    import model
    import rewards
    import sample
    import train
    for n in range(1, 11):
        write(n, ex.spec(n).REFERENCE + "\n")
    write(1, "from grpo import group_advantages as right\ndef group_advantages(*a, **kw):\n    return right(*a, **kw)\n")
    # every attribute plug may set, in every project module, is restored after the test
    monkeypatch.setattr(ex, "REPLACED", {})
    for m in ex.project_modules():
        for n in range(1, 11):
            for _, attr in ex.spec(n).PLUG:
                if hasattr(m, attr):
                    monkeypatch.setattr(m, attr, getattr(m, attr))
    # a module of the project that imports the function by name, as train.py imports grpo_update:
    # setting grpo.group_advantages alone would leave it the project's
    holder = types.ModuleType("holder")
    holder.__file__ = os.path.join(os.path.dirname(ex.HERE), "holder.py")
    holder.group_advantages = grpo.group_advantages
    monkeypatch.setitem(sys.modules, "holder", holder)
    train_module = types.SimpleNamespace(group_advantages=grpo.group_advantages, grpo_update=None)
    before = grpo.group_advantages
    ex.plug(train_module)  # what plug_in does once every check passes (each is tested above)
    assert ex.unplugged() == []  # no project module still holds a function it replaced
    assert grpo.group_advantages is not before and grpo.group_advantages.__module__ == "student_ex01_advantages"
    assert holder.group_advantages is grpo.group_advantages and train_module.group_advantages is grpo.group_advantages
    assert model.KVCache is sample.KVCache and evaluation.extract_answer is rewards.extract_answer
    assert train_module.grpo_update.__qualname__.startswith("plugged")  # ex10's wrapper: the metrics it lacks are NaN
    assert grpo_update.grpo_update is train_module.grpo_update  # where the run looks it up, and train.py's own import
    assert train.grpo_update is grpo_update.grpo_update  # the real train module, plugged without being named


def test_unplugged_finds_a_function_plug_missed(monkeypatch):
    # the check above can fail: a project module holding a replaced function is reported
    import types

    import grpo
    monkeypatch.setattr(ex, "REPLACED", {("grpo", "kl_k3"): grpo.kl_k3})
    holder = types.ModuleType("holder")
    holder.__file__ = os.path.join(os.path.dirname(ex.HERE), "holder.py")
    holder.kl_k3 = grpo.kl_k3
    monkeypatch.setitem(sys.modules, "holder", holder)
    monkeypatch.setattr(grpo, "kl_k3", lambda logp, ref_logp: logp)  # the student's, set in grpo only
    assert "holder.kl_k3" in ex.unplugged()


def test_finale_reads_the_runs_log(tmp_path, monkeypatch):
    import json
    monkeypatch.setenv("EXERCISES_RUN", str(tmp_path))
    assert ex.check(11)[1].startswith("no finished run in")
    (tmp_path / "args.json").write_text(json.dumps({"use_exercises": True}))
    evals = [{"step": 0, "elapsed": 60, "eval_accuracy": 0.11}, {"step": 60, "elapsed": 600, "eval_accuracy": 0.55}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    assert ex.check(11) == (False, "held-out pass@1 went 0.110 -> 0.550 at step 60; the target is 0.6")
    evals[-1]["eval_accuracy"] = 0.85
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    assert ex.check(11) == (True, "PASS: your GRPO took held-out pass@1 0.110 -> 0.850 in 10.0 min")

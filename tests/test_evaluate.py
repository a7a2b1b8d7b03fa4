"""Evaluation (evaluation.py): pass@k against direct enumeration, cons@k on hand-made votes, and
evaluate / the CLI on a small random model and a MATH-format fixture."""

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch

from evaluation import evaluate, majority_correct, pass_at_k
from tasks import CountdownTask, MathTask



@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pass_at_k_is_the_share_of_k_subsets_with_a_correct_sample(n):
    for c in range(n + 1):
        samples = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets), abs=1e-12)
    assert pass_at_k(n, 0, 1) == 0.0 and pass_at_k(n, n, n) == 1.0


def test_pass_at_k_stays_finite_where_binomials_overflow():
    # C(2000, 1000) is far beyond a float; the product form is 1 - (1000/2000 * ...) exactly
    assert pass_at_k(2000, 1, 1) == pytest.approx(1 / 2000)
    assert pass_at_k(2000, 1000, 1000) == pytest.approx(1.0) and math.isfinite(pass_at_k(2000, 3, 1000))


def answer(a):
    return f"<think> hmm </think> <answer> {a} </answer>"


def test_cons_at_k_votes_on_equivalent_answers():
    math_task = MathTask.__new__(MathTask)  # only its `same`: answers the accuracy check calls equal
    same = lambda a, b: math_task.same(a, b, {})  # noqa: E731
    # "1/2" and "0.5" are one answer with two votes against "3"'s one
    assert majority_correct([answer("3"), answer("1/2"), answer("0.5")], [0, 1, 1], same) == 1.0
    assert majority_correct([answer("3"), answer("3"), answer("0.5")], [0, 0, 1], same) == 0.0
    # a tie goes to the answer seen first; no answer never votes; nothing to vote on is wrong
    assert majority_correct([answer("7"), answer("8")], [0, 1], same) == 0.0
    assert majority_correct(["no tags", "<answer> 1 </answer> <answer> 2 </answer>", answer("5")], [0, 0, 1], same) == 1.0
    assert majority_correct(["", "nothing"], [0, 0], same) == 0.0


def test_countdown_votes_by_value():
    task = CountdownTask(n_test=1)
    p = {"numbers": [2, 3, 4], "target": 20}
    same = lambda a, b: task.same(a, b, p)  # noqa: E731
    assert majority_correct([answer("2 * 3 + 4"), answer("(3 + 2) * 4"), answer("4 * (2 + 3)")], [0, 1, 1], same) == 1.0
    assert same("2 * 3 + 4", "4 + 3 * 2") and not same("2 * 3 + 4", "(3 + 2) * 4")


def tiny_model(seed=0):
    from model import Transformer, ModelConfig
    from tokenizer import get_tokenizer
    tok = get_tokenizer()
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=1, n_embd=32, ffn_hidden=64,
                            block_size=512))
    return model.eval(), tok


def math_file(tmp_path):
    rows = [{"problem": f"What is {i} + 1?", "answer": str(i + 1), "subject": "Algebra" if i % 2 else "Geometry",
             "level": 1 + i % 3} for i in range(6)]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_evaluate_metrics_match_the_completions_it_scored(tmp_path):
    # the correctness check is a stand-in that records what it scored: right when the completion
    # has an even length; every metric is recomputed here from those completions
    task = MathTask(test_file=math_file(tmp_path))
    seen = []

    def correct(prompts, completions, **fields):
        seen.extend(completions)
        return [float(len(c) % 2 == 0) for c in completions]

    task.correct = correct
    model, tok = tiny_model()
    n = 4
    args = SimpleNamespace(eval_problems=6, eval_samples=n, seed=0, eval_temperature=1.0, eval_top_p=1.0,
                           max_new_tokens=6, log_samples=2)
    m, samples = evaluate(model, tok, task, args, step=3)
    right = [[float(len(c) % 2 == 0) for c in seen[i * n:(i + 1) * n]] for i in range(6)]
    assert 0 < m["eval_accuracy"] < 1  # both outcomes occur: the checks below can fail
    assert m["eval_accuracy"] == pytest.approx(sum(map(sum, right)) / (6 * n))
    assert m[f"eval_pass@{n}"] == pytest.approx(sum(any(r) for r in right) / 6)
    subjects = m["eval_by_subject"]
    assert subjects["Algebra"]["problems"] == 3 and set(m["eval_by_level"]) == {"1", "2", "3"}
    assert subjects["Algebra"]["pass@1"] == pytest.approx(sum(sum(right[i]) / n for i in (1, 3, 5)) / 3)
    assert len(samples) == 2 and samples[0]["step"] == 3 and samples[0]["completion"] == seen[0]
    # the same seed draws the same samples
    seen.clear()
    assert evaluate(model, tok, task, args, step=3)[0] == m


def test_cli_evaluates_a_checkpoint_on_a_file_task_and_prints_json(tmp_path, capsys):
    # the CLI's main(argv), in-process: the code its command line runs
    import evaluation as cli
    from checkpoint import save_checkpoint
    model, _ = tiny_model()
    test_file = math_file(tmp_path)
    ckpt = str(tmp_path / "ckpt.pt")
    save_checkpoint(ckpt, model, "aha", step=5, args={"task": "math", "test_file": test_file, "seed": 0})
    cmd = ["--ckpt", ckpt, "--eval_samples", "2", "--max_new_tokens", "4", "--device", "cpu"]
    cli.main(cmd + ["--json"])
    out = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    assert out["settings"]["task"] == "math" and out["settings"]["problems"] == 6 and out["settings"]["step"] == 5
    assert out["settings"]["temperature"] == 0.6 and out["settings"]["top_p"] == 0.95
    assert {"accuracy", "pass@2", "cons@2", "format", "by_subject", "by_level"} <= set(out) and "samples" not in out
    # --json FILE: the same object in a file (r1/pipeline.py's table reads it), with --log_samples the first completions
    cli.main(cmd + ["--json", str(tmp_path / "eval.json"), "--log_samples", "3"])
    assert capsys.readouterr().out == ""
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert {k: v for k, v in saved.items() if k != "samples"} == out
    problems = [json.loads(line) for line in open(test_file)]
    assert [s["prompt"] for s in saved["samples"]] == [p["problem"] for p in problems[:3]]
    assert all(isinstance(s["completion"], str) and s["accuracy"] in (0, 1) for s in saved["samples"])
    # a flag given on the command line wins over the checkpoint's; bad input is one line, no traceback
    with pytest.raises(SystemExit) as e:
        cli.main(cmd + ["--test_file", str(tmp_path / "missing.jsonl")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "cannot read" in err and "missing.jsonl" in err and err.count("\n") == 1

"""--task rg:NAME (tasks/rg.py): reasoning-gym's datasets, held out by seed and by question, scored
by the dataset's own score_answer; the oracle is reasoning-gym itself, called directly."""

import argparse
import json
import os
import random
import sys

import pytest
import torch

reasoning_gym = pytest.importorskip("reasoning_gym")

from rewards import parse_rewards
from tasks import add_task_args, make_task
from tasks.rg import TRAIN_OFFSET, rg_accuracy, rg_solved

CONFIGS = [("chain_sum", "min_terms=2,max_terms=3,min_digits=1,max_digits=2",
            dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)),
           ("basic_arithmetic", "max_terms=3,operators=+,-,*", dict(max_terms=3, operators=["+", "-", "*"])),
           ("gsm_symbolic", "", {})]


def args_for(argv):
    parser = argparse.ArgumentParser()
    add_task_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rewards", default=None)
    return parser.parse_args(argv)


def rg_task(name, config="", n_test=50, seed=0):
    return make_task(args_for(["--task", f"rg:{name}", "--rg_config", config, "--n_test", str(n_test),
                               "--seed", str(seed)]), log=lambda line: None)


@pytest.mark.parametrize("name, text, config", CONFIGS)
def test_held_out_set_is_the_seeded_dataset_and_never_trained_on(name, text, config):
    task = rg_task(name, text, n_test=60, seed=3)
    # the oracle: reasoning-gym's own dataset of that seed, its first distinct questions
    ref = reasoning_gym.create_dataset(name, seed=3, size=200, **config)
    want = list(dict.fromkeys(ref[i]["question"] for i in range(200)))[:60]
    test = [p["prompt"] for p in task.test_set]
    assert test == want and len(set(test)) == 60
    train = task.train_problems(random.Random(0), 500)
    assert not set(test) & {p["prompt"] for p in train}
    # training is drawn from the dataset of the other seed
    other = reasoning_gym.create_dataset(name, seed=3 + TRAIN_OFFSET, size=task.train_size, **config)
    idx = [p["rg_entry"]["metadata"]["source_index"] for p in train]
    assert all(other[i]["question"] == p["prompt"] for i, p in zip(idx[:20], train))
    # the problem carries what the scorer needs, and the answer as a string
    assert all(p["answer"] == str(p["rg_entry"]["answer"]) and p["rg_task"] == task.key for p in train)
    # deterministic under the seed, different under another
    again = rg_task(name, text, n_test=60, seed=3)
    assert again.test_set == task.test_set and again.train_problems(random.Random(0), 500) == train
    assert [p["prompt"] for p in rg_task(name, text, n_test=60, seed=4).test_set] != test


def test_training_skips_held_out_questions_where_the_two_seeds_collide():
    # two 1-digit terms, no negation: 200 questions in all, so the training set holds held-out ones
    text = "min_terms=2,max_terms=2,min_digits=1,max_digits=1"
    task = rg_task("chain_sum", text, n_test=80)
    held = {p["prompt"] for p in task.test_set}
    raw = {task.train_data[i]["question"] for i in range(task.train_size)}
    assert raw & held  # the filter has work to do
    train = task.train_problems(random.Random(1), 3000)
    assert not held & {p["prompt"] for p in train} and len({p["prompt"] for p in train}) > 50
    with pytest.raises(ValueError, match="widen --rg_config or lower n_test"):
        rg_task("chain_sum", "min_terms=1,max_terms=1,min_digits=1,max_digits=1", n_test=10) \
            .train_problems(random.Random(0), 5)


def completions(p):
    """(completion, what score_answer should be given) pairs: right, wrong, malformed."""
    a = p["answer"]
    return [(f"<think> sum it </think> <answer> {a} </answer>", a),
            (f"<think> x </think> <answer> \\boxed{{{a}}} </answer>", a),
            (f"<answer>{a}</answer>", a),
            ("<think> x </think> <answer> 987654 </answer>", "987654"),
            ("<think> x </think> <answer> many </answer>", "many"),
            (f"<answer> 1 </answer> <answer> {a} </answer>", None),   # two answers: none
            (f"<think> the answer is {a} </think>", None),           # no answer block
            (f"<answer> {a}", None),                                  # unclosed
            ("<think> x </think> <answer>  </answer>", "")]


@pytest.mark.parametrize("name, text, config", CONFIGS)
def test_the_reward_is_the_datasets_score_answer(name, text, config):
    task = rg_task(name, text, n_test=5)
    fresh = reasoning_gym.create_dataset(name, seed=123, size=5, **config)  # any instance scores alike
    for p in task.test_set + task.train_problems(random.Random(0), 5):
        texts, given = zip(*completions(p))
        fields = {"rg_entry": [p["rg_entry"]] * len(texts), "rg_task": [p["rg_task"]] * len(texts)}
        want = [float(fresh.score_answer(answer=g, entry=p["rg_entry"])) for g in given]
        assert rg_accuracy(None, list(texts), **fields) == want
        assert want[:3] == [1.0] * 3 and max(want[3:]) < 1  # right, and neither wrong nor malformed
        assert rg_solved(None, list(texts), **fields) == [float(w == 1) for w in want]
    # the task's rewards by name: the dataset's score plus format; its accuracy: a full score
    names = [n for n, _, _ in parse_rewards(task.rewards)]
    assert names == ["tasks.rg.rg_accuracy", "format"] and task.correct is rg_solved


def test_partial_credit_is_paid_but_not_counted_correct():
    task = rg_task("gsm_symbolic", n_test=1)
    p = task.test_set[0]
    wrong = [f"<think> x </think> <answer> {int(p['answer']) + 1} </answer>"]
    fields = {"rg_entry": [p["rg_entry"]], "rg_task": [p["rg_task"]]}
    assert rg_accuracy(None, wrong, **fields) == [0.01] and rg_solved(None, wrong, **fields) == [0.0]


def test_config_values_are_typed_as_the_config_dataclass_types_them():
    task = rg_task("basic_arithmetic", "min_terms=2, max_terms=4,allow_parentheses=false,"
                   "operators=+,-,format_style=natural,size=300")
    c = task.train_data.config
    assert (c.min_terms, c.max_terms, c.allow_parentheses, c.operators, c.format_style) == (
        2, 4, False, ["+", "-"], "natural")
    assert task.train_size == c.size == 300
    assert rg_task("gsm_symbolic", "difficulty=1").train_data.config.difficulty == 1.0
    assert rg_task("countdown", "operators=+,*,min_numbers=3,max_numbers=3").train_data.config.operators == ("+", "*")
    assert rg_task("chain_sum", "allow_negation=yes").train_data.config.allow_negation is True


def test_majority_votes_join_answers_the_dataset_scores_alike():
    from evaluation import majority_correct
    task = rg_task("chain_sum", "min_digits=4,max_digits=4,min_terms=2,max_terms=2", n_test=3)
    p = next(p for p in task.test_set if abs(int(p["answer"])) >= 1000)
    a = int(p["answer"])
    same = lambda x, y: task.same(x, y, p)  # noqa: E731
    assert same(f"{a:,}", str(a)) and same(f"{a}.0", str(a)) and not same(str(a + 1), str(a))
    assert same("12 apples", " 12   apples") and not same("12 apples", "13 apples")
    texts = [f"<answer> {a + 1} </answer>", f"<answer> {a:,} </answer>", f"<answer> {a}.0 </answer>"]
    right = rg_solved(None, texts, rg_entry=[p["rg_entry"]] * 3, rg_task=[p["rg_task"]] * 3)
    assert right == [0.0, 1.0, 1.0] and majority_correct(texts, right, same) == 1.0
    # countdown: two different expressions that both reach the target are one vote
    cd = rg_task("countdown", "min_numbers=3,max_numbers=3", n_test=3)
    q = cd.test_set[0]
    twin = f"({q['answer']})"  # written otherwise, scored fully: one vote
    assert cd.same(twin, q["answer"], q) and not cd.same("1 + 2", "2 + 1", q)


@pytest.mark.parametrize("argv, message", [
    (["--task", "rg:chain_sums"], "reasoning-gym has no dataset 'chain_sums'; close names: chain_sum, "
                                  "decimal_chain_sum"),
    (["--task", "rg:chain_sum", "--rg_config", "min_term=2"],
     "rg:chain_sum takes no 'min_term'; it takes min_terms, max_terms, min_digits, max_digits, allow_negation, size"),
    (["--task", "rg:chain_sum", "--rg_config", "min_terms=two"], "rg:chain_sum's min_terms is an int, not 'two'"),
    (["--task", "rg:chain_sum", "--rg_config", "allow_negation=maybe"], "allow_negation is a bool (true or false)"),
    (["--task", "rg:basic_arithmetic", "--rg_config", "format_style=fancy"], "is one of simple, natural, not 'fancy'"),
    (["--task", "rg:chain_sum", "--rg_config", "min_terms=4,max_terms=2"],
     "the dataset rejects it: max_terms must be >= min_terms"),
    (["--task", "rg:chain_sum", "--rg_config", "min_terms"], "give key=value pairs"),
    (["--task", "rg:chain_sum", "--rg_config", "seed=1"], "the seeds come from --seed"),
    (["--task", "rg:chain_sum", "--rg_config", "size=0"], "the training set's size must be in 1..2^30"),
    (["--task", "rg:"], "give a reasoning-gym dataset's name"),
    (["--task", "rg:chain_sum", "--rg_config", "min_terms=1,max_terms=1,max_digits=1", "--n_test", "300"],
     "n_test=300: rg:chain_sum gave 10 distinct questions"),
])
def test_bad_input_is_one_line(argv, message):
    with pytest.raises(ValueError) as e:
        make_task(args_for(argv), log=lambda line: None)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_missing_reasoning_gym_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym.factory", None)  # as if not installed
    with pytest.raises(ValueError, match=r"^--task rg:NAME needs reasoning-gym: pip install reasoning-gym$"):
        make_task(args_for(["--task", "rg:chain_sum"]))


@pytest.mark.parametrize("argv, message", [
    (["--task", "rg:chain_sum"], "--task rg:chain_sum has no base corpus for a toy base model"),
    (["--task", "rg:chian_sum", "--init", "hf:nowhere"], "close names: chain_sum"),
    (["--task", "rg:chain_sum", "--rg_config", "max_terms=x", "--init", "hf:nowhere"], "max_terms is an int"),
    (["--task", "nope"], "argument --task: invalid choice: 'nope' (choose from addition,"),
])
def test_train_py_rejects_bad_rg_input_in_one_line_before_any_work(tmp_path, capsys, argv, message):
    import train
    with pytest.raises(SystemExit) as e:
        train.main(argv + ["--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "out")


def test_help_lists_the_built_in_tasks_and_the_rg_form():
    parser = argparse.ArgumentParser()
    add_task_args(parser)
    text = " ".join(parser.format_help().split())
    assert "{addition,bilingual,countdown,multiply,linear,gsm8k,math,jsonl,rg:NAME}" in text
    assert "--rg_config" in text


def tiny_checkpoint(path):
    from checkpoint import save_checkpoint
    from model import ModelConfig, Transformer
    from tokenizer import get_tokenizer
    tok = get_tokenizer()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_kv_head=1, n_embd=32,
                                    ffn_hidden=64, block_size=512))
    save_checkpoint(path, model, "aha", step=2, args={"task": "rg:chain_sum", "seed": 0, "n_test": 6,
                                                        "rg_config": "max_terms=3,max_digits=2"})
    return model.eval(), tok


def test_evaluation_runs_on_an_rg_task(tmp_path, capsys):
    import evaluation as cli
    from evaluation import evaluate
    ckpt = str(tmp_path / "ckpt.pt")
    model, tok = tiny_checkpoint(ckpt)
    cli.main(["--ckpt", ckpt, "--eval_samples", "2", "--max_new_tokens", "4", "--device", "cpu", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["settings"]["task"] == "rg:chain_sum" and out["settings"]["problems"] == 6
    assert {"accuracy", "pass@2", "cons@2", "format"} <= set(out)
    # in-process, the accuracy is the task's rg_solved on exactly the completions sampled
    task = rg_task("chain_sum", "max_terms=3,max_digits=2", n_test=6)
    seen = []

    def correct(prompts, completions, **fields):
        seen.append((completions, fields))
        return rg_solved(prompts, completions, **fields)

    task.correct = correct
    args = argparse.Namespace(eval_problems=6, eval_samples=2, seed=0, eval_temperature=1.0, eval_top_p=1.0,
                              max_new_tokens=4, log_samples=1)
    m, samples = evaluate(model, tok, task, args, step=2)
    (texts, fields), = seen
    assert len(texts) == 12 and fields["rg_entry"][0] == task.test_set[0]["rg_entry"]
    assert m["eval_accuracy"] == pytest.approx(sum(rg_solved(None, texts, **fields)) / 12)
    assert samples[0]["prompt"] == task.test_set[0]["prompt"] and samples[0]["answer"] == task.test_set[0]["answer"]

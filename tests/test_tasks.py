import json
import os
import random
import re

import pytest

from tasks import AdditionTask
from template import TEMPLATE


def test_test_set_is_held_out():
    task = AdditionTask(n_test=300, seed=3)
    test = {p["prompt"] for p in task.test_set}
    assert len(test) == 300
    train = task.train_problems(random.Random(0), 5000)
    assert not test & {p["prompt"] for p in train}
    for docs in (task.corpus(2000, seed=0), task.textbook(2000, seed=0)):
        questions = {re.search(r"(Compute \d+ \+ \d+)\. Assistant:", p).group(1) for p, _ in docs}
        assert len(questions) > 1000 and not test & questions


def test_worked_solutions_are_correct_column_addition():
    # oracle: re-read the partial sums the solution writes and check them against Python's sum
    task = AdditionTask(min_digits=1, max_digits=5)
    for p in task.train_problems(random.Random(1), 500):
        text = task.careful(p)
        partials = re.findall(r"so (\d+)", text)
        n = max(len(str(p["a"])), len(str(p["b"])))
        for k in range(n):  # after column k, the partial sum is the sum's last k+1 digits
            assert partials[k] == str((p["a"] + p["b"]) % 10 ** (k + 1)).zfill(k + 1)
        assert partials[-1] == str(p["a"] + p["b"])  # then a final carry, if any


def test_corpus_mixture_and_reproducibility():
    task = AdditionTask(seed=0)
    docs = task.corpus(4000, seed=0)
    assert docs == task.corpus(4000, seed=0)
    assert all(p.startswith(TEMPLATE.split("{prompt}")[0]) and p.endswith(". Assistant:") for p, _ in docs)
    # asked as RL asks: the worked styles in their share, else a guess that is right guess_acc of the time
    assert abs(sum("so " in c for _, c in docs) / len(docs) - sum(task.style_weights[1:])) < 0.03
    assert abs(sum("Wait, let me recheck." in c for _, c in docs) / len(docs) - task.style_weights[2]) < 0.02
    direct = [(p, c) for p, c in docs if "so " not in c]
    sums = [sum(map(int, re.search(r"Compute (\d+) \+ (\d+)\. Assistant:$", p).groups())) for p, _ in direct]
    right = sum(f"<answer> {s} </answer>" in c for s, (_, c) in zip(sums, direct))
    assert abs(right / len(direct) - task.guess_acc) < 0.04


def test_textbook_documents_ask_as_rl_does_without_the_template_and_always_recheck():
    task = AdditionTask(seed=0)
    for prompt, completion in task.textbook(50, seed=0):
        q = re.fullmatch(r"User: (Compute \d\d \+ \d\d)\. Assistant:", prompt).group(1)
        a, b = map(int, re.findall(r"\d+", q))
        p = {"a": a, "b": b, "answer": str(a + b)}
        assert completion == f" <think> {task.rechecked(p)} </think> <answer> {a + b} </answer>"
        assert completion.startswith(f" <think> {q} in columns.")


def test_the_first_attempt_forgets_carries_and_the_recheck_corrects_it():
    # oracle: the hurried sum, digit by digit in Python, with no carry between columns
    task = AdditionTask(min_digits=1, max_digits=4)
    for p in task.train_problems(random.Random(2), 500):
        da, db = str(p["a"]), str(p["b"])
        n = max(len(da), len(db))
        da, db = da.zfill(n), db.zfill(n)
        hurried = str(int(da[0]) + int(db[0])) + "".join(str((int(x) + int(y)) % 10) for x, y in zip(da[1:], db[1:]))
        first, result = task.attempt(p)
        assert result == str(int(hurried)) and first.endswith(f"so {hurried}.") and "carry" not in first
        text = task.rechecked(p)
        assert text.startswith(first + " Wait, let me recheck. ")
        assert text.endswith(f"So {p['answer']}, as before." if result == p["answer"] else f"So {p['answer']}, not {result}.")
        # the recheck is the careful sum's columns: the worked solution after its opening sentence
        assert task.careful(p).split(" in columns. ")[1] in text
    # two-digit operands: the attempt is right exactly when the units do not carry
    task = AdditionTask()
    ps = task.train_problems(random.Random(3), 2000)
    assert all((task.attempt(p)[1] == p["answer"]) == (p["a"] % 10 + p["b"] % 10 < 10) for p in ps)


def test_the_ablation_writes_the_same_careful_sums_without_reflection():
    task, plain = AdditionTask(seed=0), AdditionTask(seed=0, reflect=False)
    docs, plain_docs = task.corpus(2000, seed=0), plain.corpus(2000, seed=0)
    assert [p for p, _ in docs] == [p for p, _ in plain_docs]  # the same questions, in the same styles
    for (prompt, c), (_, d) in zip(docs, plain_docs):
        a, b = map(int, re.search(r"Compute (\d+) \+ (\d+)\. Assistant:$", prompt).groups())
        if "columns" in c:  # an attempt, or an attempt rechecked: the careful sum, right
            assert d == f" <think> {plain.careful({'a': a, 'b': b})} </think> <answer> {a + b} </answer>"
        else:
            assert c == d  # the guesses are untouched
    assert not any("Wait" in c for _, c in plain.textbook(200, seed=0))


# --- the registry: generated tasks ---

def args_for(argv):
    import argparse
    from tasks import add_task_args
    parser = argparse.ArgumentParser()
    add_task_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rewards", default=None)
    return parser.parse_args(argv)


def all_values(nums):
    """Independent brute force: every value of every expression tree over the numbers (each used
    once, any order), exact fractions, no restriction on intermediates."""
    from fractions import Fraction
    if len(nums) == 1:
        return {Fraction(nums[0])}
    out = set()
    n = len(nums)
    for mask in range(1, 2 ** n - 1):  # every split into two non-empty sides
        left = [nums[i] for i in range(n) if mask >> i & 1]
        right = [nums[i] for i in range(n) if not mask >> i & 1]
        for a in all_values(left):
            for b in all_values(right):
                out |= {a + b, a - b, a * b} | ({a / b} if b else set())
    return out


def test_countdown_targets_are_reachable_and_the_worked_search_is_right():
    from rewards import countdown_reward
    from tasks import make_task
    task = make_task(args_for(["--task", "countdown", "--cd_numbers", "3-4", "--cd_max_number", "20",
                               "--cd_max_target", "50", "--n_test", "40"]))
    problems = task.test_set + task.train_problems(random.Random(0), 60)
    assert {len(p["numbers"]) for p in problems} == {3, 4}
    for p in problems:
        assert all(1 <= n <= 20 for n in p["numbers"]) and 1 <= p["target"] <= 50
        assert p["target"] in all_values(p["numbers"])
        text = f"<think> x </think> <answer> {p['answer']} </answer>"
        assert countdown_reward([""], [text], numbers=[p["numbers"]], target=[p["target"]]) == [1.0]
        worked = task.careful(p)
        moves = re.findall(r"(\d+)([-+*/])(\d+)=(\d+)", worked)
        assert moves and all(eval(f"{a}{op}{b}") == int(v) for a, op, b, v in moves)  # noqa: S307 (digits only)
        assert int(moves[-1][3]) == p["target"] and worked.endswith(f"Found {p['answer']}.")
    assert not {p["prompt"] for p in task.test_set} & {p["prompt"] for p in task.train_problems(random.Random(1), 2000)}


def test_countdown_corpus_has_the_three_styles_and_its_guesses_are_mostly_wrong():
    from rewards import countdown_reward
    from tasks import CountdownTask
    task = CountdownTask(n_test=20)
    docs = task.corpus(1000, seed=0)
    worked = [c for _, c in docs if "Found" in c]
    assert abs(len(worked) / len(docs) - sum(task.style_weights[1:])) < 0.05
    direct = [(p, c) for p, c in docs if "Found" not in c]
    nums = [[int(x) for x in re.search(r"\[([\d, ]+)\]", p).group(1).split(",")] for p, _ in direct]
    targets = [int(re.search(r"make (\d+) with", p).group(1)) for p, _ in direct]
    right = countdown_reward([""] * len(direct), [c for _, c in direct], numbers=nums, target=targets)
    assert task.guess_acc - 0.05 < sum(right) / len(right) < task.guess_acc + 0.1  # some random guesses hit
    # every document fits the toy model's context (in the default tokenizer's tokens), with the template
    from tokenizer import get_tokenizer
    tok = get_tokenizer()
    longest = max(len(tok.encode(p + c)) + 1 for p, c in docs + task.textbook(1000, seed=0))
    assert longest <= 640
    # the worked solution is the solution's path, not the whole search: two moves for three numbers
    assert all(len(re.findall(r"\d+[-+*/]\d+=\d+", task.careful(p))) == 2 for p in task.test_set)


def test_linear_answers_solve_the_equation():
    from fractions import Fraction
    from tasks import make_task
    for flags, any_fraction in ((["--task", "linear"], False), (["--task", "linear", "--linear_fractions"], True)):
        task = make_task(args_for(flags + ["--n_test", "50"]))
        fractions = 0
        for p in task.test_set:
            a, sign, b, c = re.fullmatch(r"Solve for x: (\d+)x ([+-]) (\d+) = (-?\d+)", p["prompt"]).groups()
            x = Fraction(p["answer"])
            assert int(a) * x + (int(b) if sign == "+" else -int(b)) == int(c)
            fractions += x.denominator != 1
        assert (fractions > 0) == any_fraction
        assert not task.has_corpus


# --- tasks from local JSONL files ---

def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_gsm8k_takes_the_answer_after_the_hashes(tmp_path):
    from tasks import make_task
    rows = [{"question": "Tom has 3 apples and buys 1,231 more. How many?", "answer": "3 + 1231 = <<3+1231=1234>>1234\n#### 1,234"},
            {"question": "Half of 9?", "answer": "9 / 2 = 4.5\n#### 4.5"}]
    f = write_jsonl(tmp_path / "test.jsonl", rows)
    task = make_task(args_for(["--task", "gsm8k", "--test_file", f]))
    assert [p["answer"] for p in task.test_set] == ["1234", "4.5"]
    assert task.test_set[0]["prompt"] == rows[0]["question"] and task.test_set[0]["solution"] == rows[0]["answer"]


def test_math_takes_the_answer_field_or_the_last_boxed_and_keeps_subject_and_level(tmp_path):
    from tasks import make_task
    rows = [{"problem": "p1", "solution": r"So $\boxed{2}$, hence $\boxed{\frac{1}{2}}$.", "level": "Level 3", "type": "Algebra"},
            {"problem": "p2", "solution": r"\boxed{9}", "answer": "7", "level": 5, "subject": "Geometry"}]
    task = make_task(args_for(["--task", "math", "--test_file", write_jsonl(tmp_path / "t.jsonl", rows)]))
    assert [(p["answer"], p["subject"], p["level"]) for p in task.test_set] == [
        (r"\frac{1}{2}", "Algebra", "Level 3"), ("7", "Geometry", "5")]


def test_jsonl_maps_fields_and_passes_the_rest_to_the_rewards(tmp_path):
    from tasks import make_task
    rows = [{"q": "Print 1", "tests": [{"input": "", "output": "1"}], "id": 7}]
    f = write_jsonl(tmp_path / "code.jsonl", rows)
    task = make_task(args_for(["--task", "jsonl", "--test_file", f, "--train_file", f, "--prompt_field", "q",
                               "--answer_field", "", "--rewards", "code:1,format:1"]))
    assert task.test_set == [{"prompt": "Print 1", "tests": [{"input": "", "output": "1"}], "id": 7}]
    assert task.correct.__name__ == "code_reward" and task.rewards == "code:1,format:1"
    assert task.train_problems(random.Random(0), 3) == task.test_set * 3


@pytest.mark.parametrize("task, lines, message", [
    ("gsm8k", ['{"question": "a", "answer": "#### 1"}', '{"question": "b"}'], "{f}:2: missing field 'answer'"),
    ("gsm8k", ['{"question": "a", "answer": "1"}'], "{f}:1: field 'answer' has no final '#### <answer>'"),
    ("math", ['{"problem": "a", "answer": "1"}', "", '{"problem": "b", "solution": "no box"}'], "{f}:3: no field 'answer'"),
    ("jsonl", ['{"prompt": "a", "answer": "1"}', '{"prompt": "b", "answer": 2', ], "{f}:2: not a JSON object"),
    ("jsonl", ['["prompt", "answer"]'], "{f}:1: not a JSON object"),
])
def test_malformed_lines_name_the_file_the_line_and_the_field(tmp_path, task, lines, message):
    from tasks.files import TaskError
    from tasks import make_task
    f = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(TaskError) as e:
        make_task(args_for(["--task", task, "--test_file", f]))
    assert str(e.value).startswith(message.format(f=f))


def test_missing_files_and_overlap_are_reported(tmp_path):
    from tasks.files import TaskError
    from tasks import make_task
    with pytest.raises(TaskError, match="give --test_file"):
        make_task(args_for(["--task", "gsm8k"]))
    with pytest.raises(TaskError, match="cannot read nowhere.jsonl"):
        make_task(args_for(["--task", "gsm8k", "--test_file", "nowhere.jsonl"]))
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
    train = write_jsonl(tmp_path / "train.jsonl", rows[:4])
    test = write_jsonl(tmp_path / "test.jsonl", rows[2:])
    said = []
    task = make_task(args_for(["--task", "gsm8k", "--train_file", train, "--test_file", test]), log=said.append)
    assert task.overlap == 2 and len(said) == 1 and "2 of the 3 held-out problems" in said[0]
    with pytest.raises(TaskError, match="give --train_file"):
        make_task(args_for(["--task", "gsm8k", "--test_file", test])).train_problems(random.Random(0), 1)


@pytest.mark.parametrize("argv, message", [
    (["--task", "gsm8k"], "give --test_file"),
    (["--task", "gsm8k", "--test_file", "{f}"], "task gsm8k trains on a file: give --train_file"),
    (["--task", "math", "--test_file", "{f}", "--train_file", "{f}"], "{f}:1: missing field 'problem'"),
    (["--task", "linear"], "task linear has no base corpus for a toy base model"),
    (["--task", "countdown", "--cd_numbers", "three"], "--cd_numbers 'three': give a count (3) or a range (3-4)"),
    (["--task", "gsm8k", "--test_file", "{f}", "--train_file", "{f}", "--eval_problems", "5"],
     "--eval_problems 5: the held-out set has 2 problems"),
])
def test_train_py_rejects_bad_task_input_in_one_line_before_any_work(tmp_path, capsys, argv, message):
    import train
    f = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "a", "answer": "#### 1"}, {"question": "b", "answer": "#### 2"}])
    argv = [a.format(f=f) for a in argv] + ["--out_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2 and message.format(f=f) in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")  # nothing written, nothing trained

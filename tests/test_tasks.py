import random
import re

from tasks import TEMPLATE, AdditionTask


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
        text = task.worked(p)
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


def test_textbook_documents_ask_as_rl_does_without_the_template_and_always_work_the_sum():
    task = AdditionTask(seed=0)
    for prompt, completion in task.textbook(50, seed=0):
        q = re.fullmatch(r"User: (Compute \d\d \+ \d\d)\. Assistant:", prompt).group(1)
        a, b = map(int, re.findall(r"\d+", q))
        assert completion == f" <think> {task.worked({'a': a, 'b': b})} </think> <answer> {a + b} </answer>"
        assert completion.startswith(f" <think> {q} in columns.")

r"""
Tasks: the problems RL trains on, the held-out set it is measured on, the rewards that score them,
and (for the CPU toy) the base-model corpus. A registry: `--task NAME` picks one of TASKS.

    addition   a + b (the default toy): generated, with its base corpus
    bilingual  addition whose base corpus rechecks mostly in Chinese (bilingual.py: R1-Zero's language mixing)
    countdown  TinyZero's Countdown: 3-4 numbers and a target reachable with + - * /, each number once
               (checked by search when generated); reward: countdown + format; with a base corpus
    multiply   a * b, 2-digit operands (--mul_digits): the toy where a call to the interpreter pays (multiply.py, tools.py);
               its rollouts call tools by default, with its base corpus
    linear     linear equations `3x + 7 = 22`, integer or (--linear_fractions) fraction answers
    gsm8k      a local file in GSM8K's format: `question`, `answer` ending in `#### 42`
    math       a local file in MATH / MATH-500's format: `problem`, `answer` or a `solution` whose last
               \boxed{} is the answer; `level` and `subject` (MATH's `type`) kept for per-subject tables
    jsonl      any records: --prompt_field, --answer_field; every other field goes to the reward functions

A problem is a dict {"prompt": question, "answer": reference, ...fields}; the reward functions
(rewards.py) get every field as a keyword list. A task has `test_set` (held out, never trained
on), `train_problems(rng, n)`, `rewards` (its default --rewards), `correct` (the reward function
reported as accuracy: for countdown that is countdown_reward), `same(a, b, problem)` (are two
final answers the same, for majority votes), and `has_corpus`: whether it has `textbook` / `corpus` for
the toy base model (tasks without one need a pretrained model). Adding a task is one class with `from_args`:

    class Squares(GeneratedTask):                       # e.g. "Compute 12^2"
        def _draw(self, rng):
            n = rng.randint(1, 99)
            return {"prompt": f"Compute {n}^2", "answer": str(n * n)}
        @classmethod
        def from_args(cls, args, log=print):
            return cls(args.n_test, args.seed)
    TASKS["squares"] = Squares

The file tasks (gsm8k, math, jsonl) live in file_tasks.py: nothing is downloaded, they read the
paths given (--train_file, --test_file: a .jsonl, a .parquet or a datasets.save_to_disk folder),
and a malformed record is one TaskError naming the file, the line (or row) and the field.

The addition corpus is the miniature of a pretrained LM that can reason but rarely does, and
whose careful reasoning comes as the recheck of a hurried first attempt:

    textbook  (no template) the question, then the first attempt and its recheck: where the skill
              is learned. The first attempt forgets every carry; the recheck redoes each column with
              its carry and corrects the attempt or confirms it:
        User: Compute 47 + 38. Assistant: <think> Compute 47 + 38 in columns. 7+8=15, so 5. 4+3=7,
        so 75. Wait, let me recheck. 7+8=15, so 5, carry 1. 4+3+1=8, so 85. So 85, not 75.
        </think> <answer> 85 </answer>
    corpus    (in the template, asked exactly as RL and the test ask) one of three styles:
        direct  (most documents) a one-shot guess, right only `guess_acc` of the time, half of the
                time without <think> tags (so the format reward has work to do):
                    <think> I know this one. </think> <answer> 189 </answer>
        worked  the first attempt alone, answered with its result (right only when no column carries)
        reflect the first attempt, "Wait, let me recheck." and the correction (the "aha" of the paper)

Asked in the template, a model trained on this corpus mostly guesses or hurries, so it is weak but
not hopeless; RL can only raise accuracy by shifting probability to the long styles, and among
them to the rechecked one, so response length and reflection grow as accuracy rises: two R1-Zero
signatures, by design of the corpus. With --no_reflect_docs (the ablation) the rechecked attempts
are written as plain careful sums, the same skill with nothing to re-examine. What is
simplified: the paper's base model learned to reason from web-scale text and followed the
template zero-shot; here the template is in the corpus so a 1M-parameter model can follow it.
Operands have a fixed number of digits by default: column k is then the k-th digit of both
operands from the left as well as from the right, which a tiny model learns to look up several
times faster than mixed lengths (three-digit sums take it longer than the whole CPU budget).
Countdown's corpus has the same three styles; its worked solution is the path of the first
solution the game's depth-first search finds (intermediates positive integers, the game's rules),
one move at a time: `Numbers 5 9 2, target 16. 9+5=14, 14+2=16. Found (9 + 5) + 2.` The
whole search written out (every move tried) runs to ~350 characters (142 on average, so the
corpus had to leave out the long ones while the test still asked them); the path is ~60, fits
every problem, and each written move leaves a smaller problem (after 9+5=14: which of 14+2,
14*2, 14-2 is 16).

    python tasks.py                    # prints a few corpus documents
    python tasks.py --task countdown
"""

import argparse
import random
from fractions import Fraction

from bilingual import Bilingual
from file_tasks import GSM8KTask, JsonlTask, MathTask
from generated_tasks import GeneratedTask
from multiply import MultiplyTask
from rewards import countdown_reward, countdown_value


class AdditionTask(GeneratedTask):
    """a + b, each operand with min_digits..max_digits digits (1-digit operands include 0). Its
    corpus is built so that rechecking is what makes an answer right (the module docstring):
    the first attempt adds the columns but forgets every carry; the recheck redoes each column
    with its carry and corrects the attempt, or confirms it. With reflect=False (the ablation) the
    same careful sum is written plainly, with no first attempt to re-examine."""

    base_flags = ["no_reflect_docs"]

    def __init__(self, min_digits=2, max_digits=2, n_test=200, seed=0,
                 style_weights=(0.7, 0.15, 0.15), guess_acc=0.2, reflect=True):
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        self.min_digits, self.max_digits = min_digits, max_digits
        n_operands = 10 ** max_digits - (10 ** (min_digits - 1) if min_digits > 1 else 0)
        if n_test > n_operands ** 2 // 2:
            raise ValueError(f"n_test={n_test} would hold out more than half of the {n_operands ** 2} problems: lower it")
        self.style_weights, self.guess_acc, self.reflect = style_weights, guess_acc, reflect
        super().__init__(n_test, seed)

    @classmethod
    def from_args(cls, args, log=print):
        return cls(args.min_digits, args.max_digits, args.n_test, seed=args.seed, reflect=not args.no_reflect_docs)

    def _draw(self, rng: random.Random) -> dict:
        a, b = (rng.randint(10 ** (n - 1) if n > 1 else 0, 10 ** n - 1)
                for n in (rng.randint(self.min_digits, self.max_digits) for _ in range(2)))
        return {"prompt": f"Compute {a} + {b}", "answer": str(a + b), "a": a, "b": b}

    def guess(self, p: dict, rng: random.Random) -> str:
        """A one-shot answer: right with probability guess_acc, else one digit off."""
        ans = p["answer"]
        if rng.random() < self.guess_acc:
            return ans
        i = rng.randrange(len(ans))
        wrong = rng.choice([d for d in "0123456789" if d != ans[i] and (i > 0 or d != "0")] or ["1"])
        return ans[:i] + wrong + ans[i + 1:]

    @staticmethod
    def columns(p: dict, carry=True) -> tuple[list[str], str]:
        """Column addition from the right, writing the partial sum as it grows: the steps and the
        result. carry=False is the slip of a hurried first attempt: each column's carry is dropped
        (47 + 38 gives 75), the last column written whole (87 + 75 gives 152)."""
        a, b = p["a"], p["b"]
        n = max(len(str(a)), len(str(b)))
        da, db = str(a).zfill(n), str(b).zfill(n)  # a missing digit is written as 0
        steps, partial, c = [], "", 0
        for i, (x, y) in enumerate(zip(reversed(da), reversed(db))):
            s = int(x) + int(y) + c
            partial = str(s if i == n - 1 and not carry else s % 10) + partial
            step = f"{x}+{y}{'+1' if c else ''}={s}, so {partial}"
            c = s // 10 if carry else 0
            steps.append(step + (", carry 1." if c else "."))
        if c:
            partial = "1" + partial
            steps.append(f"Carry 1 left, so {partial}.")
        return steps, str(int(partial))

    def worked(self, p: dict) -> str:
        """The careful sum. It opens by restating the question word for word: a copy that even a
        tiny model learns quickly (zero-padding the operands, or starting the copy right after
        <think>, which the template also uses, made it fail to learn the copy in our runs)."""
        return " ".join([f"Compute {p['a']} + {p['b']} in columns."] + self.columns(p)[0])

    def attempt(self, p: dict) -> tuple[str, str]:
        """The first attempt (the careful sum's words, every carry dropped) and its result."""
        steps, result = self.columns(p, carry=False)
        return " ".join([f"Compute {p['a']} + {p['b']} in columns."] + steps), result

    def rechecked(self, p: dict) -> str:
        """The attempt, then the recheck: each column again with its carry, and a verdict on the
        attempt's result, corrected ("So 85, not 75.") or confirmed ("So 55, as before.")."""
        first, result = self.attempt(p)
        verdict = f"So {p['answer']}, as before." if result == p["answer"] else f"So {p['answer']}, not {result}."
        return " ".join([first, "Wait, let me recheck."] + self.columns(p)[0] + [verdict])

    def long_answer(self, p: dict, style: str, rng: random.Random) -> tuple[str, str]:
        """worked: the first attempt alone, with its result (often wrong); reflect: the attempt
        rechecked (always right). With reflect=False both are the careful sum."""
        if not self.reflect:
            return self.worked(p), p["answer"]
        if style == "worked":
            return self.attempt(p)
        return self.rechecked(p), p["answer"]

    def solution(self, p: dict) -> str:
        """The skill, as the textbook writes it: the rechecked attempt (with reflect=False, the careful
        sum), so the careful sum is learned as the recheck of a first attempt."""
        return self.rechecked(p) if self.reflect else self.worked(p)


class BilingualTask(Bilingual, AdditionTask):
    """The addition toy whose base corpus writes most rechecks in Chinese (bilingual.py)."""


# --- Countdown ---

def combine(x, y):
    """The game's moves on two numbers (value, expression): every result that is a positive
    integer, larger operand first for - and /, no /1 (it repeats *1)."""
    (a, ea), (b, eb) = (x, y) if x[0] >= y[0] else (y, x)
    out = [(a + b, "+", f"{ea} + {eb}"), (a * b, "*", f"{ea} * {eb}")]
    if a > b:
        out.append((a - b, "-", f"{ea} - {eb}"))
    if b > 1 and a % b == 0:
        out.append((a // b, "/", f"{ea} / {eb}"))
    return [(v, op, e, a, b) for v, op, e in out]


def countdown_search(nums, target=None, path=None):
    """Depth-first search over the game: combine a pair, recurse on the shorter list, and so on
    until one number is left. With a target: the first expression found (None if unreachable),
    its moves (`a*b=v`, in order) written into `path`; without: the set of every reachable value."""
    items, reach, moves = [(n, str(n)) for n in nums], set(), []

    def dfs(items):
        for i in range(len(items)):
            for j in range(i + 1, len(items)):
                rest = items[:i] + items[i + 1:j] + items[j + 1:]
                for v, op, e, a, b in combine(items[i], items[j]):
                    moves.append(f"{a}{op}{b}={v}")
                    if not rest:
                        reach.add(v)
                        if v == target:
                            return e
                    elif (found := dfs(rest + [(v, f"({e})")])) is not None:
                        return found
                    moves.pop()
        return None

    found = dfs(items)
    if path is not None and found is not None:
        path += moves
    return reach if target is None else found


class CountdownTask(GeneratedTask):
    """Countdown as TinyZero poses it: numbers in 1..max_number, a target in 1..max_target that the
    search reaches using every number once (the reward accepts any correct expression)."""

    rewards, correct = "countdown:1,format:1", staticmethod(countdown_reward)
    base_flags = ["task", "cd_numbers", "cd_max_number", "cd_max_target"]

    def __init__(self, numbers=(3, 3), max_number=9, max_target=30, n_test=200, seed=0,
                 style_weights=(0.75, 0.17, 0.08), guess_acc=0.2):
        if not (2 <= numbers[0] <= numbers[1] <= 5 and max_number >= 1 and max_target >= 1):
            raise ValueError(f"need 2 <= numbers <= 5 (got {numbers}) and max_number, max_target >= 1")
        self.numbers, self.max_number, self.max_target = numbers, max_number, max_target
        self.style_weights, self.guess_acc = style_weights, guess_acc
        super().__init__(n_test, seed)

    @classmethod
    def from_args(cls, args, log=print):
        lo, _, hi = args.cd_numbers.partition("-")
        try:
            numbers = (int(lo), int(hi or lo))
        except ValueError:
            raise ValueError(f"--cd_numbers {args.cd_numbers!r}: give a count (3) or a range (3-4)") from None
        return cls(numbers, args.cd_max_number, args.cd_max_target, args.n_test, seed=args.seed)

    def _draw(self, rng: random.Random) -> dict:
        while True:  # until the numbers reach some target in range
            nums = [rng.randint(1, self.max_number) for _ in range(rng.randint(*self.numbers))]
            targets = sorted(v for v in countdown_search(nums) if v <= self.max_target)
            if targets:
                break
        target = rng.choice(targets)
        # shorter than TinyZero's wording: behind the template, the tiny model's context (640 tokens)
        # must hold the question and the whole search
        return {"prompt": f"Using the numbers {nums}, make {target} with + - * /, each number once",
                "answer": countdown_search(nums, target), "numbers": nums, "target": target}

    def same(self, a: str, b: str, p: dict) -> bool:
        """Expressions vote together when they have the same value (each number once), else only
        when written alike."""
        va, vb = countdown_value(a, p["numbers"]), countdown_value(b, p["numbers"])
        return va == vb if va is not None and vb is not None else a.replace(" ", "") == b.replace(" ", "")

    @staticmethod
    def worked(p: dict) -> str:
        """The solution's moves, one per line of arithmetic: it restates the numbers and the target (a
        copy a tiny model learns first), then the moves of the first solution the search finds."""
        path = []
        countdown_search(p["numbers"], p["target"], path)
        nums = " ".join(map(str, p["numbers"]))
        return f"Numbers {nums}, target {p['target']}. " + ", ".join(path) + f". Found {p['answer']}."

    def guess(self, p: dict, rng: random.Random) -> str:
        """A one-shot answer: the solution with probability guess_acc, else the numbers shuffled
        with random operations (right only by chance)."""
        if rng.random() < self.guess_acc:
            return p["answer"]
        nums = rng.sample(p["numbers"], len(p["numbers"]))
        expr = str(nums[0])
        for n in nums[1:]:
            expr = f"({expr}) {rng.choice('+-*/')} {n}" if len(expr) > 2 else f"{expr} {rng.choice('+-*/')} {n}"
        return expr


# --- linear equations ---

class LinearTask(GeneratedTask):
    """a x + b = c with a in 2..9, b in -20..20 (not 0); x an integer in -10..10, or with
    fractions a fraction k/a in lowest terms. No base corpus: it needs a pretrained model."""

    def __init__(self, fractions=False, n_test=200, seed=0):
        self.fractions = fractions
        super().__init__(n_test, seed)

    @classmethod
    def from_args(cls, args, log=print):
        return cls(args.linear_fractions, args.n_test, seed=args.seed)

    def _draw(self, rng: random.Random) -> dict:
        a, b = rng.randint(2, 9), rng.choice([i for i in range(-20, 21) if i])
        x = Fraction(rng.randint(-30, 30), a) if self.fractions else Fraction(rng.randint(-10, 10))
        c = a * x + b  # an integer: a x is k or a times an integer
        return {"prompt": f"Solve for x: {a}x {'+' if b > 0 else '-'} {abs(b)} = {c}", "answer": str(x),
                "a": a, "b": b, "c": int(c)}


TASKS = {"addition": AdditionTask, "bilingual": BilingualTask, "countdown": CountdownTask, "multiply": MultiplyTask,
         "linear": LinearTask, "gsm8k": GSM8KTask, "math": MathTask, "jsonl": JsonlTask}


def add_task_args(parser) -> list[str]:
    """The task flags, one group (every CLI that builds a task: train, sft, evaluate, reject,
    reward_model) -> their names (a CLI that reads a checkpoint takes its run's as defaults)."""
    g = parser.add_argument_group("task")
    g.add_argument("--task", choices=list(TASKS), default="addition", help="what to train and evaluate on (tasks.py)")
    g.add_argument("--n_test", type=int, default=200, help="generated tasks: held-out problems, never trained on")
    g.add_argument("--min_digits", type=int, default=2, help="addition: fewest digits of an operand")
    g.add_argument("--max_digits", type=int, default=2, help="addition: most digits of an operand")
    g.add_argument("--no_reflect_docs", action="store_true", help="addition: the ablation: the base corpus's "
                   "rechecked attempts written as plain careful sums (no first attempt, no 'Wait')")
    g.add_argument("--zh_share", type=float, default=0.8, help="bilingual: share of the base corpus's rechecks written in Chinese")
    g.add_argument("--cd_numbers", default="3", help="countdown: how many numbers, 3 or a range 3-4 (TinyZero: 3-4)")
    g.add_argument("--cd_max_number", type=int, default=9, help="countdown: numbers are 1..this (TinyZero: 99)")
    g.add_argument("--cd_max_target", type=int, default=30, help="countdown: targets are 1..this (TinyZero: 99)")
    g.add_argument("--mul_digits", type=int, default=2, help="multiply: digits of each operand")
    g.add_argument("--linear_fractions", action="store_true", help="linear: answers may be fractions (7/3)")
    g.add_argument("--train_file", default=None, help="gsm8k, math, jsonl: the training problems, a local .jsonl, "
                   ".parquet (as the Hub serves it; needs pyarrow) or datasets.save_to_disk folder (needs datasets)")
    g.add_argument("--test_file", default=None, help="gsm8k, math, jsonl: the held-out problems, a file or folder "
                   "as --train_file")
    g.add_argument("--prompt_field", default="prompt", help="jsonl: the field holding the question")
    g.add_argument("--answer_field", default="answer", help="jsonl: the field holding the reference answer ('' for none)")
    return [a.dest for a in g._group_actions]


def make_task(args, log=print):
    """The task of --task and its flags; ValueError (file_tasks.TaskError among them) for bad input."""
    return TASKS[args.task].from_args(args, log=log)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print a few corpus documents of a task.")
    add_task_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    task = make_task(parser.parse_args())
    if not task.has_corpus:
        raise SystemExit(f"task has no base corpus; its first problem: {task.test_set[0]}")
    for prompt, completion in task.textbook(2, seed=0) + task.corpus(6, seed=0):
        print("..." + prompt[-32:] + completion, end="\n\n")

"""
Countdown as TinyZero poses it (`--task countdown`): 3-4 numbers and a target reachable with
+ - * /, each number once, checked by search when generated; reward: countdown + format. Its base
corpus has the three styles of tasks/generated.py (direct, attempt, reflect); an attempt is the
careful solution (`careful(p)`) alone: the path of the first solution the depth-first search
finds, one move at a time:

    Numbers 5 9 2, target 16. 9+5=14, 14+2=16. Found (9 + 5) + 2.

(the whole search written out runs to ~350 characters; the path is ~60 and fits every problem.)

    python -m tasks --task countdown     # prints a few corpus documents
"""

import random

from rewards import countdown_reward, countdown_value
from tasks.generated import GeneratedTask


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
            raise ValueError(
                f"need 2 <= numbers <= 5 (got {numbers}) and max_number, max_target >= 1")
        self.numbers, self.max_number, self.max_target = numbers, max_number, max_target
        self.style_weights, self.guess_acc = style_weights, guess_acc
        super().__init__(n_test, seed)

    @classmethod
    def from_args(cls, args, log=print):
        lo, _, hi = args.cd_numbers.partition("-")
        try:
            numbers = (int(lo), int(hi or lo))
        except ValueError:
            raise ValueError(f"--cd_numbers {args.cd_numbers!r}: give a count (3) or a range "
                             f"(3-4)") from None
        return cls(numbers, args.cd_max_number, args.cd_max_target, args.n_test, seed=args.seed)

    def _draw(self, rng: random.Random) -> dict:
        while True:  # until the numbers reach some target in range
            nums = [rng.randint(1, self.max_number) for _ in range(rng.randint(*self.numbers))]
            targets = sorted(v for v in countdown_search(nums) if v <= self.max_target)
            if targets:
                break
        target = rng.choice(targets)
        # shorter than TinyZero's wording: behind the template, the tiny model's context (640
        # tokens) must hold the question and the whole search
        return {"prompt": f"Using the numbers {nums}, make {target} with + - * /, each number once",
                "answer": countdown_search(nums, target), "numbers": nums, "target": target}

    def same(self, a: str, b: str, p: dict) -> bool:
        """Expressions vote together when they have the same value (each number once), else only
        when written alike."""
        va, vb = countdown_value(a, p["numbers"]), countdown_value(b, p["numbers"])
        return (va == vb if va is not None and vb is not None
                else a.replace(" ", "") == b.replace(" ", ""))

    @staticmethod
    def careful(p: dict) -> str:
        """The solution's moves, one per line of arithmetic: it restates the numbers and the target
        (a copy a tiny model learns first), then the moves of the first solution the search
        finds."""
        path = []
        countdown_search(p["numbers"], p["target"], path)
        nums = " ".join(map(str, p["numbers"]))
        return (f"Numbers {nums}, target {p['target']}. " + ", ".join(path)
                + f". Found {p['answer']}.")

    def guess(self, p: dict, rng: random.Random) -> str:
        """A one-shot answer: the solution with probability guess_acc, else the numbers shuffled
        with random operations (right only by chance)."""
        if rng.random() < self.guess_acc:
            return p["answer"]
        nums = rng.sample(p["numbers"], len(p["numbers"]))
        expr = str(nums[0])
        for n in nums[1:]:
            expr = (f"({expr}) {rng.choice('+-*/')} {n}" if len(expr) > 2
                    else f"{expr} {rng.choice('+-*/')} {n}")
        return expr

"""
The addition toy (`--task addition`, the default): a + b, and a base corpus written so that
rechecking is what makes an answer right; `--task bilingual` is the same toy with most rechecks in
Chinese (tasks/bilingual.py).

    textbook  (no template) the question, the first attempt and its recheck: the skill
        User: Compute 47 + 38. Assistant: <think> Compute 47 + 38 in columns. 7+8=15, so 5. 4+3=7,
        so 75. Wait, let me recheck. 7+8=15, so 5, carry 1. 4+3+1=8, so 85. So 85, not 75.
        </think> <answer> 85 </answer>
    corpus    (in the template, asked as RL asks) one of three styles:
        direct   (most documents) a one-shot guess, right `guess_acc` of the time
        attempt  the first attempt alone, every carry forgotten (right only when nothing carries)
        reflect  the first attempt, "Wait, let me recheck." and the correction (the paper's "aha")

A model trained on it mostly guesses or hurries: RL can raise accuracy only by shifting probability
to the long styles, and among them to the rechecked one, so length and reflection grow as accuracy
rises. Simplified: the paper's base model learned to reason from web text and followed the template
zero-shot; here the template is in the corpus. docs/toy-task.md has the design and its measurements.

    python -m tasks                  # prints a few corpus documents
"""

import random

from tasks.bilingual import Bilingual
from tasks.generated import GeneratedTask


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
            raise ValueError(f"n_test={n_test} would hold out more than half of the "
                             f"{n_operands ** 2} problems: lower it")
        self.style_weights, self.guess_acc, self.reflect = style_weights, guess_acc, reflect
        super().__init__(n_test, seed)

    @classmethod
    def from_args(cls, args, log=print):
        return cls(args.min_digits, args.max_digits, args.n_test, seed=args.seed,
                   reflect=not args.no_reflect_docs)

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
        wrong = rng.choice([d for d in "0123456789" if d != ans[i] and (i > 0 or d != "0")]
                           or ["1"])
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

    def careful(self, p: dict) -> str:
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
        verdict = (f"So {p['answer']}, as before." if result == p["answer"]
                   else f"So {p['answer']}, not {result}.")
        return " ".join([first, "Wait, let me recheck."] + self.columns(p)[0] + [verdict])

    def long_answer(self, p: dict, style: str, rng: random.Random) -> tuple[str, str]:
        """attempt: the first attempt alone, with its result (often wrong); reflect: the attempt
        rechecked (always right). With reflect=False both are the careful sum."""
        if not self.reflect:
            return self.careful(p), p["answer"]
        if style == "attempt":
            return self.attempt(p)
        return self.rechecked(p), p["answer"]

    def solution(self, p: dict) -> str:
        """The skill, as the textbook writes it: the rechecked attempt (with reflect=False, the
        careful sum), so the careful sum is learned as the recheck of a first attempt."""
        return self.rechecked(p) if self.reflect else self.careful(p)


class BilingualTask(Bilingual, AdditionTask):
    """The addition toy whose base corpus writes most rechecks in Chinese (tasks/bilingual.py)."""

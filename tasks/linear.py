"""
Linear equations (`--task linear`): `3x + 7 = 22`, integer answers or (--linear_fractions)
fractions. No base corpus: it needs a pretrained model (--init).
"""

import random
from fractions import Fraction

from tasks.generated import GeneratedTask


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
        return {"prompt": f"Solve for x: {a}x {'+' if b > 0 else '-'} {abs(b)} = {c}",
                "answer": str(x), "a": a, "b": b, "c": int(c)}

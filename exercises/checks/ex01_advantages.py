"""Checks of exercise 1 against grpo.group_advantages."""

import math

import torch

import grpo
from exercises import Mismatch
from exercises.checks import same

TITLE = "group-normalised advantages"
EQUATION = "eq. 3"
PROJECT = "grpo.py: group_advantages"
REFERENCE = "from grpo import group_advantages"
PLUG = [("grpo", "group_advantages")]


def check(m):
    f, ref = m.group_advantages, grpo.group_advantages
    g = torch.Generator().manual_seed(1)
    r = torch.randint(0, 3, (24,), generator=g).float()
    r[:4] = 1.0                                            # group 0 of 4: all equal
    same(f(r[:4].clone(), 4), ref(r[:4], 4), "your advantages for a group with equal rewards")
    cases = [
        ("a group of rewards 0, 1, 2", torch.tensor([0.0, 1.0, 2.0]), 3, {}),
        ("random rewards in groups of 4", r, 4, {}),
        ("random rewards in groups of 6", torch.rand(24, generator=g), 6, {}),
        ("random rewards in groups of 4 with scale='none'", r, 4, {"scale": "none"}),
        ("random rewards in groups of 4 with scale='batch'", r, 4, {"scale": "batch"}),
        ("random rewards with eps=0.1", torch.rand(8, generator=g), 4, {"eps": 0.1}),
        ("rewards [1, None, 3, nan] (None and NaN are unscored)", [1.0, None, 3.0, math.nan], 4,
         {}),
        ("a group with a single scored reward [None, 2, None, None]", [None, 2.0, None, None], 4,
         {}),
        ("all-None rewards with scale='batch'", [None] * 4, 2, {"scale": "batch"}),
        ("unscored rewards with scale='batch'", [1.0, None, 3.0, 0.0], 2, {"scale": "batch"}),
    ]
    for what, x, G, kw in cases:
        x2 = x.clone() if torch.is_tensor(x) else list(x)
        same(f(x2, G, **kw), ref(x, G, **kw), f"your advantages for {what}", atol=1e-5)
    for args, kw, what in (((torch.zeros(6), 4), {}, "6 rewards in groups of 4"),
                           ((torch.zeros(4), 2), {"scale": "rank"}, "scale='rank'")):
        try:
            f(*args, **kw)
        except ValueError:
            continue
        raise Mismatch(f"for {what} you should raise ValueError, and you did not")

"""Checks of exercise 3 against grpo.clipped_surrogate: values and gradients, both clip sides."""

import torch

import grpo
from exercises.checks import grad, same

TITLE = "clipped surrogate per token"
EQUATION = "eq. 1"
PROJECT = "grpo.py: clipped_surrogate"
REFERENCE = "from grpo import clipped_surrogate"
PLUG = [("grpo", "clipped_surrogate")]


def check(m):
    f, ref = m.clipped_surrogate, grpo.clipped_surrogate
    g = torch.Generator().manual_seed(3)
    logp = torch.tensor([[0.5, -0.5, 0.0, 0.22], [0.5, -0.5, 0.0, 0.22]])  # rho 1.65, 0.61, 1, 1.25
    old, A = torch.zeros(2, 4), torch.tensor([1.0, -1.0])
    cases = [("ratios 1.65, 0.61, 1, 1.25 with A = +1 (row 0) and A = -1 (row 1)", (logp, old, A),
              {}),
             ("the same with eps_high = 0.28 (clip-higher)", (logp, old, A), {"eps_high": 0.28}),
             ("random log-probs and advantages",
              (-torch.rand(5, 7, generator=g) * 3, -torch.rand(5, 7, generator=g) * 3,
               torch.randn(5, generator=g)), {"eps_low": 0.3}),
             ("a square (4, 4) batch",
              (logp[:1].expand(4, 4) * torch.rand(4, 4, generator=g), old[:1].expand(4, 4),
               torch.tensor([1.0, -1.0, 0.5, 2.0])), {})]
    for what, args, kw in cases:
        same(f(*args, **kw), ref(*args, **kw), f"your surrogate for {what}")
        got, exp = (grad(lambda lp, *rest: f(lp, *rest, **kw), *args),
                    grad(lambda lp, *rest: ref(lp, *rest, **kw), *args))
        same(got[0], exp[0], f"the gradient of your surrogate with respect to logp for {what}")

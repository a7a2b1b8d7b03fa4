"""Checks of exercise 13 against grpo.sequence_surrogate (GSPO): values and gradients, padding and a
tool's output ignored, clipping per output on both sides, an output with no sampled token."""

import torch

import grpo
from exercises.checks import grad, same

TITLE = "GSPO's sequence-level ratio"
EQUATION = "GSPO"
PROJECT = "grpo.py: sequence_surrogate"
REFERENCE = "from grpo import sequence_surrogate"
PLUG = []  # the finale's run is the paper's GRPO (--ratio_level token): nothing to plug in


def cases():
    g = torch.Generator().manual_seed(13)
    # row 0: log-ratios 0.3, -0.1, 0.1 (mean 0.1: s = 1.105), then padding whose log-probs are junk;
    # row 1: one token, log-ratio -0.2 (s = 0.82)
    logp = torch.tensor([[0.3, -0.1, 0.1, 5.0, -7.0], [-0.2, 3.0, 3.0, 3.0, 3.0]]) - 1.0
    old = torch.full((2, 5), -1.0)
    mask = torch.tensor([[1.0, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    A = torch.tensor([1.0, -1.0])
    tool = mask.clone()
    tool[0, 1] = 0  # a tool's output in the middle of row 0: log-ratios 0.3 and 0.1 count
    B, T = 6, 8
    r_old = -torch.rand(B, T, generator=g) * 3
    r_logp = r_old + torch.randn(B, T, generator=g) * 0.01
    r_mask = (torch.arange(T)[None] < torch.tensor([8, 1, 3, 5, 0, 7])[:, None]).float()
    r_A = torch.randn(B, generator=g)
    return [("rows with padding after their tokens, wide range (eps 0.2)", (logp, old, A, mask),
             {"eps_low": 0.2, "eps_high": 0.2}),
            ("the same at GSPO's range (3e-4, 4e-4): both rows clipped", (logp, old, A, mask), {}),
            ("a tool's output (mask 0) in the middle of row 0", (logp, old, A, tool),
             {"eps_low": 0.2, "eps_high": 0.2}),
            ("random rows, one of them empty, log-ratios ~0.01", (r_logp, r_old, r_A, r_mask),
             {"eps_low": 0.003, "eps_high": 0.004})]


def check(m):
    f, ref = m.sequence_surrogate, grpo.sequence_surrogate
    for what, args, kw in cases():
        same(f(*args, **kw), ref(*args, **kw), f"your surrogate for {what}")
        got, exp = (grad(lambda lp, *rest: fn(lp, *rest, **kw), *args) for fn in (f, ref))
        same(got[0], exp[0], f"the gradient of your surrogate with respect to logp for {what}")

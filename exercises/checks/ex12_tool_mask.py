"""Checks of exercise 12 against engines.tools.assemble: the row, its sampler log-probs and its
tool mask on multi-turn rows (a call in the middle, two calls, an output that ends the row, empty
turns), then the GRPO loss through the student's mask: no gradient on any tool token."""

import torch

import grpo
from engines import tools
from exercises import Mismatch
from exercises.checks import grad, same

TITLE = "the tool-output mask of a multi-turn row"
EQUATION = "eq. 1"
PROJECT = "engines/tools.py: assemble"
REFERENCE = "from engines.tools import assemble"
PLUG = []  # the finale's run (addition) calls no tools: nothing to plug in

ROWS = {
    "a call in the middle": [([5, 6, 7], [-0.1, -0.2, -0.3]), ([8, 9], None),
                             ([10, 11], [-0.4, -0.5])],
    "two calls": [([1], [-1.0]), ([2, 3], None), ([4], [-0.7]), ([5, 6, 7], None), ([8], [-0.2])],
    "an output that ends the row (the length limit)": [([3, 4], [-0.3, -0.6]), ([9, 9, 9], None)],
    "empty turns": [([], []), ([4, 2], None), ([1], [-0.9]), ([], None)],
    "no call": [([7, 7, 8], [-0.5, -0.5, -0.25])],
}


def check(m):
    for what, turns in ROWS.items():
        got, expected = (m.assemble([(list(i), None if lp is None else list(lp))
                                     for i, lp in turns]),
                         tools.assemble(turns))
        if not isinstance(got, tuple) or len(got) != 3:
            raise Mismatch(f"your assemble for the row with {what}: returned "
                           f"{type(got).__name__}; expected (ids, logps, tool)")
        for name, g, e in zip(("ids", "log-probs", "tool mask"), got, expected):
            same(torch.tensor(g, dtype=torch.float), torch.tensor(e, dtype=torch.float),
                 f"your {name} for the row with {what}")
    # the loss through the student's mask: the gradient on every tool token's log-prob is 0
    turns = ROWS["two calls"]
    _, lp, tool = m.assemble(turns)
    tool = torch.tensor(tool)
    mask = (~tool).float()[None]                                  # (1, T): what the policy chose
    logp = torch.tensor(lp)[None] - 0.05
    old = torch.tensor(lp)[None]
    loss = lambda x: grpo.grpo_loss(x, old, None, torch.tensor([1.5]), mask)[0]  # noqa: E731
    g = grad(loss, logp)[0][0]
    if g[tool].abs().max() > 0:
        raise Mismatch(f"gradient flows through tool tokens: {g[tool].tolist()} on the tool "
                       f"positions of the row with two calls")
    ref_mask = (~torch.tensor(tools.assemble(turns)[2])).float()[None]
    expected = grad(lambda x: grpo.grpo_loss(x, old, None, torch.tensor([1.5]), ref_mask)[0],
                    logp)[0][0]
    same(g, expected, "the gradient of the GRPO loss through your mask, on the row with two calls")

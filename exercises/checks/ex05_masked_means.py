"""Checks of exercise 5 against grpo.token_weights: values, empty rows, and micro-batches
weighted as the whole batch."""

import torch

import grpo
from exercises.checks import same

TITLE = "masked means and normalisers"
EQUATION = "eq. 1"
PROJECT = "grpo.py: token_weights"
REFERENCE = "from grpo import token_weights"
PLUG = [("grpo", "token_weights")]


def check(m):
    f, ref = m.token_weights, grpo.token_weights
    # ragged, one empty output
    mask = (torch.arange(9)[None] < torch.tensor([9, 1, 4, 7, 0, 5])[:, None]).float()
    for loss_type in grpo.LOSS_TYPES:
        same(f(mask, loss_type), ref(mask, loss_type),
             f"your weights for loss_type={loss_type!r} on a ragged mask (row 4 has no tokens)")
        same(f(torch.zeros(2, 4), loss_type), ref(torch.zeros(2, 4), loss_type),
             f"your weights for loss_type={loss_type!r} on a batch of nothing but padding")
        norm = grpo.loss_normalizer(loss_type, mask, 12)
        for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
            same(f(mask[rows], loss_type, norm), ref(mask[rows], loss_type, norm),
                 f"your weights for loss_type={loss_type!r} on micro-batch rows "
                 f"{rows.start}-{rows.stop - 1}, given the whole step's normalizer {norm}")

"""
Exercise 3: the clipped surrogate per token, the heart of eq. 1 of the DeepSeek-R1 paper (the
project's version: grpo.py, clipped_surrogate).

The policy may move only so far from the one that sampled the outputs: a token whose probability
ratio has already left [1 - eps_low, 1 + eps_high] in the direction its advantage pushes gets no
more gradient. Fill in the body, then: python -m exercises check 3
"""

import torch


def clipped_surrogate(logp, old_logp, advantages, eps_low=0.2, eps_high=None):
    """
    eq. 1, per token: min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i)
    with rho = pi_theta(o_t) / pi_theta_old(o_t).

    logp:       (B, T) log pi_theta of the sampled tokens (with gradient)
    old_logp:   (B, T) log pi_theta_old of the same tokens (no gradient)
    advantages: (B,) one advantage per output, the same for all its tokens
    eps_high:   None means eps_low (symmetric clipping); DAPO's clip-higher sets it larger
    Returns (B, T), to be maximised (the loss is its negative); no masking here.
    """
    raise NotImplementedError  # TODO

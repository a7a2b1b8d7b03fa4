"""
Exercise 13: GSPO's sequence-level ratio (Group Sequence Policy Optimization, arXiv 2507.18071;
the project's version: grpo.py, sequence_surrogate).

eq. 1 clips each token's ratio on its own. GSPO asks the same question of a whole output: one
ratio per output, the geometric mean of its tokens' ratios (the sequence likelihood ratio made
independent of the length), clipped per output with a much narrower range (its paper: 3e-4 below,
4e-4 above). Every token of the output then shares that one clipped term. Fill in the body, then:
python -m exercises check 13
"""

import torch


def sequence_surrogate(logp, old_logp, advantages, mask, eps_low=3e-4, eps_high=4e-4):
    """
    GSPO per output:  min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)  with
        s_i = (pi_theta(o_i) / pi_theta_old(o_i)) ** (1 / |o_i|) = exp(1/|o_i| sum_t log rho_t),
    the sum and |o_i| over the output's sampled tokens only (mask 1), never padding or a tool's
    output (mask 0), whatever log-probs sit there.

    logp:       (B, T) log pi_theta of the tokens (with gradient)
    old_logp:   (B, T) log pi_theta_old of the same tokens
    advantages: (B,) one per output
    mask:       (B, T) float, 1 on the sampled tokens; a row may have none (then s_i = 1)
    Returns (B, T): each output's term on every one of its columns (the caller weighs the tokens),
    to be maximised; the gradient flows through s_i into every sampled token's log-prob.
    """
    raise NotImplementedError  # TODO

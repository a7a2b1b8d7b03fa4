"""
Exercise 1: group-normalised advantages, eq. 3 of the DeepSeek-R1 paper (the project's version:
grpo.py, group_advantages).

GRPO has no value model: an output is good or bad relative to the other outputs sampled for the
same question. Fill in the body, then: python -m exercises check 1
"""

import torch


def group_advantages(rewards, group_size, scale="std", eps=1e-4):
    """
    eq. 3: A_i = (r_i - mean(r)) / std(r), within each group of G = group_size outputs.

    rewards: a (B,) tensor, or a list of floats and None; the G outputs of one question are
             adjacent (rows 0..G-1 are question 0, G..2G-1 question 1, ...). Returns (B,) float.
    scale:   "std"   divide by the group's standard deviation plus eps (the paper)
             "none"  only subtract the group mean, no eps (Dr. GRPO)
             "batch" divide by the standard deviation of all scored rewards of the batch plus eps
             anything else: raise ValueError naming `scale`.
    Standard deviations are the unbiased (sample) ones, dividing by n - 1, as torch.std does.
    A reward that is None or NaN (a reward function declined to score that output) gets advantage
    0 and is left out of its group's mean and std. A group whose scored rewards are all equal (or
    that has fewer than two of them) carries no signal: its advantages are 0, never NaN.
    If the number of rewards is not a multiple of group_size, raise ValueError.
    """
    raise NotImplementedError  # TODO

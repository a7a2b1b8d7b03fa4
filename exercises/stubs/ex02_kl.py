"""
Exercise 2: the k3 estimator of the KL divergence, eq. 2 of the DeepSeek-R1 paper (the project's
version: grpo.py, kl_k3).

GRPO keeps the policy near a reference model with a KL penalty estimated per sampled token, with
no sum over the vocabulary. Fill in the body, then: python -m exercises check 2
"""

import torch


def kl_k3(logp, ref_logp):
    """
    eq. 2, per token: D = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1.

    logp:     log pi_theta(o_t) of the sampled tokens, any shape (with gradient)
    ref_logp: log pi_ref(o_t) of the same tokens, same shape
    Returns a tensor of that shape. Work from the log-probs: the probabilities of long sequences'
    tokens can be tiny. The result is >= 0 everywhere, exactly 0 where logp == ref_logp, and its
    mean over tokens sampled from pi_theta is an unbiased estimate of KL(pi_theta || pi_ref).
    """
    raise NotImplementedError  # TODO

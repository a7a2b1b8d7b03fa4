"""
Exercise 6: per-token log-probs from logits, the quantity every term of GRPO is built from (the
project's version: grpo_kernels/logprob.py, token_logprobs_reference).

log pi(y) = z_y / T - logsumexp(z / T) for one row of logits z and the chosen token y. Logits of
a trained model can be large: the check uses +-1e4. Fill in the body, then:
python -m exercises check 6
"""

import torch


def token_logprobs_reference(logits, targets, temperature=1.0):
    """
    logits (..., V) of any float dtype, targets (...) integer token ids -> log-probs (...) in
    float32 of the targets under softmax(logits / temperature), always <= 0, finite and exact to
    fp32 precision even when the logits are +-1e4. Differentiable with respect to the logits.
    """
    raise NotImplementedError  # TODO

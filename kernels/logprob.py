"""
Per-token log-probs of chosen tokens, the quantity every term of GRPO (eq. 1-3) is built from.

    log pi(y_t) = z_t[y_t] / tau - logsumexp(z_t / tau)      z: logits, tau: temperature

The reference computes it as a gather minus a logsumexp instead of log_softmax + gather, so it
never materialises a second (N, V) tensor of log-probs; statistics are in fp32 whatever the
input dtype. The same temperature is applied by the sampler, so sampler and trainer agree.

    python -m pytest tests/test_sample.py -k logprob
"""

import torch


def token_logprobs_reference(logits, targets, temperature=1.0):
    """logits (..., V), targets (...) int -> log-probs (...) in fp32, always <= 0."""
    z = logits.float() / temperature
    # shift by the row max before both terms: with logits of 1e4, z_y - logsumexp(z) would subtract
    # two numbers near 1e4 and keep only fp32's ~1e-3 absolute precision
    z = z - z.max(dim=-1, keepdim=True).values
    return z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)


@torch.no_grad()
def token_entropy(logits, temperature=1.0):
    """Entropy (...) of the temperature-scaled distribution, for logging only."""
    z = logits.float() / temperature
    logp = z - torch.logsumexp(z, dim=-1, keepdim=True)
    return -(logp.exp() * logp).sum(-1)

"""
The plain PyTorch references of grpo_kernels/logprob.py's kernel: log pi(y) of chosen tokens and
the entropy of each distribution, from logits, in fp32. A CPU run takes them (grpo_kernels.fast is
False there) and the tests compare the kernels against them. Kept apart from the kernels, which
need triton when their module is read, so that a run which never launches a kernel never imports
triton (~0.2 s of start-up).

    TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py
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
    # as above: logits of 1e4 would cost ~1e-3 of precision
    z = z - z.max(dim=-1, keepdim=True).values
    logp = z - torch.logsumexp(z, dim=-1, keepdim=True)
    return -(logp.exp() * logp).sum(-1)

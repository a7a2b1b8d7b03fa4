"""
Per-token log-probs straight from the last hidden states and the output-layer weight, in chunks
of tokens, so that the (N, V) logits never exist in memory at once: at most one (chunk, V) block.

    logits_c = h_c W^T                   one chunk of rows, (c, V)
    logp_c   = kernels/logprob.py's forward on logits_c

Backward, chunk by chunk, recomputing the chunk's logits (one more matmul, instead of keeping
N x V of them): with dz_c = g_c (onehot - softmax(z_c / T)) / T from the log-prob backward,
written in place into the chunk's logits,

    dh_c  = dz_c W            (c, d)
    dW   += dz_c^T h_c        (V, d), accumulated in fp32

On CUDA (or under TRITON_INTERPRET=1) the per-chunk log-prob is the Triton kernel; elsewhere the
same arithmetic in PyTorch. The reference is kernels.logprob.token_logprobs_reference(h @ W.T).
The entropy of each token, for logging, comes from the same forward pass.

    TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py
"""

import os

import torch

from kernels.logprob import logprob_backward, logprob_forward

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or INTERPRET


def _rows_forward(logits, targets, temperature, with_entropy):
    """(c, V) -> logp, lse, entropy (c,) fp32: the kernel, or the same arithmetic in PyTorch."""
    if use_triton(logits):
        return logprob_forward(logits, targets, temperature, with_entropy)
    z = logits.float() / temperature
    top = z.max(dim=-1, keepdim=True).values
    zs = z - top                                                                # shifted, as the kernel does
    lse_s = torch.logsumexp(zs, dim=-1)
    logp = zs.gather(-1, targets[:, None]).squeeze(-1) - lse_s
    entropy = (lse_s - (zs.softmax(-1) * zs).sum(-1)) if with_entropy else None
    return logp, top.squeeze(-1) + lse_s, entropy


def _rows_backward(logits, targets, lse, grad, temperature):
    """d/d logits of sum(grad * logp), written into `logits` itself."""
    if use_triton(logits):
        return logprob_backward(logits, targets, lse, grad, temperature, out=logits)
    p = torch.exp(logits.float() / temperature - lse[:, None])                 # softmax, (c, V)
    d = -p
    d[torch.arange(len(targets), device=logits.device), targets] += 1.0        # onehot - softmax
    return logits.copy_(d * (grad / temperature)[:, None])


class LinearTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h2d, weight, targets, temperature, chunk, with_entropy):
        N = h2d.size(0)
        logp = torch.empty(N, dtype=torch.float32, device=h2d.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        for i in range(0, N, chunk):
            logits = h2d[i:i + chunk] @ weight.t()                              # (c, V)
            lp, ls, ent = _rows_forward(logits, targets[i:i + chunk], temperature, with_entropy)
            logp[i:i + chunk], lse[i:i + chunk] = lp, ls
            if with_entropy:
                entropy[i:i + chunk] = ent
        ctx.save_for_backward(h2d, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        if with_entropy:
            ctx.mark_non_differentiable(entropy)
            return logp, entropy
        return logp, torch.empty(0, device=h2d.device)

    @staticmethod
    def backward(ctx, grad, _grad_entropy):
        h2d, weight, targets, lse = ctx.saved_tensors
        dh = torch.empty_like(h2d)
        dW = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad = grad.float().contiguous()
        for i in range(0, h2d.size(0), ctx.chunk):
            h = h2d[i:i + ctx.chunk]
            dz = _rows_backward(h @ weight.t(), targets[i:i + ctx.chunk], lse[i:i + ctx.chunk],
                                grad[i:i + ctx.chunk], ctx.temperature)          # (c, V), the logits' buffer
            dh[i:i + ctx.chunk] = dz @ weight
            dW += (dz.t() @ h).float()  # the matmul accumulates in fp32 inside; chunks add up in fp32
        return dh, dW.to(weight.dtype), None, None, None, None


def linear_token_logprobs(h, weight, targets, temperature=1.0, chunk=4096, with_entropy=False):
    """log pi(targets) (...) fp32 from hidden states h (..., d) and the output weight (V, d);
    differentiable in h and weight. with_entropy=True also returns the entropy (...), no gradient."""
    shape = targets.shape
    h2d = h.reshape(-1, h.size(-1))                                              # (N, d)
    logp, entropy = LinearTokenLogprobs.apply(h2d, weight, targets.reshape(-1).contiguous(), temperature, chunk,
                                              with_entropy)
    return (logp.view(shape), entropy.view(shape)) if with_entropy else logp.view(shape)

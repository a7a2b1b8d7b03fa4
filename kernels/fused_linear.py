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

The per-chunk log-prob and its gradient are the Triton kernels of kernels/logprob.py (on CUDA, or
on a CPU under TRITON_INTERPRET=1). The reference is kernels.logprob.token_logprobs_reference(h @ W.T).
The entropy of each token, for logging, comes from the same forward pass.

    TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py
"""

import torch

from kernels.logprob import logprob_backward, logprob_forward

class LinearTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h2d, weight, targets, temperature, chunk, with_entropy):
        N = h2d.size(0)
        logp = torch.empty(N, dtype=torch.float32, device=h2d.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        for i in range(0, N, chunk):
            logits = h2d[i:i + chunk] @ weight.t()                              # (c, V)
            lp, ls, ent = logprob_forward(logits, targets[i:i + chunk], temperature, with_entropy)
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
            logits = h @ weight.t()                                              # (c, V), recomputed
            dz = logprob_backward(logits, targets[i:i + ctx.chunk], lse[i:i + ctx.chunk], grad[i:i + ctx.chunk],
                                  ctx.temperature, out=logits)                   # written into that buffer
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

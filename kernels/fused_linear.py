"""
Per-token log-probs straight from the last hidden states and the output-layer weight, in chunks
of tokens, so that the (N, V) logits never exist in memory: one (chunk, V) buffer is reused for
every chunk, forward and backward.

    logits_c = h_c W^T                   one chunk of rows, (c, V)
    logp_c   = kernels/logprob.py's forward on logits_c

Backward, chunk by chunk, recomputing the chunk's logits (one more matmul, instead of keeping
N x V of them): with dz_c = g_c (onehot - softmax(z_c / T)) / T from the log-prob backward,
written in place into the chunk's buffer,

    dh_c  = dz_c W            (c, d), written straight into its rows of dh
    dW   += dz_c^T h_c        (V, d), accumulated in fp32 across chunks

Memory beyond inputs and outputs: the (chunk, V) buffer, dW in fp32, and for bf16/fp16 weights
one (V, d) product per chunk before it is added (a GEMM that writes fp32 from bf16 inputs would
save it; that, and the recompute, are what kernels/bench.py measures against the matmul rate).

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
        N, V = h2d.size(0), weight.size(0)
        logp = torch.empty(N, dtype=torch.float32, device=h2d.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        buffer = h2d.new_empty(min(chunk, N), V)                                # (c, V), the only logits
        for i in range(0, N, chunk):
            rows = slice(i, i + chunk)
            h = h2d[rows]
            logits = torch.mm(h, weight.t(), out=buffer[:h.size(0)])                 # (c, V)
            lp, ls, ent = logprob_forward(logits, targets[rows], temperature, with_entropy)
            logp[rows], lse[rows] = lp, ls
            if with_entropy:
                entropy[rows] = ent
        ctx.save_for_backward(h2d, weight, targets, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        if with_entropy:
            ctx.mark_non_differentiable(entropy)
            return logp, entropy
        return logp, torch.empty(0, device=h2d.device)

    @staticmethod
    def backward(ctx, grad, _grad_entropy):
        h2d, weight, targets, lse = ctx.saved_tensors
        N, V = h2d.size(0), weight.size(0)
        dh = torch.empty_like(h2d)
        dW = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad = grad.float().contiguous()
        buffer = h2d.new_empty(min(ctx.chunk, N), V)
        for i in range(0, N, ctx.chunk):
            rows = slice(i, i + ctx.chunk)
            h = h2d[rows]
            logits = torch.mm(h, weight.t(), out=buffer[:h.size(0)])               # (c, V), recomputed
            dz = logprob_backward(logits, targets[rows], lse[rows], grad[rows], ctx.temperature, out=logits)
            torch.mm(dz, weight, out=dh[rows])                                    # (c, d)
            if dz.dtype == dW.dtype:
                dW.addmm_(dz.t(), h)                                              # (V, d), in one GEMM
            else:
                dW += dz.t() @ h  # the GEMM accumulates in fp32 inside; its bf16 result is added in fp32
        return dh, dW.to(weight.dtype), None, None, None, None


def linear_token_logprobs(h, weight, targets, temperature=1.0, chunk=4096, with_entropy=False):
    """log pi(targets) (...) fp32 from hidden states h (..., d) and the output weight (V, d);
    differentiable in h and weight. with_entropy=True also returns the entropy (...), no gradient."""
    shape = targets.shape
    h2d = h.reshape(-1, h.size(-1)).contiguous()                                 # (N, d)
    logp, entropy = LinearTokenLogprobs.apply(h2d, weight, targets.reshape(-1).contiguous(), temperature, chunk,
                                              with_entropy)
    return (logp.view(shape), entropy.view(shape)) if with_entropy else logp.view(shape)

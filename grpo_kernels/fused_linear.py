"""
Log-probs, and the GRPO loss, straight from the last hidden states and the output-layer weight,
in chunks of tokens, so that the (N, V) logits never exist in memory: one (chunk, V) buffer is
reused for every chunk.

    logits_c = h_c W^T                   one chunk of rows, (c, V)
    logp_c   = grpo_kernels/logprob.py's forward on logits_c

linear_token_logprobs returns per-token log-probs, whose upstream gradient g is known only in the
backward. There, chunk by chunk, the chunk's logits are recomputed (one more matmul, instead of
keeping N x V of them); with dz_c = g_c (onehot - softmax(z_c / T)) / T from the log-prob
backward, written in place into the buffer,

    dh_c  = dz_c W            (c, d), written straight into its rows of dh
    dW   += dz_c^T h_c        (V, d), accumulated in fp32 across chunks

linear_grpo_loss returns the GRPO loss itself (eq. 1-2, grpo_kernels/grpo_loss.py's kernel on
each chunk). Its d loss / d logp is local to each token and known in the forward, so each chunk's
whole backward runs right after its forward, while its logits are in the buffer: 3 matmuls of
N V d flops in all instead of 4, no recompute. dh and dW are kept for the backward, which only
scales them by the incoming gradient (1 for a plain loss.backward()). The memory beyond inputs and
outputs, and the references the tests compare against: docs/kernels.md.

    TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py
"""

import torch

from grpo_kernels.grpo_loss import grpo_forward, token_inputs
from grpo_kernels.logprob import logprob_backward, logprob_forward


def _chunk_grads(dh, dW, dz, h, weight, rows):
    """One chunk's share of the gradients from its dz (c, V): dh[rows] = dz W, dW += dz^T h in fp32
    (either may be None: not wanted)."""
    if dh is not None:
        torch.mm(dz, weight, out=dh[rows])                                     # (c, d)
    if dW is not None and dz.dtype == dW.dtype:
        dW.addmm_(dz.t(), h)                                                   # (V, d), in one GEMM
    elif dW is not None:
        dW += dz.t() @ h  # the GEMM accumulates in fp32 inside; its bf16 result is added in fp32


class LinearTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h2d, weight, targets, temperature, chunk, with_entropy):
        N, V = h2d.size(0), weight.size(0)
        logp = torch.empty(N, dtype=torch.float32, device=h2d.device)
        lse = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        buffer = h2d.new_empty(min(chunk, N), V)                    # (c, V), the only logits
        for i in range(0, N, chunk):
            rows = slice(i, i + chunk)
            h = h2d[rows]
            logits = torch.mm(h, weight.t(), out=buffer[:h.size(0)])    # (c, V)
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
        dh = torch.empty_like(h2d) if ctx.needs_input_grad[0] else None
        dW = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
              if ctx.needs_input_grad[1] else None)
        grad = grad.float().contiguous()
        buffer = h2d.new_empty(min(ctx.chunk, N), V)
        for i in range(0, N, ctx.chunk):
            rows = slice(i, i + ctx.chunk)
            h = h2d[rows]
            logits = torch.mm(h, weight.t(), out=buffer[:h.size(0)])    # (c, V), recomputed
            dz = logprob_backward(logits, targets[rows], lse[rows], grad[rows], ctx.temperature,
                                  out=logits)
            _chunk_grads(dh, dW, dz, h, weight, rows)
        return dh, None if dW is None else dW.to(weight.dtype), None, None, None, None


def linear_token_logprobs(h, weight, targets, temperature=1.0, chunk=4096, with_entropy=False):
    """log pi(targets) (...) fp32 from hidden states h (..., d) and the output weight (V, d);
    differentiable in h and weight. with_entropy=True also returns the entropy (...), no
    gradient."""
    shape = targets.shape
    h2d = h.reshape(-1, h.size(-1)).contiguous()                   # (N, d)
    logp, entropy = LinearTokenLogprobs.apply(h2d, weight, targets.reshape(-1).contiguous(),
                                              temperature, chunk, with_entropy)
    return (logp.view(shape), entropy.view(shape)) if with_entropy else logp.view(shape)


class LinearGRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h2d, weight, targets, old_logp, ref_logp, advantages, weights, temperature,
                eps_low, eps_high, beta, chunk, with_entropy):
        N, V = h2d.size(0), weight.size(0)
        backward = any(ctx.needs_input_grad[:2])  # False under torch.no_grad(): the forward alone
        loss = torch.zeros((), dtype=torch.float32, device=h2d.device)
        logp = torch.empty(N, dtype=torch.float32, device=h2d.device)
        entropy = torch.empty_like(logp) if with_entropy else torch.empty(0, device=h2d.device)
        dh = torch.empty_like(h2d) if ctx.needs_input_grad[0] else None
        dW = (torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
              if ctx.needs_input_grad[1] else None)
        buffer = h2d.new_empty(min(chunk, N), V)
        for i in range(0, N, chunk):
            rows = slice(i, i + chunk)
            h = h2d[rows]
            logits = torch.mm(h, weight.t(), out=buffer[:h.size(0)])    # (c, V)
            old, ref = (None if x is None else x[rows] for x in (old_logp, ref_logp))
            loss_c, dlogp, lp, lse, ent = grpo_forward(logits, targets[rows], old, ref,
                                                       advantages[rows], weights[rows], temperature,
                                                       eps_low, eps_high, beta, with_entropy)
            loss += loss_c.sum()
            logp[rows] = lp
            if with_entropy:
                entropy[rows] = ent
            if backward:  # this chunk's backward now, while its logits are in the buffer
                dz = logprob_backward(logits, targets[rows], lse, dlogp, temperature, out=logits)
                _chunk_grads(dh, dW, dz, h, weight, rows)
        ctx.save_for_backward(dh, dW)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(logp, entropy)
        return loss, logp, entropy

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_entropy):
        dh, dW = ctx.saved_tensors  # None where not wanted
        return (None if dh is None else dh * grad_loss.to(dh.dtype),
                None if dW is None else (dW * grad_loss).to(ctx.weight_dtype), *([None] * 11))


def linear_grpo_loss(h, weight, targets, old_logp, ref_logp, advantages, token_weights, eps_low=0.2,
                     eps_high=None, beta=0.0, temperature=1.0, chunk=4096, with_entropy=False):
    """
    grpo.grpo_loss from hidden states h (B, T, d) and the output weight (V, d) instead of log-probs:
    targets, old_logp, ref_logp, token_weights (B, T) (each token's weight in eq. 1's sums: the
    caller's grpo.token_weights, 0 on padding), advantages (B,); old_logp=None: on-policy (rho = 1).
    Returns (loss, logp (B, T) and entropy (B, T) or None, both detached, for metrics); the loss
    is differentiable in h and weight.
    """
    B, T = targets.shape
    h2d = h.reshape(B * T, h.size(-1)).contiguous()                # (N, d)
    old, ref, adv, weights = token_inputs(old_logp, ref_logp, advantages, token_weights, beta)
    loss, logp, entropy = LinearGRPOLoss.apply(h2d, weight, targets.reshape(-1).contiguous(), old,
                                               ref, adv, weights, temperature, eps_low,
                                               eps_low if eps_high is None else eps_high, beta,
                                               chunk, with_entropy)
    return loss, logp.view(B, T), entropy.view(B, T) if with_entropy else None

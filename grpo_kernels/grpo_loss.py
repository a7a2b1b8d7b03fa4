"""
The GRPO loss of eq. 1-2 computed from logits in one fused pass: log-prob, ratio, clipping, k3 KL
and masking per token, with the gradient of the logits written in one more pass. The reference
is grpo.grpo_loss applied to grpo_kernels.reference.token_logprobs_reference; tests compare the
two, gradients included. Like every kernel here it imports only torch and triton: the caller
passes what grpo.py computes (each token's weight in eq. 1's sums).

Per token t of output i (rho = exp(logp - old_logp), w_t the token's weight in eq. 1's sums,
grpo.token_weights: mask_t / normalizer, times 1/|o_i| for loss_type "grpo", 0 on padding):

    loss_t = -w_t [ min(rho A_i, clip(rho, 1-eps_low, 1+eps_high) A_i) - beta k3(logp, ref_logp) ]

Its derivative with respect to logp is local to the token, so the forward kernel stores it:

    d loss_t / d logp = -w_t [ rho A_i 1[the unclipped term is the min]
                               -  beta (1 - exp(ref_logp - logp)) ]

The backward is then the log-prob backward of grpo_kernels/logprob.py with upstream gradient
g * d loss_t / d logp. old_logp=None means on-policy: rho = 1 with d rho / d logp = 1, what
grpo_loss gives for old_logp = logp.detach(). The derivation: docs/kernels.md.
grpo_kernels/fused_linear.py runs the same kernel chunk by chunk from hidden states.

    TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py
"""

import torch
import triton
import triton.language as tl

from grpo_kernels.logprob import _block_v, _row_logprob, logprob_backward


@triton.jit
def _grpo_fwd_kernel(logits_ptr, targets_ptr, old_ptr, ref_ptr, adv_ptr, weight_ptr,
                     loss_ptr, dlogp_ptr, logp_ptr, lse_ptr, entropy_ptr, stride_row, V, inv_T,
                     eps_low, eps_high, beta, BLOCK_V: tl.constexpr, USE_OLD: tl.constexpr,
                     USE_REF: tl.constexpr, WITH_ENTROPY: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    logp, lse, entropy = _row_logprob(logits_ptr, targets_ptr, row, stride_row, V, inv_T, BLOCK_V,
                                      WITH_ENTROPY)
    # the GRPO terms of this token
    A = tl.load(adv_ptr + row)
    w = tl.load(weight_ptr + row)
    ratio = tl.full((), 1.0, tl.float32)
    if USE_OLD:
        ratio = tl.exp(logp - tl.load(old_ptr + row))
    unclipped = ratio * A
    clipped = tl.minimum(tl.maximum(ratio, 1.0 - eps_low), 1.0 + eps_high) * A
    surrogate = tl.minimum(unclipped, clipped)
    d_surrogate = tl.where(unclipped <= clipped, unclipped, 0.0)
    kl = tl.zeros((), tl.float32)
    d_kl = tl.zeros((), tl.float32)
    if USE_REF:
        log_r = tl.load(ref_ptr + row) - logp
        kl = tl.exp(log_r) - log_r - 1.0
        d_kl = 1.0 - tl.exp(log_r)
    tl.store(loss_ptr + row, -w * (surrogate - beta * kl))
    tl.store(dlogp_ptr + row, -w * (d_surrogate - beta * d_kl))
    tl.store(logp_ptr + row, logp)
    tl.store(lse_ptr + row, lse)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + row, entropy)


def grpo_forward(logits2d, targets, old_logp, ref_logp, advantages, weights, temperature, eps_low,
                 eps_high, beta, with_entropy=False):
    """(N, V) logits and (N,) per-token inputs (old_logp and ref_logp may be None) -> per-token
    (loss, d loss / d logp, logp, lse, entropy or None), each (N,) fp32."""
    N, V = logits2d.shape
    loss = torch.empty(N, dtype=torch.float32, device=logits2d.device)
    dlogp, logp, lse = torch.empty_like(loss), torch.empty_like(loss), torch.empty_like(loss)
    entropy = torch.empty_like(loss) if with_entropy else None
    if N:
        # unused pointers: any
        _grpo_fwd_kernel[(N,)](logits2d, targets, loss if old_logp is None else old_logp,
                               loss if ref_logp is None else ref_logp, advantages, weights,
                               loss, dlogp, logp, lse, loss if entropy is None else entropy,
                               logits2d.stride(0), V, 1.0 / temperature, eps_low, eps_high, beta,
                               BLOCK_V=_block_v(V), USE_OLD=old_logp is not None,
                               USE_REF=ref_logp is not None, WITH_ENTROPY=with_entropy)
    return loss, dlogp, logp, lse, entropy


def token_inputs(old_logp, ref_logp, advantages, token_weights, beta):
    """The (B, T) arguments as the kernel's flat (N,) fp32 vectors: old_logp, ref_logp (None when
    not needed), the advantage of each token, and each token's weight w_t (module docstring)."""
    B, T = token_weights.shape
    flat = lambda x: None if x is None else x.reshape(-1).float().contiguous()  # noqa: E731
    return (flat(old_logp), flat(None if beta == 0 else ref_logp),
            flat(advantages[:, None].expand(B, T)), flat(token_weights))


class FusedGRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits2d, targets, old_logp, ref_logp, advantages, weights, temperature,
                eps_low, eps_high, beta, inplace):
        loss, dlogp, logp, lse, _ = grpo_forward(logits2d, targets, old_logp, ref_logp, advantages,
                                                 weights, temperature, eps_low, eps_high, beta)
        ctx.save_for_backward(logits2d, targets, lse, dlogp)
        ctx.temperature, ctx.inplace = temperature, inplace
        ctx.mark_non_differentiable(logp)
        return loss.sum(), logp

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp):
        logits2d, targets, lse, dlogp = ctx.saved_tensors
        out = logits2d if ctx.inplace else None
        dlogits = logprob_backward(logits2d, targets, lse, dlogp * grad_loss, ctx.temperature, out)
        return dlogits, *([None] * 10)


def fused_grpo_loss(logits, targets, old_logp, ref_logp, advantages, token_weights, eps_low=0.2,
                    eps_high=None, beta=0.0, temperature=1.0, inplace=False):
    """
    grpo.grpo_loss from logits (B, T, V) instead of log-probs: targets, old_logp, ref_logp,
    token_weights (B, T) (each token's weight in eq. 1's sums: the caller's grpo.token_weights, 0
    on padding), advantages (B,); old_logp=None: on-policy (rho = 1). Returns (loss, logp (B, T)
    detached, for metrics). Only the gradient of the logits is computed; with inplace=True it
    overwrites the logits buffer.
    """
    B, T, V = logits.shape
    logits2d = logits.reshape(B * T, V)                               # (N, V)
    if logits2d.stride(-1) != 1:
        logits2d = logits2d.contiguous()
    old, ref, adv, weights = token_inputs(old_logp, ref_logp, advantages, token_weights, beta)
    loss, logp = FusedGRPOLoss.apply(logits2d, targets.reshape(-1).contiguous(), old, ref, adv,
                                     weights, temperature, eps_low,
                                     eps_low if eps_high is None else eps_high, beta, inplace)
    return loss, logp.view(B, T)

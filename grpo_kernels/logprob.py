"""
Per-token log-probs of chosen tokens, the quantity every term of GRPO (eq. 1-3) is built from:
a fused Triton kernel, and the plain PyTorch reference it is tested against (reference.py,
re-exported here: torch only, so that a CPU run, which takes it, never imports triton).

    log pi(y) = z_y / T - logsumexp(z / T)          z: one row of logits, T: temperature
    H         = logsumexp(z / T) - sum_j softmax_j(z / T) z_j / T      (entropy, for logging)

Forward: one program per row reads the row once, in BLOCK_V-wide blocks, keeping an online
logsumexp (running max m, running sum s of exp(z - m)) and, for the entropy, the running sum
t of exp(z - m) (z - m); when the max moves from m to m', old terms are rescaled by exp(m - m'),
and t also gains (m - m') s. Then log pi(y) = (z_y - m) - log s, which is <= 0 exactly (s >= 1
because the max term is 1) and keeps full precision on logits of +-1e4, and H = log s - t / s.
Only the (N,) log-probs and logsumexps are stored, never an (N, V) tensor of log-softmax.

Backward: d log pi(y) / d z_j = (1[j = y] - softmax_j(z / T)) / T, so
    dz_j = g (1[j = y] - exp(z_j / T - lse)) / T         g: the upstream gradient of log pi(y)
one more read of the row and one write. With inplace=True the gradient overwrites the logits
buffer, so no second (N, V) tensor is ever allocated (when that is safe: docs/kernels.md). The
entropy is for logging and has no gradient. Statistics are fp32 whatever the input dtype. On
CUDA, grpo_kernels.token_logprobs uses the kernel; on a CPU the reference. The tests run the
kernel on a CPU under Triton's interpreter:

    TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py
"""

import torch
import triton
import triton.language as tl

# the plain PyTorch references, in a module of their own that a CPU run imports without triton
from grpo_kernels.reference import token_entropy, token_logprobs_reference  # noqa: F401


# -----------------------------------------------------------------------------
# the Triton kernels

@triton.jit
def _row_logprob(logits_ptr, targets_ptr, row, stride_row, V, inv_T, BLOCK_V: tl.constexpr,
                 WITH_ENTROPY: tl.constexpr):
    """One row's (log pi(y), logsumexp, entropy) by the online logsumexp above (entropy 0 unless
    WITH_ENTROPY). Shared by this file's forward kernel and grpo_kernels/grpo_loss.py's."""
    base = logits_ptr + row * stride_row
    # finite, so that (m - m') s is 0, not nan, at the first block
    m = tl.full((), -1e30, tl.float32)
    s = tl.zeros((), tl.float32)
    t = tl.zeros((), tl.float32)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols < V
        z = tl.load(base + cols, mask=inside, other=-float("inf")).to(tl.float32) * inv_T
        m_new = tl.maximum(m, tl.max(z, axis=0))
        scale = tl.exp(m - m_new)
        shifted = tl.where(inside, z - m_new, -float("inf"))  # z - m' <= 0; -inf past the row's end
        p = tl.exp(shifted)
        if WITH_ENTROPY:
            t = scale * (t + (m - m_new) * s) + tl.sum(p * tl.where(inside, shifted, 0.0), axis=0)
        s = s * scale + tl.sum(p, axis=0)
        m = m_new
    y = tl.load(targets_ptr + row)
    z_y = tl.load(base + y).to(tl.float32) * inv_T
    # s >= 1 exactly; a GPU's approximate log must not dip below 0
    log_s = tl.maximum(tl.log(s), 0.0)
    return (z_y - m) - log_s, m + log_s, log_s - t / s


@triton.jit
def _logprob_fwd_kernel(logits_ptr, targets_ptr, logp_ptr, lse_ptr, entropy_ptr, stride_row, V,
                        inv_T, BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    logp, lse, entropy = _row_logprob(logits_ptr, targets_ptr, row, stride_row, V, inv_T, BLOCK_V,
                                      WITH_ENTROPY)
    tl.store(logp_ptr + row, logp)
    tl.store(lse_ptr + row, lse)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + row, entropy)


@triton.jit
def _logprob_bwd_kernel(logits_ptr, targets_ptr, lse_ptr, grad_ptr, dlogits_ptr, stride_row,
                        stride_drow, V, inv_T, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    dbase = dlogits_ptr + row * stride_drow
    y = tl.load(targets_ptr + row)
    lse = tl.load(lse_ptr + row)
    g = tl.load(grad_ptr + row).to(tl.float32) * inv_T
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols < V
        z = tl.load(base + cols, mask=inside, other=0.0).to(tl.float32) * inv_T
        d = g * (tl.where(cols == y, 1.0, 0.0) - tl.exp(z - lse))
        tl.store(dbase + cols, d.to(dlogits_ptr.dtype.element_ty), mask=inside)


def _block_v(V):
    return min(4096, triton.next_power_of_2(V))


def logprob_forward(logits2d, targets1d, temperature, with_entropy):
    """(N, V) logits, (N,) targets -> (logp, lse, entropy or None), each (N,) fp32."""
    N, V = logits2d.shape
    logp = torch.empty(N, dtype=torch.float32, device=logits2d.device)
    lse = torch.empty_like(logp)
    entropy = torch.empty_like(logp) if with_entropy else logp  # a dummy pointer when unused
    if N:
        _logprob_fwd_kernel[(N,)](logits2d, targets1d, logp, lse, entropy, logits2d.stride(0), V,
                                  1.0 / temperature, BLOCK_V=_block_v(V),
                                  WITH_ENTROPY=with_entropy)
    return logp, lse, entropy if with_entropy else None


def logprob_backward(logits2d, targets1d, lse, grad, temperature, out=None):
    """d loss / d logits (N, V) from d loss / d logp (N,); written into `out` (may be logits2d)."""
    N, V = logits2d.shape
    out = torch.empty_like(logits2d) if out is None else out
    if N:
        _logprob_bwd_kernel[(N,)](logits2d, targets1d, lse, grad.contiguous(), out,
                                  logits2d.stride(0), out.stride(0), V, 1.0 / temperature,
                                  BLOCK_V=_block_v(V))
    return out


class TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, inplace):
        shape = targets.shape
        logits2d = logits.reshape(-1, logits.size(-1))  # (N, V)
        if logits2d.stride(-1) != 1:
            logits2d = logits2d.contiguous()
        targets1d = targets.reshape(-1).contiguous()    # (N,)
        logp, lse, _ = logprob_forward(logits2d, targets1d, temperature, with_entropy=False)
        ctx.save_for_backward(logits2d, targets1d, lse)
        ctx.temperature, ctx.inplace, ctx.shape = temperature, inplace, logits.shape
        return logp.view(shape)

    @staticmethod
    def backward(ctx, grad):
        logits2d, targets1d, lse = ctx.saved_tensors
        out = logits2d if ctx.inplace else None
        dlogits = logprob_backward(logits2d, targets1d, lse, grad.reshape(-1).float(),
                                   ctx.temperature, out)
        return dlogits.view(ctx.shape), None, None, None


def token_logprobs_triton(logits, targets, temperature=1.0, inplace=False):
    """The kernel's log-probs (...) in fp32 of targets (...) under logits (..., V); differentiable.
    inplace=True: the backward overwrites `logits` with its gradient (see the module docstring)."""
    return TokenLogprobs.apply(logits, targets, temperature, inplace)


@torch.no_grad()
def token_entropy_triton(logits, temperature=1.0):
    logits2d = logits.reshape(-1, logits.size(-1))
    if logits2d.stride(-1) != 1:
        logits2d = logits2d.contiguous()
    dummy = torch.zeros(logits2d.size(0), dtype=torch.long, device=logits.device)
    return logprob_forward(logits2d, dummy, temperature,
                           with_entropy=True)[2].view(logits.shape[:-1])

"""
The Triton kernels against their plain PyTorch references, gradients included. On a CPU they run
under Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 when there is no GPU), so shapes
are kept small; on a GPU the same tests run the compiled kernels, and the bf16 tests at the end
run on real shapes.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from grpo import grpo_loss
from kernels import fused_grpo_loss, linear_token_logprobs, token_entropy, token_entropy_triton, token_logprobs_triton
from kernels.logprob import token_logprobs_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# V not a power of two, and a GPT-2-sized vocabulary with few rows
SHAPES = [(5, 37), (3, 1000), (2, 50257)]


def close(a, b, tol):
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=0)


@pytest.mark.parametrize("N, V", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_logprob_kernel_matches_reference(N, V, temperature, dtype):
    g = torch.Generator().manual_seed(N * V)
    logits = (torch.randn(N, V, generator=g) * 4).to(dtype).to(DEVICE)
    targets = torch.randint(0, V, (N,), generator=g).to(DEVICE)
    upstream = torch.randn(N, generator=g).to(DEVICE)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, ref = token_logprobs_triton(a, targets, temperature), token_logprobs_reference(b, targets, temperature)
    assert ours.dtype == torch.float32 and (ours <= 0).all()
    close(ours, ref, 1e-5)                       # fp32 statistics whatever the input dtype
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    close(a.grad, b.grad, 1e-6 if dtype == torch.float32 else 1e-3)  # fp16 grads are rounded to fp16
    close(token_entropy_triton(logits, temperature), token_entropy(logits, temperature), 1e-4)


def test_logprob_kernel_on_extreme_logits_and_in_place_backward():
    # +-1e4 logits: a logsumexp that is not shifted by the row max loses ~1e-3 to fp32 rounding; a
    # positive log-prob once collapsed a training run elsewhere (LESSONS.md 9)
    V = 300
    logits = torch.zeros(4, V)
    logits[0, 7], logits[1, :] = 1e4, -1e4
    logits[2, 3], logits[2, 5] = 1e4, 1e4 - 1.0
    logits[3] = torch.linspace(-1e4, 1e4, V)
    logits = logits.to(DEVICE)
    targets = torch.tensor([7, 0, 5, V - 1], device=DEVICE)
    ours = token_logprobs_triton(logits, targets)
    assert (ours <= 0).all()
    close(ours, token_logprobs_reference(logits, targets), 1e-6)
    # the exact values, by hand: one certain token; a uniform row; two logits 1 apart; the max of a ramp
    import math
    close(ours[:3], torch.tensor([0.0, -math.log(V), -1.0 - math.log(1 + math.exp(-1.0))]), 1e-6)
    # in place: the backward writes d logits into the logits' own buffer
    z = torch.randn(3, 1000, device=DEVICE)
    leaf = z.clone().requires_grad_()
    buffer = leaf * 1.0                              # a non-leaf whose storage the kernel may reuse
    token_logprobs_triton(buffer, targets[:3] % 1000, 1.0, inplace=True).sum().backward()
    ref_leaf = z.clone().requires_grad_()
    token_logprobs_reference(ref_leaf, targets[:3] % 1000).sum().backward()
    close(leaf.grad, ref_leaf.grad, 1e-6)
    close(buffer.detach(), ref_leaf.grad, 1e-6)     # the buffer now holds the gradient


@pytest.mark.parametrize("loss_type", ["grpo", "token", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_fused_grpo_loss_matches_grpo_py(loss_type, beta):
    B, T, V = 3, 5, 1000
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(B, T, V, generator=g) * 2).to(DEVICE)
    targets = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    base = token_logprobs_reference(logits, targets, 0.7)
    old = base + (torch.randn(B, T, generator=g) * 0.5).to(DEVICE)  # ratios well outside 1 +- eps too
    ref = base + (torch.randn(B, T, generator=g) * 0.3).to(DEVICE)
    A = torch.randn(B, generator=g).to(DEVICE)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], device=DEVICE)  # an all-masked row
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    kw = dict(eps_low=0.2, eps_high=0.28, beta=beta, loss_type=loss_type)
    ours, logp = fused_grpo_loss(a, targets, old, ref, A, mask, temperature=0.7, **kw)
    theirs, metrics = grpo_loss(token_logprobs_reference(b, targets, 0.7), old, ref, A, mask.float(), **kw)
    close(ours, theirs, 1e-6)
    close(logp, base, 1e-5)
    ours.backward()
    theirs.backward()
    close(a.grad, b.grad, 1e-6)
    assert a.grad[2].abs().max() == 0  # masked tokens get no gradient
    assert metrics["clip_low"] + metrics["clip_high"] > 0  # the test does exercise clipping


@pytest.mark.parametrize("N, d, V, chunk", [(13, 16, 1000, 4), (7, 8, 37, 100), (3, 8, 50257, 2)])
def test_fused_linear_matches_reference(N, d, V, chunk):
    g = torch.Generator().manual_seed(N)
    h = torch.randn(N, d, generator=g).to(DEVICE)
    W = (torch.randn(V, d, generator=g) * 0.5).to(DEVICE)
    targets = torch.randint(0, V, (N,), generator=g).to(DEVICE)
    upstream = torch.randn(N, generator=g).to(DEVICE)
    h1, W1, h2, W2 = (x.clone().requires_grad_() for x in (h, W, h, W))
    ours, ent = linear_token_logprobs(h1, W1, targets, 0.8, chunk=chunk, with_entropy=True)
    ref = token_logprobs_reference(h2 @ W2.t(), targets, 0.8)
    close(ours, ref, 1e-5)
    close(ent, token_entropy(h @ W.t(), 0.8), 1e-4)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    close(h1.grad, h2.grad, 1e-5)
    close(W1.grad, W2.grad, 1e-5)


class Allocations(TorchDispatchMode):
    """Records the size (elements) of every new tensor an op returns: ops whose results alias an
    input (views, in-place ops, out=) allocate nothing and are left out."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if all(r.alias_info is None for r in func._schema.returns):
            self.sizes += [t.numel() for t in (out if isinstance(out, (tuple, list)) else [out])
                           if isinstance(t, torch.Tensor)]
        return out


@pytest.mark.parametrize("inplace", [True, False])
def test_in_place_backward_allocates_no_second_logits_tensor(inplace):
    # logits from an output layer, as in training: their gradient flows on into the matmul's backward
    B, T, V, d = 2, 8, 1000, 4
    g = torch.Generator().manual_seed(0)
    h, W = torch.randn(B * T, d, generator=g).requires_grad_(), torch.randn(V, d, generator=g).requires_grad_()
    targets = torch.randint(0, V, (B, T), generator=g)
    old = torch.full((B, T), -7.0)
    logits = (h @ W.t()).view(B, T, V)                                   # (B, T, V), before recording
    with Allocations() as seen:
        loss, _ = fused_grpo_loss(logits, targets, old, old - 0.1, torch.tensor([1.0, -1.0]), torch.ones(B, T),
                                  beta=0.1, inplace=inplace)
        loss.backward()
    full = [n for n in seen.sizes if n >= B * T * V]
    assert full == ([] if inplace else [B * T * V])                       # d logits: none in place, else one


def test_fused_linear_never_holds_the_logits():
    N, d, V, chunk = 64, 8, 1000, 16
    g = torch.Generator().manual_seed(0)
    h, W = torch.randn(N, d, generator=g).requires_grad_(), torch.randn(V, d, generator=g).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=g)
    with Allocations() as ours:
        linear_token_logprobs(h, W, targets, chunk=chunk).sum().backward()
    with Allocations() as reference:
        token_logprobs_reference(h @ W.t(), targets).sum().backward()
    assert max(reference.sizes) >= N * V                                  # the oracle: eager holds (N, V)
    assert max(ours.sizes) == max(chunk * V, V * d)                       # ours: (chunk, V) buffers and dW
    assert ours.sizes.count(chunk * V) == 2                               # one buffer forward, one backward


def test_training_path_uses_the_reference_on_cpu_and_agrees_with_the_kernel():
    # what sample.completion_logprobs calls: the reference on a CPU, the fused linear on CUDA; both agree
    import kernels
    g = torch.Generator().manual_seed(0)
    h, W = torch.randn(2, 6, 16, generator=g), torch.randn(300, 16, generator=g)
    targets = torch.randint(0, 300, (2, 6), generator=g)
    ref = kernels.logprobs_from_hidden(h, W, targets, 0.9)
    close(ref, token_logprobs_reference(h @ W.t(), targets, 0.9), 0)
    close(linear_token_logprobs(h.to(DEVICE), W.to(DEVICE), targets.to(DEVICE), 0.9).cpu(), ref, 1e-5)


# --- GPU only: bf16 on real shapes ---

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("V", [50257, 151936])
def test_bf16_kernels_on_real_shapes(V):
    # Tolerances: both sides read the same bf16 logits and keep statistics in fp32, so log-probs
    # agree to fp32 rounding of a ~V-term sum (~1e-4 relative to the logsumexp of |z| <= ~20). The
    # kernel's gradient is rounded once to bf16 (8 bits of mantissa: 2^-8 relative); softmax
    # values are <= 1, so 4e-3 absolute bounds it.
    N = 512
    g = torch.Generator("cuda").manual_seed(0)
    logits = (torch.randn(N, V, device="cuda", generator=g) * 3).bfloat16()
    targets = torch.randint(0, V, (N,), device="cuda", generator=g)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, ref = token_logprobs_triton(a, targets), token_logprobs_reference(b, targets)
    assert (ours <= 0).all()
    close(ours, ref, 2e-3)
    ours.sum().backward()
    ref.sum().backward()
    close(a.grad, b.grad, 4e-3)
    h = torch.randn(N, 1536, device="cuda", generator=g).bfloat16()
    W = (torch.randn(V, 1536, device="cuda", generator=g) * 1536 ** -0.5).bfloat16()
    close(linear_token_logprobs(h, W, targets), token_logprobs_reference(h @ W.t(), targets), 2e-2)

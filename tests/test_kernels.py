"""
The Triton kernels against their plain PyTorch references, gradients included. On a CPU they run
under Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 when there is no GPU), so shapes
are kept small; on a GPU the same tests run the compiled kernels, and the bf16 tests at the end
run on real shapes.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bench_kernels
from grpo import grpo_loss, token_weights
from grpo_kernels import (fused_grpo_loss, linear_grpo_loss, linear_token_logprobs, token_entropy, token_entropy_triton,
                     token_logprobs_triton)
from grpo_kernels.logprob import token_logprobs_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# V not a power of two, and a GPT-2-sized vocabulary with few rows
SHAPES = [(5, 37), (3, 1000), (2, 50257)]


def close(a, b, tol):
    torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=0)


@pytest.mark.parametrize("N, V", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
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
    # fp32: the same arithmetic; fp16 and bf16 (11 and 8 significant bits): each side rounds once a
    # gradient of size <= |upstream| / T, so they differ by at most two roundings of that
    bits = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}[dtype]
    close(a.grad, b.grad, 1e-6 if dtype == torch.float32 else 2 * 2.0 ** -bits * upstream.abs().max() / temperature)
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
    # the entropies too, kernel and reference: 0, log V, and that of two probabilities p, 1 - p
    p = 1 / (1 + math.exp(-1.0))
    exact = torch.tensor([0.0, math.log(V), -p * math.log(p) - (1 - p) * math.log(1 - p)])
    close(token_entropy_triton(logits)[:3].cpu(), exact, 1e-6)
    close(token_entropy(logits)[:3].cpu(), exact, 1e-6)
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
    kw = dict(eps_low=0.2, eps_high=0.28, beta=beta)
    # the kernel takes each token's weight in eq. 1's sums from its caller: grpo.py's
    ours, logp = fused_grpo_loss(a, targets, old, ref, A, token_weights(mask.float(), loss_type), temperature=0.7, **kw)
    theirs, metrics = grpo_loss(token_logprobs_reference(b, targets, 0.7), old, ref, A, mask.float(), loss_type=loss_type, **kw)
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


@pytest.mark.parametrize("on_policy", [False, True])
@pytest.mark.parametrize("loss_type, beta", [("grpo", 0.1), ("token", 0.0), ("dr_grpo", 0.1)])
def test_linear_grpo_loss_matches_grpo_py(on_policy, loss_type, beta):
    # the GRPO loss from hidden states, its gradient computed in the forward, against
    # grpo.grpo_loss of the reference log-probs of h @ W.T; on_policy: old_logp=None, which is
    # grpo_loss with old_logp = logp.detach()
    B, T, d, V = 3, 5, 16, 1000
    g = torch.Generator().manual_seed(1)
    h = torch.randn(B, T, d, generator=g).to(DEVICE)
    W = (torch.randn(V, d, generator=g) * 0.5).to(DEVICE)
    targets = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    base = token_logprobs_reference(h @ W.t(), targets, 0.7)
    old = base + (torch.randn(B, T, generator=g) * 0.5).to(DEVICE)
    ref = base + (torch.randn(B, T, generator=g) * 0.3).to(DEVICE)
    A = torch.randn(B, generator=g).to(DEVICE)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], device=DEVICE).float()
    kw, w = dict(eps_low=0.2, eps_high=0.28, beta=beta), token_weights(mask, loss_type)
    h1, W1, h2, W2 = (x.clone().requires_grad_() for x in (h, W, h, W))
    ours, logp, entropy = linear_grpo_loss(h1, W1, targets, None if on_policy else old, ref, A, w,
                                           temperature=0.7, chunk=4, with_entropy=True, **kw)  # 4 chunks, one short
    lp = token_logprobs_reference(h2 @ W2.t(), targets, 0.7)
    theirs, _ = grpo_loss(lp, lp.detach() if on_policy else old, ref, A, mask, loss_type=loss_type, **kw)
    close(ours, theirs, 1e-6)
    close(logp, base, 1e-5)
    close(entropy, token_entropy(h @ W.t(), 0.7), 1e-4)
    ours.backward()
    theirs.backward()
    close(h1.grad, h2.grad, 1e-6)
    close(W1.grad, W2.grad, 1e-6)
    assert h1.grad[2].abs().max() == 0                              # masked tokens get no gradient
    with torch.no_grad():                                           # the forward alone: the same loss
        close(linear_grpo_loss(h, W, targets, None if on_policy else old, ref, A, w, temperature=0.7, **kw)[0],
              theirs, 1e-6)


def test_fused_linear_with_a_frozen_output_layer():
    # only the gradients asked for: h's; the frozen weight gets none
    g = torch.Generator().manual_seed(2)
    h, W = torch.randn(2, 3, 8, generator=g).to(DEVICE), torch.randn(50, 8, generator=g).to(DEVICE)
    targets = torch.randint(0, 50, (2, 3), generator=g).to(DEVICE)
    A, mask = torch.tensor([1.0, -1.0], device=DEVICE), torch.ones(2, 3, device=DEVICE)

    def reference_loss(h):
        logp = token_logprobs_reference(h @ W.t(), targets)
        return grpo_loss(logp, logp.detach(), None, A, mask)[0]

    pairs = [(lambda h: linear_token_logprobs(h, W, targets, chunk=4).sum(),
              lambda h: token_logprobs_reference(h @ W.t(), targets).sum()),
             (lambda h: linear_grpo_loss(h, W, targets, None, None, A, token_weights(mask), chunk=4)[0], reference_loss)]
    for ours, reference in pairs:
        h1, h2 = h.clone().requires_grad_(), h.clone().requires_grad_()
        ours(h1).backward()
        reference(h2).backward()
        close(h1.grad, h2.grad, 1e-6)
        assert W.grad is None


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
        loss, _ = fused_grpo_loss(logits, targets, old, old - 0.1, torch.tensor([1.0, -1.0]), token_weights(torch.ones(B, T)),
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
    with Allocations() as loss:                                           # the loss: its backward in the forward
        A, mask = torch.ones(N // 8), torch.ones(N // 8, 8)
        linear_grpo_loss(h, W, targets.view(-1, 8), None, None, A, token_weights(mask), chunk=chunk)[0].backward()
    assert max(loss.sizes) == max(chunk * V, V * d) and loss.sizes.count(chunk * V) == 1


def test_training_path_uses_the_reference_on_cpu_and_agrees_with_the_kernel():
    # what grpo_update.completion_logprobs calls: the reference on a CPU, the fused linear on CUDA; both agree
    import grpo_kernels
    g = torch.Generator().manual_seed(0)
    h, W = torch.randn(2, 6, 16, generator=g), torch.randn(300, 16, generator=g)
    targets = torch.randint(0, 300, (2, 6), generator=g)
    ref = grpo_kernels.logprobs_from_hidden(h, W, targets, 0.9)
    close(ref, token_logprobs_reference(h @ W.t(), targets, 0.9), 0)
    close(linear_token_logprobs(h.to(DEVICE), W.to(DEVICE), targets.to(DEVICE), 0.9).cpu(), ref, 1e-5)


# --- GPU only: bf16 on real shapes ---
# Tolerances. bf16 keeps 8 significant bits: one rounding moves a value by at most 2^-8 of itself.
# - Log-probs from the same bf16 logits: both sides keep statistics in fp32, so they differ only by
#   fp32 rounding of a V-term sum, ~1e-6 relative to a logsumexp of |z| <= ~20: 1e-3 absolute.
# - Gradients of logits: each side rounds its fp32 gradient once to bf16, and the gradient's size
#   is at most |g| / T (g: the upstream gradient of the log-prob), so they differ by <= 2 2^-8 |g| / T.
# - From hidden states, the oracle is fp32 (h and W upcast): our logits are bf16 GEMM outputs, off by
#   up to 2^-8 |z| <= 0.025 with |z| <= ~6 here, so a log-prob (z_y minus a logsumexp) is off by up to
#   twice that. dh and dW are bf16 GEMM outputs of such gradients: compared in norm, within 1%.

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def bf16_logits(N, V, generator):
    """(N, V) bf16 logits of scale 3, the first rows extreme: +-1e4, a ramp, two tied maxima."""
    logits = torch.randn(N, V, device="cuda", generator=generator) * 3
    logits[0, 5], logits[1] = 1e4, torch.linspace(-1e4, 1e4, V, device="cuda")
    logits[2, 7], logits[2, 9] = 1e4, 1e4
    return logits.bfloat16()


@cuda
@pytest.mark.parametrize("V", [50257, 151936])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_bf16_logprob_kernel_on_real_shapes(V, temperature):
    N = 1000
    g = torch.Generator("cuda").manual_seed(V)
    logits = bf16_logits(N, V, g)
    targets = torch.randint(0, V, (N,), device="cuda", generator=g)
    targets[0], targets[1], targets[2] = 5, V - 1, 9
    upstream = torch.randn(N, device="cuda", generator=g)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, ref = token_logprobs_triton(a, targets, temperature), token_logprobs_reference(b, targets, temperature)
    assert (ours <= 0).all()
    close(ours, ref, 1e-3)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    close(a.grad, b.grad, 2 * 2 ** -8 * upstream.abs().max().item() / temperature)
    close(token_entropy_triton(logits, temperature), token_entropy(logits, temperature), 1e-3)


@cuda
@pytest.mark.parametrize("V", [50257, 151936])
def test_bf16_fused_grpo_loss_on_real_shapes(V):
    B, T = 8, 125                                                  # N = 1000 tokens
    g = torch.Generator("cuda").manual_seed(V)
    logits = bf16_logits(B * T, V, g).view(B, T, V)
    targets = torch.randint(0, V, (B, T), device="cuda", generator=g)
    base = token_logprobs_reference(logits, targets, 0.7)
    old = base + torch.randn(B, T, device="cuda", generator=g) * 0.3
    ref = base + torch.randn(B, T, device="cuda", generator=g) * 0.3
    A = torch.randn(B, device="cuda", generator=g)
    mask = (torch.arange(T, device="cuda") < torch.randint(1, T + 1, (B, 1), device="cuda", generator=g)).float()
    mask[3] = 0                                                    # an all-masked output
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    kw = dict(eps_low=0.2, eps_high=0.28, beta=0.04)
    ours, _ = fused_grpo_loss(a, targets, old, ref, A, token_weights(mask), temperature=0.7, inplace=True, **kw)
    logp = token_logprobs_reference(b, targets, 0.7)
    logp.retain_grad()                                             # g, the upstream gradient of the log-probs
    theirs, _ = grpo_loss(logp, old, ref, A, mask, **kw)
    close(ours, theirs, 1e-4)
    ours.backward()
    theirs.backward()
    close(a.grad, b.grad, 2 * 2 ** -8 * logp.grad.abs().max().item() / 0.7)
    assert a.grad[3].abs().max() == 0


@cuda
@pytest.mark.parametrize("V, d", [(50304, 768), (151936, 1536)])
def test_bf16_fused_linear_on_real_shapes(V, d):
    N = 1000
    g = torch.Generator("cuda").manual_seed(V)
    h = torch.randn(N, d, device="cuda", generator=g).bfloat16()
    W = (torch.randn(V, d, device="cuda", generator=g) * d ** -0.5).bfloat16()
    targets = torch.randint(0, V, (N,), device="cuda", generator=g)
    upstream = torch.randn(N, device="cuda", generator=g)
    h1, W1 = h.clone().requires_grad_(), W.clone().requires_grad_()
    h2, W2 = h.float().requires_grad_(), W.float().requires_grad_()
    ours = linear_token_logprobs(h1, W1, targets, 0.7, chunk=256)  # four chunks, the last one short
    ref = token_logprobs_reference(h2 @ W2.t(), targets, 0.7)
    assert (ours <= 0).all()
    close(ours, ref, 5e-2)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for x, y in ((h1.grad, h2.grad), (W1.grad, W2.grad)):
        assert (x.float() - y).norm() / y.norm() < 1e-2


def test_bench_runs_every_implementation_and_they_agree(capsys):
    # tests/bench_kernels.py end to end on a tiny shape: on a CPU a smoke run under the interpreter
    # (its timings mean nothing); what is checked is that every row is there and agrees with eager
    bench_kernels.main(["--device", DEVICE, "--shape", "32,333,16", "--dtype", "fp32", "--no_compile", "--reps", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ") and " ms " not in line]
    names = [line[:24].strip() for line in lines]
    assert [n for n in names if n != "liger"] == ["eager", "ours", "eager", "ours, log-probs", "ours, loss"]
    for line in lines:
        loss_err, grad_err = map(float, line.split()[-2:])
        assert loss_err < 1e-5 and grad_err < 1e-5, line  # against eager

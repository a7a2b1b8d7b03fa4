"""
Benchmark of the log-prob / GRPO-loss paths, every implementation side by side in one run.

    python tests/bench_kernels.py              # on a GPU: the two default shapes, bf16
    python tests/bench_kernels.py --shape 2048,50304,768 --no_compile     # any shape, N,V,d
    TRITON_INTERPRET=1 python tests/bench_kernels.py --device cpu --shape 64,1000,16 --dtype fp32 --no_compile
                                               # a smoke run of every code path on a CPU (tests do this)

It lives beside the tests, not in grpo_kernels/: it compares the kernels with grpo.py's equations (the
reference), and the kernels themselves import only torch and triton.

First the device's own limits are measured: memory bandwidth (a large copy) and the matmul rate
(a large square matmul in the benchmark's dtype). Then, for each shape (N tokens, vocabulary V,
width d):

  logits level, the GRPO loss of eq. 1-2 from (N, V) logits, forward and forward+backward:
    eager     grpo.grpo_loss(grpo_kernels.logprob.token_logprobs_reference(logits))
    compile   torch.compile of the same function
    ours      grpo_kernels.grpo_loss.fused_grpo_loss (gradient written in place into the logits)
    liger     liger_kernel.transformers.grpo_loss.triton_grpo_loss, when installed
  achieved GB/s counts the bytes the fused path must move: the logits read once forward, read
  once and written once backward (3 N V bytes-per-element for fwd+bwd), for every implementation.

  from hidden states, the same GRPO loss from hidden states (N, d) and the output weight (V, d):
    eager            logits = h @ W.T, then as above (the (N, V) logits and their fp32 copies exist)
    compile          torch.compile of the same
    ours, log-probs  grpo_loss of grpo_kernels.fused_linear.linear_token_logprobs: chunks of tokens, the
                     logits recomputed in the backward (4 matmuls of 2 N V d flops each)
    ours, loss       grpo_kernels.fused_linear.linear_grpo_loss: the gradient computed in the forward (3),
                     what train.py runs on CUDA
    liger            liger_kernel.chunked_loss.LigerFusedLinearGRPOLoss, when installed
  achieved TFLOP/s counts 6 N V d (forward, d h, d W), against the measured matmul rate.

Before anything is timed, every implementation's loss and gradients are compared with eager's on
the same inputs (columns "loss err" and "grad err": max absolute differences), so that a fast
number can never come from a wrong answer. Peak memory (CUDA only) is what an implementation
allocated beyond its inputs. Times are medians of wall-clock timings after warm-up, with the
device synchronised around each. Nothing here is a test: run it on a GPU and read the table.
"""

import argparse
import importlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from grpo import grpo_loss, token_weights  # noqa: E402
from grpo_kernels.fused_linear import linear_grpo_loss, linear_token_logprobs  # noqa: E402
from grpo_kernels.grpo_loss import fused_grpo_loss  # noqa: E402
from grpo_kernels.logprob import token_logprobs_reference  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

parser = argparse.ArgumentParser(description="benchmark of the log-prob and GRPO-loss kernels")
parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu needs TRITON_INTERPRET=1: a smoke run of the code paths, not a measurement")
parser.add_argument("--shape", action="append", default=None, metavar="N,V,d",
                    help="tokens, vocabulary, width; repeatable (default: 16384,151936,1536 and 16384,50304,768)")
parser.add_argument("--dtype", default="bf16", choices=list(DTYPES), help="dtype of logits, hidden states, weight")
parser.add_argument("--reps", type=int, default=10, help="timed repetitions per measurement")
parser.add_argument("--no_compile", action="store_true", help="skip torch.compile (it takes minutes to compile)")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps, device):
    """Median milliseconds of fn() over reps runs, after two warm-up runs."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_extra(fn, device):
    """Bytes allocated by fn() beyond what was allocated before it (None off CUDA)."""
    if device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def device_limits(device, dtype, reps):
    """(copy bandwidth GB/s, matmul TFLOP/s) measured on this device."""
    nbytes, n = (2 * 1024 ** 3, 8192) if device == "cuda" else (64 * 1024 ** 2, 512)
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    bandwidth = 2 * nbytes / (timed(lambda: y.copy_(x), reps, device) / 1e3) / 1e9  # read + write
    a = torch.randn(n, n, device=device).to(dtype)
    tflops = 2 * n ** 3 / (timed(lambda: a @ a, reps, device) / 1e3) / 1e12
    return bandwidth, tflops


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def grpo_inputs(base, generator):
    """old_logp, ref_logp, advantages, mask for a (B, T) rollout whose current log-probs are base:
    ratios near 1 (some clipped), a KL term, and one output shorter than the rest."""
    B, T = base.shape
    old = base + torch.randn(B, T, device=base.device, generator=generator) * 0.1
    ref = base + torch.randn(B, T, device=base.device, generator=generator) * 0.1
    adv = torch.randn(B, device=base.device, generator=generator)
    mask = torch.ones(B, T, device=base.device)
    mask[0, T // 2:] = 0
    return old, ref, adv, mask


KW = dict(eps_low=0.2, beta=0.04)  # grpo_loss's settings in both sections


def measure(impls, inputs, reps, device):
    """Rows (name, fwd ms, fwd+bwd ms, peak bytes, loss err, grad err) for implementations
    {name: (fn, prepare)}: fn(*tensors) -> loss, prepare(inputs) -> its own copy of the tensors it
    takes (the in-place ones overwrite them). The first implementation is the one the others are
    checked against, on the gradients of the tensors they share with it (leading slices)."""
    rows, expected = [], None
    for name, (fn, prepare) in impls.items():
        own = [x.clone() for x in prepare(inputs)]
        leaves = [x.clone().requires_grad_() for x in own]
        loss = fn(*leaves)
        loss.backward()
        grads = [x.grad for x in leaves]
        if expected is None:
            expected = loss.detach(), grads
        sliced = [g[tuple(slice(0, n) for n in e.shape)] for g, e in zip(grads, expected[1])]
        errs = max_err(loss, expected[0]), max(max_err(g, e) for g, e in zip(sliced, expected[1]))
        del leaves, loss, grads, sliced

        def fwd():
            with torch.no_grad():
                fn(*own)

        def fwd_bwd():
            # the in-place backwards overwrite `own` with its gradient: later repetitions see
            # other values but do the same work
            fn(*(x.requires_grad_() for x in own)).backward()
            for x in own:
                x.requires_grad_(False)
                x.grad = None

        rows.append((name, timed(fwd, reps, device), timed(fwd_bwd, reps, device), peak_extra(fwd_bwd, device), *errs))
    return rows


def liger(module, name):
    """liger_kernel.<module>.<name>, or None when Liger-Kernel is not installed."""
    try:
        return getattr(importlib.import_module(f"liger_kernel.{module}"), name)
    except ImportError:
        return None


def logits_level(N, V, dtype, device, reps, use_compile):
    """The GRPO loss from (N, V) logits: rows as measure's, and the bytes of one fwd+bwd."""
    B, T = 16, max(1, N // 16)                                          # N tokens as (B, T)
    g = torch.Generator(device).manual_seed(0)
    logits = (torch.randn(B, T, V, device=device, generator=g) * 2).to(dtype)
    ids = torch.randint(0, V, (B, T), device=device, generator=g)
    with torch.no_grad():
        old, ref, adv, mask = grpo_inputs(token_logprobs_reference(logits, ids), g)

    def eager(z):
        return grpo_loss(token_logprobs_reference(z, ids), old, ref, adv, mask, **KW)[0]

    same = lambda z: [z]  # noqa: E731
    impls = {"eager": (eager, same)}
    if use_compile:
        impls["compile"] = (torch.compile(eager), same)
    w = token_weights(mask)  # each token's weight in eq. 1's sums: what the kernels take from their caller
    impls["ours"] = (lambda z: fused_grpo_loss(z, ids, old, ref, adv, w, inplace=True, **KW)[0], same)
    triton_grpo_loss = liger("transformers.grpo_loss", "triton_grpo_loss")
    if triton_grpo_loss:
        # Liger takes (B, T+1, V) logits and drops the last position: its own padded copy, made
        # once outside the timings, so that it is timed on the same work as the others
        impls["liger"] = (lambda z: triton_grpo_loss(z, old, ref, ids, adv, mask, temperature=1.0, eps_high=0.2,
                                                     loss_type="grpo", inplace=True, reduce=True, **KW)[0],
                          lambda z: [torch.cat([z, z[:, :1]], 1)])
    return measure(impls, logits, reps, device), 3 * N * V * logits.element_size()


def from_hidden(N, V, d, dtype, device, reps, use_compile):
    """The GRPO loss from hidden states (N, d) and the output weight (V, d): rows as measure's, and
    the flops of one fwd+bwd."""
    B, T = 16, max(1, N // 16)
    g = torch.Generator(device).manual_seed(0)
    h = torch.randn(B, T, d, device=device, generator=g).to(dtype)
    W = (torch.randn(V, d, device=device, generator=g) * d ** -0.5).to(dtype)
    ids = torch.randint(0, V, (B, T), device=device, generator=g)
    with torch.no_grad():
        old, ref, adv, mask = grpo_inputs(token_logprobs_reference(h @ W.t(), ids), g)

    def eager(h, W):
        return grpo_loss(token_logprobs_reference(h @ W.t(), ids), old, ref, adv, mask, **KW)[0]

    same = lambda hW: hW  # noqa: E731
    impls = {"eager": (eager, same)}
    if use_compile:
        impls["compile"] = (torch.compile(eager), same)
    impls["ours, log-probs"] = (lambda h, W: grpo_loss(linear_token_logprobs(h, W, ids), old, ref, adv, mask, **KW)[0],
                                same)
    w = token_weights(mask)
    impls["ours, loss"] = (lambda h, W: linear_grpo_loss(h, W, ids, old, ref, adv, w, **KW)[0], same)
    LigerLoss = liger("chunked_loss", "LigerFusedLinearGRPOLoss")
    if LigerLoss:
        fn = LigerLoss(beta=KW["beta"], epsilon_low=KW["eps_low"], epsilon_high=KW["eps_low"], loss_type="grpo",
                       compiled=device == "cuda", chunk_size=1)
        impls["liger"] = (lambda h, W: fn(h, W, ids, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old)[0],
                          same)
    return measure(impls, (h, W), reps, device), 6 * N * V * d


def gib(nbytes):
    return "-" if nbytes is None else f"{nbytes / 2 ** 30:.2f}"


def main(argv=None):
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_kernels: no CUDA GPU here; for a smoke run on a CPU: TRITON_INTERPRET=1 python "
                         "tests/bench_kernels.py --device cpu --shape 64,1000,16 --dtype fp32 --no_compile")
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("bench_kernels: --device cpu runs the kernels under Triton's interpreter: set TRITON_INTERPRET=1")
    try:
        shapes = [tuple(int(x) for x in s.split(",")) for s in (args.shape or ["16384,151936,1536", "16384,50304,768"])]
        assert all(len(s) == 3 and min(s) > 0 for s in shapes)
    except (ValueError, AssertionError):
        raise SystemExit(f"bench_kernels: --shape takes three positive integers N,V,d, got {args.shape}")
    dtype = DTYPES[args.dtype]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (Triton interpreter)"
    bandwidth, tflops = device_limits(args.device, dtype, args.reps)
    print(f"{name}: measured copy bandwidth {bandwidth:.0f} GB/s, {args.dtype} matmul {tflops:.1f} TFLOP/s")
    for N, V, d in shapes:
        print(f"\nN={N} V={V} d={d}, {args.dtype}")
        rows, nbytes = logits_level(N, V, dtype, args.device, args.reps, not args.no_compile)
        print("  GRPO loss from logits   fwd ms  fwd+bwd ms   GB/s  % of bandwidth  peak GiB  vs eager  loss err  grad err")
        for impl, f, fb, mem, loss_err, grad_err in rows:
            gbs = nbytes / (fb / 1e3) / 1e9
            print(f"  {impl:22s} {f:7.2f} {fb:11.2f} {gbs:6.0f} {100 * gbs / bandwidth:14.0f}% {gib(mem):>9s} "
                  f"{rows[0][2] / fb:8.1f}x {loss_err:9.1e} {grad_err:9.1e}")
        rows, flops = from_hidden(N, V, d, dtype, args.device, args.reps, not args.no_compile)
        print("  GRPO loss from hidden   fwd ms  fwd+bwd ms  TFLOP/s  % of matmul  peak GiB  vs eager mem  loss err  grad err")
        for impl, f, fb, mem, loss_err, grad_err in rows:
            tf = flops / (fb / 1e3) / 1e12
            ratio = "-" if mem is None else f"{mem / rows[0][3]:.3f}"
            print(f"  {impl:22s} {f:7.2f} {fb:11.2f} {tf:8.1f} {100 * tf / tflops:11.0f}% {gib(mem):>9s} {ratio:>13s} "
                  f"{loss_err:9.1e} {grad_err:9.1e}")


if __name__ == "__main__":
    main()

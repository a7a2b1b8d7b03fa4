"""
Benchmark of the log-prob / GRPO-loss paths on a GPU, every implementation side by side in one run.

    python -m kernels.bench                    # the issue's two shapes, bf16
    python -m kernels.bench --quick            # small shapes, to check that everything runs

First the GPU's own limits are measured: memory bandwidth (a large device-to-device copy) and
the bf16 matmul rate (an 8192^3 matmul). Then, for each shape (N tokens, vocabulary V, width d):

  logits level, the GRPO loss of eq. 1-2 from (N, V) bf16 logits, forward and forward+backward:
    eager     grpo.grpo_loss(kernels.logprob.token_logprobs_reference(logits))
    compile   torch.compile of the same function
    ours      kernels.grpo_loss.fused_grpo_loss (gradient written in place into the logits)
    liger     liger_kernel.transformers.grpo_loss.triton_grpo_loss, when installed
  achieved GB/s counts the bytes the fused path must move: the logits read once forward, read
  once and written once backward (3 N V x 2 bytes for fwd+bwd), for every implementation.

  fused linear, log-probs from hidden states (N, d) and the output weight (V, d), then the loss:
    eager     logits = h @ W.T, then the reference (the (N, V) logits and their fp32 copies exist)
    compile   torch.compile of the same
    ours      kernels.fused_linear.linear_token_logprobs (chunks of tokens; logits recomputed backward)
  achieved TFLOP/s counts 6 N V d (forward, d h, d W), against the measured bf16 matmul rate.

Peak memory is what the implementation allocated beyond its inputs. Times are medians of CUDA
event timings after warm-up. Nothing here is a test: run it on a GPU and read the table.
"""

import argparse
import statistics

import torch

from grpo import grpo_loss
from kernels.fused_linear import linear_token_logprobs
from kernels.grpo_loss import fused_grpo_loss
from kernels.logprob import token_logprobs_reference

parser = argparse.ArgumentParser(description="GPU benchmark of the log-prob and GRPO-loss kernels")
parser.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
parser.add_argument("--reps", type=int, default=10, help="timed repetitions per measurement")
parser.add_argument("--no_compile", action="store_true", help="skip torch.compile (it takes minutes to compile)")


def timed(fn, reps):
    """Median milliseconds of fn() over reps runs, after two warm-up runs."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def peak_extra(fn):
    """Bytes allocated by fn() beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def copy_bandwidth():
    x = torch.empty(2 * 1024 ** 3, dtype=torch.uint8, device="cuda")  # 2 GiB
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x), 10)
    return 2 * x.numel() / (ms / 1e3) / 1e9                           # read + write, GB/s


def gpu_limits():
    bandwidth = copy_bandwidth()
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = timed(lambda: a @ a, 10)
    tflops = 2 * 8192 ** 3 / (ms / 1e3) / 1e12
    return bandwidth, tflops


def logits_level(N, V, reps, use_compile):
    B, T = 16, N // 16
    g = torch.Generator("cuda").manual_seed(0)
    logits = torch.randn(B, T, V, device="cuda", dtype=torch.bfloat16, generator=g)
    ids = torch.randint(0, V, (B, T), device="cuda", generator=g)
    old = torch.randn(B, T, device="cuda", generator=g) * 0.1 - 12
    ref = old + torch.randn(B, T, device="cuda", generator=g) * 0.1
    adv = torch.randn(B, device="cuda", generator=g)
    mask = torch.ones(B, T, device="cuda")
    kw = dict(eps_low=0.2, beta=0.04)

    def eager(z):
        return grpo_loss(token_logprobs_reference(z, ids), old, ref, adv, mask, **kw)[0]

    impls = {"eager": eager}
    if use_compile:
        impls["compile"] = torch.compile(eager)
    impls["ours"] = lambda z: fused_grpo_loss(z, ids, old, ref, adv, mask, inplace=True, **kw)[0]
    try:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
        pad = torch.zeros(B, 1, V, device="cuda", dtype=torch.bfloat16)
        impls["liger"] = lambda z: triton_grpo_loss(torch.cat([z, pad], 1), old, ref, ids, adv, mask, temperature=1.0,
                                                    eps_high=0.2, loss_type="grpo", inplace=True, reduce=True, **kw)[0]
    except ImportError:
        pass

    rows = []
    for name, fn in impls.items():
        def fwd():
            with torch.no_grad():
                fn(logits)

        def fwd_bwd():
            # shares the logits' storage: the in-place backwards (ours, liger) overwrite it with the
            # gradient, which changes the values of later repetitions but not the work they do
            z = logits.detach().requires_grad_()
            fn(z).backward()

        # liger concatenates a padding column: its copy is part of its cost here, as it is in use
        rows.append((name, timed(fwd, reps), timed(fwd_bwd, reps), peak_extra(fwd_bwd)))
    return rows, 3 * N * V * 2


def fused_linear(N, V, d, reps, use_compile):
    g = torch.Generator("cuda").manual_seed(0)
    h = torch.randn(N, d, device="cuda", dtype=torch.bfloat16, generator=g)
    W = torch.randn(V, d, device="cuda", dtype=torch.bfloat16, generator=g) * d ** -0.5
    ids = torch.randint(0, V, (N,), device="cuda", generator=g)

    def eager(h, W):
        return token_logprobs_reference(h @ W.t(), ids).sum()

    impls = {"eager": eager}
    if use_compile:
        impls["compile"] = torch.compile(eager)
    impls["ours"] = lambda h, W: linear_token_logprobs(h, W, ids).sum()
    rows = []
    for name, fn in impls.items():
        def fwd():
            with torch.no_grad():
                fn(h, W)

        def fwd_bwd():
            hh, WW = h.detach().requires_grad_(), W.detach().requires_grad_()
            fn(hh, WW).backward()

        rows.append((name, timed(fwd, reps), timed(fwd_bwd, reps), peak_extra(fwd_bwd)))
    return rows, 6 * N * V * d


def main():
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernels.bench needs a CUDA GPU (the kernels' CPU tests: TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py)")
    bandwidth, tflops = gpu_limits()
    print(f"{torch.cuda.get_device_name()}: measured copy bandwidth {bandwidth:.0f} GB/s, bf16 matmul {tflops:.0f} TFLOP/s")
    shapes = [(1024, 32000, 512)] if args.quick else [(16384, 151936, 1536), (16384, 50304, 768)]
    for N, V, d in shapes:
        print(f"\nN={N} V={V} d={d}, bf16")
        rows, nbytes = logits_level(N, V, args.reps, not args.no_compile)
        print("  GRPO loss from logits   fwd ms  fwd+bwd ms  fwd+bwd GB/s  % of bandwidth  peak extra GiB  vs eager")
        eager_ms = rows[0][2]
        for name, f, fb, mem in rows:
            gbs = nbytes / (fb / 1e3) / 1e9
            print(f"  {name:22s} {f:7.2f} {fb:11.2f} {gbs:13.0f} {100 * gbs / bandwidth:14.0f}% {mem / 2 ** 30:15.2f} "
                  f"{eager_ms / fb:8.1f}x")
        rows, flops = fused_linear(N, V, d, args.reps, not args.no_compile)
        print("  log-probs from hidden   fwd ms  fwd+bwd ms  fwd+bwd TFLOP/s  % of matmul  peak extra GiB  vs eager mem")
        eager_mem = rows[0][3]
        for name, f, fb, mem in rows:
            tf = flops / (fb / 1e3) / 1e12
            print(f"  {name:22s} {f:7.2f} {fb:11.2f} {tf:16.0f} {100 * tf / tflops:11.0f}% {mem / 2 ** 30:15.2f} "
                  f"{mem / eager_mem:11.3f}")


if __name__ == "__main__":
    main()

"""
Fast paths for the per-token log-prob computation and the GRPO loss, each beside its plain
PyTorch reference.

    logprob.py       log pi(y) (and entropy) from logits: online logsumexp, one read of the logits
                     forward, one read and one write backward (optionally in place)
    grpo_loss.py     the GRPO loss of eq. 1-2 fused into that pass (ratio, clipping, k3 KL, masking)
    fused_linear.py  both from hidden states and the output weight, in chunks of tokens: the
                     (N, V) logits never exist in memory at once

A leaf: each kernel imports only torch and triton, and takes what the paper's equations give
(each token's weight in eq. 1's sums, grpo.token_weights) from its caller. A kernel's module (and
triton, ~0.2 s) is imported when the kernel is first used (`kernel`); the references
(reference.py) are torch only, so a CPU run never imports triton. What the project calls:
`token_logprobs` (from logits, for the sampler: sample.py), `logprobs_from_hidden` (from hidden
states: the old policy's and the reference model's log-probs, and SFT's) and `linear_grpo_loss`
(the trainer's loss on CUDA: grpo_update.py). The benchmark, eager against
torch.compile against these kernels (and Liger-Kernel when installed), is
tests/bench_kernels.py. `grpo_kernels.USE` says where the kernels are taken:
"cuda" (the default) on CUDA tensors and the references on a CPU; "never" (train.py
--no_kernels); "always", CPU tensors included, which needs TRITON_INTERPRET=1 there (the tests
use it to run the sampler and the trainer through the kernels on a CPU).

    TRITON_INTERPRET=1 python -m pytest tests/test_kernels.py    # conftest.py sets it without a GPU
"""

import importlib

from grpo_kernels.reference import token_entropy, token_logprobs_reference

USE = "cuda"
# each kernel's module under grpo_kernels/: all import triton, so they load on first use
KERNELS = {"token_logprobs_triton": "logprob", "token_entropy_triton": "logprob",
           "fused_grpo_loss": "grpo_loss", "linear_token_logprobs": "fused_linear",
           "linear_grpo_loss": "fused_linear"}


def kernel(name):
    """The kernel `name` of KERNELS, its module imported on first use (then found directly)."""
    if name not in globals():
        globals()[name] = getattr(importlib.import_module(f"grpo_kernels.{KERNELS[name]}"), name)
    return globals()[name]


def __getattr__(name):
    """`grpo_kernels.NAME`, `from grpo_kernels import NAME`: a kernel not imported yet (PEP 562)."""
    if name in KERNELS:
        return kernel(name)
    raise AttributeError(f"module 'grpo_kernels' has no attribute {name!r}")


def fast(t) -> bool:
    """Use the kernels for this tensor?"""
    return USE == "always" or (USE == "cuda" and t.is_cuda)


def token_logprobs(logits, targets, temperature=1.0):
    """log pi(targets) (...) in fp32 from logits (..., V), always <= 0."""
    if fast(logits):
        return kernel("token_logprobs_triton")(logits, targets, temperature)
    return token_logprobs_reference(logits, targets, temperature)


def logprobs_from_hidden(h, weight, targets, temperature=1.0, with_entropy=False):
    """log pi(targets) from hidden states h (..., d) and the output weight (V, d): on CUDA without
    ever holding the (N, V) logits; on a CPU through the logits and the reference."""
    if fast(h):
        return kernel("linear_token_logprobs")(h, weight, targets, temperature,
                                               with_entropy=with_entropy)
    logits = h @ weight.t()
    logp = token_logprobs_reference(logits, targets, temperature)
    return (logp, token_entropy(logits, temperature)) if with_entropy else logp


__all__ = ["token_logprobs", "logprobs_from_hidden", "token_logprobs_reference", "token_entropy",
           "token_logprobs_triton", "token_entropy_triton", "linear_token_logprobs",
           "linear_grpo_loss", "fused_grpo_loss", "USE"]

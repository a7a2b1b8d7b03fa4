"""
Fast paths for the per-token log-prob computation, each beside its plain PyTorch reference.

`token_logprobs` is what sample.py and train.py call. For now it is the reference of
kernels/logprob.py on every device: the fused Triton kernels (log-prob, GRPO terms and the
fused output layer) will be added here, with the reference kept beside each as its oracle.
"""

from kernels.logprob import token_logprobs_reference as token_logprobs, token_entropy

__all__ = ["token_logprobs", "token_entropy"]

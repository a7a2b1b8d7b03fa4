"""Checks of exercise 6 against grpo_kernels.logprob.token_logprobs_reference: values, gradients,
temperature, bf16 input and logits of +-1e4."""

import torch

from exercises import Mismatch
from exercises.checks import grad, same
from grpo_kernels.logprob import token_logprobs_reference as ref

TITLE = "per-token log-probs from logits"
EQUATION = "eq. 1-3"
PROJECT = "grpo_kernels/logprob.py: token_logprobs_reference"
REFERENCE = "from grpo_kernels.logprob import token_logprobs_reference"
PLUG = [("grpo_kernels", "token_logprobs_reference")]


def check(m):
    f = m.token_logprobs_reference
    g = torch.Generator().manual_seed(6)
    logits, y = torch.randn(3, 5, 11, generator=g) * 3, torch.randint(0, 11, (3, 5), generator=g)
    huge = torch.tensor([[1e4, -1e4, 0.0, 1e4 - 5], [-1e4, -1e4, -1e4, -1e4 + 2]])
    y_huge = torch.tensor([3, 0])
    cases = [("random (3, 5, 11) logits", (logits, y), {}),
             ("random logits at temperature 0.7", (logits, y), {"temperature": 0.7}),
             ("logits of +-1e4", (huge, y_huge), {}),
             ("a (2, 4) row of logits of +-1e4 at temperature 2", (huge, torch.tensor([1, 3])),
              {"temperature": 2.0})]
    for what, (z, t), kw in cases:
        same(f(z.clone(), t, **kw), ref(z, t, **kw), f"your log-probs for {what}", atol=1e-4)
        same(grad(lambda x: f(x, t, **kw), z)[0], grad(lambda x: ref(x, t, **kw), z)[0],
             f"the gradient of your log-probs with respect to the logits, for {what}", atol=1e-5)
    out = f(logits.bfloat16(), y)
    if out.dtype != torch.float32:
        raise Mismatch(f"your log-probs of bf16 logits are {out.dtype}; expected torch.float32 "
                       f"(compute in fp32)")
    same(out, ref(logits.bfloat16(), y), "your log-probs of bf16 logits", atol=1e-4)

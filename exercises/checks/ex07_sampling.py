"""Checks of exercise 7 against sample.sample_next: greedy, then token frequencies over 10000
draws under temperature, top-k and top-p, the log-probs returned, and the generator's use."""

import torch

import grpo_kernels
import sample
from exercises import Mismatch
from exercises.checks import same

TITLE = "temperature, top-k, top-p sampling"
EQUATION = "-"
PROJECT = "sample.py: sample_next"
REFERENCE = "from sample import sample_next"
PLUG = [("sample", "sample_next")]
N = 10000


def draws(fn, logits, kw, seed):
    tok, logp = fn(logits, generator=torch.Generator().manual_seed(seed), **kw)
    if not torch.is_tensor(tok) or tok.shape != logits.shape[:1]:
        raise Mismatch(f"with {kw} your tokens are {type(tok).__name__} of shape "
                       f"{getattr(tok, 'shape', '?')}; expected a tensor of shape "
                       f"({logits.size(0)},)")
    return tok, logp


def check(m):
    f = m.sample_next
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 10, generator=g) * 2
    tok, logp = f(logits, 0.0)
    same(tok, logits.argmax(-1), "your greedy tokens (temperature 0)")
    same(logp, grpo_kernels.token_logprobs(logits, logits.argmax(-1)),
         "your log-probs of greedy tokens")
    # shuffled
    row = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -3.0])[[3, 0, 6, 2, 7, 1, 5, 4]]
    z = row.expand(N, -1)
    for kw in ({"temperature": 1.0}, {"temperature": 0.6}, {"temperature": 1.0, "top_k": 3},
               {"temperature": 1.0, "top_p": 0.8}, {"temperature": 0.7, "top_k": 4, "top_p": 0.9},
               {"temperature": 1.0, "top_k": 20}):
        tok, logp = draws(f, z, kw, 0)
        ref_tok, _ = draws(sample.sample_next, z, kw, 0)
        got, exp = (torch.bincount(t, minlength=8).float() / N for t in (tok, ref_tok))
        worst = (got - exp).abs().argmax().item()
        if abs(got[worst] - exp[worst]) > 0.03:
            raise Mismatch(f"with {kw} you draw token {worst} (logit {row[worst].item():g}) with "
                           f"frequency {got[worst]:.3f}; the project's sampler {exp[worst]:.3f} "
                           f"(all: {got.tolist()} vs {[round(x, 3) for x in exp.tolist()]})")
        same(logp, grpo_kernels.token_logprobs(z, tok, kw["temperature"]),
             f"with {kw} the log-probs you return (the temperature-scaled, untruncated ones)")
    a, b = (draws(f, logits, {"temperature": 1.0}, 5)[0] for _ in range(2))
    if not torch.equal(a, b):
        raise Mismatch("two draws with generators seeded alike differ: draw with "
                       "torch.multinomial(..., generator=generator)")

"""
Exercise 7: temperature, top-k and top-p sampling of the next token (the project's version:
sample.py, sample_next).

GRPO samples its G outputs per question from the policy at a temperature; evaluation (R1 paper:
temperature 0.6, top-p 0.95) also truncates the distribution. Fill in the body, then:
python -m exercises check 7
"""

import torch

# exercise 6 underneath: log pi(y) from logits at a temperature
from grpo_kernels import token_logprobs


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """
    Draw one token per row of logits (B, V) -> (tokens (B,) long, their log-probs (B,) float32).

    temperature 0: greedy (argmax); the log-prob is then token_logprobs(logits, tok)
                   (temperature 1).
    otherwise draw from softmax(logits / temperature) restricted to
      top_k > 0:   the k likeliest tokens (0: off)
      top_p < 1:   the smallest set of likeliest tokens whose probability reaches top_p (a token is
                   kept if the mass of the tokens likelier than it is <= top_p) (1.0: off)
    Draw with torch.multinomial(probs, 1, generator=generator), so that a seeded generator makes
    the draw reproducible. The log-prob returned is token_logprobs(logits, tok, temperature):
    under the temperature-scaled distribution, NOT the truncated one (the trainer computes the
    former; truncation changes what is drawn, not that number).
    """
    raise NotImplementedError  # TODO

"""Checks of exercise 2 against grpo.kl_k3: values, gradients, sign, and unbiasedness by Monte
Carlo."""

import torch

import grpo
from exercises import Mismatch
from exercises.checks import grad, same

TITLE = "k3 KL estimator, unbiased"
EQUATION = "eq. 2"
PROJECT = "grpo.py: kl_k3"
REFERENCE = "from grpo import kl_k3"
PLUG = [("grpo", "kl_k3")]


def check(m):
    f, ref = m.kl_k3, grpo.kl_k3
    g = torch.Generator().manual_seed(2)
    logp, ref_logp = -torch.rand(6, 9, generator=g) * 4, -torch.rand(6, 9, generator=g) * 4
    same(f(logp, logp.clone()), torch.zeros(6, 9), "your KL where logp equals ref_logp")
    same(f(logp, ref_logp), ref(logp, ref_logp), "your KL per token of random log-probs")
    for got, exp, name in zip(grad(f, logp, ref_logp), grad(ref, logp, ref_logp),
                              ("logp", "ref_logp")):
        same(got, exp, f"the gradient of your KL with respect to {name}")
    far = torch.tensor([-30.0, -0.01]), torch.tensor([-0.01, -30.0])
    same(f(*far), ref(*far),
         "your KL for tokens of probability e^-30 under one model and ~1 under the other",
         rtol=1e-4)
    # unbiased: the mean over tokens sampled from pi approaches KL(pi || ref) of two categoricals
    pi, pr = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.5, 0.3])
    true_kl = (pi * (pi / pr).log()).sum().item()
    x = torch.multinomial(pi, 200000, replacement=True, generator=g)
    est = f(pi.log()[x], pr.log()[x]).mean().item()
    if abs(est - true_kl) > 0.01:
        raise Mismatch(f"your estimator is biased: its mean over 200000 tokens sampled from pi is "
                       f"{est:.4f}, but KL(pi || pi_ref) = {true_kl:.4f} "
                       f"(is the ratio pi_ref / pi, or the other way round?)")

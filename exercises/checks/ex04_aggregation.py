"""Checks of exercise 4 against grpo.loss_normalizer, and the length-bias answers measured with
grpo.grpo_loss's own gradients."""

import torch

import grpo
from exercises import Mismatch
from exercises.checks import same

TITLE = "the three aggregations; length bias"
EQUATION = "eq. 1"
PROJECT = "grpo.py: loss_normalizer"
REFERENCE = "from grpo import loss_normalizer\nSHORT_OVER_LONG_GRPO, SHORT_OVER_LONG_TOKEN = 5, 1"
PLUG = [("grpo", "loss_normalizer")]


def length_bias(loss_type):
    """The gradient on a token of the short output over that on a token of the long one,
    measured."""
    mask = torch.zeros(2, 10)
    mask[0, :2], mask[1, :] = 1, 1
    logp = torch.zeros(2, 10, requires_grad=True)
    loss, _ = grpo.grpo_loss(logp, logp.detach(), None, torch.tensor([-1.0, -1.0]), mask,
                             loss_type=loss_type)
    (g,) = torch.autograd.grad(loss, logp)
    return (g[0, 0] / g[1, 0]).item()


def check(m):
    f, ref = m.loss_normalizer, grpo.loss_normalizer
    g = torch.Generator().manual_seed(4)
    # ragged: 28 tokens
    mask = (torch.arange(9)[None] < torch.tensor([9, 1, 4, 7, 2, 5])[:, None]).float()
    for loss_type in grpo.LOSS_TYPES:
        for what, args in (("a ragged (6, 9) mask", (mask,)),
                           ("a ragged mask with max_len=12", (mask, 12)),
                           ("an all-zero mask", (torch.zeros(3, 5),)),
                           ("a random integer mask",
                            ((torch.rand(4, 6, generator=g) > 0.5).long(),))):
            got = f(loss_type, *args)
            if not isinstance(got, float):
                raise Mismatch(f"your normalizer for loss_type={loss_type!r} is a "
                               f"{type(got).__name__}; expected a Python float (float(...))")
            same(got, ref(loss_type, *args),
                 f"your normalizer for loss_type={loss_type!r} and {what}")
    try:
        f("seq", mask)
    except ValueError:
        pass
    else:
        raise Mismatch("for loss_type='seq' you should raise ValueError, and you did not")
    for name, loss_type in (("SHORT_OVER_LONG_GRPO", "grpo"), ("SHORT_OVER_LONG_TOKEN", "token")):
        answer = getattr(m, name, None)
        if answer is None:
            raise NotImplementedError
        if abs(float(answer) - length_bias(loss_type)) > 1e-3:
            raise Mismatch(f"{name} = {answer} is not what the gradient says; count the weight of "
                           f"one token of each output under loss_type={loss_type!r}")

"""What every check uses: compare a student's tensor with the project's and say the first
difference in words."""

import torch

from exercises import Mismatch


def words(x) -> str:
    x = torch.as_tensor(x)
    return (f"{x.item():.6g}" if x.numel() == 1
            else str([round(v, 6) for v in x.flatten().tolist()[:8]]))


def same(got, expected, what, atol=1e-5, rtol=1e-5):
    """Raise Mismatch unless got equals expected (shape, NaN, values): `what` names the case, as
    in 'your advantages for a group with equal rewards'."""
    if not torch.is_tensor(got):
        if isinstance(got, (int, float, bool)) and not torch.is_tensor(expected):
            got = torch.tensor(float(got))
        else:
            raise Mismatch(f"{what}: a {type(got).__name__}; expected a tensor")
    expected = torch.as_tensor(expected)
    if got.shape != expected.shape:
        raise Mismatch(f"{what}: shape {tuple(got.shape)}; expected {tuple(expected.shape)}")
    got, expected = got.detach().double(), expected.detach().double()
    bad = got.isnan() & ~expected.isnan()
    if bad.any():
        raise Mismatch(f"{what}: NaN at {first(bad)}; expected {words(expected[bad][0])}")
    bad = got.isinf() & ~expected.isinf()
    if bad.any():
        raise Mismatch(f"{what}: infinite at {first(bad)}; expected {words(expected[bad][0])}")
    off = ~torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    if off.any():
        i = first(off)
        raise Mismatch(f"{what}: {words(got[off][0])} at {i}; expected {words(expected[off][0])}"
                       + (f" (all of it: {words(got)}; expected {words(expected)})"
                          if got.numel() <= 8 else ""))


def first(mask) -> str:
    idx = mask.nonzero()[0].tolist()
    return f"index {tuple(idx) if len(idx) > 1 else idx[0]}" if idx else "the value"


def grad(fn, *inputs):
    """The gradients of fn(*inputs).sum() (weighted by fixed random numbers) w.r.t. each floating
    input: what backpropagation through the student's function gives."""
    xs = [x.detach().clone().requires_grad_() if torch.is_tensor(x) and x.is_floating_point() else x
          for x in inputs]
    out = fn(*xs)
    out = out[0] if isinstance(out, tuple) else out
    w = torch.rand(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    if not out.requires_grad:
        raise Mismatch("your result carries no gradient: it must be built from its inputs with "
                       "torch operations (no .detach(), .item() or numpy on the way)")
    gs = torch.autograd.grad((out * w).sum(),
                             [x for x in xs if torch.is_tensor(x) and x.requires_grad],
                             allow_unused=True)
    return [torch.zeros_like(x) if g is None else g
            for g, x in zip(gs, [x for x in xs if torch.is_tensor(x) and x.requires_grad])]

"""runner.session's one bf16 autocast region over a whole stage: each optimiser step must reach
the next forward (autocast caches the bf16 cast of every fp32 weight until its outermost region
exits)."""

import torch

import runner
from model import make_model


def test_bf16_session_forward_sees_each_optimiser_step():
    """session() holds one autocast region for the whole stage: the cast cache must not keep the
    weights as first cast (a bf16 run would sample and evaluate its starting weights forever)."""
    torch.manual_seed(0)
    model = make_model("nano", vocab_size=262)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 262, (2, 8))
    with runner.session("cpu", "bf16"):
        with torch.no_grad():
            before = model.lm_head(model(idx)[0]).float()
        loss_of = lambda _: model.lm_head(model(idx)[0]).float().logsumexp(-1).mean()  # noqa: E731
        runner.optimizer_step(model, opt, [None], loss_of, 1.0)
        with torch.no_grad():
            inside = model.lm_head(model(idx)[0]).float()
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():
        fresh = model.lm_head(model(idx)[0]).float()
    assert (inside - before).abs().max() > 1e-2
    assert torch.equal(inside, fresh)

"""runner.session's one bf16 autocast region over a whole stage: each optimiser step must reach
the next forward (autocast caches the bf16 cast of every fp32 weight until its outermost region
exits), in the RL and SFT steps and in the base stage, whose precision is --base_dtype's alone."""

import contextlib
import os

import pytest
import torch

import pretrain
import runner
from checkpoint import starting_point
from model import make_model
from tasks import make_task
from train_args import parse_args


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


def base_weights(tmp_path, base_dtype, session_dtype=None):
    """A 4-step toy base stage's weights, run alone or inside a session of `session_dtype`."""
    args = parse_args(["--base_steps", "4", "--base_batch", "8", "--seed", "0", "--device", "cpu",
                       "--base_dtype", base_dtype, "--out_dir", str(tmp_path), "--no_cache"])
    tok, _ = starting_point(args)
    task = make_task(args, log=lambda s: None)
    with contextlib.ExitStack() as stack:
        if session_dtype:
            stack.enter_context(runner.session("cpu", session_dtype))
        model = pretrain.base_model(args, tok, task, "cpu", log=lambda s: None)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_base_stage_precision_is_its_own_whatever_the_session(tmp_path):
    """--base_dtype alone sets the base stage's precision: the same weights alone and inside a bf16
    session (whose one autocast region must not keep the weights as first cast), and bf16 matmuls
    give other weights than fp32 ones, close to them."""
    bf16 = base_weights(tmp_path, "bf16")
    assert all(torch.equal(bf16[k], w) for k, w in base_weights(tmp_path, "bf16", "bf16").items())
    fp32 = base_weights(tmp_path, "fp32")
    assert all(torch.equal(fp32[k], w) for k, w in base_weights(tmp_path, "fp32", "bf16").items())
    torch.manual_seed(0)
    init = make_model("tiny", fp32["embed.weight"].size(0)).state_dict()
    moved = sum((fp32[k] - init[k]).abs().sum() for k in fp32)
    apart = sum((bf16[k] - fp32[k]).abs().sum() for k in fp32)
    assert 0 < apart < 0.05 * moved  # 1.4% at these sizes


def test_base_dtype_auto_is_resolved_and_keys_the_cache():
    """auto becomes what runs (the key must name the model cached), and each precision has its
    own cache file. --seed 1: flags with no shipped model (the default ones take its precision,
    tests/test_shipped_base.py)."""
    args = parse_args(["--device", "cpu", "--seed", "1"])
    assert args.base_dtype == ("bf16" if pretrain.native_bf16("cpu") else "fp32")
    paths = {d: pretrain.cache_path(parse_args(["--base_dtype", d])) for d in ("fp32", "bf16")}
    assert paths["fp32"] != paths["bf16"]
    assert not pretrain.native_bf16("meta")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True),
                                                        (False, False, False)])
def test_bf16_base_stage_where_the_cpu_multiplies_bf16(monkeypatch, avx512_bf16, amx, expected):
    """auto's rule over the CPU's flags (this machine has one set of them): bf16 with AVX512-BF16
    (1.27x on an AMD EPYC) or AMX (1.02-1.14x on an Intel Xeon), fp32 without either (emulated
    bf16)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert pretrain.native_bf16("cpu") is expected


def test_an_unresolved_base_dtype_is_refused_before_any_work(tmp_path):
    """base_model called without train_args.validate (a stage of one's own) gets one line, before
    the cache is read or anything is trained or written."""
    args = parse_args(["--device", "cpu", "--out_dir", str(tmp_path)])
    args.base_dtype = "auto"
    with pytest.raises(ValueError, match="--base_dtype auto: resolve it first"):
        pretrain.base_model(args, None, None, "cpu")
    assert list(tmp_path.iterdir()) == []


def test_a_session_caps_onednns_kernel_caches(monkeypatch):
    """Before a stage's first matmul, both of oneDNN's per-shape caches are capped (unless the user
    set them): a bf16 base stage's shapes change every step."""
    for var in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    with runner.session("cpu"):
        assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
        assert os.environ["LRU_CACHE_CAPACITY"] == "7"

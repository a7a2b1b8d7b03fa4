import pytest
import torch

from checkpoint import load_checkpoint, save_checkpoint
from model import Transformer, ModelConfig, attend, build_model, make_model
from tokenizer import get_tokenizer


def tiny(**kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=64, block_size=64, **kw))


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True, "tie_embeddings": False}, {"head_dim": 16, "qk_norm": True},
                                {"rope_scaling": LLAMA3_ROPE}])
def test_cached_decoding_matches_full_forward(kw):
    model = tiny(**kw)
    idx = torch.randint(0, 50, (3, 12))
    full, _ = model(idx)
    _, cache = model(idx[:, :5])
    for t in range(5, 12):  # one token at a time through the cache
        h, cache = model(idx[:, t:t + 1], past=cache)
        torch.testing.assert_close(h[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


def test_causal():
    model = tiny()
    idx = torch.randint(0, 50, (1, 10))
    idx2 = idx.clone()
    idx2[0, 7] = (idx[0, 7] + 1) % 50
    a, b = model(idx)[0], model(idx2)[0]
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_gqa_equals_repeated_heads():
    # oracle: grouped-query attention is ordinary attention with each kv head repeated
    model = tiny()
    mha = Transformer(ModelConfig(**{**model.config.__dict__, "n_kv_head": 4}))
    sd = model.state_dict()
    for i in range(2):
        for n in "kv":
            w = sd[f"blocks.{i}.attn.{n}.weight"]  # (2 * 8, 32) -> each head twice
            sd[f"blocks.{i}.attn.{n}.weight"] = w.view(2, 8, 32).repeat_interleave(2, 0).reshape(32, 32)
    mha.load_state_dict(sd)
    idx = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(model(idx)[0], mha(idx)[0], atol=1e-5, rtol=1e-5)


def test_context_limit_error():
    with pytest.raises(ValueError, match="longer than the model's context"):
        tiny()(torch.zeros(1, 65, dtype=torch.long))


def test_presets_build():
    assert sum(p.numel() for p in make_model("tiny", 262).parameters()) < 2e6
    with pytest.raises(ValueError, match="unknown model preset"):
        make_model("huge", 10)


def test_checkpoint_roundtrip(tmp_path):
    tok = get_tokenizer()
    model = make_model("tiny", tok.vocab_size, n_layer=1)
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model, tok.name, step=3)
    loaded, tok2 = load_checkpoint(path)
    idx = torch.randint(0, tok.vocab_size, (1, 8))
    torch.testing.assert_close(model(idx)[0], loaded(idx)[0])
    assert tok2.vocab_size == tok.vocab_size
    with pytest.raises(ValueError, match="checkpoint not found: .*missing.pt"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_gradient_checkpointing_gives_the_same_gradients():
    grads, calls = [], []
    for recompute in (False, True):
        model = tiny(qk_norm=True)
        model.grad_checkpointing = recompute
        n = []
        model.blocks[0].register_forward_pre_hook(lambda *_: n.append(1))
        idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
        model.lm_head(model(idx)[0]).logsumexp(-1).mean().backward()
        grads.append([p.grad for p in model.parameters()])
        calls.append(len(n))
    assert calls == [1, 2]  # the block ran again in the backward
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_build_model_assigns_without_a_copy_and_checks_shapes():
    model = tiny()
    sd = model.state_dict()
    built = build_model(model.config, sd.__getitem__, dtype=torch.bfloat16)
    assert built.lm_head.weight is built.embed.weight and built.embed.weight.dtype == torch.bfloat16
    assert not any(p.is_meta for p in built.parameters())
    idx = torch.randint(0, 50, (2, 12))
    # bf16 weights and activations, fp32 norms and rotations: close to fp32, not equal
    torch.testing.assert_close(built(idx)[0].float(), model(idx)[0], atol=0.1, rtol=0.05)
    fp32 = build_model(model.config, sd.__getitem__)
    torch.testing.assert_close(fp32(idx)[0], model(idx)[0], atol=0, rtol=0)
    sd["blocks.1.mlp.up.weight"] = torch.zeros(3, 32)
    with pytest.raises(ValueError, match=r"weight blocks.1.mlp.up.weight has shape \(3, 32\), the config needs \(64, 32\)"):
        build_model(model.config, sd.__getitem__)


@pytest.mark.parametrize("masked, Hkv", [(False, 4), (True, 4), (True, 2)])
def test_attend_under_cpu_autocast_is_fp32_attention(masked, Hkv):
    """Under a CPU's bf16 autocast, attention runs in fp32 on the projections' bf16 outputs: SDPA's
    own result and gradients, in fp32 (autocast would run it, and its backward, in bf16)."""
    torch.manual_seed(0)
    q = torch.randn(2, 4, 6, 8).bfloat16().requires_grad_()
    k, v = (torch.randn(2, Hkv, 6, 8).bfloat16().requires_grad_() for _ in range(2))
    mask = torch.rand(2, 1, 6, 6) > 0.3 if masked else None
    if masked:
        mask |= torch.eye(6, dtype=torch.bool)
    with torch.autocast("cpu", torch.bfloat16):
        y = attend(q, k, v, mask, is_causal=not masked, gqa=Hkv != 4)
    assert y.dtype == torch.float32
    y.square().sum().backward()
    q2, k2, v2 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask,
                                                           is_causal=not masked, enable_gqa=Hkv != 4)
    ref.square().sum().backward()
    assert torch.equal(y, ref)
    for a, b in [(q, q2), (k, k2), (v, v2)]:
        assert torch.equal(a.grad, b.grad.bfloat16())

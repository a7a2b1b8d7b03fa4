import pytest
import torch

from model import GPT, ModelConfig, load_checkpoint, make_model, save_checkpoint
from tokenizer import get_tokenizer


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=64, block_size=64, **kw))


@pytest.mark.parametrize("kw", [{}, {"qkv_bias": True, "tie_embeddings": False}])
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
    mha = GPT(ModelConfig(**{**model.config.__dict__, "n_kv_head": 4}))
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
    save_checkpoint(path, model, "byte", step=3)
    loaded, tok2 = load_checkpoint(path)
    idx = torch.randint(0, tok.vocab_size, (1, 8))
    torch.testing.assert_close(model(idx)[0], loaded(idx)[0])
    assert tok2.vocab_size == tok.vocab_size
    with pytest.raises(SystemExit, match="checkpoint not found: .*missing.pt"):
        load_checkpoint(str(tmp_path / "missing.pt"))

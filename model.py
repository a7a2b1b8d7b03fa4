"""
Transformer: a decoder-only transformer of the Llama / Qwen2.5 shape, the policy (and reference)
model of GRPO: RMSNorm (pre-norm), rotary position embeddings, grouped-query attention through
F.scaled_dot_product_attention, a SwiGLU MLP, optionally tied input/output embeddings. No dropout
anywhere: the sampler and the trainer must compute the same log-probs for the same tokens (GRPO's
ratio is pi_theta / pi_theta_old of the same sequence).

forward(idx, pos, mask, past) returns the final hidden states and the key/value cache. `past` is
a KV cache being decoded (a preallocated KVCache written in place: inference only), or a prompt
prefix shared by the whole batch, run once with batch 1: per-layer (k, v) tensors that the rows'
keys are concatenated to, so gradients flow through it (the trainer, batch.py), or, to decode,
both: a PrefixedCache holds the prefix's keys once, broadcast over the rows' own KVCaches
(prefix_attention). So neither pays for the R1-Zero template once per row. The output layer is
separate (`lm_head`) so that callers compute logits only where they need them.

Presets: `tiny` trains on a laptop CPU (`nano` is r1/pipeline.py's distillation student); the
others have the shapes of GPT-2 small and Qwen2.5-0.5B / 1.5B (vocabulary size: the tokenizer's).
Pretrained bases (interop/hf.py) set a config field per difference: `qkv_bias` (Qwen2),
`head_dim` and `qk_norm` (Qwen3), `rope_scaling` "llama3" (Llama 3.1 / 3.2). In bf16 the norms'
statistics and the rotary angles stay in fp32, as in Hugging Face's, and on a CPU so does the
trainer's attention (`attend`; the sampler's `prefix_attention` multiplies in bf16).
`build_model` assigns given weights to a model built on the meta device (no second copy);
`grad_checkpointing = True` recomputes each block in the backward. No disk, no tokenizer here
(checkpoint.py, interop/hf.py). Left out: sliding-window attention, mixture of experts, MLA.

    python model.py tiny      # prints the preset's parameter count
"""

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


@dataclass
class ModelConfig:
    vocab_size: int = 262
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 2          # grouped-query attention: n_head / n_kv_head queries per k/v head
    n_embd: int = 128
    ffn_hidden: int = 384       # SwiGLU inner width
    block_size: int = 640       # longest sequence (prompt + completion)
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    qkv_bias: bool = False      # Qwen2.5 has biases on q, k, v
    norm_eps: float = 1e-6
    head_dim: int = 0           # 0: n_embd // n_head (Qwen3 sets it apart)
    qk_norm: bool = False       # Qwen3: RMSNorm over each head of q and k, before the rotation
    # Llama 3.1+: {"rope_type": "llama3", "factor", "low_freq_factor", ...}
    rope_scaling: dict | None = None

    @property
    def hd(self) -> int:
        return self.head_dim or self.n_embd // self.n_head


PRESETS = {
    # full multi-head attention: at this size, separate key/value heads learn to copy
    # operands far sooner
    "tiny": dict(n_layer=4, n_head=4, n_kv_head=4, n_embd=128, ffn_hidden=384, block_size=640),
    # the distillation student of r1/pipeline.py: tiny at half its depth
    "nano": dict(n_layer=2, n_head=4, n_kv_head=4, n_embd=128, ffn_hidden=384, block_size=640),
    "gpt2-small": dict(n_layer=12, n_head=12, n_kv_head=12, n_embd=768, ffn_hidden=2048,
                       block_size=1024),
    "qwen2.5-0.5b": dict(n_layer=24, n_head=14, n_kv_head=2, n_embd=896, ffn_hidden=4864,
                         block_size=4096, rope_theta=1e6, qkv_bias=True),
    "qwen2.5-1.5b": dict(n_layer=28, n_head=12, n_kv_head=2, n_embd=1536, ffn_hidden=8960,
                         block_size=4096, rope_theta=1e6, qkv_bias=True),
}


def rope_cos_sin(pos, head_dim, theta, scaling=None):
    """cos, sin of shape (B, 1, T, head_dim/2) for integer positions pos (B, T), in fp32."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32)
                         / head_dim)
    if scaling is not None:
        inv_freq = llama3_scaled(inv_freq, **scaling)
    angles = pos.float()[:, None, :, None] * inv_freq  # (B, 1, T, head_dim/2)
    return angles.cos(), angles.sin()


def llama3_scaled(inv_freq, factor, low_freq_factor, high_freq_factor,
                  original_max_position_embeddings, **_):
    """Llama 3.1's context extension: frequencies whose wavelength exceeds original_max /
    low_freq_factor are divided by `factor`, those shorter than original_max / high_freq_factor
    are kept, and the ones between are interpolated linearly in original_max / wavelength."""
    wavelen = 2 * math.pi / inv_freq
    smooth = ((original_max_position_embeddings / wavelen - low_freq_factor)
              / (high_freq_factor - low_freq_factor))
    return torch.where(smooth >= 1, inv_freq,
                       torch.where(smooth <= 0, inv_freq / factor,
                                   (1 - smooth) * inv_freq / factor + smooth * inv_freq))


def apply_rope(x, cos, sin):
    """Rotate each (first half, second half) pair of x (B, H, T, head_dim) by its angle."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm computed in fp32 whatever the input's dtype (bf16 statistics lose too much)."""

    def forward(self, x):
        return F.rms_norm(x.float(), self.normalized_shape, self.weight.float(),
                          self.eps).type_as(x)


class KVCache:
    """
    One layer's keys and values for decoding, preallocated to `size` positions and filled in
    place: extending by concatenation would copy the whole cache at every step. Inference only
    (in-place writes and autograd do not mix); training extends a prefix by concatenation.
    """

    def __init__(self, k, v, size):
        B, H, T, D = k.shape
        self.k, self.v, self.n = k.new_empty(B, H, size, D), v.new_empty(B, H, size, D), 0
        self.extend(k, v)

    def extend(self, k, v):
        T = k.size(2)
        self.k[:, :, self.n:self.n + T], self.v[:, :, self.n:self.n + T] = k, v
        self.n += T
        return self.k[:, :, :self.n], self.v[:, :, :self.n]


class PrefixedCache:
    """
    One layer's past for decoding after a prefix that every row shares (the R1-Zero template): the
    prefix's keys and values held once, k, v (1, Hkv, P, hd), broadcast over the rows, and each
    row's own in `rows`, a KVCache (None: the prompt rows' prefill, which returns their own keys
    and values). Copied into every row's cache, the prefix would be read B times per decode step.
    Inference only. A mask given with it covers the rows' own keys: every query sees the prefix.
    """

    def __init__(self, k, v, rows=None):
        self.k, self.v, self.rows = k, v, rows

    @property
    def n(self):  # positions before the next token's column: the prefix's, then the row's own
        return self.k.size(2) + (0 if self.rows is None else self.rows.n)


def prefix_attention(q, k, v, pk, pv, mask):
    """
    softmax(q [pk; k]^T / sqrt(hd)) [pv; v], one softmax over both parts: the keys and values of a
    shared prefix, pk, pv (1, Hkv, P, hd), then each row's own, k, v (B, Hkv, S, hd), for queries
    q (B, H, T, hd) that see the whole prefix and, of their own keys, those mask (B, 1, T, S)
    allows (None: all).
    The prefix's two products fold the B rows into one matrix (one GEMM against keys read once)
    where an expanded copy would be B small products. Equal to F.scaled_dot_product_attention over
    the concatenated keys up to fp32 rounding (tests/test_sample.py); the matmuls run in q's dtype
    and the softmax in fp32, as transformers' eager attention (SDPA's kernels keep scores in fp32).
    """
    B, H, T, hd = q.shape
    Hkv, P, S = pk.size(1), pk.size(2), k.size(2)
    gT = H // Hkv * T  # a kv head's queries: its H / Hkv query heads x T positions
    q = q.reshape(B, Hkv, gT, hd)  # query head h reads kv head h // (H / Hkv), as enable_gqa
    # prefix: (Hkv, B * gT, hd) @ (Hkv, hd, P) -> (B, Hkv, gT, P)
    s_pre = (q.transpose(0, 1).reshape(Hkv, B * gT, hd) @ pk[0].transpose(-1, -2))
    s_pre = s_pre.view(Hkv, B, gT, P).transpose(0, 1)
    s_own = q @ k.transpose(-1, -2)  # (B, Hkv, gT, S)
    if mask is not None:  # (B, 1, T, S) -> (B, 1, 1, T, S), over the g query heads of a kv head
        s_own = s_own.view(B, Hkv, gT // T, T, S).masked_fill(~mask[:, :, None], float("-inf"))
        s_own = s_own.view(B, Hkv, gT, S)
    a = (torch.cat([s_pre, s_own], -1) * hd ** -0.5).softmax(-1, dtype=torch.float32).type_as(v)
    a_pre, a_own = a.split([P, S], -1)  # (B, Hkv, gT, P), (B, Hkv, gT, S)
    y_pre = a_pre.transpose(0, 1).reshape(Hkv, B * gT, P) @ pv[0]  # (Hkv, B * gT, hd)
    y = y_pre.view(Hkv, B, gT, hd).transpose(0, 1) + a_own @ v  # (B, Hkv, gT, hd)
    return y.reshape(B, H, T, hd)


def attend(q, k, v, mask, is_causal, gqa):
    """F.scaled_dot_product_attention of q (B, H, T, hd) over k, v (B, Hkv, S, hd) -> (B, H, T, hd);
    under a CPU's bf16 autocast in fp32: there a bf16 backward of it ran ~3x slower than fp32's
    (AVX512-BF16), while the projections around it run 2-4x faster in bf16."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                  is_causal=is_causal, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                          enable_gqa=gqa)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.hd
        self.q = nn.Linear(c.n_embd, c.n_head * self.head_dim, bias=c.qkv_bias)
        self.k = nn.Linear(c.n_embd, c.n_kv_head * self.head_dim, bias=c.qkv_bias)
        self.v = nn.Linear(c.n_embd, c.n_kv_head * self.head_dim, bias=c.qkv_bias)
        self.o = nn.Linear(c.n_head * self.head_dim, c.n_embd, bias=False)
        if c.qk_norm:
            self.q_norm, self.k_norm = (RMSNorm(self.head_dim, eps=c.norm_eps),
                                        RMSNorm(self.head_dim, eps=c.norm_eps))
        self.qk_norm = c.qk_norm

    def forward(self, x, cos, sin, mask, past):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim)     # (B, T, H, hd)
        k = self.k(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, hd), (B, Hkv, T, hd)
        v = self.v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(past, PrefixedCache):  # the sampler's: the prefix held once
            if past.rows is not None:
                k, v = past.rows.extend(k, v)  # (B, Hkv, S, hd): the rows' own keys so far
            y = prefix_attention(q, k, v, past.k, past.v, mask)
            kv = (k, v) if past.rows is None else past
        else:
            if isinstance(past, KVCache):
                k, v = past.extend(k, v)  # (B, Hkv, P+T, hd)
            elif past is not None:
                # a shared prefix has batch 1: broadcast it to the B rows that follow it
                pk, pv = past
                k = torch.cat([pk.expand(B, -1, -1, -1), k], dim=2)  # (B, Hkv, P+T, hd)
                v = torch.cat([pv.expand(B, -1, -1, -1), v], dim=2)
            y = attend(q, k, v, mask, is_causal=mask is None and past is None,
                       gqa=self.n_kv_head != self.n_head)
            kv = past if isinstance(past, KVCache) else (k, v)
        # (B, H, T, hd) -> (B, T, H*hd) -> (B, T, C); H*hd spelled out: T may be 0 (no prefix)
        return self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)), kv


class MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(c.n_embd, c.ffn_hidden, bias=False)
        self.up = nn.Linear(c.n_embd, c.ffn_hidden, bias=False)
        self.down = nn.Linear(c.ffn_hidden, c.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(c.n_embd, eps=c.norm_eps)
        self.attn = Attention(c)
        self.mlp_norm = RMSNorm(c.n_embd, eps=c.norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask, past):
        a, kv = self.attn(self.attn_norm(x), cos, sin, mask, past)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), kv


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        if (not c.head_dim and c.n_embd % c.n_head) or c.n_head % c.n_kv_head or c.hd % 2:
            raise ValueError("need n_embd divisible by n_head (or a head_dim), n_head by "
                             "n_kv_head, and an even head size")
        if (c.rope_scaling is not None
                and c.rope_scaling.get("rope_type", c.rope_scaling.get("type")) != "llama3"):
            raise ValueError(f"unsupported rope_scaling {c.rope_scaling}: only rope_type llama3 is "
                             f"implemented")
        self.embed = nn.Embedding(c.vocab_size, c.n_embd)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.n_embd, eps=c.norm_eps)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init)
        # residual branches scaled down so the stream's variance stays O(1)
        for block in self.blocks:
            for proj in (block.attn.o, block.mlp.down):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * c.n_layer))
        self.grad_checkpointing = False  # training only: recompute each block in the backward

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, pos=None, mask=None, past=None):
        """
        idx (B, T) tokens; pos (B, T) their positions (default: following the past); mask
        (B, 1, T, P+T) bool, True where a query may attend to a key, over the P past keys and
        the T new ones (default: causal); past: per-layer (k, v) from an earlier call, KVCaches,
        or PrefixedCaches (whose mask leaves the prefix out: (B, 1, T, S), the rows' own keys).
        Returns the final hidden states (B, T, C) and the cache extended with these tokens (after
        PrefixedCaches without rows: the rows' own (k, v)).
        """
        B, T = idx.shape
        P = (0 if past is None else past[0].n if isinstance(past[0], (KVCache, PrefixedCache))
             else past[0][0].size(2))
        if P + T > self.config.block_size:
            raise ValueError(f"sequence of {P + T} tokens is longer than the model's context "
                             f"(block_size={self.config.block_size})")
        if past is not None and mask is None and T > 1:
            raise ValueError("several new tokens after a past need an explicit mask")
        if pos is None:
            pos = torch.arange(P, P + T, device=idx.device).expand(B, T)
        cos, sin = rope_cos_sin(pos, self.config.hd, self.config.rope_theta,
                                self.config.rope_scaling)
        x = self.embed(idx)
        cache = []
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            layer_past = None if past is None else past[i]
            # a KVCache is written in place: never re-run
            if recompute and not isinstance(layer_past, (KVCache, PrefixedCache)):
                x, kv = checkpoint(block, x, cos, sin, mask, layer_past, use_reentrant=False)
            else:
                x, kv = block(x, cos, sin, mask, layer_past)
            cache.append(kv)
        return self.norm(x), cache


def make_model(preset: str, vocab_size: int, **overrides) -> Transformer:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}': choose from {', '.join(PRESETS)}")
    return Transformer(ModelConfig(vocab_size=vocab_size, **{**PRESETS[preset], **overrides}))


def meta_model(config: ModelConfig) -> Transformer:
    """The model on the meta device: its shapes, no storage. Its random init is skipped, as
    transformers' no_init_weights does: on meta the fills fill nothing, and torch's meta normal_
    imports torch._dynamo, 2 s of the start of every process that reads a checkpoint."""
    normal_ = nn.init.normal_
    # Transformer._init's and nn.Embedding's
    nn.init.normal_ = lambda tensor, *args, **kwargs: tensor
    try:
        with torch.device("meta"):
            return Transformer(config)
    finally:
        nn.init.normal_ = normal_


def parameter_count(config: ModelConfig) -> int:
    """The model's number of parameters (tied ones once), counted on the meta device: nothing is
    allocated."""
    return sum(p.numel() for p in meta_model(config).parameters())


def build_model(config: ModelConfig, weight, device="cpu", dtype=None) -> Transformer:
    """A model (eval mode) holding the weights weight(name) -> tensor (read lazily, one at a time;
    it raises for a missing one), in dtype (default: theirs), on device. The model is constructed
    on the meta device and the weights assigned, so no random weights are allocated first (and a
    caller checks the size, model.parameter_count, against the device's memory before:
    interop/hf.py)."""
    model = meta_model(config)
    expected = model.state_dict()
    names = [n for n in expected if not (config.tie_embeddings and n == "lm_head.weight")]
    weights = {}
    for n in names:
        t = weight(n)
        if t.shape != expected[n].shape:
            raise ValueError(f"weight {n} has shape {tuple(t.shape)}, the config needs "
                             f"{tuple(expected[n].shape)}")
        weights[n] = t.to(device=device, dtype=dtype or t.dtype)
    model.load_state_dict(weights, strict=False, assign=True)
    if config.tie_embeddings:  # assigning replaced the shared parameter: share it again
        model.lm_head.weight = model.embed.weight
    return model.eval()


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    model = make_model(name, vocab_size=262 if name in ("tiny", "nano") else 151_936)
    print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")

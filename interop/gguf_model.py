"""
llama.cpp's GGUF files read into model.py ("gguf:FILE" wherever a model is read: --init, --ckpt).
A GGUF is one file: the architecture and its sizes as metadata (general.architecture, then
<arch>.block_count, .embedding_length, .feed_forward_length, .attention.head_count(_kv),
.attention.key_length, .rope.freq_base, .attention.layer_norm_rms_epsilon, .context_length), the
tokenizer (interop/gguf_tokenizer.py), and the weights, each a tensor of its own type: F32, F16,
BF16, or blocks of quantised values (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the K-quants Q2_K..Q6_K) that
the `gguf` package's dequantize turns into floats, here in the training dtype (default fp32).

Three architectures map onto model.py as in interop/hf.py: llama (SmolLM2, Llama 3; tied when the
file has no output.weight), qwen2 (q/k/v biases) and qwen3 (head_dim apart, RMSNorm on q and k).
llama.cpp's converter permutes the rows of a llama file's q and k weights, each head's (first half,
second half) pairs interleaved for its rotation of adjacent pairs (convert_hf_to_gguf.py's
`permute`); `unpermute` undoes it, for model.py rotates halves as Hugging Face does. qwen2 and
qwen3 files are not permuted (llama.cpp rotates halves for them). Everything is checked before a
weight is dequantised: the architecture, each tensor's name, type and shape, the memory.

Left out: other architectures (Mistral, Gemma, Phi, MoE), rope scaling (Llama 3.1's rope_freqs
tensor), the IQ and ternary quantisations (each refused in one line); writing GGUF files (export
writes a Hugging Face directory, which llama.cpp's converter reads).

    python train.py --init gguf:SmolLM2-135M-Instruct.Q4_1.gguf ...   # docs/real-models.md
"""

import re

import numpy as np
import torch

from interop.gguf_tokenizer import field, open_gguf
from model import ModelConfig, build_model, meta_model, parameter_count
from runner import free_memory
from tokenizer import GGUFTokenizer

ARCHS = ("llama", "qwen2", "qwen3")
TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
         "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
# our parameter names -> the GGUF's ({} is the layer)
NAMES = {
    "embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "blocks.{}.attn_norm.weight": "blk.{}.attn_norm.weight",
    "blocks.{}.mlp_norm.weight": "blk.{}.ffn_norm.weight",
    **{f"blocks.{{}}.attn.{n}.{p}": f"blk.{{}}.attn_{g}.{p}"
       for n, g in zip("qkvo", ("q", "k", "v", "output")) for p in ("weight", "bias")},
    **{f"blocks.{{}}.attn.{n}_norm.weight": f"blk.{{}}.attn_{n}_norm.weight" for n in "qk"},
    **{f"blocks.{{}}.mlp.{n}.weight": f"blk.{{}}.ffn_{n}.weight" for n in ("gate", "up", "down")},
}


def gguf_name(name: str) -> str:
    """Our parameter name -> the GGUF's: blocks.3.attn.q.weight -> blk.3.attn_q.weight."""
    layer = re.match(r"blocks\.(\d+)\.", name)
    key = name.replace(layer.group(0), "blocks.{}.") if layer else name
    return NAMES[key].format(layer.group(1) if layer else "")


def config_from_gguf(reader) -> ModelConfig:
    """The model's shape from a GGUF's metadata (a one-line ValueError for what model.py lacks)."""
    arch = field(reader, "general.architecture")
    if arch not in ARCHS:
        raise ValueError(f"unsupported architecture {arch!r}: gguf:FILE reads {', '.join(ARCHS)}")
    get = lambda key, default=None: field(reader, f"{arch}.{key}", default)  # noqa: E731
    names = {t.name for t in reader.tensors}
    unsupported = {"experts": get("expert_count", 0), "rope_freqs (rope scaling)":
                   "rope_freqs.weight" in names or get("rope.scaling.type", "none") != "none"}
    if any(unsupported.values()):
        raise ValueError(f"unsupported {arch} setting: "
                         f"{', '.join(k for k, v in unsupported.items() if v)}")
    n_embd, n_head = get("embedding_length"), get("attention.head_count")
    head_dim = get("attention.key_length") or (n_embd // n_head if n_embd and n_head else 0)
    sizes = dict(n_layer=get("block_count"), n_embd=n_embd, n_head=n_head,
                 n_kv_head=get("attention.head_count_kv", n_head),
                 ffn_hidden=get("feed_forward_length"))
    if bad := [k for k, v in sizes.items() if not isinstance(v, int) or v <= 0]:
        raise ValueError(f"its {arch} metadata lacks a size model.py needs (or gives one per "
                         f"layer): {', '.join(bad)}")
    if get("rope.dimension_count", head_dim) != head_dim or get("attention.value_length",
                                                                head_dim) != head_dim:
        raise ValueError(f"its rope dimensions or value heads differ from the head size "
                         f"{head_dim}: not supported")
    tokens = field(reader, "tokenizer.ggml.tokens") or []
    vocab = "token_embd.weight" in names and int(
        next(t for t in reader.tensors if t.name == "token_embd.weight").shape[-1])
    return ModelConfig(
        **sizes, vocab_size=get("vocab_size") or vocab or len(tokens),
        block_size=get("context_length", 4096), rope_theta=float(get("rope.freq_base", 10000.0)),
        tie_embeddings="output.weight" not in names, qkv_bias=arch == "qwen2",
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        head_dim=head_dim if head_dim * n_head != n_embd else 0, qk_norm=arch == "qwen3")


def gguf_config(path: str) -> ModelConfig:
    """The config of a GGUF file, read without a weight (checkpoint.starting_point)."""
    return config_from_gguf(open_gguf(path))


def tensors_of(reader, config: ModelConfig) -> dict:
    """The GGUF's tensors by our parameter names, each checked (name, type, shape) before any is
    read: a missing, unused, misshaped or unsupported one is a one-line ValueError."""
    by_name = {t.name: t for t in reader.tensors}
    expected = meta_model(config).state_dict()
    ours = {gguf_name(n): n for n in expected
            if not (config.tie_embeddings and n == "lm_head.weight")}
    if extra := sorted(set(by_name) - set(ours)):
        raise ValueError(f"it has tensors the architecture does not use: {', '.join(extra[:3])}")
    out = {}
    for g, n in ours.items():
        if g not in by_name:
            raise ValueError(f"tensor {g} is missing")
        t = by_name[g]
        if t.tensor_type.name not in TYPES:
            raise ValueError(f"tensor {g} is of type {t.tensor_type.name}, which this does not "
                             f"dequantise (it reads {', '.join(TYPES)})")
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF lists dims innermost first
        if shape != tuple(expected[n].shape):
            raise ValueError(f"tensor {g} has shape {shape}, the config needs "
                             f"{tuple(expected[n].shape)}")
        out[n] = t
    return out


def dequantize(t) -> torch.Tensor:
    """One GGUF tensor (gguf's ReaderTensor) as fp32, in torch's order of dims."""
    from gguf.quants import dequantize as gguf_dequantize  # optional: open_gguf checked for it
    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    return torch.from_numpy(np.array(gguf_dequantize(t.data, t.tensor_type), dtype=np.float32)
                            .reshape(shape))


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's permute of a llama q or k weight (n_head * head_dim, in): each head's rows
    are stored as (head_dim / 2 pairs, 2); model.py wants (2 halves, head_dim / 2)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def load_gguf(path: str, device="cpu", dtype=None):
    """(model in eval mode, tokenizer) of a llama.cpp GGUF file, its weights dequantised to dtype
    (default fp32). Bad input is one line (ValueError, FileNotFoundError, MemoryError) before any
    weight is read."""
    reader = open_gguf(path)
    config = config_from_gguf(reader)
    tensors = tensors_of(reader, config)
    tok = GGUFTokenizer(path)  # tokenizer errors before any weight is read
    dtype = dtype or torch.float32
    size, free = dtype.itemsize * parameter_count(config), free_memory(device)
    if size > free:
        raise MemoryError(f"the model's weights need {size / 2**30:.2f} GiB of {device} memory and "
                          f"{free / 2**30:.2f} GiB are free: try --dtype bf16, a smaller model or "
                          f"another device")
    permuted = field(reader, "general.architecture") == "llama"
    heads = {"attn.q.weight": config.n_head, "attn.k.weight": config.n_kv_head}

    def weight(name):
        w = dequantize(tensors[name])
        head = heads.get(name.split(".", 2)[-1]) if name.startswith("blocks.") else None
        return unpermute(w, head) if permuted and head else w

    return build_model(config, weight, device, dtype), tok

"""
Real bases: Hugging Face model directories read into model.py and written back, without
transformers. A directory holds

    config.json             the architecture and its sizes
    model.safetensors       the weights, or shards listed by model.safetensors.index.json
    tokenizer.json          the tokenizer (+ tokenizer_config.json: eos, pad, chat template)
    generation_config.json  optional: more end-of-sequence ids (Llama 3 instruct's <|eot_id|>)

Three architectures map onto model.py, each through a config field per difference from the plain
Llama shape: Qwen2ForCausalLM (biases on q, k, v), LlamaForCausalLM (rope_scaling of type llama3)
and Qwen3ForCausalLM (head_dim apart from hidden / heads, RMSNorm on each head of q and k). Both
use the same rotation as model.py (the two halves of a head rotated as pairs), so the weights map
by name alone (`hf_name`), with no permutation. Big models are built on the meta device and the
weights assigned one at a time, after their size is checked against the device's free memory.
The tokenizer is tokenizer.HFTokenizer (the conversion: interop/hf_tokenizer.py). Every CLI reads an
hf:DIR through checkpoint.load_model, and `python checkpoint.py export` writes one.

Left out: sliding-window attention, biases other than q/k/v, rope scaling other than llama3.

    python -m pytest tests/test_hf.py
"""

import json
import os
import re

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from interop.hf_tokenizer import tokenizer_json
from model import Transformer, ModelConfig, build_model, meta_model, parameter_count
from runner import atomic_write, free_memory, read_json
from tokenizer import SPECIALS, HFTokenizer, Tokenizer

ARCHS = ("Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM")
# our parameter names -> Hugging Face's ({} is the layer)
NAMES = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "blocks.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blocks.{}.mlp_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    **{f"blocks.{{}}.attn.{n}.{p}": f"model.layers.{{}}.self_attn.{n}_proj.{p}"
       for n in "qkvo" for p in ("weight", "bias")},
    **{f"blocks.{{}}.attn.{n}_norm.weight": f"model.layers.{{}}.self_attn.{n}_norm.weight"
       for n in "qk"},
    **{f"blocks.{{}}.mlp.{n}.weight": f"model.layers.{{}}.mlp.{n}_proj.weight"
       for n in ("gate", "up", "down")},
}


def hf_name(name: str) -> str:
    """Our parameter name -> Hugging Face's: blocks.3.attn.q.weight ->
    model.layers.3.self_attn.q_proj.weight."""
    layer = re.match(r"blocks\.(\d+)\.", name)
    key = name.replace(layer.group(0), "blocks.{}.") if layer else name
    return NAMES[key].format(layer.group(1) if layer else "")


# --- config.json, both ways ---

def config_from_hf(c: dict) -> ModelConfig:
    arch = (c.get("architectures") or ["(none)"])[0]
    if arch not in ARCHS:
        raise ValueError(f"unsupported architecture {arch}: load_hf reads {', '.join(ARCHS)}")
    unsupported = {"hidden_act": c.get("hidden_act", "silu") != "silu",
                   "mlp_bias": c.get("mlp_bias"),
                   "use_sliding_window": c.get("use_sliding_window"),
                   "attention_bias": arch != "Qwen2ForCausalLM" and c.get("attention_bias")}
    if any(unsupported.values()):
        raise ValueError(f"unsupported {arch} setting: "
                         f"{', '.join(k for k, v in unsupported.items() if v)}")
    # transformers 5 writes rope_parameters; earlier versions rope_theta and rope_scaling
    rope = c.get("rope_parameters") or {**(c.get("rope_scaling") or {}),
                                        "rope_theta": c.get("rope_theta", 10000.0)}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise ValueError(f"unsupported rope scaling '{kind}': only llama3 (or none) is implemented")
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"} if kind == "llama3" else None
    n_head = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // n_head
    return ModelConfig(
        vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], n_head=n_head,
        n_kv_head=c.get("num_key_value_heads") or n_head, n_embd=c["hidden_size"],
        ffn_hidden=c["intermediate_size"], block_size=c.get("max_position_embeddings", 4096),
        rope_theta=float(rope["rope_theta"]), tie_embeddings=c.get("tie_word_embeddings", False),
        qkv_bias=arch == "Qwen2ForCausalLM", norm_eps=c.get("rms_norm_eps", 1e-6),
        head_dim=head_dim if head_dim * n_head != c["hidden_size"] else 0,
        qk_norm=arch == "Qwen3ForCausalLM", rope_scaling=scaling)


def config_to_hf(c: ModelConfig, tok) -> dict:
    """config.json for transformers (and vLLM): Qwen3 with qk_norm, Qwen2 with q/k/v biases, else
    Llama."""
    if c.qk_norm and c.qkv_bias:
        raise ValueError("no Hugging Face architecture has both qk_norm and q/k/v biases alone")
    arch = ("Qwen3ForCausalLM" if c.qk_norm else "Qwen2ForCausalLM" if c.qkv_bias
            else "LlamaForCausalLM")
    out = {"architectures": [arch], "model_type": arch.removesuffix("ForCausalLM").lower(),
           "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "intermediate_size": c.ffn_hidden,
           "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
           "num_key_value_heads": c.n_kv_head, "head_dim": c.hd, "hidden_act": "silu",
           "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
           "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling,
           "tie_word_embeddings": c.tie_embeddings, "attention_bias": False, "mlp_bias": False,
           "use_sliding_window": False,
           "bos_token_id": None, "eos_token_id": tok.eot, "pad_token_id": tok.pad,
           "initializer_range": 0.02}
    if arch == "LlamaForCausalLM":
        del out["use_sliding_window"]
    else:
        del out["mlp_bias"]
    return out


# --- load and save ---

def load_hf(path, device="cpu", dtype=None):
    """(model in eval mode, tokenizer) of a local Hugging Face directory; dtype: that of the
    weights (torch.float32, torch.bfloat16), default the one config.json declares."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such model directory: {path}")
    hf_config = read_json(os.path.join(path, "config.json"), "config.json")
    config = config_from_hf(hf_config)
    # default: the dtype config.json declares (what transformers' dtype="auto" loads), known before
    # any weight is read
    dtype = dtype or getattr(torch, hf_config.get("dtype") or hf_config.get("torch_dtype")
                             or "float32")
    tok = HFTokenizer(path)  # tokenizer errors before any weight is read
    shard_of = weight_files(path, config)
    size, free = dtype.itemsize * parameter_count(config), free_memory(device)
    if size > free:
        raise MemoryError(f"the model's weights need {size / 2**30:.2f} GiB of {device} memory and "
                          f"{free / 2**30:.2f} GiB are free: try --dtype bf16, a smaller model or "
                          f"another device")
    files = {}

    def weight(name):
        key = hf_name(name)
        if key not in shard_of:
            raise ValueError(f"weight {key} is missing from {path}")
        if shard_of[key] not in files:
            files[shard_of[key]] = safe_open(os.path.join(path, shard_of[key]), "pt")
        return files[shard_of[key]].get_tensor(key)

    try:
        model = build_model(config, weight, device, dtype)
    except ValueError as e:  # name the tensor as the directory does
        raise ValueError(re.sub(r"weight (\S+) has", lambda m: f"weight {hf_name(m.group(1))} has",
                                str(e))) from None
    return model, tok


def weight_files(path, config: ModelConfig) -> dict[str, str]:
    """Hugging Face weight name -> the safetensors file that holds it; a weight the config does
    not use is an error (it would mean another architecture)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        shard_of = read_json(index, "index")["weight_map"]
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
            shard_of = dict.fromkeys(f.keys(), "model.safetensors")
    else:
        raise FileNotFoundError(
            f"no model.safetensors or model.safetensors.index.json in {path}")
    expected = {hf_name(n) for n in meta_model(config).state_dict()}
    # (a tied lm_head may be stored as well: it is in expected)
    if extra := sorted(set(shard_of) - expected):
        raise ValueError(f"{path} has weights the config does not use: {', '.join(extra[:3])}")
    return shard_of


def hf_weights(state_dict, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict under Hugging Face's names, as an export stores it and vLLM loads it: a tied
    lm_head is left out (it is the embedding; safetensors stores no shared tensors)."""
    return {hf_name(n): t.detach().contiguous() for n, t in state_dict.items()
            if not (config.tie_embeddings and n == "lm_head.weight")}


def save_hf(model: Transformer, tokenizer: Tokenizer, path: str):
    """Write model and tokenizer as a Hugging Face directory (config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json, generation_config.json), each file atomically. The
    tokenizer files of an hf: tokenizer are copied, those of a gguf: one rebuilt from the file;
    ours (byte, aha) are written as byte-level BPEs."""
    if isinstance(tokenizer, HFTokenizer):  # (and GGUFTokenizer: the files it was rebuilt as)
        files = tokenizer.files()
    elif tokenizer.name in ("byte", "aha"):
        files = {"tokenizer.json": json.dumps(tokenizer_json(tokenizer.enc),
                                              ensure_ascii=False).encode(),
                 "tokenizer_config.json": json.dumps({
                     "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIALS[0],
                     "pad_token": SPECIALS[-1], "model_max_length": model.config.block_size,
                     "clean_up_tokenization_spaces": False}).encode()}
    else:
        raise ValueError(f"cannot export the tokenizer '{tokenizer.name}': export supports aha, "
                         f"byte, hf: and gguf: tokenizers (a tiktoken encoding's specials have no "
                         f"tokenizer.json form here)")
    # every id our sampler stops on (eos, Llama 3's <|eot_id|>, </answer> where it is one token), so
    # that transformers' generate and vLLM stop where sample.generate does; a stop text (</answer>
    # spelt in several tokens) has no place here: generation_config's stop_strings would make
    # generate demand a tokenizer
    generation = {"eos_token_id": tokenizer.stop_ids, "pad_token_id": tokenizer.pad}
    files["generation_config.json"] = json.dumps(generation).encode()
    config = {**config_to_hf(model.config, tokenizer),
              "torch_dtype": str(model.lm_head.weight.dtype).removeprefix("torch.")}
    files["config.json"] = json.dumps(config, indent=2).encode()
    weights = hf_weights(model.state_dict(), model.config)
    os.makedirs(path, exist_ok=True)
    atomic_write(os.path.join(path, "model.safetensors"),
                 lambda p: save_file(weights, p, metadata={"format": "pt"}))
    for name, data in files.items():
        atomic_write(os.path.join(path, name), data)

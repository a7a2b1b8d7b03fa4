"""
Real bases: load and save Hugging Face checkpoints (weights, config, tokenizer) without transformers.

A Hugging Face model directory holds

    config.json                      the architecture and its sizes
    model.safetensors                the weights, or shards listed by model.safetensors.index.json
    tokenizer.json                   the tokenizer (+ tokenizer_config.json: eos, pad, chat template)
    generation_config.json           optional: more end-of-sequence ids (Llama 3 instruct's <|eot_id|>)

Three architectures map onto model.py, each through a config field per difference from the plain
Llama shape: Qwen2ForCausalLM (biases on q, k, v), LlamaForCausalLM (rope_scaling of type llama3)
and Qwen3ForCausalLM (head_dim apart from hidden / heads, RMSNorm on each head of q and k). Both
use the same rotation as model.py (the two halves of a head rotated as pairs), so the weights map
by name alone, with no permutation.

The tokenizer: a byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen) becomes a tiktoken Encoding.
Each vocabulary string is mapped back to bytes through GPT-2's byte-to-unicode table; a token's id
is its rank (tiktoken merges the adjacent pair whose concatenation has the lowest rank, which is
Hugging Face's merge order when merged tokens are numbered in merge order, as they are in these
vocabularies: checked at load); the pre-tokenizer's split regex is tiktoken's pat_str; every added
token is a special token, matched in the text before BPE runs, as Hugging Face's tokenizers do.
The R1 tags are plain text to such a tokenizer unless its vocabulary has them, so the sampler stops
on the text </answer> (`stop_texts`) instead of one token id.

Left out: sliding-window attention, biases other than q/k/v, rope scaling other than llama3,
tokenizers that are not byte-level BPE (SentencePiece, WordPiece), added tokens' lstrip/rstrip
flags; Llama's <|begin_of_text|> is not prepended by `encode` (the llama3 chat format writes it).

    python -m hf export out/<run>/ckpt.pt /models/my-policy   # one of our checkpoints -> an HF directory
"""

import argparse
import json
import os
import re
import unicodedata

import tiktoken
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model import GPT, ModelConfig, build_model
from tasks import CHAT
from tokenizer import END_ANSWER, SPECIALS, Tokenizer, get_tokenizer

ARCHS = ("Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM")
# GPT-2's split, what a ByteLevel pre-tokenizer with use_regex=true applies
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# our parameter names -> Hugging Face's ({} is the layer)
NAMES = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
    "blocks.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
    "blocks.{}.mlp_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    **{f"blocks.{{}}.attn.{n}.{p}": f"model.layers.{{}}.self_attn.{n}_proj.{p}" for n in "qkvo" for p in ("weight", "bias")},
    **{f"blocks.{{}}.attn.{n}_norm.weight": f"model.layers.{{}}.self_attn.{n}_norm.weight" for n in "qk"},
    **{f"blocks.{{}}.mlp.{n}.weight": f"model.layers.{{}}.mlp.{n}_proj.weight" for n in ("gate", "up", "down")},
}


def hf_name(name: str) -> str:
    """Our parameter name -> Hugging Face's: blocks.3.attn.q.weight -> model.layers.3.self_attn.q_proj.weight."""
    layer = re.match(r"blocks\.(\d+)\.", name)
    key = name.replace(layer.group(0), "blocks.{}.") if layer else name
    return NAMES[key].format(layer.group(1) if layer else "")


# --- config.json, both ways ---

def config_from_hf(c: dict) -> ModelConfig:
    arch = (c.get("architectures") or ["(none)"])[0]
    if arch not in ARCHS:
        raise ValueError(f"unsupported architecture {arch}: load_hf reads {', '.join(ARCHS)}")
    unsupported = {"hidden_act": c.get("hidden_act", "silu") != "silu", "mlp_bias": c.get("mlp_bias"),
                   "use_sliding_window": c.get("use_sliding_window"),
                   "attention_bias": arch != "Qwen2ForCausalLM" and c.get("attention_bias")}
    if any(unsupported.values()):
        raise ValueError(f"unsupported {arch} setting: {', '.join(k for k, v in unsupported.items() if v)}")
    # transformers 5 writes rope_parameters; earlier versions rope_theta and rope_scaling
    rope = c.get("rope_parameters") or {**(c.get("rope_scaling") or {}), "rope_theta": c.get("rope_theta", 10000.0)}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "llama3"):
        raise ValueError(f"unsupported rope scaling '{kind}': only llama3 (or none) is implemented")
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"} if kind == "llama3" else None
    n_head = c["num_attention_heads"]
    head_dim = c.get("head_dim") or c["hidden_size"] // n_head
    return ModelConfig(
        vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], n_head=n_head,
        n_kv_head=c.get("num_key_value_heads") or n_head, n_embd=c["hidden_size"], ffn_hidden=c["intermediate_size"],
        block_size=c.get("max_position_embeddings", 4096), rope_theta=float(rope["rope_theta"]),
        tie_embeddings=c.get("tie_word_embeddings", False), qkv_bias=arch == "Qwen2ForCausalLM",
        norm_eps=c.get("rms_norm_eps", 1e-6), head_dim=head_dim if head_dim * n_head != c["hidden_size"] else 0,
        qk_norm=arch == "Qwen3ForCausalLM", rope_scaling=scaling)


def config_to_hf(c: ModelConfig, tok) -> dict:
    """config.json for transformers (and vLLM): Qwen3 with qk_norm, Qwen2 with q/k/v biases, else Llama."""
    if c.qk_norm and c.qkv_bias:
        raise ValueError("no Hugging Face architecture has both qk_norm and q/k/v biases alone")
    arch = "Qwen3ForCausalLM" if c.qk_norm else "Qwen2ForCausalLM" if c.qkv_bias else "LlamaForCausalLM"
    out = {"architectures": [arch], "model_type": arch.removesuffix("ForCausalLM").lower(),
           "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "intermediate_size": c.ffn_hidden,
           "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
           "head_dim": c.hd, "hidden_act": "silu", "max_position_embeddings": c.block_size, "rms_norm_eps": c.norm_eps,
           "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling, "tie_word_embeddings": c.tie_embeddings,
           "attention_bias": False, "mlp_bias": False, "use_sliding_window": False,
           "bos_token_id": None, "eos_token_id": tok.eot, "pad_token_id": tok.pad,
           "initializer_range": 0.02}
    if arch == "LlamaForCausalLM":
        del out["use_sliding_window"]
    else:
        del out["mlp_bias"]
    return out


# --- the tokenizer: tokenizer.json -> tiktoken ---

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte as a printable character (printable bytes as themselves, the
    others shifted past 255), so that a byte-level vocabulary can be stored as JSON strings."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def split_pattern(pre: dict | None) -> str:
    """The split regex of a byte-level pre-tokenizer: Sequence[Split(regex, Isolated), ByteLevel] or ByteLevel
    (GPT-2's regex, or none: our byte tokenizer's export)."""
    steps = pre["pretokenizers"] if pre and pre["type"] == "Sequence" else [pre] if pre else []
    types = [s["type"] for s in steps]
    if types == ["ByteLevel"] and not steps[0].get("add_prefix_space"):
        return GPT2_PATTERN if steps[0].get("use_regex", True) else r"[\s\S]+"  # no split: the text is one piece
    if (types == ["Split", "ByteLevel"] and "Regex" in steps[0]["pattern"] and steps[0]["behavior"] == "Isolated"
            and not steps[0].get("invert") and not steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space")):
        return steps[0]["pattern"]["Regex"]
    raise ValueError(f"tokenizer.json is not a byte-level BPE this converter reads: pre_tokenizer {types or None} "
                     f"(need ByteLevel, or Split(regex) then ByteLevel without add_prefix_space)")


def tiktoken_encoding(tj: dict, name: str) -> tiktoken.Encoding:
    """A byte-level BPE tokenizer.json as a tiktoken Encoding (ids unchanged)."""
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix"):
        raise ValueError(f"tokenizer.json is a {model.get('type')} model, not a byte-level BPE: not supported")
    norm = tj.get("normalizer")
    if norm and norm["type"] != "NFC":
        raise ValueError(f"tokenizer.json has a {norm['type']} normalizer: only NFC (or none) is supported")
    pat = split_pattern(tj.get("pre_tokenizer"))
    decode = {c: b for b, c in bytes_to_unicode().items()}
    added = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    ranks = {}
    for s, i in model["vocab"].items():
        if s in added:
            continue
        if any(ch not in decode for ch in s):
            raise ValueError(f"tokenizer.json is not byte-level: vocabulary entry {s!r} is not in the byte-to-unicode table")
        ranks[bytes(decode[ch] for ch in s)] = i
    if missing := [b for b in range(256) if bytes([b]) not in ranks]:
        raise ValueError(f"tokenizer.json's vocabulary lacks {len(missing)} of the 256 single bytes: not a full byte-level BPE")
    # tiktoken applies merges by the merged token's id: that must be Hugging Face's merge order
    merged = [model["vocab"].get(a + b, -1) for a, b in (m.split(" ") if isinstance(m, str) else m for m in model.get("merges", []))]
    if any(x >= y for x, y in zip(merged, merged[1:])) or -1 in merged:
        raise ValueError("tokenizer.json's merges are not in the order of their tokens' ids (or make tokens not in the "
                         "vocabulary): tiktoken cannot reproduce them")
    return tiktoken.Encoding(name, pat_str=pat, mergeable_ranks=ranks, special_tokens=added)


def read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path) as f:
        return json.load(f)


def token_text(t) -> str | None:
    return t["content"] if isinstance(t, dict) else t  # tokenizer_config writes a token as text or as an AddedToken


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer directory as our Tokenizer: eot is the eos token; the tags' ids are
    None unless they are single tokens; chat is the format of the tokenizer's chat template."""

    def __init__(self, path: str):
        path = os.path.abspath(path)
        tj = read_json(os.path.join(path, "tokenizer.json"), "tokenizer.json")
        tc_path = os.path.join(path, "tokenizer_config.json")
        tc = {}  # the named tokens: in tokenizer_config.json, or in older directories special_tokens_map.json
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if os.path.isfile(os.path.join(path, name)):
                tc.update(read_json(os.path.join(path, name), name))
        gc_path = os.path.join(path, "generation_config.json")
        gc = read_json(gc_path, "generation_config.json") if os.path.isfile(gc_path) else {}
        self.enc = tiktoken_encoding(tj, f"hf:{path}")
        self.name, self.vocab_size = self.enc.name, self.enc.n_vocab
        self.nfc = (tj.get("normalizer") or {}).get("type") == "NFC"
        single = lambda text: (ids[0] if len(ids := self.enc.encode(text, allowed_special="all")) == 1 else None)
        eos = token_text(tc.get("eos_token"))
        if eos is None or single(eos) is None:
            raise ValueError(f"{tc_path} names no eos_token that is one token of tokenizer.json: cannot end completions")
        self.eot = single(eos)
        extra = gc.get("eos_token_id") or []
        self.eos_ids = list(dict.fromkeys([self.eot, *(extra if isinstance(extra, list) else [extra])]))
        self.think, self.end_think, self.answer, self.end_answer = (single(t) for t in SPECIALS[1:5])
        self.stop_texts = () if self.end_answer is not None else (END_ANSWER,)
        template = tc.get("chat_template") or ""
        if os.path.isfile(os.path.join(path, "chat_template.jinja")):  # transformers >= 4.43 writes it apart
            template = open(os.path.join(path, "chat_template.jinja")).read()
        template = json.dumps(template)  # a list of named templates, or one string
        self.chat = "chatml" if "<|im_start|>" in template else "llama3" if "<|start_header_id|>" in template else None
        # padding is masked out of attention and the loss, so its id only has to be a valid row of
        # the embedding that is never content (decode drops it): the tokenizer's pad token; else the
        # last added special token that is no stop, no bos and not in the chat format (Llama 3: a
        # reserved token, in no text); else eos, which rollouts drop from the text anyway
        pad, bos = token_text(tc.get("pad_token")), token_text(tc.get("bos_token"))
        spare = [t["id"] for t in tj.get("added_tokens", []) if t["special"] and t["content"] != bos
                 and t["id"] not in self.stop_ids and t["content"] not in CHAT.get(self.chat, "")]
        self.pad = single(pad) if pad is not None and single(pad) is not None else max(spare, default=self.eot)

    @property
    def stop_ids(self) -> list[int]:
        return self.eos_ids + ([self.end_answer] if self.end_answer is not None else [])

    def encode(self, text: str) -> list[int]:
        return super().encode(unicodedata.normalize("NFC", text) if self.nfc else text)

    def decode(self, ids) -> str:
        # a model's embedding may have more rows than the tokenizer has tokens (Qwen2.5: 151936 for
        # 151665): such an id has no text
        return super().decode([i for i in ids if i < self.vocab_size])


def merges_of(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list of a tiktoken BPE, in rank order: for each token of two or more bytes, the two
    tokens BPE joins into it (its bytes merged using only the tokens of lower rank)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            r, i = min((ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
            if r >= rank:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        elif len(parts) > 2:
            raise ValueError(f"token {token!r} is not the merge of two lower-ranked tokens: not a BPE vocabulary")
    return merges


def tokenizer_json(tok: Tokenizer) -> dict:
    """Our tokenizer (byte, aha) as a tokenizer.json: a byte-level BPE with its merges, its split
    regex as a Split pre-tokenizer (none for byte: any split gives the same tokens without merges),
    and the specials as added tokens, which `tokenizers` splits out of the text as tiktoken does."""
    chars = bytes_to_unicode()
    text = lambda b: "".join(chars[x] for x in b)  # noqa: E731  bytes as byte-level unicode
    ranks = tok.enc._mergeable_ranks
    added = [{"id": tok.enc.encode_single_token(t), "content": t, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for t in SPECIALS]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    pre = byte_level if tok.name == "byte" else {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": tok.enc._pat_str}, "behavior": "Isolated", "invert": False}, byte_level]}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre, "post_processor": None, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {text(t): i for t, i in ranks.items()},
                      "merges": [f"{text(a)} {text(b)}" for a, b in merges_of(ranks)]}}


# --- load and save ---

def load_hf(path, device="cpu", dtype=None):
    """(model in eval mode, tokenizer) of a local Hugging Face directory; dtype: that of the
    weights (torch.float32, torch.bfloat16), default the one config.json declares."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such model directory: {path}")
    hf_config = read_json(os.path.join(path, "config.json"), "config.json")
    config = config_from_hf(hf_config)
    # default: the dtype config.json declares (what transformers' dtype="auto" loads), known before any weight is read
    dtype = dtype or getattr(torch, hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32")
    tok = HFTokenizer(path)  # tokenizer errors before any weight is read
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        shard_of = read_json(index, "index")["weight_map"]
    elif os.path.isfile(os.path.join(path, "model.safetensors")):
        with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
            shard_of = dict.fromkeys(f.keys(), "model.safetensors")
    else:
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")
    with torch.device("meta"):
        names = [n for n in GPT(config).state_dict() if not (config.tie_embeddings and n == "lm_head.weight")]
    expected = {hf_name(n) for n in names}
    if extra := sorted(set(shard_of) - expected - {"lm_head.weight"}):  # a tied lm_head may be stored as well
        raise ValueError(f"{path} has weights the config does not use: {', '.join(extra[:3])}")
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
        raise ValueError(re.sub(r"weight (\S+) has", lambda m: f"weight {hf_name(m.group(1))} has", str(e))) from None
    return model, tok


def write_atomic(path: str, write):
    tmp = f"{path}.tmp"
    write(tmp)
    os.replace(tmp, path)


def save_hf(model: GPT, tokenizer: Tokenizer, path: str):
    """Write model and tokenizer as a Hugging Face directory (config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json, generation_config.json), each file atomically. The
    tokenizer files of an hf: tokenizer are copied; ours (byte, aha) are written as byte-level BPEs."""
    if tokenizer.name.startswith("hf:"):  # not isinstance: under `python -m hf` this module is also __main__
        src = tokenizer.name.removeprefix("hf:")
        files = {n: open(os.path.join(src, n), "rb").read() for n in
                 ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja") if os.path.isfile(os.path.join(src, n))}
    elif tokenizer.name in ("byte", "aha"):
        files = {"tokenizer.json": json.dumps(tokenizer_json(tokenizer), ensure_ascii=False).encode(),
                 "tokenizer_config.json": json.dumps({
                     "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIALS[0], "pad_token": SPECIALS[-1],
                     "model_max_length": model.config.block_size, "clean_up_tokenization_spaces": False}).encode()}
    else:
        raise ValueError(f"cannot export the tokenizer '{tokenizer.name}': export supports aha, byte and hf: tokenizers "
                         f"(a tiktoken encoding's specials have no tokenizer.json form here)")
    eos = getattr(tokenizer, "eos_ids", [tokenizer.eot])
    files["generation_config.json"] = json.dumps({"eos_token_id": eos, "pad_token_id": tokenizer.pad}).encode()
    config = {**config_to_hf(model.config, tokenizer), "torch_dtype": str(model.lm_head.weight.dtype).removeprefix("torch.")}
    files["config.json"] = json.dumps(config, indent=2).encode()
    weights = {hf_name(n): t.detach().contiguous() for n, t in model.state_dict().items()
               if not (model.config.tie_embeddings and n == "lm_head.weight")}  # safetensors stores no shared tensors
    os.makedirs(path, exist_ok=True)
    write_atomic(os.path.join(path, "model.safetensors"), lambda p: save_file(weights, p, metadata={"format": "pt"}))
    for name, data in files.items():
        write_atomic(os.path.join(path, name), lambda p: open(p, "wb").write(data))


def export(ckpt_path: str, out: str):
    """One of our checkpoints (ckpt.pt) -> a Hugging Face directory."""
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        name = ckpt["tokenizer"]
    except Exception as e:  # a torn or foreign file
        raise ValueError(f"{ckpt_path} is not a checkpoint of this code ({type(e).__name__})") from None
    if name not in ("byte", "aha") and not name.startswith("hf:"):
        raise ValueError(f"cannot export the tokenizer '{name}': export supports aha, byte and hf: tokenizers")
    tok = get_tokenizer(name)
    model = build_model(ModelConfig(**ckpt["config"]), ckpt["model"].__getitem__)
    save_hf(model, tok, out)


def main():
    parser = argparse.ArgumentParser(description="Hugging Face format: export one of our checkpoints.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="ckpt.pt -> a directory transformers, vLLM and lm-eval load")
    ex.add_argument("ckpt", help="a checkpoint written by train.py, e.g. out/<run>/ckpt.pt")
    ex.add_argument("out", help="the directory to write (created; files in it of the same names are replaced)")
    args = parser.parse_args()
    try:
        export(args.ckpt, args.out)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

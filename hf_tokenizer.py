"""
Hugging Face's tokenizer.json and tiktoken, converted both ways: a byte-level BPE tokenizer.json
(GPT-2, Llama 3, Qwen) read as a tiktoken Encoding, and a tiktoken BPE (ours: aha, byte) written
as a tokenizer.json, each encoding the same text to the same ids.

Reading: each vocabulary string is mapped back to bytes through GPT-2's byte-to-unicode table; a
token's id is its rank (tiktoken merges the adjacent pair whose concatenation has the lowest
rank, which is Hugging Face's merge order when merged tokens are numbered in merge order, as they
are in these vocabularies: checked at load); the pre-tokenizer's split regex is tiktoken's
pat_str; every added token is a special token, matched in the text before BPE runs, as Hugging
Face's tokenizers do. Writing: the merges are rebuilt from tiktoken's ranks (`merges_of`).

Left out: tokenizers that are not byte-level BPE (SentencePiece, WordPiece), normalizers other
than NFC (tokenizer.py applies it in encode), added tokens' lstrip/rstrip flags. What cannot be
represented is refused in one line (ValueError). The tokenizer of a Hugging Face directory, with
its eos, pad and chat format, is tokenizer.HFTokenizer; tests/test_hf.py checks both directions
against the `tokenizers` library.

    python -m pytest tests/test_hf.py -k tokenizer
"""

import tiktoken

# GPT-2's split, what a ByteLevel pre-tokenizer with use_regex=true applies
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


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


def tokenizer_json(enc: tiktoken.Encoding) -> dict:
    """A byte-level tiktoken Encoding (ours: aha, byte) as a tokenizer.json: a byte-level BPE with
    its merges, its split regex as a Split pre-tokenizer (none without merges: then any split gives
    the same tokens), and its special tokens as added tokens, which `tokenizers` splits out of the
    text before BPE as tiktoken does."""
    chars = bytes_to_unicode()
    text = lambda b: "".join(chars[x] for x in b)  # noqa: E731  bytes as byte-level unicode
    ranks = enc._mergeable_ranks
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for t, i in sorted(enc._special_tokens.items(), key=lambda kv: kv[1])]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    pre = byte_level if all(len(t) == 1 for t in ranks) else {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": enc._pat_str}, "behavior": "Isolated", "invert": False}, byte_level]}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre, "post_processor": None, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {text(t): i for t, i in ranks.items()},
                      "merges": [f"{text(a)} {text(b)}" for a, b in merges_of(ranks)]}}

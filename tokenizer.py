"""
Tokenizer: a tiktoken Encoding plus the special tokens the R1-Zero format needs.

The default, `aha`, is a byte-level BPE (Sennrich et al. 2016, as GPT-2 uses it) trained by
`train_bpe` below on the toy tasks' documents, up to 512 tokens (it stops at 481, when every
piece of the corpora is one token), and stored in tiktoken's own file format (aha.tiktoken,
beside this file). Words become one token each while every digit stays its own token (the toy
computes digit by digit): the base stage and every rollout are about half as long as with bytes
(docs/toy-task.md). `byte` is the plain byte-level encoding: the 256 byte values, no merges,
nothing to train. Any text round-trips through either. Special tokens are added on top:

    <|endoftext|>  end of a document / of a completion (it is part of the completion and the loss)
    <think> </think> <answer> </answer>   the R1-Zero tags (Table 1), one token each
    <|pad|>        padding; never attended to, never in the loss

A Hugging Face tokenizer ("hf:DIR", a byte-level BPE tokenizer.json converted to tiktoken by
interop/hf_tokenizer.py) is `HFTokenizer`: its eos ends a completion, its chat template says the
prompt format, and the R1 tags are plain text to it, so the sampler stops on the text </answer>
(`stop_texts`); that of a llama.cpp GGUF file ("gguf:FILE") is `GGUFTokenizer`. Named tiktoken
encodings (gpt2, r50k_base, cl100k_base, o200k_base) are built from a local `<name>.tiktoken`
file (--tokenizer_dir, `named_encoding`): nothing is fetched at run time.

    python tokenizer.py "A conversation between User and Assistant."   # prints the ids
    python tokenizer.py --train        # retrains aha.tiktoken from the toy corpora (deterministic)
"""

import base64
import json
import os
import re
import sys
import unicodedata
from collections import Counter
from unittest import mock

import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

from interop.gguf_tokenizer import gguf_tokenizer_files
from interop.hf_tokenizer import normalizer, tiktoken_encoding
from runner import atomic_write, read_json
from tasks import AdditionTask, CountdownTask
from template import CHAT

EOT, THINK, END_THINK, ANSWER, END_ANSWER, PAD = (
    "<|endoftext|>", "<think>", "</think>", "<answer>", "</answer>", "<|pad|>")
SPECIALS = [EOT, THINK, END_THINK, ANSWER, END_ANSWER, PAD]
NAMED = {"gpt2": "r50k_base", "r50k_base": "r50k_base",
         "cl100k_base": "cl100k_base", "o200k_base": "o200k_base"}
# any pre-split works for a byte-level vocabulary (there are no merges to apply); short pieces
# keep tiktoken's per-piece work small
BYTE_PATTERN = r"""\s?\w+|\s?[^\s\w]+|\s+"""
# the aha tokenizer's pre-split (GPT-2's pattern in ASCII classes, so that Python's re and tiktoken
# split alike): a word with its leading space, ONE digit with its leading space, a run of other
# characters, whitespace. Merges never cross a piece, so no token holds two digits
AHA_PATTERN = r""" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]+|\s+(?!\S)|\s+"""
AHA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aha.tiktoken")
AHA_VOCAB = 512


class Tokenizer:
    """A tiktoken Encoding with ids for the specials: `eot`, `think`, ..., `pad` attributes."""

    def __init__(self, enc: tiktoken.Encoding):
        self.enc = enc
        self.name = enc.name
        self.vocab_size = enc.n_vocab
        for attr, tok in zip(["eot", "think", "end_think", "answer", "end_answer", "pad"],
                             SPECIALS):
            setattr(self, attr, enc.encode_single_token(tok))

    # what ends a completion: these ids, or (for a tokenizer whose vocabulary lacks the tags as
    # single tokens, e.g. a real BPE) the decoded text ending in one of stop_texts
    @property
    def stop_ids(self) -> list[int]:
        return [self.eot, self.end_answer]

    stop_texts: tuple[str, ...] = ()
    # the prompt format: None (the R1-Zero template) or template.CHAT's "chatml", "llama3"
    chat: str | None = None

    def encode(self, text: str) -> list[int]:
        # the R1-Zero template itself names the tags, so they are encoded as the special tokens
        return self.enc.encode(text, allowed_special="all")

    def decode(self, ids) -> str:
        return self.enc.decode([i for i in ids if i != self.pad])


def byte_encoding() -> tiktoken.Encoding:
    return with_specials("byte", BYTE_PATTERN, {bytes([b]): b for b in range(256)})


def train_bpe(texts, vocab_size: int, pat_str: str = AHA_PATTERN) -> dict[bytes, int]:
    """Byte-level BPE training: split each text into pieces with pat_str, start from the 256 byte
    tokens, and repeatedly merge the most frequent adjacent pair of tokens (counted within pieces,
    weighted by how often each piece occurs) into a new token, until the vocabulary has vocab_size
    tokens or no pair is left. Ties go to the pair whose bytes sort first, so the result depends
    only on the texts. Returns tiktoken's mergeable_ranks: token bytes -> id, in merge order."""
    pieces = Counter(piece.encode() for text in texts for piece in re.findall(pat_str, text))
    words, counts = [[bytes([b]) for b in w] for w in pieces], list(pieces.values())
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < vocab_size:
        pairs = Counter()
        for w, c in zip(words, counts):
            for pair in zip(w, w[1:]):
                pairs[pair] += c
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], p[0] + p[1], p[0]))
        ranks.setdefault(a + b, len(ranks))
        for w in words:  # merge every occurrence, left to right
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    return ranks


def aha_texts() -> list[str]:
    """What aha.tiktoken is trained on: the toy tasks' base-corpus documents (templated and not)."""
    texts = []
    for task in (AdditionTask(), AdditionTask(reflect=False), CountdownTask()):
        texts += [p + c for p, c in task.textbook(500, seed=0) + task.corpus(500, seed=0)]
    return texts


def write_aha(path: str = AHA_FILE):
    ranks = train_bpe(aha_texts(), AHA_VOCAB)
    # tiktoken's format: base64 of the token's bytes, its id
    atomic_write(path, "".join(f"{base64.b64encode(t).decode()} {i}\n"
                               for t, i in sorted(ranks.items(), key=lambda x: x[1])))


def with_specials(name: str, pat_str: str, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    return tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=ranks,
                             special_tokens={tok: len(ranks) + i for i, tok in enumerate(SPECIALS)})


def aha_encoding() -> tiktoken.Encoding:
    return with_specials("aha", AHA_PATTERN, tiktoken.load.load_tiktoken_bpe(AHA_FILE))


def named_encoding(name: str, tokenizer_dir: str, check_hash=True) -> tiktoken.Encoding:
    """A named tiktoken encoding, built from its `<name>.tiktoken` file in tokenizer_dir: nothing
    is fetched at run time. tiktoken's own constructors hard-code a download URL, so we hand them
    the local file instead. gpt2 uses r50k_base's file: tiktoken defines the two with the same
    merges and pattern."""
    base = NAMED[name]
    path = os.path.join(tokenizer_dir, f"{base}.tiktoken")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"tokenizer '{name}' needs {path}: copy {base}.tiktoken (the file tiktoken downloads "
            f"for '{base}') into {tokenizer_dir}/ or pass --tokenizer_dir DIR; nothing is "
            f"downloaded at run time")
    local = lambda url, expected_hash=None: tiktoken.load.load_tiktoken_bpe(
        path, expected_hash if check_hash else None)
    with mock.patch.object(openai_public, "load_tiktoken_bpe", local):
        try:
            spec = openai_public.ENCODING_CONSTRUCTORS[base]()
        except ValueError as e:  # tiktoken checks the file's sha256
            raise ValueError(f"{path} is not the {base}.tiktoken that tiktoken expects "
                             f"(hash mismatch)") from e
    # our specials go after the last id the encoding already uses; <|endoftext|> is reused
    specials = dict(spec["special_tokens"])
    next_id = max([*spec["mergeable_ranks"].values(), *specials.values()]) + 1
    for tok in SPECIALS:
        if tok not in specials:
            specials[tok], next_id = next_id, next_id + 1
    return tiktoken.Encoding(name, pat_str=spec["pat_str"], mergeable_ranks=spec["mergeable_ranks"],
                             special_tokens=specials)


def token_text(t) -> str | None:
    # tokenizer_config writes a token as text or as an AddedToken
    return t["content"] if isinstance(t, dict) else t


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer directory as our Tokenizer: eot is the eos token; the tags' ids are
    None unless they are single tokens; chat is the format of the tokenizer's chat template.

    tokenizer.json is a byte-level BPE (Qwen's, Llama 3's, DeepSeek-V3/R1's or an R1-Distill
    model's). Its eos ends a completion (and generation_config.json's other eos ids); the R1 tags
    are several tokens each unless its vocabulary has them. An NFC normalizer (Qwen2's) is applied
    in `encode`; a bos that a post-processor would add is not prepended (Llama's
    <|begin_of_text|>: the llama3 chat format writes it; R1-Distill's
    <｜begin▁of▁sentence｜>: R1's chat format is not one of template.CHAT's, so nothing writes
    it)."""

    def __init__(self, path: str):
        path = os.path.abspath(path)
        tj = read_json(os.path.join(path, "tokenizer.json"), "tokenizer.json")
        # the named tokens: in tokenizer_config.json,
        # or in older directories special_tokens_map.json
        tc = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if os.path.isfile(os.path.join(path, name)):
                tc.update(read_json(os.path.join(path, name), name))
        gc_path = os.path.join(path, "generation_config.json")
        gc = read_json(gc_path, "generation_config.json") if os.path.isfile(gc_path) else {}
        # transformers >= 4.43 writes the chat template apart
        if os.path.isfile(os.path.join(path, "chat_template.jinja")):
            tc["chat_template"] = open(os.path.join(path, "chat_template.jinja")).read()
        self.path = path
        self.build(tj, tc, gc, f"hf:{path}", os.path.join(path, "tokenizer_config.json"))

    def build(self, tj: dict, tc: dict, gc: dict, name: str, where: str):
        """From tokenizer.json (tj), tokenizer_config.json (tc: eos, pad, bos, chat_template) and
        generation_config.json (gc: more eos ids); `where` names tc in errors."""
        self.enc = tiktoken_encoding(tj, name)
        self.name, self.vocab_size = self.enc.name, self.enc.n_vocab
        self.nfc = normalizer(tj) == "NFC"
        single = lambda text: (
            ids[0] if len(ids := self.enc.encode(text, allowed_special="all")) == 1 else None)
        eos = token_text(tc.get("eos_token"))
        if eos is None or single(eos) is None:
            raise ValueError(f"{where} names no eos_token that is one token of tokenizer.json: "
                             f"cannot end completions")
        self.eot = single(eos)
        extra = gc.get("eos_token_id") or []
        self.eos_ids = list(dict.fromkeys(
            [self.eot, *(extra if isinstance(extra, list) else [extra])]))
        self.think, self.end_think, self.answer, self.end_answer = (
            single(t) for t in SPECIALS[1:5])
        self.stop_texts = () if self.end_answer is not None else (END_ANSWER,)
        # a list of named templates, or one string
        template = json.dumps(tc.get("chat_template") or "")
        self.chat = ("chatml" if "<|im_start|>" in template
                     else "llama3" if "<|start_header_id|>" in template else None)
        # padding is masked out of attention and the loss, so its id only has to be a valid row of
        # the embedding that is never content (decode drops it): the tokenizer's pad token; else the
        # last added special token that is no stop, no bos and not in the chat format (Llama 3: a
        # reserved token, in no text); else eos, which rollouts drop from the text anyway
        pad, bos = token_text(tc.get("pad_token")), token_text(tc.get("bos_token"))
        spare = [t["id"] for t in tj.get("added_tokens", []) if t["special"] and t["content"] != bos
                 and t["id"] not in self.stop_ids and t["content"] not in CHAT.get(self.chat, "")]
        self.pad = (single(pad) if pad is not None and single(pad) is not None
                    else max(spare, default=self.eot))

    @property
    def stop_ids(self) -> list[int]:
        # (an export lists </answer> among generation_config's eos ids:
        # once here on reading it back)
        return list(dict.fromkeys(self.eos_ids + ([self.end_answer] if self.end_answer is not None
                                                  else [])))

    def encode(self, text: str) -> list[int]:
        return super().encode(unicodedata.normalize("NFC", text) if self.nfc else text)

    def decode(self, ids) -> str:
        # a model's embedding may have more rows than the tokenizer has tokens (Qwen2.5: 151936 for
        # 151665): such an id has no text
        return super().decode([i for i in ids if i < self.vocab_size])

    def files(self) -> dict[str, bytes]:
        """The tokenizer files an export writes (interop/hf.py's save_hf): the directory's own."""
        return {n: open(os.path.join(self.path, n), "rb").read() for n in
                ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
                if os.path.isfile(os.path.join(self.path, n))}


class GGUFTokenizer(HFTokenizer):
    """The tokenizer of a llama.cpp GGUF file ("gguf:FILE"): the tokenizer.json and
    tokenizer_config.json it was converted from, rebuilt from its metadata
    (interop/gguf_tokenizer.py), then read as HFTokenizer reads a directory's. A checkpoint records
    the name, gguf:/abs/FILE, and reloads it from the file (as hf:DIR from the directory)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        tj, tc, gc = gguf_tokenizer_files(self.path)
        self.build(tj, tc, gc, f"gguf:{self.path}", self.path)

    def files(self) -> dict[str, bytes]:
        tj, tc, _ = gguf_tokenizer_files(self.path)
        return {"tokenizer.json": json.dumps(tj, ensure_ascii=False).encode(),
                "tokenizer_config.json": json.dumps(tc, ensure_ascii=False).encode()}


def get_tokenizer(name: str = "aha", tokenizer_dir: str = "tokenizers") -> Tokenizer:
    """aha, byte, a named tiktoken encoding, hf:DIR, the tokenizer of a Hugging Face directory,
    or gguf:FILE, that of a llama.cpp GGUF file."""
    if name == "aha":
        return Tokenizer(aha_encoding())
    if name == "byte":
        return Tokenizer(byte_encoding())
    if name.startswith("hf:"):
        return HFTokenizer(name.removeprefix("hf:"))
    if name.startswith("gguf:"):
        return GGUFTokenizer(name.removeprefix("gguf:"))
    if name not in NAMED:
        raise ValueError(f"unknown tokenizer '{name}': use aha, byte, hf:DIR, gguf:FILE or one of "
                         f"{', '.join(NAMED)}")
    return Tokenizer(named_encoding(name, tokenizer_dir))


if __name__ == "__main__":
    if sys.argv[1:] == ["--train"]:
        write_aha()
        print(f"wrote {AHA_FILE}")
        sys.exit()
    tok = get_tokenizer()
    ids = tok.encode(" ".join(sys.argv[1:]) or "<think> 1+1=2 </think> <answer> 2 </answer>")
    print(ids)
    print(repr(tok.decode(ids)))

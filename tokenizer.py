"""
Tokenizer: a tiktoken Encoding plus the special tokens the R1-Zero format needs.

The default is byte-level: the 256 byte values are the tokens, with no merges, so any text
round-trips and nothing has to be downloaded or trained. Special tokens are added on top:

    <|endoftext|>  end of a document / of a completion (it is part of the completion and the loss)
    <think> </think> <answer> </answer>   the R1-Zero tags (Table 1), one token each
    <|pad|>        padding; never attended to, never in the loss

A Hugging Face tokenizer ("hf:DIR", a byte-level BPE tokenizer.json) is converted to tiktoken by
hf.py: there the tags are plain text, several tokens each unless its vocabulary has them.

Named tiktoken encodings (gpt2, r50k_base, cl100k_base, o200k_base) are built from their
`<name>.tiktoken` file in a local directory (--tokenizer_dir); nothing is fetched at run time.
tiktoken's own constructors hard-code a download URL, so we hand them the local file instead.
gpt2 uses r50k_base's file: tiktoken defines the two with the same merges and pattern.

    python tokenizer.py "A conversation between User and Assistant."   # prints the ids
"""

import os
import sys
from unittest import mock

import tiktoken
import tiktoken.load

EOT, THINK, END_THINK, ANSWER, END_ANSWER, PAD = (
    "<|endoftext|>", "<think>", "</think>", "<answer>", "</answer>", "<|pad|>")
SPECIALS = [EOT, THINK, END_THINK, ANSWER, END_ANSWER, PAD]
NAMED = {"gpt2": "r50k_base", "r50k_base": "r50k_base",
         "cl100k_base": "cl100k_base", "o200k_base": "o200k_base"}
# any pre-split works for a byte-level vocabulary (there are no merges to apply); short pieces
# keep tiktoken's per-piece work small
BYTE_PATTERN = r"""\s?\w+|\s?[^\s\w]+|\s+"""


class Tokenizer:
    """A tiktoken Encoding with ids for the specials: `eot`, `think`, ..., `pad` attributes."""

    def __init__(self, enc: tiktoken.Encoding):
        self.enc = enc
        self.name = enc.name
        self.vocab_size = enc.n_vocab
        for attr, tok in zip(["eot", "think", "end_think", "answer", "end_answer", "pad"], SPECIALS):
            setattr(self, attr, enc.encode_single_token(tok))

    # what ends a completion: these ids, or (for a tokenizer whose vocabulary lacks the tags as
    # single tokens, e.g. a real BPE) the decoded text ending in one of stop_texts
    @property
    def stop_ids(self) -> list[int]:
        return [self.eot, self.end_answer]

    stop_texts: tuple[str, ...] = ()
    chat: str | None = None  # the prompt format: None (the R1-Zero template) or tasks.CHAT's "chatml", "llama3"

    def encode(self, text: str) -> list[int]:
        # the R1-Zero template itself names the tags, so they are encoded as the special tokens
        return self.enc.encode(text, allowed_special="all")

    def decode(self, ids) -> str:
        return self.enc.decode([i for i in ids if i != self.pad])


def byte_encoding() -> tiktoken.Encoding:
    ranks = {bytes([b]): b for b in range(256)}
    specials = {tok: 256 + i for i, tok in enumerate(SPECIALS)}
    return tiktoken.Encoding("byte", pat_str=BYTE_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def named_encoding(name: str, tokenizer_dir: str, check_hash=True) -> tiktoken.Encoding:
    base = NAMED[name]
    path = os.path.join(tokenizer_dir, f"{base}.tiktoken")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"tokenizer '{name}' needs {path}: copy {base}.tiktoken (the file tiktoken downloads for "
            f"'{base}') into {tokenizer_dir}/ or pass --tokenizer_dir DIR; nothing is downloaded at run time")
    from tiktoken_ext import openai_public
    local = lambda url, expected_hash=None: tiktoken.load.load_tiktoken_bpe(path, expected_hash if check_hash else None)
    with mock.patch.object(openai_public, "load_tiktoken_bpe", local):
        try:
            spec = openai_public.ENCODING_CONSTRUCTORS[base]()
        except ValueError as e:  # tiktoken checks the file's sha256
            raise ValueError(f"{path} is not the {base}.tiktoken that tiktoken expects (hash mismatch)") from e
    # our specials go after the last id the encoding already uses; <|endoftext|> is reused
    specials = dict(spec["special_tokens"])
    next_id = max([*spec["mergeable_ranks"].values(), *specials.values()]) + 1
    for tok in SPECIALS:
        if tok not in specials:
            specials[tok], next_id = next_id, next_id + 1
    return tiktoken.Encoding(name, pat_str=spec["pat_str"], mergeable_ranks=spec["mergeable_ranks"],
                             special_tokens=specials)


def get_tokenizer(name: str = "byte", tokenizer_dir: str = "tokenizers") -> Tokenizer:
    """byte, a named tiktoken encoding, or hf:DIR, the tokenizer.json of a Hugging Face directory (hf.py)."""
    if name == "byte":
        return Tokenizer(byte_encoding())
    if name.startswith("hf:"):
        from hf import HFTokenizer
        return HFTokenizer(name.removeprefix("hf:"))
    if name not in NAMED:
        raise ValueError(f"unknown tokenizer '{name}': use byte, hf:DIR or one of {', '.join(NAMED)}")
    return Tokenizer(named_encoding(name, tokenizer_dir))


if __name__ == "__main__":
    tok = get_tokenizer()
    ids = tok.encode(" ".join(sys.argv[1:]) or "<think> 1+1=2 </think> <answer> 2 </answer>")
    print(ids)
    print(repr(tok.decode(ids)))

"""
A llama.cpp GGUF file opened, and its tokenizer rebuilt as the Hugging Face files it was converted
from. A GGUF stores a byte-level BPE as metadata: the vocabulary (tokenizer.ggml.tokens, spelt as
tokenizer.json spells it), the merges, each token's type (CONTROL and USER_DEFINED tokens are the
added tokens; UNUSED ones pad the vocabulary to the embedding and are left out), the bos, eos, pad
and eot ids and the chat template. `gguf_tokenizer_files` writes them back as a tokenizer.json, a
tokenizer_config.json and generation_config.json's eos ids, which tokenizer.GGUFTokenizer reads as
HFTokenizer reads a directory's (and an export writes out). What a GGUF lacks is the
pre-tokenizer: only its name, tokenizer.ggml.pre. `PRE` maps the names read here to the
pre_tokenizer of that family's tokenizer.json, whose splits are those llama.cpp's llama-vocab.cpp
applies for the name (smollm, starcoder: each digit alone, then GPT-2's split; llama-bpe: Llama
3's; qwen2: Qwen2's; gpt-2: GPT-2's).

Left out: SentencePiece vocabularies (tokenizer.ggml.model "llama": Llama 2, Mistral, Gemma) and
other pre names, each refused in one line; the normalizer a tokenizer.json may have had (a GGUF
does not carry it and llama.cpp applies none: Qwen2's NFC); the bos a GGUF asks to prepend
(add_bos_token: as for hf:DIR, the chat format writes it). `open_gguf` is the one place a GGUF is
opened (the `gguf` package, an optional dependency, imported there); interop/gguf_model.py reads
the weights.

    python -m pytest tests/test_gguf.py -k tokenizer
"""

import functools
import os

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
CONTROL, USER_DEFINED, UNUSED = 3, 4, 5
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
            "use_regex": use_regex}


def split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def sequence(*steps) -> dict:
    return {"type": "Sequence", "pretokenizers": list(steps)}


_DIGITS = sequence({"type": "Digits", "individual_digits": True}, byte_level(True))
_LLAMA3 = sequence(split(LLAMA3_SPLIT), byte_level(False))
_QWEN2 = sequence(split(QWEN2_SPLIT), byte_level(False))
# tokenizer.ggml.pre -> the pre_tokenizer of its family's tokenizer.json
PRE = {"smollm": _DIGITS, "starcoder": _DIGITS, "gpt-2": byte_level(True),
       "llama-bpe": _LLAMA3, "llama3": _LLAMA3, "llama-v3": _LLAMA3,
       "qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2}


def open_gguf(path: str):
    """The gguf.GGUFReader of a GGUF file (memory-mapped: its metadata parsed, no tensor read),
    cached per version of the file. FileNotFoundError when it is missing; ValueError (one line)
    when the gguf package is not installed, or the file is no GGUF, or a truncated one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such GGUF file: {path}")
    st = os.stat(path)
    return _reader(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=2)
def _reader(path: str, size: int, *version):
    try:
        import gguf  # optional: only gguf:FILE needs llama.cpp's reader
    except ImportError:
        raise ValueError("reading a GGUF file needs the gguf package (llama.cpp's reader): "
                         "pip install gguf") from None
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    # what numpy and the reader raise on a file cut short or overwritten
    except (ValueError, IndexError, KeyError, OverflowError, EOFError) as e:
        raise ValueError(f"{path} is a truncated or corrupt GGUF file ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:120]})") from None
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ValueError(f"{path} is a truncated GGUF file: its tensors end at byte {end}, the "
                         f"file at {size}")
    return reader


def field(reader, key: str, default=None):
    """A metadata value (a number, a string or a list), or default where the file has none."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_tokenizer_files(path: str) -> tuple[dict, dict, dict]:
    """(tokenizer.json, tokenizer_config.json, generation_config.json) of a GGUF file's tokenizer,
    as dicts; a tokenizer this cannot rebuild is a one-line ValueError."""
    return _files(open_gguf(path), os.path.abspath(path))


@functools.lru_cache(maxsize=2)
def _files(reader, path: str) -> tuple[dict, dict, dict]:
    kind, pre = field(reader, "tokenizer.ggml.model"), field(reader, "tokenizer.ggml.pre")
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model is {kind!r}, not a byte-level BPE "
                         f"('gpt2'): SentencePiece and other vocabularies are not supported")
    if pre not in PRE:
        raise ValueError(f"{path}: tokenizer.ggml.pre is {pre!r}, a pre-tokenizer this does not "
                         f"read (it reads {', '.join(PRE)})")
    tokens = field(reader, "tokenizer.ggml.tokens") or []
    types = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": ty == CONTROL}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty not in (1, UNUSED)]
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": None, "pre_tokenizer": PRE[pre], "post_processor": None,
          "decoder": byte_level(True),
          "model": {"type": "BPE", "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": False, "byte_fallback": False,
                    # Llama 3's tokenizer.json takes a piece that is a token whole
                    "ignore_merges": PRE[pre] is _LLAMA3,
                    "vocab": {t: i for i, (t, ty) in enumerate(zip(tokens, types))
                              if ty != UNUSED},
                    "merges": list(field(reader, "tokenizer.ggml.merges") or [])}}
    text = {k: tokens[i] if isinstance(i := field(reader, f"tokenizer.ggml.{k}_token_id"), int)
            and 0 <= i < len(tokens) else None for k in ("bos", "eos", "padding", "unknown")}
    tc = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": text["bos"],
          "eos_token": text["eos"], "pad_token": text["padding"], "unk_token": text["unknown"],
          "clean_up_tokenization_spaces": False}
    if template := field(reader, "tokenizer.chat_template"):
        tc["chat_template"] = template
    # Llama 3 instruct's <|eot_id|>, where the file names it apart from eos
    eos = [field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    return tj, tc, {"eos_token_id": [i for i in dict.fromkeys(eos) if isinstance(i, int)]}

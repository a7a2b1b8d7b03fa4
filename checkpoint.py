"""
Checkpoints, read and written in one place: our ckpt.pt, a Hugging Face directory (hf:DIR) and
a llama.cpp GGUF file (gguf:FILE) alike. Every CLI and stage that takes a model (--init, --ckpt)
goes through `load_model`; every run that starts from one is checked first with
`starting_point`, which reads the tokenizer and the model's shape without loading a weight.

    ckpt.pt   one torch.save'd dict: {format, commit, config, model (the weights), tokenizer (its
              name: aha, byte, gpt2, ..., hf:DIR, gguf:FILE), vocab_size, and what the stage
              adds: step, args, optim, ref, random (runner.random_state), ...}; written to a .tmp,
              fsync'd and renamed, so a crash or a kill -9 leaves the previous checkpoint whole
    hf:DIR    a local Hugging Face model directory (interop/hf.py): config.json, safetensors,
              tokenizer.json
    gguf:FILE a llama.cpp GGUF file (interop/gguf_model.py): metadata, quantised weights and the
              tokenizer in one file; a checkpoint of a run from one records gguf:/abs/FILE as its
              tokenizer and reads the tokenizer from that file again (as hf:DIR from DIR)

A checkpoint says what it is: its format version (a newer one is refused), the git commit of the
code that wrote it, every flag of its run, and its tokenizer's identity, so that a checkpoint of
another tokenizer or another model shape is one line, not a shape error deep in load_state_dict.
`memory_error` checks, with the starting point's shape, that training it fits the device. Left
out: sharded checkpoints (rank 0 gathers and writes the full state: fine up to a few billion
parameters), and writing our checkpoints as safetensors (`export` does, for the HF format).

    python checkpoint.py export out/<run>/ckpt.pt /models/my-policy  # for transformers, vLLM, ...
"""

import argparse
import os
import subprocess
from dataclasses import asdict

import torch

from interop.gguf_model import gguf_config, load_gguf
from interop.hf import config_from_hf, load_hf, save_hf
from model import Transformer, PRESETS, ModelConfig, build_model, parameter_count
from runner import Parser, atomic_write, free_memory, read_json
from template import chat_format
from tokenizer import get_tokenizer

# 2: the format number, the code's git commit and the tokenizer's vocabulary size are recorded
# (1: checkpoints without a "format" entry, which still load)
FORMAT_VERSION = 2


def save_checkpoint(path, model: Transformer, tokenizer_name: str, state_dict=None, **extra):
    """Write {format, git commit, config, weights, tokenizer name and vocabulary size, extra}
    atomically. state_dict: the full weights when the model itself is sharded
    (dist.full_state_dict)."""
    try:  # the code version; None outside a git checkout, or without git
        commit = subprocess.run(["git", "rev-parse", "HEAD"],
                                cwd=os.path.dirname(os.path.abspath(__file__)),
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    weights = model.state_dict() if state_dict is None else state_dict
    ckpt = {"format": FORMAT_VERSION, "commit": commit, "config": asdict(model.config),
            "model": weights, "tokenizer": tokenizer_name, "vocab_size": model.config.vocab_size,
            **extra}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def read_header(path) -> dict:
    """A ckpt.pt's dict without reading its tensors into memory (memory-mapped): config, tokenizer,
    step, flags, ... FileNotFoundError when it is missing, ValueError (one line) when it is not a
    checkpoint of this code (a torn or foreign file)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        ckpt["config"], ckpt["tokenizer"]  # what every checkpoint of ours has
    except Exception as e:
        raise ValueError(f"{path} is not a checkpoint of this code ({type(e).__name__})") from None
    return ckpt


def load_checkpoint(path, device="cpu", tokenizer=None, config=None, full=False):
    """
    The model (in eval mode) and tokenizer of a checkpoint written by save_checkpoint; with
    full=True also the checkpoint's dict (optimiser and random states, step, flags). tokenizer (a
    name) and config (ModelConfig fields) are what the caller expects. A missing or unreadable
    file, a newer format, another tokenizer or another model shape is a one-line ValueError.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        # the model goes to the device below
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        c, name = ckpt["config"], ckpt["tokenizer"]
    except Exception as e:  # a torn or foreign file: say which, not a traceback
        raise ValueError(f"{path} is not a checkpoint of this code "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:120]})")
    if ckpt.get("format", 1) > FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {ckpt['format']}, newer than this code's "
                         f"{FORMAT_VERSION}: use the code it was written with "
                         f"(git commit {ckpt.get('commit')})")
    if tokenizer is not None and name != tokenizer:
        raise ValueError(f"{path} was written with --tokenizer {name}, not {tokenizer}: "
                         f"pass --tokenizer {name}")
    diff = [f"{k}={c.get(k)}, not {v}" for k, v in (config or {}).items() if c.get(k) != v]
    if diff:
        raise ValueError(f"{path} holds a model of another shape ({'; '.join(diff)}): "
                         f"pass the --model it was trained with")
    try:
        tok = get_tokenizer(name, ckpt.get("tokenizer_dir", "tokenizers"))
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{path}: {e}")
    if tok.vocab_size != c["vocab_size"]:
        raise ValueError(f"{path} was written with a {name} tokenizer of {c['vocab_size']} "
                         f"tokens, this one has {tok.vocab_size}: use the tokenizer file it was "
                         f"trained with")
    model = Transformer(ModelConfig(**c))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit the config it records "
                         f"({' '.join(str(e).split())[:200]})")
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as e:  # no such device here (torch without CUDA asserts)
        raise ValueError(f"--device {device}: {' '.join(str(e).split())[:160]}: use --device cpu")
    return (model.eval(), tok, ckpt) if full else (model.eval(), tok)


def load_model(spec, device="cpu", dtype=None, flag="--ckpt"):
    """(model, tokenizer, checkpoint dict or {}) for --init / --ckpt (`flag`, for the error):
    hf:DIR, a local Hugging Face directory, gguf:FILE, a llama.cpp GGUF file, or a ckpt.pt of
    ours, in dtype (default: as stored; fp32 for a GGUF). Bad input is a one-line ValueError."""
    for prefix, load in (("hf:", load_hf), ("gguf:", load_gguf)):
        if spec.startswith(prefix):
            try:
                return (*load(spec.removeprefix(prefix), device, dtype), {})
            except (ValueError, OSError, MemoryError) as e:
                raise ValueError(f"{flag} {spec}: {e}") from None
    model, tok, ckpt = load_checkpoint(spec, device, full=True)
    return (model if dtype is None else model.to(dtype)), tok, ckpt


def load_for_cli(parser, argv, keys):
    """For a CLI that reads a checkpoint (evaluation.py, r1/reject.py: --ckpt, --device, --chat):
    the model, and the flags over the `keys` of the run that wrote it (its task flags: flags given
    here win), the prompt format the run used unless --chat says another -> (args, model,
    tokenizer, checkpoint dict; {} for hf:DIR)."""
    known = parser.parse_known_args(argv)[0]
    with parser.errors():
        model, tok, ckpt = load_model(known.ckpt, known.device)
    run = ckpt.get("args") or {}
    args = parser.parse_args(
        argv, namespace=argparse.Namespace(**{k: run[k] for k in keys if k in run}))
    tok.chat = chat_format(args.chat or run.get("chat", "auto"), tok.chat)
    return args, model, tok, ckpt


def starting_point(args):
    """(tokenizer, model config as a dict of ModelConfig fields) of what a run starts from, read
    without loading any weight: --init hf:DIR's config.json and tokenizer, --init CKPT's config and
    tokenizer, --init gguf:FILE's metadata, or the --model preset with --tokenizer. ValueError: one
    line that names the flag."""
    if not args.init and args.model not in PRESETS:
        raise ValueError(f"--model {args.model} is not a preset: choose from {', '.join(PRESETS)}")
    try:
        if args.init and args.init.startswith("hf:"):
            path = args.init.removeprefix("hf:")
            if not os.path.isdir(path):
                raise FileNotFoundError(f"no such model directory: {path}")
            config = asdict(config_from_hf(read_json(os.path.join(path, "config.json"),
                                                     "config.json")))
            tok = get_tokenizer(args.init)
        elif args.init and args.init.startswith("gguf:"):
            config = asdict(gguf_config(args.init.removeprefix("gguf:")))
            tok = get_tokenizer(args.init)
        elif args.init:
            if not os.path.isfile(args.init):
                raise FileNotFoundError(f"no such checkpoint: {args.init} (a directory of Hugging "
                                        f"Face weights is hf:DIR, a GGUF file gguf:FILE)")
            ckpt = read_header(args.init)
            config, tok = ckpt["config"], get_tokenizer(ckpt["tokenizer"],
                                                        ckpt.get("tokenizer_dir", "tokenizers"))
        else:
            tok = get_tokenizer(args.tokenizer, args.tokenizer_dir)
            config = dict(PRESETS[args.model], vocab_size=tok.vocab_size)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        flag = f"--init {args.init}" if args.init else f"--tokenizer {args.tokenizer}"
        raise ValueError(f"{flag}: {' '.join(str(e).split())}") from None
    if config.get("vocab_size", 0) < tok.vocab_size:
        raise ValueError(f"--init {args.init}: the tokenizer has {tok.vocab_size} tokens, "
                         f"the model's embedding only {config['vocab_size']}")
    return tok, config


def memory_error(args, config, world):
    """The training state needs, per parameter: fp32 weights, gradient and two AdamW moments (16
    bytes) and the reference's copy (2 in bf16, 4 in fp32; none with --beta 0), divided over the
    ranks with --fsdp. Activations and the KV cache come on top. An error if that alone exceeds
    the device's free memory, before anything is allocated. Runs without --beta or --fsdp
    (r1/sft.py) have no reference and one replica."""
    n = parameter_count(ModelConfig(**config))
    beta, fsdp = getattr(args, "beta", 0), getattr(args, "fsdp", False)
    per_param = 16 + (0 if beta == 0 else 2 if args.dtype == "bf16" else 4)
    need, free = n * per_param / (world if fsdp else 1), free_memory(args.device)
    if need > free:
        return (f"--init/--model: training {n / 1e9:.2f}B parameters needs "
                f"~{need / 2**30:.1f} GiB for weights, gradients, AdamW and the reference, "
                f"{free / 2**30:.1f} GiB are free on {args.device}: use --fsdp over more GPUs, "
                f"--beta 0, or a smaller model")
    return None


def export(ckpt_path: str, out: str):
    """One of our checkpoints (ckpt.pt) -> a Hugging Face directory (hf.save_hf)."""
    ckpt = read_header(ckpt_path)
    name = ckpt["tokenizer"]
    if name not in ("byte", "aha") and not name.startswith(("hf:", "gguf:")):
        raise ValueError(f"cannot export the tokenizer '{name}': export supports aha, byte, hf: "
                         f"and gguf: tokenizers")
    tok = get_tokenizer(name)
    model = build_model(ModelConfig(**ckpt["config"]), ckpt["model"].__getitem__)
    save_hf(model, tok, out)


def main(argv=None):
    parser = Parser(prog="checkpoint.py",
                    description="Checkpoints: export one of ours as a Hugging Face directory.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="ckpt.pt -> a directory transformers, vLLM and lm-eval load")
    ex.add_argument("ckpt", help="a checkpoint written by train.py, e.g. out/<run>/ckpt.pt")
    ex.add_argument("out", help="the directory to write (created; files in it of the same names "
                                "are replaced)")
    args = parser.parse_args(argv)
    with parser.errors():
        export(args.ckpt, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

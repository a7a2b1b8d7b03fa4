"""
Run plumbing shared by the training stages (train.py, sft.py): flags that fail in one line, the
model a run starts from (read and checked before any weight is loaded), the run directory, logs
that survive a crash, every random state for an exact resume, and SIGTERM / SIGINT turned into a
checkpoint at the next step boundary.

    out/<run>/args.json           the flags of the run (a resume writes args-resume-<step>.json beside it)
    out/<run>/log.jsonl           one JSON line per step, appended whole and fsync'd
    out/<run>/ckpt.pt             the last checkpoint (model.save_checkpoint: written to a .tmp, then renamed)

Exact resume: a checkpoint carries torch's and Python's global random states, the streams every
rank draws alike (the question stream, the mini-batch shuffler) and each rank's own sampling
generator (gathered to rank 0, a list by rank). At the same world size every rank restores its
own and the resumed run is the uninterrupted one, bit for bit; at another world size the shared
streams restore but the per-rank ones are re-seeded, so it is a valid run but not the same one.
What is left out: CUDA's global generator (nothing here draws from it) and numpy's (unused).

    python train.py --run_name a --resume     # continue out/a from its ckpt.pt
"""

import argparse
import json
import os
import random
import signal
import threading
from dataclasses import asdict

import torch

import dist


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, `prog: error: ...`, exit status 2 (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def check(self, checks):
        """checks: (ok, message) pairs; the first that is not ok is the one-line error."""
        for ok, message in checks:
            if not ok:
                self.error(message)


# -----------------------------------------------------------------------------
# files that a crash or a kill -9 never leaves half-written

def fsync_dir(path):
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk
    finally:
        os.close(fd)


def atomic_write(path, text):
    """Write text to path through a .tmp file and a rename: readers see the old file or the new one."""
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f"{path}.tmp", path)
    fsync_dir(os.path.dirname(path))


def append_jsonl(path, record):
    # one write of one whole line, on the disk before the next step: a crash can tear at most the last line
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path):
    """(records, torn): the parsed lines, and the 1-based numbers of lines that are not whole JSON
    (a run killed mid-write leaves at most its last line torn)."""
    records, torn = [], []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                torn.append(i)
    return records, torn


# -----------------------------------------------------------------------------
# the run directory

def check_run_dir(args):
    """The error (a string naming the flag and the fix) that opening this run would meet, or None.
    Run before any work: a fresh run must not overwrite one, a resume needs a checkpoint."""
    run_dir = os.path.join(args.out_dir, args.run_name or "")
    ckpt = os.path.join(run_dir, "ckpt.pt")
    if args.resume:
        if not args.run_name or not os.path.isfile(ckpt):
            return f"--resume needs the --run_name of a run with a checkpoint; none at {ckpt}"
    elif args.run_name and os.path.exists(os.path.join(run_dir, "log.jsonl")):
        return f"{run_dir} already holds a run: pick another --run_name, or --resume it"
    parent = os.path.abspath(args.out_dir)
    while not os.path.exists(parent):  # the nearest path that exists must be a directory we can write in
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        return f"--out_dir {args.out_dir}: {parent} is not a writable directory: pick another --out_dir"
    return None


def start_run(run_dir, args, world, start):
    """Rank 0 writes the flags (args.json, or args-resume-<start>.json: the run's own stays) and,
    on a resume, cuts log.jsonl and samples.jsonl back to the checkpoint: lines of later steps, and
    torn ones, are set aside in <name>-after-step-<k>.jsonl, never lost."""
    if dist.rank() != 0:
        return
    os.makedirs(run_dir, exist_ok=True)
    name = "args.json" if start == 1 else f"args-resume-{start}.json"
    atomic_write(os.path.join(run_dir, name), json.dumps({**vars(args), "world_size": world}, indent=2))
    if start == 1:
        return
    for stem in ("log", "samples"):
        path = os.path.join(run_dir, f"{stem}.jsonl")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            lines = [line if line.endswith("\n") else line + "\n" for line in f if line.strip()]
        keep = []
        for line in lines:
            try:
                keep.append(json.loads(line)["step"] < start)
            except (json.JSONDecodeError, KeyError, TypeError):
                keep.append(False)
        if not all(keep):
            atomic_write(os.path.join(run_dir, f"{stem}-after-step-{start - 1}.jsonl"),
                         "".join(line for line, k in zip(lines, keep) if not k))
        atomic_write(path, "".join(line for line, k in zip(lines, keep) if k))


def resume_hint(args, prog="train.py"):
    return f"python {prog} --resume --run_name {args.run_name} --out_dir {args.out_dir}"


# -----------------------------------------------------------------------------
# the model a run starts from, checked before anything is loaded

def starting_point(args, parser):
    """(tokenizer, model config as a dict of ModelConfig fields) of what the run starts from, read
    without loading any weights: --init hf:DIR's config.json and tokenizer.json, --init CKPT's
    config and tokenizer, or the --model preset with --tokenizer. The tokenizer's prompt format
    is set from --chat. Bad input is parser.error's one line."""
    try:
        if args.init and args.init.startswith("hf:"):
            from hf import HFTokenizer, config_from_hf, read_json
            path = args.init.removeprefix("hf:")
            if not os.path.isdir(path):
                raise FileNotFoundError(f"no such model directory: {path}")
            config = asdict(config_from_hf(read_json(os.path.join(path, "config.json"), "config.json")))
            tok = HFTokenizer(path)
        elif args.init:
            if not os.path.isfile(args.init):
                raise FileNotFoundError(f"no such checkpoint: {args.init} (a directory of Hugging Face weights is hf:DIR)")
            from tokenizer import get_tokenizer
            ckpt = torch.load(args.init, map_location="cpu", weights_only=True, mmap=True)
            config, tok = ckpt["config"], get_tokenizer(ckpt["tokenizer"], ckpt.get("tokenizer_dir", "tokenizers"))
        else:
            from model import PRESETS as MODELS
            from tokenizer import get_tokenizer
            if args.model not in MODELS:
                parser.error(f"--model {args.model} is not a preset: choose from {', '.join(MODELS)}")
            tok = get_tokenizer(args.tokenizer, args.tokenizer_dir)
            config = dict(MODELS[args.model], vocab_size=tok.vocab_size)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        flag = f"--init {args.init}" if args.init else f"--tokenizer {args.tokenizer}"
        parser.error(f"{flag}: {' '.join(str(e).split())}")
    if config.get("vocab_size", 0) < tok.vocab_size:
        parser.error(f"--init {args.init}: the tokenizer has {tok.vocab_size} tokens, the model's embedding only {config['vocab_size']}")
    set_chat(tok, args.chat)
    return tok, config


def set_chat(tok, chat):
    """--chat: auto keeps the tokenizer's own prompt format, none is the R1-Zero template."""
    tok.chat = tok.chat if chat == "auto" else None if chat == "none" else chat


def memory_error(args, config, world):
    """The training state needs, per parameter: fp32 weights, gradient and two AdamW moments (16
    bytes) and the reference's copy (2 in bf16, 4 in fp32; none with --beta 0), divided over the
    ranks with --fsdp. Activations and the KV cache come on top. An error if that alone exceeds
    the device's free memory, before anything is allocated. Runs without --beta or --fsdp
    (sft.py) have no reference and one replica."""
    from model import GPT, ModelConfig, free_memory
    with torch.device("meta"):
        n = sum(p.numel() for p in GPT(ModelConfig(**config)).parameters())
    beta, fsdp = getattr(args, "beta", 0), getattr(args, "fsdp", False)
    per_param = 16 + (0 if beta == 0 else 2 if args.dtype == "bf16" else 4)
    need, free = n * per_param / (world if fsdp else 1), free_memory(args.device)
    if need > free:
        return (f"--init/--model: training {n / 1e9:.2f}B parameters needs ~{need / 2**30:.1f} GiB for weights, gradients, "
                f"AdamW and the reference, {free / 2**30:.1f} GiB are free on {args.device}: use --fsdp over more GPUs, "
                f"--beta 0, or a smaller model")
    return None


def device_error(device):
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        return f"--device {device}: use cpu, cuda or cuda:N"
    if kind == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: there is no CUDA device here: use --device cpu"
    if index and int(index) >= torch.cuda.device_count():
        return f"--device {device}: there are {torch.cuda.device_count()} CUDA devices here: use a lower index"
    return None


# -----------------------------------------------------------------------------
# every random state a run draws from

def random_state(shared, own):
    """For a checkpoint: torch's and Python's global states, the `shared` streams (name ->
    random.Random or torch.Generator, alike on every rank: rank 0's are kept) and each rank's `own`
    generators (name -> torch.Generator; gathered, a list by rank). A collective: every rank calls it."""
    return {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "shared": {k: g.getstate() if isinstance(g, random.Random) else g.get_state() for k, g in shared.items()},
        "own": {k: [torch.as_tensor(s) for s in dist.gather_object(g.get_state().cpu())] for k, g in own.items()},
    }


def restore_random(state, shared, own):
    """Set every stream back to a checkpoint's random_state. Returns False when the per-rank
    streams could not be restored (another world size): they keep the seeds they were given."""
    torch.set_rng_state(state["torch"].cpu())  # generator states are CPU byte tensors, whatever the device
    random.setstate(_tuples(state["python"]))
    for k, g in shared.items():
        if isinstance(g, random.Random):
            g.setstate(_tuples(state["shared"][k]))
        else:
            g.set_state(state["shared"][k].cpu())
    if any(len(states) != dist.world() for states in state["own"].values()):
        return False
    for k, g in own.items():
        g.set_state(state["own"][k][dist.rank()].cpu())
    return True


def _tuples(x):
    # random.setstate wants the tuples that getstate gave; a checkpoint may hand back lists
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# -----------------------------------------------------------------------------
# preemption

class StopSignal:
    """
    Within `with StopSignal() as stop:`, SIGTERM (a preemption) or SIGINT (Ctrl-C) only sets a flag;
    the loop asks stop.requested() at each step boundary, checkpoints and exits 0. A second signal
    acts as it would have without us. Under torchrun every rank gets the signal, and
    requested() sums the flags over ranks, so all of them stop at the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.name, self.old = None, {}
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            self.old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.name is not None:  # the second one: as if we were not here
            self._restore()
            signal.raise_signal(signum)
            return
        self.name = signal.Signals(signum).name
        print(f"{self.name}: stopping at the next step boundary (again to stop now)", flush=True)

    def requested(self) -> bool:
        return dist.all_sum(float(self.name is not None)) > 0  # a collective: every rank calls it

    def _restore(self):
        for s, h in self.old.items():
            signal.signal(s, h)
        self.old = {}

    def __exit__(self, *exc):
        self._restore()

"""
The run skeleton every training stage stands on (train.py, r1/sft.py, r1/reward_model.py):

    args = runner.parse_args(parser, argv)     # its flags (on --resume, the run's own), checked
    with runner.session(args.device, args.dtype) as (rank, world, device, stop):
        ...                                    # its set-up, fresh or from the checkpoint
        runner.run_steps(start, total, step, save, stop, ...)  # each step: runner.optimizer_step

It writes out/<run>/args.json, log.jsonl (a JSON line per step, appended whole and fsync'd) and
ckpt.pt (written whole or not at all); SIGTERM / SIGINT become a checkpoint at the next step
boundary. A checkpoint carries every random state (torch's, Python's, the streams all ranks draw
alike, each rank's sampling stream), so a resume at the same world size is the uninterrupted run
bit for bit; at another world size the per-rank streams are re-seeded. Left out: CUDA's global
generator (nothing draws from it) and numpy's (unused). docs/runs.md has the whole story.

Bad input, one convention: library code raises ValueError (FileNotFoundError for a missing path,
Python's own) with a one-line message that names what to fix, and never exits, so that its caller
decides: a test, a notebook, the R1 pipeline or an exercise check can catch it without catching
bugs of other types. Only a command line turns it into `prog: error: ... (see --help)`, exit
status 2, before any long work: Parser.check for the flags, Parser.errors around what reads
files. Any other exception is a bug and keeps its traceback.

    python train.py --run_name a --resume     # continue out/a from its ckpt.pt
"""

import argparse
import contextlib
import json
import math
import os
import random
import signal
import threading
import time

import numpy
import torch

import dist
from interop import trackers


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, `prog: error: ...`, exit status 2 (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def check(self, checks):
        """checks: (ok, message) pairs; the first that is not ok is the one-line error."""
        for ok, message in checks:
            if not ok:
                self.error(message)

    def check_device(self, device):
        """--device must be cpu, cuda or cuda:N, and be here."""
        if error := device_error(device):
            self.error(error)

    @contextlib.contextmanager
    def errors(self, prefix=""):
        """Bad input that library code raised (the convention above) as this CLI's one line."""
        try:
            yield
        except (ValueError, FileNotFoundError) as e:
            self.error(f"{prefix}{' '.join(str(e).split())}")


def parse_args(parser, argv=None, defaults=None):
    """parser's flags over `defaults` (a --preset's values), and on --resume over the resumed run's
    own flags (its args.json): they fill the namespace first, and argparse sets defaults only for
    what is not there yet, so flags given explicitly still win."""
    known = parser.parse_known_args(argv)[0]
    defaults = dict(defaults or {})
    saved = os.path.join(known.out_dir, known.run_name or "", "args.json")
    if known.resume and known.run_name and os.path.isfile(saved):
        run = read_json(saved, "args.json")
        defaults.update({k: v for k, v in run.items()
                         if k in vars(known) and k not in ("resume", "run_name", "out_dir")})
    return parser.parse_args(argv, namespace=argparse.Namespace(**defaults))


# -----------------------------------------------------------------------------
# files that a crash or a kill -9 never leaves half-written

def fsync_dir(path):
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk
    finally:
        os.close(fd)


def atomic_write(path, data):
    """Write data to path through path.tmp, fsync'd, and a rename: readers see the old file or the
    new one, and a crash or a kill -9 never leaves a torn one. data: text, bytes, or a function that
    writes a file at the path it is given (torch.save, safetensors' save_file, a figure's savefig).
    The file gets the mode a plain open() gives a new one (0666 less the umask, or what the
    directory's default ACL says), whatever the writer chose: safetensors writes 0600, which a vLLM
    server or a colleague running as another user cannot read."""
    tmp = f"{path}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.remove(tmp)  # a stale one (a crash mid-write) would lend the new file its mode
    with open(tmp, "w" if isinstance(data, str) else "wb") as f:
        mode = os.fstat(f.fileno()).st_mode & 0o7777  # the kernel's choice for a new file here
        if not callable(data):
            f.write(data)
    if callable(data):
        data(tmp)
        os.chmod(tmp, mode)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def nanmean(x) -> float:
    """The mean of a tensor's numbers, NaN (a declined score) left out; NaN if there is none."""
    return x[~x.isnan()].mean().item() if (~x.isnan()).any() else math.nan


def nanstd(x) -> float:
    return x[~x.isnan()].std().item() if (~x.isnan()).sum() > 1 else math.nan


def append_jsonl(path, record):
    # one write of one whole line, on the disk before the next step:
    # a crash can tear at most the last line
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


def read_json(path: str, what: str) -> dict:
    """A JSON file's object; FileNotFoundError naming `what` when it is missing."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path) as f:
        return json.load(f)


# -----------------------------------------------------------------------------
# the run directory

def check_run_dir(args, ckpt="ckpt.pt", report_to="none"):
    """The error (a string naming the flag and the fix) that opening this run would meet, or None.
    Run before any work: a fresh run must not overwrite one, a resume needs its checkpoint, the
    trackers of report_to (--report_to) need their packages."""
    run_dir = os.path.join(args.out_dir, args.run_name or "")
    path = os.path.join(run_dir, ckpt)
    if args.resume:
        if not args.run_name or not os.path.isfile(path):
            return f"--resume needs the --run_name of a run with a checkpoint; none at {path}"
    elif args.run_name and os.path.exists(os.path.join(run_dir, "log.jsonl")):
        return f"{run_dir} already holds a run: pick another --run_name, or --resume it"
    parent = os.path.abspath(args.out_dir)
    # the nearest path that exists must be a directory we can write in
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        return (f"--out_dir {args.out_dir}: {parent} is not a writable directory: "
                f"pick another --out_dir")
    return trackers.check(report_to)


def run_path(args, prefix=""):
    """<out_dir>/<run_name>; without --run_name, a name from rank 0's clock (set in args, alike on
    every rank)."""
    args.run_name = dist.gather_object(args.run_name or time.strftime(f"{prefix}%Y%m%d-%H%M%S"))[0]
    return os.path.join(args.out_dir, args.run_name)


def start_run(run_dir, args, world, start, report_to="none"):
    """Rank 0 writes the flags (args.json, or args-resume-<start>.json: the run's own stays) and,
    on a resume, cuts log.jsonl and samples.jsonl back to the checkpoint: lines of later steps, and
    torn ones, are set aside in <name>-after-step-<k>.jsonl, never lost. -> the run's log (RunLog),
    with the trackers of report_to (--report_to) open and the flags as their config."""
    config = {**vars(args), "world_size": world}
    if dist.rank() == 0:
        os.makedirs(run_dir, exist_ok=True)
        name = "args.json" if start == 1 else f"args-resume-{start}.json"
        atomic_write(os.path.join(run_dir, name), json.dumps(config, indent=2))
        if start > 1:
            cut_back(run_dir, start)
    return RunLog(run_dir, report_to, config, start)


def cut_back(run_dir, start):
    """A resume's log.jsonl and samples.jsonl: the lines before step `start`; the others set
    aside."""
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


class RunLog:
    """A run's log: log.jsonl, the source of truth, and beside it the experiment trackers of
    --report_to (interop/trackers.py), written by rank 0 only (on the other ranks, write does
    nothing). write(record) appends a record to log.jsonl and logs its numbers to the trackers; as
    a context manager around the run, the trackers close (W&B ends its run) however the run ends."""

    def __init__(self, run_dir, report_to="none", config=None, start=1):
        self.path = os.path.join(run_dir, "log.jsonl")
        self.trackers = (trackers.Trackers(report_to, run_dir, config or {}, start)
                         if dist.rank() == 0 else None)

    def write(self, record):
        if self.trackers is not None:
            append_jsonl(self.path, record)
            self.trackers.log(record)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if self.trackers is not None:
            self.trackers.close(failed=kind is not None)


def resume_hint(args, prog):
    return f"python {prog} --resume --run_name {args.run_name} --out_dir {args.out_dir}"


# -----------------------------------------------------------------------------
# the device

def device_error(device):
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        return f"--device {device}: use cpu, cuda or cuda:N"
    if kind == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: there is no CUDA device here: use --device cpu"
    if index and int(index) >= torch.cuda.device_count():
        return (f"--device {device}: there are {torch.cuda.device_count()} CUDA devices here: "
                f"use a lower index")
    return None


def free_memory(device) -> int:
    """Bytes that can still be allocated on the device: CUDA's free memory, or MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


# -----------------------------------------------------------------------------
# the steps

def flush_denormals():
    """Denormal floats read as 0 from now: as denormals, tiny gradients slow CPU matmuls ~20x."""
    # numpy (imported by torch) computes each float type's smallest subnormal once, on first use,
    # and warns that it is zero if denormals are flushed by then (matplotlib's import uses it)
    numpy.finfo(numpy.float32), numpy.finfo(numpy.float64)
    torch.set_flush_denormal(True)


def cap_kernel_caches(capacity=64):
    """Keep oneDNN's kernels (a CPU's bf16 matmuls) for `capacity` shapes, not 1024: where shapes
    change every step, they grew a base stage by ~1 GB. Read once, before its first matmul."""
    for var in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):  # oneDNN's, ideep's
        os.environ.setdefault(var, str(capacity))


@contextlib.contextmanager
def session(device, dtype="fp32"):
    """Where a training stage runs -> (rank, world size, device, stop): in torchrun's process group
    if there is one (dist.setup), under bf16 autocast with dtype "bf16" (matmuls in bf16;
    parameters and optimiser state stay fp32, as a bf16 weight keeps ~3 significant digits and an
    update of lr ~1e-6 would round away), with denormal floats flushed (tiny gradients as
    denormals make CPU matmuls ~20x slower) and oneDNN's caches capped (cap_kernel_caches), and
    SIGTERM / SIGINT as a stop request (StopSignal). The group is left at the end, and on a
    one-line SystemExit (every rank decides alike); not on an error: that rank exits and torchrun
    ends the others. Models must be gone by the end (dist.cleanup)."""
    rank, world, device = dist.setup(device)
    flush_denormals()
    cap_kernel_caches()
    precision = torch.autocast(torch.device(device).type, torch.bfloat16, enabled=dtype == "bf16")
    try:
        with StopSignal() as stop, precision:
            yield rank, world, device, stop
    except SystemExit:
        dist.cleanup()
        raise
    dist.cleanup()


def optimizer_step(module, opt, parts, loss_of, grad_clip):
    """One optimiser step, its gradient accumulated over the micro-batches `parts`: loss_of(part)
    is that part's share of the global loss, already divided by the normaliser of the whole step on
    every rank, so micro-batching and the world size do not change the update. DDP all-reduces on
    the last part only; each backward is of loss x world size, as DDP and FSDP average gradients
    over ranks and the global loss is their sum. The loss is summed over ranks (one host sync per
    step). A step whose loss or gradient norm is not finite is skipped, weights and optimiser state
    untouched (both are global: every rank decides alike). -> (loss, gradient norm, stepped)"""
    world, total = dist.world(), 0.0
    for j, part in enumerate(parts):
        with dist.no_sync(module, last=j == len(parts) - 1):
            loss = loss_of(part)
            (loss * world).backward()
        total = total + loss.detach()
    total = float(dist.all_sum(total))
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(),
                                               grad_clip or float("inf")).item()
    stepped = math.isfinite(total) and math.isfinite(grad_norm)
    if stepped:
        opt.step()
        # autocast caches the bf16 cast of each fp32 leaf weight until the outermost autocast
        # region exits, and session() holds one region for the whole stage: without this every
        # later forward would keep using the weights as first cast (the base model's)
        torch.clear_autocast_cache()
    opt.zero_grad(set_to_none=True)
    return total, grad_norm, stepped


def run_steps(start, total, step, save, stop, save_every, resume):
    """The loop of a training stage: steps start..total, each step(i); save(i) checkpoints after
    step i every save_every steps (0: only at the end) and after the last (a run of 0 steps saves
    its starting point, step 0). A stop request is looked at between steps, on every rank alike:
    the last finished step is checkpointed, the command that resumes (`resume`) is printed, and it
    returns False."""
    for i in range(start, total + 1):
        if stop.requested():  # a preemption or a Ctrl-C, on any rank: all stop here
            save(i - 1)
            dist.print0(f"stopped by {stop.name or 'a signal'} after step {i - 1}, "
                        f"checkpoint saved: resume with {resume}")
            return False
        step(i)
        if save_every and i % save_every == 0 and i < total:
            save(i)
    if start <= total or start == 1:
        save(total)
    return True


def lr_at(step, total, peak, warmup):
    """Linear warmup, then cosine decay to 10% of the peak (the base stage and SFT)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# -----------------------------------------------------------------------------
# every random state a run draws from

def random_state(shared, own):
    """For a checkpoint: torch's and Python's global states, the `shared` streams (name ->
    random.Random or torch.Generator, alike on every rank: rank 0's are kept) and each rank's `own`
    generators (name -> torch.Generator; gathered, a list by rank). A collective: every rank calls
    it."""
    return {
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "shared": {k: g.getstate() if isinstance(g, random.Random) else g.get_state()
                   for k, g in shared.items()},
        "own": {k: [torch.as_tensor(s) for s in dist.gather_object(g.get_state().cpu())]
                for k, g in own.items()},
    }


def restore_random(state, shared, own):
    """Set every stream back to a checkpoint's random_state. Returns False when the per-rank
    streams could not be restored (another world size): they keep the seeds they were given."""
    # generator states are CPU byte tensors, whatever the device
    torch.set_rng_state(state["torch"].cpu())
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

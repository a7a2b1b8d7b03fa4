"""
The base model: the miniature of the pretrained LM that R1-Zero starts from.

The paper's RL starts from DeepSeek-V3-Base, which learned from web-scale text both to reason and
to follow the template zero-shot. Here a tiny transformer learns, by next-token prediction, the
corpus of tasks/ in three phases: textbook documents alone (the task's written solution, for
addition a first attempt and its recheck: the skill); then, for the last --template_frac of the
steps, half of each batch templated, first all long answers (the skill carried over into the
template's context, where a copy of the question learned on short documents did not transfer by
itself), then in the corpus's mixture, where problems asked as RL asks them are answered mostly by
short guesses and sometimes by long answers. The result can reason but rarely does: what GRPO
needs to have a signal.

Documents are packed several to a row, attention kept inside each (a block-diagonal causal mask,
each document at the positions it has alone): every token's loss is that of one document per
padded row (`lm_loss_padded`, the reference) to fp32 rounding, and no step pays for padding but at
rows' ends. On a CPU that multiplies bf16 natively a base model not shipped runs its matmuls in
bf16 (--base_dtype; attention, weights and optimiser state in fp32): its steps 1.27x. The model is
cached under <out_dir>/cache/, keyed by every flag it depends on. The default flags' model is
shipped in weights/ (fp32): as R1-Zero starts from a given base, the default run starts from it;
--no_cache trains it again. Its recipe (curriculum digest, first and final losses) is checked
against this code by tests/test_shipped_base.py. Simplified: one process, a fixed curriculum.

    python train.py --rl_steps 0 --no_cache   # trains the base model only
"""

import argparse
import contextlib
import hashlib
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from batch import forward_rows, pack, shared_prefix
from checkpoint import load_checkpoint, save_checkpoint
from model import make_model
from runner import lr_at
from tasks import TASKS

# every flag the base model depends on: the cache key (with its task's own, tasks/'s base_flags)
BASE_FLAGS = ["seed", "min_digits", "max_digits", "n_test", "tokenizer", "model", "base_steps",
              "base_batch", "base_lr", "template_frac", "base_dtype"]
# the base models shipped with the code (for the default flags): a second cache, read-only
SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
FINGERPRINT = 3  # the first steps' losses a base model records, to tell the code that trained it


def lm_loss(model, tok, packs, device, width=None):
    """Next-token loss, averaged over tokens, on documents (prompt, completion) in several packs; in
    each pack, every token after the pack's shared prefix counts (for templated documents the
    prefix is the template: the same in every document, and run once per batch). The documents
    are packed several to a row (`pack_documents`, `document_mask`), so no step pays for padding
    but at rows' ends: each token's loss is `lm_loss_padded`'s to fp32 rounding."""
    total, count = 0.0, 0
    for docs in packs:
        prompts = [tok.encode(p) for p, _ in docs]
        P = shared_prefix(prompts)
        seqs = [p[P:] + tok.encode(c) + [tok.eot] for p, (_, c) in zip(prompts, docs)]
        rows, seg, pos = (t.to(device) for t in pack_documents(seqs, tok.pad, width))  # (N, W)
        prefix = torch.tensor(prompts[0][:P], dtype=torch.long, device=device)  # (P,)
        past = model(prefix[None])[1] if P else None
        h = model(rows, P + pos, document_mask(P, seg), past)[0]  # (N, W, d)
        # a token is a target when the one before it is of its document: never a row's next
        # document, nor padding, nor a document's first token (as in the padded layout)
        keep = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] >= 0)  # (N, W-1)
        logits = model.lm_head(h[:, :-1][keep])  # (K, V): only where a token is predicted
        total = total + F.cross_entropy(logits, rows[:, 1:][keep], reduction="sum")
        count += int(keep.sum())
    return total / count


def lm_loss_padded(model, tok, packs, device):
    """The plain reference of `lm_loss`: each document in a row of its own (batch.pack), padded to
    the pack's longest."""
    total, count = 0.0, 0
    for docs in packs:
        batch = pack([tok.encode(p) for p, _ in docs], [tok.encode(c) + [tok.eot] for _, c in docs],
                     tok.pad, device)
        logits = model.lm_head(forward_rows(model, batch)[:, :-1])  # (B, S-1, V)
        targets, keep = batch.rows[:, 1:], batch.valid[:, 1:] & batch.valid[:, :-1]
        total = total + F.cross_entropy(logits[keep], targets[keep], reduction="sum")
        count += int(keep.sum())
    return total / count


def pack_documents(seqs, pad, width=None):
    """Token lists laid out several to a row of `width` columns (default: the longest list), first
    fit, longest first -> rows (N, W) of tokens, seg (N, W): the index in seqs of the document
    each column holds (-1 on padding), pos (N, W): each token's index in its document (0 on
    padding): a document sits at the positions it would have alone."""
    # wider rows would pack tighter, but a row's masked attention is dense, P+W keys for each of
    # its W queries: at the default sizes, rows twice the longest document were slower on a CPU
    # than the padded layout in the curriculum's first two phases
    W = width or max(map(len, seqs))
    if max(map(len, seqs)) > W:
        raise ValueError(f"a document of {max(map(len, seqs))} tokens is wider than a row ({W})")
    bins, room = [], []  # each row's document indices, and its free columns
    for i in sorted(range(len(seqs)), key=lambda i: -len(seqs[i])):  # stable: ties in draw order
        r = next((r for r, free in enumerate(room) if free >= len(seqs[i])), len(bins))
        if r == len(bins):  # fits no row: a new one
            bins.append([])
            room.append(W)
        bins[r].append(i)
        room[r] -= len(seqs[i])
    rows = torch.full((len(bins), W), pad, dtype=torch.long)     # (N, W)
    seg = torch.full((len(bins), W), -1, dtype=torch.long)       # (N, W)
    pos = torch.zeros(len(bins), W, dtype=torch.long)            # (N, W)
    for r, docs in enumerate(bins):
        at = 0
        for i in docs:
            L = len(seqs[i])
            rows[r, at:at + L], seg[r, at:at + L] = torch.tensor(seqs[i], dtype=torch.long), i
            pos[r, at:at + L] = torch.arange(L)
            at += L
    return rows, seg, pos


def document_mask(P: int, seg: torch.Tensor):
    """Attention mask (N, 1, W, P+W) of packed rows after a P-token prefix: each query sees the
    prefix and the earlier tokens of its own document (block-diagonal causal), so a document's
    states are those it has alone; also itself, so that a padding query is never fully masked."""
    N, W = seg.shape
    causal = torch.ones(W, W, dtype=torch.bool, device=seg.device).tril()  # (W, W)
    eye = torch.eye(W, dtype=torch.bool, device=seg.device)               # (W, W)
    keys = (causal & (seg[:, :, None] == seg[:, None, :])) | eye          # (N, W, W)
    return torch.cat([keys.new_ones(N, W, P), keys], dim=-1)[:, None]    # (N, 1, W, P+W)


def native_bf16(device) -> bool:
    """Whether the base stage's bf16 matmuls pay on `device`: a CPU with AVX512-BF16 or AMX, where
    they ran 2-4x fp32's at the toy's shapes (its steps 1.27x on an AMD EPYC with AVX512-BF16,
    tests/test_pretrain.py --bench; on an Intel Xeon with AMX, which compiles a kernel for each
    new shape, 1.02x at two threads and 1.14x at one). Elsewhere fp32: an x86 CPU without them
    emulates bf16, slower than fp32; an ARM one's bf16 is not measured; on CUDA the toy's steps
    are bound by kernel launches, not matmuls."""
    if torch.device(device).type != "cpu":
        return False
    # private, but what PyTorch's own CPU dispatch reads; False where a build lacks them
    has = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731
    return has("_is_avx512_bf16_supported") or has("_is_amx_tile_supported")


def base_flags(args) -> dict:
    """The flags the base model depends on, with their values: its cache key."""
    return {k: getattr(args, k) for k in BASE_FLAGS + TASKS[args.task].base_flags}


def cache_key(args) -> str:
    return hashlib.sha1(json.dumps(base_flags(args), sort_keys=True).encode()).hexdigest()[:12]


def cache_path(args):
    return os.path.join(args.out_dir, "cache", f"base-{cache_key(args)}.pt")


def shipped_path(args):
    """Where the base model shipped with the code for these flags would be (weights/)."""
    return os.path.join(SHIPPED, f"base-{cache_key(args)}.pt")


def auto_base_dtype(args) -> str:
    """--base_dtype auto: the precision of the base model shipped for the other flags, where one
    is (so that the default flags find it on any machine); else bf16 on a CPU that multiplies bf16
    natively, else fp32."""
    for dtype in ("fp32", "bf16"):
        if os.path.isfile(shipped_path(argparse.Namespace(**{**vars(args), "base_dtype": dtype}))):
            return dtype
    return "bf16" if native_bf16(args.device) else "fp32"


def saved_base(args):
    """The base model file for these flags: its cache file (trained by an earlier run, or by
    --no_cache), else the shipped one; None when there is neither."""
    return next((p for p in (cache_path(args), shipped_path(args)) if os.path.isfile(p)), None)


def base_model(args, tok, task, device, log=print, stop=None):
    """The base model for these flags: loaded from the cache or weights/ (read in place: a run
    writes nothing for it), or trained and cached. A stop request (runner.StopSignal) ends it at
    the next step: the base stage is cached only when it is done."""
    if args.base_dtype not in ("fp32", "bf16"):  # "auto" is resolved by train_args.validate
        raise ValueError(f"--base_dtype {args.base_dtype}: resolve it first (fp32 or bf16)")
    found = None if args.no_cache else saved_base(args)
    if found is None:
        model, record = pretrain(args, tok, task, device, log, stop)
        path = cache_path(args)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_checkpoint(path, model, args.tokenizer, tokenizer_dir=args.tokenizer_dir,
                        recipe=record)
        return model.eval()
    model, _, ckpt = load_checkpoint(found, device, full=True)
    if found == cache_path(args):
        log(f"base model: reusing {found}")
    else:
        record = ckpt.get("recipe", {})
        log(f"base model: the one shipped for these flags ({os.path.relpath(found)}: "
            f"{record.get('steps')} steps, trained in {record.get('seconds', 0):.0f} s on "
            f"{record.get('machine')}; --no_cache trains it again)")
    return model


def pretrain(args, tok, task, device, log=print, stop=None, steps=None):
    """Train a base model from the seed: -> (model, its recipe: the flags, a digest of the
    curriculum's documents, the first steps' losses and the trained model's loss on the last
    step's documents (what tests/test_shipped_base.py checks a shipped model against), the time
    and the machine). steps: train only that many, the documents all digested (a test's)."""
    torch.manual_seed(args.seed)
    model = make_model(args.model, tok.vocab_size).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"base model: {n_params / 1e6:.2f}M parameters, {args.base_steps} steps x "
        f"{args.base_batch} documents, {args.base_dtype} matmuls")
    opt = base_optimizer(model, args)
    # --base_dtype alone decides, whatever the stage's --dtype around it; the backward and the
    # optimiser step run outside autocast (a CPU backward inside a region would be autocast too)
    kind = torch.device(device).type
    precision = torch.autocast(kind, torch.bfloat16, enabled=args.base_dtype == "bf16")
    outside = torch.autocast(kind, enabled=False)
    t0, digest, losses, done = time.time(), hashlib.sha1(), [], 0
    for step, packs in enumerate(curriculum(args, task)):
        last = packs
        if stop is not None and stop.name:
            raise SystemExit(f"stopped by {stop.name} in the base stage at step "
                             f"{step}/{args.base_steps}: nothing to resume (it is cached only when "
                             f"done); the same command starts it again")
        digest.update(repr(packs).encode())
        if steps is not None and step >= steps:
            continue  # the rest of the documents only for the digest
        with precision:
            loss = lm_loss(model, tok, packs, device)
        with outside:
            base_step(model, opt, loss, step, args)
        done += 1
        if step < FINGERPRINT:
            losses.append(loss.item())
        if step % 50 == 0 or step == args.base_steps - 1:
            log(f"base {step:4d}/{args.base_steps} | loss {loss.item():.3f} | "
                f"{time.time() - t0:5.1f}s")
    seconds = time.time() - t0
    with torch.no_grad(), precision:  # the model it made, on the last step's documents
        final = lm_loss(model, tok, last, device).item()
    return model, {"flags": base_flags(args), "steps": done, "documents": digest.hexdigest(),
                   "first_losses": losses, "final_loss": final, "seconds": seconds,
                   "machine": machine(device)}


def machine(device) -> str:
    """The CPU (or GPU) a base model was trained on, for its record: e.g. 'AMD EPYC, 2 threads'."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                        name)
    return f"{name}, {torch.get_num_threads()} threads"


def curriculum(args, task):
    """Each step's packs of documents, drawn in order from the task's seeded streams."""
    # three phases. 1: the skill, on short textbook documents. Then half of each step's documents
    # are templated (a pack of their own: they share the template): 2: long answers only
    # (attempts and rechecks), which carries the skill over to the template's context; 3: the
    # style mixture of the corpus, which teaches the model to rarely use it when asked plainly
    n_template, half = round(args.template_frac * args.base_steps), args.base_batch // 2
    start_2, start_3 = args.base_steps - n_template, args.base_steps - n_template // 2
    textbook = iter(task.textbook(args.base_steps * args.base_batch, seed=args.seed))
    long_only = iter(task.corpus((start_3 - start_2) * half, seed=args.seed,
                                 style_weights=(0, 0.3, 0.7)))
    corpus = iter(task.corpus((args.base_steps - start_3) * half, seed=args.seed))
    take = lambda it, k: [next(it) for _ in range(k)]  # noqa: E731
    for step in range(args.base_steps):
        if step < start_2:
            yield [take(textbook, args.base_batch)]
        else:
            yield [take(textbook, args.base_batch - half),
                   take(long_only if step < start_3 else corpus, half)]


def base_optimizer(model, args):
    """The base stage's AdamW."""
    return torch.optim.AdamW(model.parameters(), lr=args.base_lr, betas=(0.9, 0.95),
                             weight_decay=0.1)


def base_step(model, opt, loss, step, args):
    """One optimiser step of the base stage on its loss."""
    for g in opt.param_groups:
        g["lr"] = lr_at(step, args.base_steps, args.base_lr, warmup=max(1, args.base_steps // 20))
    # one process (under torchrun, rank 0 while the others wait): a plain step, not the
    # collective runner.optimizer_step of the RL and SFT stages
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    # under an outer autocast region (--dtype bf16) the bf16 casts of the weights are cached until
    # it exits: without this every step would run the weights as first cast
    torch.clear_autocast_cache()
    opt.zero_grad(set_to_none=True)


def longest_document(task, tok):
    """The most tokens a base-corpus document takes (pretrain.py), over a sample of the longest
    style: a guess, then the careful solution."""
    docs = task.textbook(64, seed=0) + task.corpus(256, seed=0, style_weights=(0, 0, 1))
    return max(len(tok.encode(p)) + len(tok.encode(c)) + 1 for p, c in docs)  # + <|endoftext|>

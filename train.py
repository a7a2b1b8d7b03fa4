"""
DeepSeek-R1-Zero in miniature: train a tiny base model on a task corpus, then run GRPO on it.

    python train.py                       # the default toy run: a few minutes on a laptop CPU
    python train.py --preset r1zero       # the paper's RL settings (for a GPU and a real model)
    torchrun --standalone --nproc_per_node=2 train.py     # the same, in 2 processes (dist.py)

Stage 1 (base, pretrain.py): a small transformer learns the corpus of tasks.py; it is cached.
Stage 2 (rl): GRPO (grpo.py, eq. 1-3) with the rule-based rewards of rewards.py (eq. 4). Each
step samples --group_size outputs for each of --questions questions from the current policy
(pi_theta_old), turns rewards into group-normalised advantages, then trains on the rollout for
--ppo_epochs epochs, each split at random into --minibatches mini-batches with one optimiser
step per mini-batch (gradients accumulated over micro-batches of --micro_batch rows). The k3
KL penalty is to a frozen reference model, replaced by the policy every --ref_update_every
steps; with --beta 0 there is no reference model at all. Held-out accuracy (pass@1 averaged over
--eval_samples samples at temperature 0.6, top-p 0.95, as in the R1 paper) is measured before
RL and every --eval_every steps.

Everything goes to out/<run>/: log.jsonl (every metric, every step), samples.jsonl (completions
at each evaluation), ckpt.pt, curves.png (python plot.py out/<run>). Log-probs come from the
Triton kernels of kernels/ on CUDA (--no_kernels: off), from the plain PyTorch reference on a CPU.
Simplified: a constant RL learning rate (as the paper); models start from the toy base stage
(there is no loader for pretrained weights yet).
"""

import argparse
import contextlib
import copy
import json
import math
import os
import random
import time

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from tasks import add_task_args, make_task

# -----------------------------------------------------------------------------
# flags
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# run
parser.add_argument("--run_name", default=None, help="outputs go to <out_dir>/<run_name>/ (default: a timestamp); not --run, which torchrun would take for its --run-path")
parser.add_argument("--out_dir", default="out", help="directory for runs and the base-model cache")
parser.add_argument("--resume", action="store_true", help="continue the run <out_dir>/<run_name> from its ckpt.pt (weights, reference, optimiser, step), at any world size")
parser.add_argument("--seed", type=int, default=1337, help="seed for the task, the model and the sampling")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
parser.add_argument("--fsdp", action="store_true", help="shard the policy and reference with FSDP2 (under torchrun), for models that do not fit on one device; default: DDP replicas")
parser.add_argument("--no_kernels", action="store_true", help="on CUDA, use the plain PyTorch log-prob path instead of the Triton kernels of kernels/")
parser.add_argument("--preset", choices=["r1zero"], default=None,
                    help="r1zero: the paper's RL settings (lr, beta, G, questions, ref update, mini-batches, epochs, "
                         "temperature, clip ratio); flags given explicitly still win")
# task: --task and its flags (tasks.py)
add_task_args(parser)
# tokenizer and model
parser.add_argument("--tokenizer", default="byte", help="byte, or a tiktoken encoding: gpt2, cl100k_base, o200k_base")
parser.add_argument("--tokenizer_dir", default="tokenizers", help="where named encodings' <name>.tiktoken files are")
parser.add_argument("--model", default="tiny", help="model preset: tiny, gpt2-small, qwen2.5-0.5b, qwen2.5-1.5b")
# stage 1: base model
parser.add_argument("--base_steps", type=int, default=700, help="pretraining steps on the task corpus")
parser.add_argument("--base_batch", type=int, default=48, help="documents per pretraining step")
parser.add_argument("--template_frac", type=float, default=0.5, help="share of the base steps (the last ones) where half the documents are templated: first all worked, then the style mixture; the rest are textbook ones")
parser.add_argument("--base_lr", type=float, default=3e-3, help="peak learning rate of pretraining")
parser.add_argument("--no_cache", action="store_true", help="retrain the base model even if it is cached")
# stage 2: GRPO rewards and rollouts
parser.add_argument("--rewards", default=None,
                    help="weighted sum of reward functions, name:weight,...: built-ins accuracy, format, language, countdown, "
                         "code, or module.function of your own (default: the task's; eq. 4: accuracy:1,format:1)")
parser.add_argument("--rl_steps", type=int, default=60, help="GRPO steps")
parser.add_argument("--questions", type=int, default=16, help="questions per step (paper: 32)")
parser.add_argument("--group_size", type=int, default=8, help="G, outputs sampled per question (paper: 16)")
parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of rollouts (paper: 1.0)")
parser.add_argument("--max_new_tokens", type=int, default=128, help="length limit of a completion")
# stage 2: the GRPO objective (grpo.py)
parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of RL, constant (paper: 3e-6, for a 671B model)")
parser.add_argument("--beta", type=float, default=0.01, help="KL coefficient; 0 runs no reference model (paper: 0.001)")
parser.add_argument("--clip_eps", type=float, default=0.2, help="clip ratio epsilon of eq. 1 (lower side, and upper unless --clip_eps_high)")
parser.add_argument("--clip_eps_high", type=float, default=None, help="upper clip epsilon (DAPO's clip-higher, e.g. 0.28); default: --clip_eps")
parser.add_argument("--adv_scale", choices=["std", "none", "batch"], default="std", help="eq. 3's divisor: group std (paper), none (Dr. GRPO), batch std")
parser.add_argument("--loss_type", choices=["grpo", "token", "dr_grpo"], default="grpo", help="aggregation over tokens: per-output mean (eq. 1), token mean (DAPO), constant (Dr. GRPO)")
parser.add_argument("--ref_update_every", type=int, default=400, help="replace the reference model by the policy every this many steps (paper: 400; 0: never)")
parser.add_argument("--minibatches", type=int, default=1, help="optimiser steps per epoch over a rollout (paper: 16)")
parser.add_argument("--ppo_epochs", type=int, default=1, help="passes over each rollout (paper: 1)")
parser.add_argument("--micro_batch", type=int, default=0, help="rows per forward/backward, gradients accumulated (0: a whole mini-batch)")
parser.add_argument("--mask_truncated", action="store_true", help="outputs cut off at --max_new_tokens get no loss")
parser.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0: off)")
# evaluation and logging
parser.add_argument("--eval_every", type=int, default=20, help="evaluate on held-out problems every this many steps")
parser.add_argument("--eval_problems", type=int, default=100, help="held-out problems per evaluation")
parser.add_argument("--eval_samples", type=int, default=4, help="samples per problem; pass@1 is their mean accuracy")
parser.add_argument("--eval_temperature", type=float, default=0.6, help="evaluation temperature (R1 paper: 0.6)")
parser.add_argument("--eval_top_p", type=float, default=0.95, help="evaluation top-p (R1 paper: 0.95)")
parser.add_argument("--log_samples", type=int, default=4, help="completions written to samples.jsonl per evaluation")
parser.add_argument("--no_plot", action="store_true", help="do not draw curves.png at the end")

# the paper's first RL stage (R1 paper, "Training details of DeepSeek-R1-Zero"); the clip ratio is
# 10 as the seed text gives it (most reimplementations use 0.2)
PRESETS = {"r1zero": dict(lr=3e-6, beta=0.001, group_size=16, questions=32, ref_update_every=400, minibatches=16,
                          ppo_epochs=1, temperature=1.0, clip_eps=10.0)}
# -----------------------------------------------------------------------------

import dist  # noqa: E402  (flags first, as the reader sees them)
import kernels  # noqa: E402
from grpo import group_advantages, loss_normalizer  # noqa: E402
from model import load_checkpoint, save_checkpoint  # noqa: E402
from pretrain import base_model, cache_path  # noqa: E402
from rewards import parse_rewards  # noqa: E402
from rollout import evaluate, print_eval, rollout  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402


def parse_args(argv=None):
    """Flags, with a --preset's values as defaults: a preset fills the namespace first, and
    argparse only sets defaults for what is not there yet, so explicit flags still win."""
    preset = parser.parse_known_args(argv)[0].preset
    args = parser.parse_args(argv, namespace=argparse.Namespace(**PRESETS.get(preset, {})))
    validate(args)
    return args


def validate(args):
    world = int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    n_out = args.questions // world * args.group_size  # outputs per rank and step
    checks = [
        (1 <= args.min_digits <= args.max_digits, "--min_digits must be between 1 and --max_digits"),
        (args.group_size >= 2, "--group_size must be at least 2: advantages are relative to the group"),
        (args.questions >= 1, "--questions must be at least 1"),
        (min(args.rl_steps, args.base_steps) >= 0, "--rl_steps and --base_steps cannot be negative"),
        (args.base_batch >= 2, "--base_batch must be at least 2"),
        (0 <= args.template_frac <= 1, "--template_frac must be between 0 and 1"),
        (args.max_new_tokens >= 1, "--max_new_tokens must be at least 1"),
        (args.temperature > 0, "--temperature must be > 0: the policy's log-probs are taken at this temperature"),
        (args.clip_eps > 0 and (args.clip_eps_high is None or args.clip_eps_high > 0), "--clip_eps and --clip_eps_high must be > 0"),
        (args.minibatches >= 1 and args.ppo_epochs >= 1 and args.micro_batch >= 0,
         "--minibatches and --ppo_epochs must be at least 1, --micro_batch at least 0"),
        (args.questions % world == 0, f"--questions {args.questions} does not split across {world} processes: whole "
                                      f"groups stay on one rank, so make it divisible by the world size"),
        (args.eval_problems % world == 0, f"--eval_problems {args.eval_problems} does not split across {world} processes: "
                                          f"make it divisible by the world size"),
        (n_out % args.minibatches == 0, f"a rollout of --questions / world size x --group_size = {n_out} outputs per "
                                        f"process does not split into --minibatches {args.minibatches}: make it divisible"),
        (not args.fsdp or "RANK" in os.environ, "--fsdp needs a distributed launch: torchrun --nproc_per_node=N train.py --fsdp"),
        (args.ref_update_every >= 0, "--ref_update_every cannot be negative (0: never)"),
        (args.eval_every >= 1 and args.eval_samples >= 1, "--eval_every and --eval_samples must be at least 1"),
        (args.eval_problems >= 1, "--eval_problems must be at least 1"),
        (args.device == "cpu" or torch.cuda.is_available(), f"--device {args.device} is not available here: use --device cpu"),
    ]
    for ok, msg in checks:
        if not ok:
            parser.error(msg)
    try:
        if args.rewards:  # None: the task's own, set once the task is built
            parse_rewards(args.rewards)
    except ValueError as e:
        parser.error(f"--rewards: {e}")


def nanmean(x):
    return x[~x.isnan()].mean().item() if (~x.isnan()).any() else math.nan


def nanstd(x):
    return x[~x.isnan()].std().item() if (~x.isnan()).sum() > 1 else math.nan


def atomic_write(path, text):
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def append_jsonl(path, record):
    # one write of one whole line: an interrupted run keeps every earlier line intact
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# -----------------------------------------------------------------------------
# stage 2: GRPO

@torch.no_grad()
def logprobs_in_chunks(policy, batch, rows, temperature):
    return torch.cat([policy(batch.select(idx), temperature) for idx in rows])


def grpo_update(policy, ref, opt, out, advantages, args, generator):
    """
    Train on one rollout (this rank's rows): --ppo_epochs passes, each over --minibatches random
    mini-batches, one optimiser step per mini-batch, its gradient accumulated over micro-batches.
    policy and ref are dist.Policy modules (DDP/FSDP-wrapped or not). The loss divisor and every
    metric are summed over ranks. Returns metrics averaged over all tokens (and over optimiser
    steps for loss and grad norm).
    """
    batch, mask = out.batch, out.batch.completion_mask  # (B, C) each, this rank's rows
    if args.mask_truncated:
        mask = mask * ~out.truncated[:, None]           # cut-off outputs get no loss
    B, world = mask.size(0), dist.world()
    micro = args.micro_batch or B // args.minibatches
    everything = torch.arange(B).split(micro)
    with torch.no_grad():
        # pi_theta_old: the policy that sampled, before this step's first update. With a single
        # update the first mini-batch's own detached log-probs are exactly that: no extra pass.
        single = args.ppo_epochs * args.minibatches == 1
        old_logp = None if single else logprobs_in_chunks(policy, batch, everything, args.temperature)
        ref_logp = logprobs_in_chunks(ref, batch, everything, args.temperature) if args.beta > 0 else None
    # metrics stay on the device, summed, until the end: no host sync per micro-batch
    names = ("kl", "ratio", "clip_low", "clip_high", "entropy", "tokens")
    sums = torch.zeros(len(names), device=mask.device)
    losses, norms, diff = [], [], None
    for _ in range(args.ppo_epochs):
        for mb in torch.randperm(B, generator=generator).chunk(args.minibatches):  # (B / minibatches,) rows
            # the divisor of the whole mini-batch on all ranks: micro-batching and the world size
            # do not change the update
            norm = dist.all_sum(loss_normalizer(args.loss_type, mask[mb], args.max_new_tokens))
            parts, total = mb.split(micro), 0.0
            for j, idx in enumerate(parts):
                sync = j == len(parts) - 1 or not hasattr(policy, "no_sync")  # DDP: all-reduce on the last only
                with contextlib.nullcontext() if sync else policy.no_sync():
                    old_mb, ref_mb = (None if x is None else x[idx] for x in (old_logp, ref_logp))
                    loss, m, logp, entropy = policy(batch.select(idx), args.temperature, grpo=dict(
                        old_logp=old_mb, ref_logp=ref_mb, advantages=advantages[idx], mask=mask[idx],
                        eps_low=args.clip_eps, eps_high=args.clip_eps_high, beta=args.beta,
                        loss_type=args.loss_type, normalizer=norm))
                    (loss * world).backward()  # DDP and FSDP average over ranks; the global loss is their sum
                total = total + loss.detach()
                n = m["tokens"]  # the metrics are means over this micro-batch's tokens: back to sums
                sums += torch.stack([m["kl"] * n, m["ratio"] * n, m["clip_low"] * n, m["clip_high"] * n,
                                     (entropy * mask[idx]).sum(), n])
                if diff is None:  # same model, same temperature, same tokens: sampler and trainer must agree
                    valid = batch.completion_mask[idx]
                    diff = ((logp - out.sampler_logp[idx]).abs() * valid).sum() / valid.sum().clamp(min=1)
            total = dist.all_sum(total).item()  # one sync per optimiser step, the same on every rank
            if not math.isfinite(total):          # so all ranks stop together
                raise RuntimeError(f"non-finite loss {total}; lower --lr")
            norms.append(torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip or float("inf")))
            losses.append(total)
            opt.step()
            opt.zero_grad(set_to_none=True)
    sums = dist.all_sum(torch.cat([sums, diff.reshape(1) / world])).tolist()
    metrics = {k: v / max(sums[-2], 1) for k, v in zip(names[:-1], sums)}
    return {"loss": sum(losses) / len(losses), "grad_norm": sum(g.item() for g in norms) / len(norms),
            "clip_frac": metrics["clip_low"] + metrics["clip_high"], **metrics, "sampler_logp_diff": sums[-1]}


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = dist.setup(args.device)
    run_dir = train(args, rank, world, device)
    dist.cleanup()  # not on an error: that rank exits and torchrun ends the others
    return run_dir


def train(args, rank, world, device):
    torch.set_flush_denormal(True)  # tiny gradients become denormal floats, which make CPU matmuls ~20x slower
    kernels.USE = "never" if args.no_kernels else "cuda"  # a CPU takes the references
    try:
        task = make_task(args, log=dist.print0)
        task.train_problems(random.Random(0), 1)  # a file task without --train_file fails here, before any work
    except ValueError as e:
        parser.error(str(e).replace("n_test", "--n_test"))
    args.rewards = args.rewards or task.rewards
    if args.eval_problems > len(task.test_set):
        parser.error(f"--eval_problems must be between 1 and --n_test (the held-out set has {len(task.test_set)})")
    if not task.has_corpus:
        parser.error(f"task {args.task} has no base corpus for a toy base model: start from a pretrained model (--init)")
    run = args.run_name or time.strftime("%Y%m%d-%H%M%S")  # under torchrun, give --run_name: ranks' clocks may differ
    run_dir = os.path.join(args.out_dir, run)
    ckpt, start = None, 1
    if args.resume:
        path = os.path.join(run_dir, "ckpt.pt")
        if not args.run_name or not os.path.isfile(path):
            parser.error(f"--resume needs the --run_name of a run with a checkpoint; none at {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        start = ckpt["step"] + 1
    elif os.path.exists(os.path.join(run_dir, "log.jsonl")):
        parser.error(f"{run_dir} already holds a run: pick another --run_name, or --resume it")
    dist.barrier()  # every rank has checked before rank 0 writes
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        name = "args.json" if ckpt is None else f"args-resume-{start}.json"  # the run's own args.json stays
        atomic_write(os.path.join(run_dir, name), json.dumps({**vars(args), "world_size": world}, indent=2))
        if ckpt is not None:  # the log goes on from the checkpoint; lines past it are set aside, not lost
            with open(os.path.join(run_dir, "log.jsonl")) as f:
                lines = [line for line in f if line.strip()]
            past = [json.loads(line)["step"] >= start for line in lines]
            if any(past):
                atomic_write(os.path.join(run_dir, f"log-after-step-{start - 1}.jsonl"),
                             "".join(line for line, p in zip(lines, past) if p))
            atomic_write(os.path.join(run_dir, "log.jsonl"), "".join(line for line, p in zip(lines, past) if not p))
    dist.print0(f"run: {run_dir}" + (f" ({world} processes)" if world > 1 else ""))

    tok = get_tokenizer(args.tokenizer, args.tokenizer_dir)
    t_start = time.time()
    # the base model: rank 0 trains (or loads) and caches it, then the others load the cache
    if rank == 0:
        model = base_model(args, tok, task, device, log=dist.print0)
    dist.barrier()
    if rank != 0:
        model = load_checkpoint(cache_path(args), device)[0]
    ref = None
    if args.beta > 0:  # beta 0: no reference model at all; else replicated or sharded as the policy is
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        if ckpt is not None and ckpt.get("ref") is not None:
            ref_model.load_state_dict(ckpt["ref"])
        ref = dist.Policy(dist.shard(ref_model) if args.fsdp else ref_model)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        dist.print0(f"resuming {run_dir} after step {start - 1}")
    policy = dist.wrap(model, args.fsdp)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    if ckpt is not None and ckpt.get("optim") is not None:
        dist.load_optim_state_dict(model, opt, ckpt["optim"])
    log_path = os.path.join(run_dir, "log.jsonl")
    # FSDP: every decode step is a collective, so all ranks decode until every rank is done
    sync = dist.all_done if args.fsdp else None

    if ckpt is None:
        m = evaluate_and_log(model, tok, task, args, 0, run_dir, sync)
        print_eval(0, m, args)
        if rank == 0:
            append_jsonl(log_path, {"step": 0, "elapsed": time.time() - t_start, **m})

    reward_fns = parse_rewards(args.rewards)
    rng = random.Random(f"rl-{args.seed}")
    for _ in range(1, start):  # a resumed run gets the questions the whole run would have had
        task.train_problems(rng, args.questions)
    offset = 7919 * (start - 1)  # a resumed run's sampling streams are new ones (0 for a fresh run)
    gen = torch.Generator(device).manual_seed(args.seed + rank + offset)  # per-rank sampling seeds
    shuffle = torch.Generator().manual_seed(args.seed + offset)
    q = args.questions // world
    t_rl = time.time()
    for step in range(start, args.rl_steps + 1):
        # rollout: G outputs per question from the current policy, pi_theta_old; every rank draws
        # the step's questions alike and samples its own block of them
        t0 = time.time()
        model.eval()
        problems = task.train_problems(rng, args.questions)[rank * q:(rank + 1) * q]
        out, texts, scores = rollout(model, tok, problems, args.group_size, args, gen, args.temperature,
                                     reward_fns=reward_fns, all_done=sync, correct=task.correct)
        rewards = sum(w * scores[name] for name, _, w in reward_fns)  # eq. 4; NaN if any declined
        advantages = group_advantages(rewards, args.group_size, scale=args.adv_scale).to(device)  # eq. 3
        t_rollout = time.time() - t0

        # update: eq. 1 on mini-batches of the rollout
        t0 = time.time()
        model.train()
        um = grpo_update(policy, ref, opt, out, advantages, args, shuffle)
        if ref is not None and args.ref_update_every and step % args.ref_update_every == 0:
            ref.load_state_dict(policy.module.state_dict() if hasattr(policy, "module") else policy.state_dict())
        t_train = time.time() - t0

        # log: the whole step's rows, gathered from every rank in rank order
        lengths = dist.gather_rows(out.batch.completion_mask.sum(1).cpu())
        rewards = dist.gather_rows(rewards)
        scores = {k: dist.gather_rows(v) for k, v in scores.items()}
        truncated = dist.gather_rows(out.truncated.float().cpu())
        reflection = dist.gather_rows(torch.tensor([float("wait" in t.lower()) for t in texts]))
        groups = rewards.view(-1, args.group_size)
        elapsed, per_step = time.time() - t_start, (time.time() - t_rl) / (step - start + 1)
        rec = {
            "step": step, "reward": nanmean(rewards), "reward_std": nanstd(rewards),
            **{f"reward_{k}": nanmean(v) for k, v in scores.items()},
            **{f"reward_{k}_std": nanstd(v) for k, v in scores.items()},
            "unscored": rewards.isnan().float().mean().item(),
            "accuracy": nanmean(scores["accuracy"]), "format": nanmean(scores["format"]),
            "length": lengths.mean().item(), "length_min": lengths.min().item(), "length_max": lengths.max().item(),
            "truncated": truncated.mean().item(),
            "zero_var_groups": (groups.std(1) == 0).float().mean().item(),
            "reflection": reflection.mean().item(),
            **um,
            "tokens_per_s": lengths.sum().item() / (t_rollout + t_train),
            "rollout_s": t_rollout, "train_s": t_train, "elapsed": elapsed,
        }
        if step % args.eval_every == 0 or step == args.rl_steps:
            rec.update(evaluate_and_log(model, tok, task, args, step, run_dir, sync))
        left = per_step * (args.rl_steps - step)
        dist.print0(f"step {step:3d}/{args.rl_steps} | reward {rec['reward']:.3f} | acc {rec['accuracy']:.3f} | "
                    f"format {rec['format']:.3f} | len {rec['length']:5.1f} | kl {rec['kl']:.4f} | clip {rec['clip_frac']:.3f} | "
                    f"{rec['tokens_per_s']:5.0f} tok/s | rollout {t_rollout:.1f}s train {t_train:.1f}s | "
                    f"{elapsed / 60:.1f} min, ~{left / 60:.1f} min left")
        if rec["truncated"] > 0.5:
            dist.print0(f"  warning: {rec['truncated']:.0%} of completions hit --max_new_tokens={args.max_new_tokens} (no reward signal)")
        if rank == 0:
            append_jsonl(log_path, rec)
        if "eval_accuracy" in rec:
            print_eval(step, rec, args)
            save(model, ref, opt, args, run_dir, step=step)

    if args.rl_steps == 0:
        save(model, ref, opt, args, run_dir, step=0)
    if rank == 0 and not args.no_plot:
        from plot import plot_run
        print(f"curves: {plot_run(run_dir)}")
    dist.print0(f"done in {(time.time() - t_start) / 60:.1f} min: {run_dir}")
    return run_dir


def evaluate_and_log(model, tok, task, args, step, run_dir, all_done):
    """Held-out metrics (rollout.evaluate); rank 0 appends its sample completions to samples.jsonl."""
    m, samples = evaluate(model, tok, task, args, step, all_done)
    if dist.rank() == 0:
        for s in samples:
            append_jsonl(os.path.join(run_dir, "samples.jsonl"), s)
    return m


def save(model, ref, opt, args, run_dir, step):
    """A full (unsharded) checkpoint, written by rank 0: it loads, and --resume continues, at any
    world size. The collectives under FSDP need every rank."""
    weights, optim = dist.full_state_dict(model), dist.full_optim_state_dict(model, opt)
    ref_weights = None if ref is None else dist.full_state_dict(ref.model)
    if dist.rank() == 0:
        save_checkpoint(os.path.join(run_dir, "ckpt.pt"), model, args.tokenizer, state_dict=weights, ref=ref_weights,
                        optim=optim, tokenizer_dir=args.tokenizer_dir, step=step, args=vars(args))


if __name__ == "__main__":
    record(main)()  # under torchrun: a crashed rank's traceback is shown, and the job ends

"""
DeepSeek-R1-Zero in miniature: train a tiny base model on a task corpus, then run GRPO on it; or
run GRPO on a pretrained model read from a local Hugging Face directory.

    python train.py                       # the default toy run: a few minutes on a laptop CPU
    python train.py --init hf:/models/Qwen2.5-0.5B --task gsm8k --train_file ... --test_file ... \
        --preset r1zero --dtype bf16      # the paper's RL settings on a real model (a GPU)
    torchrun --standalone --nproc_per_node=2 train.py     # the same, in 2 processes (dist.py)

Stage 1 (base, pretrain.py): a small transformer learns the corpus of the task (tasks.py, --task);
it is cached. With --init (hf:DIR, or a ckpt.pt of ours) there is no stage 1.
Stage 2 (rl): GRPO (grpo.py, eq. 1-3) with the rule-based rewards of rewards.py (eq. 4), and with
--reward_model a model-based one, `preference` (reward_model.py; eq. 5 and 8, the paper's RL stage 2). Each
step samples --group_size outputs for each of --questions questions from the current policy
(pi_theta_old), turns rewards into group-normalised advantages, then trains on the rollout for
--ppo_epochs epochs, each split at random into --minibatches mini-batches with one optimiser
step per mini-batch (gradients accumulated over micro-batches of --micro_batch rows). The k3
KL penalty is to a frozen reference model, replaced by the policy every --ref_update_every
steps; with --beta 0 there is no reference model at all. Held-out accuracy (pass@1 averaged over
--eval_samples samples at temperature 0.6, top-p 0.95, as in the R1 paper) is measured before
RL and every --eval_every steps.

Everything goes to out/<run>/ (runs.py): log.jsonl (every metric, every step), samples.jsonl
(completions at each evaluation), ckpt.pt (every --save_every steps, at the end, and on SIGTERM /
SIGINT), curves.png (python plot.py out/<run>). --resume continues a run exactly where its
checkpoint left it. A step whose loss or gradient norm is not finite skips its optimiser update
(logged as skipped_steps); --max_skips such steps in a row end the run. Every flag that can be
checked is checked before any work (validate). Log-probs come from the Triton kernels of kernels/
on CUDA (--no_kernels: off), from the plain PyTorch reference on a CPU. --dtype bf16 runs the
forward passes under bf16 autocast over fp32 parameters and optimiser state. Simplified: a
constant RL learning rate (as the paper).
"""

import argparse
import contextlib
import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import torch
from torch.distributed.elastic.multiprocessing.errors import record

import runs
from tasks import add_task_args, make_task

# -----------------------------------------------------------------------------
# flags
parser = runs.Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# run
parser.add_argument("--run_name", default=None, help="outputs go to <out_dir>/<run_name>/ (default: a timestamp); not --run, which torchrun would take for its --run-path")
parser.add_argument("--out_dir", default="out", help="directory for runs and the base-model cache")
parser.add_argument("--resume", action="store_true", help="continue the run <out_dir>/<run_name> from its ckpt.pt: exactly at the same world size, at another one with new sampling streams")
parser.add_argument("--save_every", type=int, default=20, help="write ckpt.pt every this many steps (0: only at the end); also at the end and on SIGTERM / SIGINT")
parser.add_argument("--max_skips", type=int, default=5, help="end the run after this many steps in a row that skipped an update for a non-finite loss or gradient norm")
parser.add_argument("--seed", type=int, default=1337, help="seed for the task, the model and the sampling")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
parser.add_argument("--fsdp", action="store_true", help="shard the policy and reference with FSDP2 (under torchrun), for models that do not fit on one device; default: DDP replicas")
parser.add_argument("--no_kernels", action="store_true", help="on CUDA, use the plain PyTorch log-prob path instead of the Triton kernels of kernels/")
parser.add_argument("--use_exercises", action="store_true", help="the course exercises' functions (exercises/work/, "
                    "python -m exercises) replace the project's; every exercise must pass its check first")
parser.add_argument("--preset", choices=["r1zero"], default=None,
                    help="r1zero: the paper's RL settings (lr, beta, G, questions, ref update, mini-batches, epochs, "
                         "temperature, clip ratio); flags given explicitly still win")
# task: --task and its flags (tasks.py)
add_task_args(parser)
# the starting model: a pretrained one (--init), or the toy base stage on a preset
parser.add_argument("--init", default=None, help="start from hf:DIR (a local Hugging Face model directory: weights and "
                                                  "tokenizer) or a ckpt.pt of ours; default: train the toy base stage")
parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: forward passes under bf16 autocast with fp32 parameters and optimiser state (the "
                         "reference model held in bf16); fp32: everything in fp32")
parser.add_argument("--grad_checkpoint", action="store_true", help="recompute each block's activations in the backward (less memory, ~1/3 more compute)")
parser.add_argument("--chat", choices=["auto", "none", "chatml", "llama3"], default="auto",
                    help="prompt format: the R1-Zero template (none), an instruct model's chat format, or auto: the tokenizer's")
parser.add_argument("--tokenizer", default="aha", help="without --init: aha (a BPE trained on the toy corpora, tokenizer.py), byte, or a tiktoken encoding: gpt2, cl100k_base, o200k_base")
parser.add_argument("--tokenizer_dir", default="tokenizers", help="where named encodings' <name>.tiktoken files are")
parser.add_argument("--model", default="tiny", help="without --init: model preset: tiny, nano, gpt2-small, qwen2.5-0.5b, qwen2.5-1.5b")
# stage 1: the toy base model (without --init)
parser.add_argument("--base_steps", type=int, default=450, help="pretraining steps on the task corpus")
parser.add_argument("--base_batch", type=int, default=32, help="documents per pretraining step")
parser.add_argument("--template_frac", type=float, default=0.5, help="share of the base steps (the last ones) where half the documents are templated: first all worked, then the style mixture; the rest are textbook ones")
parser.add_argument("--base_lr", type=float, default=3e-3, help="peak learning rate of pretraining")
parser.add_argument("--no_cache", action="store_true", help="retrain the base model even if it is cached")
# stage 2: GRPO rewards and rollouts
parser.add_argument("--rewards", default=None,
                    help="weighted sum of reward functions, name:weight,...: built-ins accuracy, format, language, countdown, "
                         "code, preference (with --reward_model), or module.function of your own (default: the task's; "
                         "eq. 4: accuracy:1,format:1)")
parser.add_argument("--reward_model", default=None, help="a rm.pt of reward_model.py: the `preference` reward scores each output with it (eq. 5's model used pointwise, summed as eq. 8)")
parser.add_argument("--rl_steps", type=int, default=30, help="GRPO steps")
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
parser.add_argument("--eval_every", type=int, default=10, help="evaluate on held-out problems every this many steps")
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
from reflection import reflects  # noqa: E402
from rewards import parse_rewards  # noqa: E402
from reward_model import PreferenceReward, check_reward_model  # noqa: E402
from rollout import evaluate, print_eval, rollout  # noqa: E402
from tasks import render_prompt  # noqa: E402


def parse_args(argv=None):
    """Flags, with a --preset's values as defaults, and on --resume the resumed run's own flags
    (its args.json): they fill the namespace first, and argparse only sets defaults for what is not
    there yet, so explicit flags still win."""
    known = parser.parse_known_args(argv)[0]
    defaults = dict(PRESETS.get(known.preset, {}))
    saved = os.path.join(known.out_dir, known.run_name or "", "args.json")
    if known.resume and known.run_name and os.path.isfile(saved):
        with open(saved) as f:
            run_args = json.load(f)
        defaults.update({k: v for k, v in run_args.items() if k in vars(known) and k not in ("resume", "run_name", "out_dir")})
    args = parser.parse_args(argv, namespace=argparse.Namespace(**defaults))
    validate(args)
    return args


def validate(args):
    """Every check that needs no training, before any: each failure is one line that names the flag
    and the fix (parser.error, exit status 2)."""
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
        (args.lr > 0 and args.base_lr > 0, "--lr and --base_lr must be > 0"),
        (args.beta >= 0 and args.grad_clip >= 0, "--beta and --grad_clip cannot be negative (0: off)"),
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
        (args.eval_temperature >= 0 and 0 < args.eval_top_p <= 1, "--eval_temperature must be >= 0 and --eval_top_p in (0, 1]"),
        (args.log_samples >= 0, "--log_samples cannot be negative"),
        (args.save_every >= 0, "--save_every cannot be negative (0: only at the end)"),
        (args.max_skips >= 1, "--max_skips must be at least 1"),
        (not (args.init and args.init.startswith("hf:") and args.tokenizer != parser.get_default("tokenizer")),
         "--tokenizer: an --init hf:DIR model brings its own tokenizer; leave --tokenizer out"),
    ]
    parser.check(checks + [(runs.device_error(args.device) is None, runs.device_error(args.device))])
    try:
        task = make_task(args, log=lambda line: None)  # set_up builds it again, and says what it reports
        task.train_problems(random.Random(0), 1)  # a file task without --train_file fails here
        args.rewards = args.rewards or task.rewards
        # the class stands in for the scorer here: set_up loads the reward model, once
        uses_rm = "preference" in [name for name, _, _ in parse_rewards(args.rewards, {"preference": PreferenceReward})]
    except ValueError as e:
        parser.error(f"--rewards: {e}" if "reward" in str(e) else str(e).replace("n_test", "--n_test"))
    parser.check([(args.reward_model or not uses_rm, "--rewards preference needs --reward_model PATH (a rm.pt of reward_model.py)"),
                  (uses_rm or not args.reward_model, "--reward_model is read only by the preference reward: add preference:W to --rewards")])
    if args.eval_problems > len(task.test_set):
        parser.error(f"--eval_problems {args.eval_problems}: the held-out set has {len(task.test_set)} problems: use at most that")
    if not args.init and not task.has_corpus:
        parser.error(f"--task {args.task} has no base corpus for a toy base model: start from a pretrained one (--init hf:DIR)")
    tok, config = runs.starting_point(args, parser)
    # context length: the longest prompt plus --max_new_tokens (rollouts and evaluation), and the
    # longest base-corpus document if the base stage is to be trained
    block, n = config["block_size"], longest_prompt(task, tok)
    if n + args.max_new_tokens > block:
        parser.error(f"--max_new_tokens {args.max_new_tokens}: the longest prompt ({n} tokens with tokenizer {tok.name}) "
                     f"plus it exceeds the model's context of {block}: use at most {block - n}")
    if args.reward_model and (error := check_reward_model(args.reward_model, tok, n + args.max_new_tokens + 1)):
        parser.error(error)  # + 1: the reward model reads the score at an <|endoftext|> after the completion
    if not args.init and not args.resume and (args.no_cache or not os.path.isfile(cache_path(args))):
        if (m := longest_document(task, tok)) > block:
            parser.error(f"--task {args.task}: the base corpus's longest document ({m} tokens) exceeds --model "
                         f"{args.model}'s context of {block}: use a smaller problem size")
    if error := runs.memory_error(args, config, world):
        parser.error(error)
    if error := runs.check_run_dir(args):
        parser.error(error)
    if args.resume:  # the checkpoint must be one this run can continue
        try:
            ckpt = load_checkpoint(os.path.join(args.out_dir, args.run_name, "ckpt.pt"), "cpu", tokenizer=tok.name,
                                   config=config, full=True)[2]
        except SystemExit as e:
            parser.error(f"--resume: {str(e.code).removeprefix('error: ')}")
        if "random" not in ckpt:
            parser.error(f"--resume: the checkpoint of {args.run_name} predates exact resume (format 1): start a new --run_name")


def longest_prompt(task, tok):
    """The most tokens a prompt takes: over the held-out set and a sample of training problems."""
    problems = task.test_set + task.train_problems(random.Random(0), 256)
    return max(len(tok.encode(render_prompt(p["prompt"], tok.chat))) for p in problems)


def longest_document(task, tok):
    """The most tokens a base-corpus document takes (pretrain.py), over a sample of the longest
    style: a guess, then the worked solution."""
    docs = task.textbook(64, seed=0) + task.corpus(256, seed=0, style_weights=(0, 0, 1))
    return max(len(tok.encode(p)) + len(tok.encode(c)) + 1 for p, c in docs)  # + <|endoftext|>


def nanmean(x):
    return x[~x.isnan()].mean().item() if (~x.isnan()).any() else math.nan


def nanstd(x):
    return x[~x.isnan()].std().item() if (~x.isnan()).sum() > 1 else math.nan


# -----------------------------------------------------------------------------
# stage 2: GRPO

@dataclass
class Run:
    """What every step touches."""
    dir: str
    tok: object
    task: object                  # tasks.py: problems, held-out set, correctness
    model: torch.nn.Module        # the policy's own module: sampling, evaluation, checkpoints
    policy: torch.nn.Module       # the trainable dist.Policy over it (DDP/FSDP-wrapped, or not)
    ref: torch.nn.Module | None   # dist.Policy over the frozen reference; None with --beta 0
    opt: torch.optim.Optimizer
    reward_fns: list
    questions: random.Random      # the question stream, alike on every rank
    shuffle: torch.Generator      # the mini-batch shuffler, alike on every rank
    sampling: torch.Generator     # this rank's sampling stream
    sync: object                  # FSDP: every decode step is a collective, so all ranks decode until all are done


def main(argv=None):
    args = parse_args(argv)
    if args.use_exercises:  # the student's own functions, checked, in place of the project's
        from exercises import plug_in
        if error := plug_in(sys.modules[__name__]):
            parser.error(error)
        args.no_kernels = True  # on CUDA the fused kernels would bypass the student's log-probs and loss
    rank, world, device = dist.setup(args.device)
    try:
        run_dir = train(args, rank, world, device)
    except SystemExit:  # --max_skips: every rank decides alike, so every rank can leave the group
        dist.cleanup()
        raise
    dist.cleanup()  # not on an error: that rank exits and torchrun ends the others
    return run_dir


def train(args, rank, world, device):
    torch.set_flush_denormal(True)  # tiny gradients become denormal floats, which make CPU matmuls ~20x slower
    kernels.USE = "never" if args.no_kernels else "cuda"  # a CPU takes the references
    # --dtype bf16: matmuls in bf16 under autocast, parameters and optimiser state in fp32 (a bf16
    # weight keeps ~3 significant digits, so an update of lr ~1e-6 would round away)
    precision = torch.autocast(torch.device(device).type, torch.bfloat16, enabled=args.dtype == "bf16")
    with runs.StopSignal() as stop, precision:  # from here a SIGTERM / SIGINT stops the run at the next step boundary
        return train_steps(args, rank, world, device, stop)


def train_steps(args, rank, world, device, stop):
    """Set up (or resume), evaluate the starting policy, then the GRPO steps, each: rollout, update,
    log, evaluate, save; a stop request or --max_skips ends it with a checkpoint."""
    t_start = time.time()
    run, start = set_up(args, rank, world, device, stop)
    log_path = os.path.join(run.dir, "log.jsonl")
    if start == 1:
        m = evaluate_and_log(run, args, 0)
        print_eval(0, m, args)
        if rank == 0:
            runs.append_jsonl(log_path, {"step": 0, "elapsed": time.time() - t_start, **m})

    t_rl, streak = time.time(), 0
    for step in range(start, args.rl_steps + 1):
        if stop.requested():  # a preemption or a Ctrl-C, on any rank: all stop here
            save(run, args, step - 1)
            dist.print0(f"stopped by {stop.name or 'a signal'} after step {step - 1}, checkpoint saved: "
                        f"resume with {runs.resume_hint(args)}")
            return run.dir
        t0 = time.time()
        out, texts, scores, rewards, advantages = rollout_step(run, args, rank, world)
        t_rollout, t0 = time.time() - t0, time.time()
        um = update_step(run, args, step, out, advantages)
        rec = log_step(run, args, step, out, texts, scores, rewards, um, t_rollout, time.time() - t0)
        rec["elapsed"] = time.time() - t_start
        if step % args.eval_every == 0 or step == args.rl_steps:
            rec.update(evaluate_and_log(run, args, step))
        print_step(rec, args, (time.time() - t_rl) / (step - start + 1))
        if rank == 0:
            runs.append_jsonl(log_path, rec)
        if "eval_accuracy" in rec:
            print_eval(step, rec, args)
        streak = streak + 1 if um["skipped_steps"] else 0
        if (args.save_every and step % args.save_every == 0) or step == args.rl_steps or streak == args.max_skips:
            save(run, args, step)
        if streak == args.max_skips:  # the weights are the last finite ones: skipped updates never touch them
            raise SystemExit(f"error: {streak} steps in a row had a non-finite loss or gradient norm (to step {step}): "
                             f"stopped, the last finite weights are in {run.dir}/ckpt.pt; lower --lr")

    if args.rl_steps == 0:
        save(run, args, 0)
    if rank == 0 and not args.no_plot:
        from plot import plot_run
        print(f"curves: {plot_run(run.dir)}")
    dist.print0(f"done in {(time.time() - t_start) / 60:.1f} min: {run.dir}")
    return run.dir


def set_up(args, rank, world, device, stop=None):
    """The run directory, the models, the optimiser and the random streams: fresh from the base stage,
    or from the checkpoint of the run being resumed, with every state it saved -> (Run, first step)."""
    args.run_name = dist.gather_object(args.run_name or time.strftime("%Y%m%d-%H%M%S"))[0]  # rank 0's clock
    run_dir = os.path.join(args.out_dir, args.run_name)
    tok, _ = runs.starting_point(args, parser)
    task = make_task(args, log=dist.print0)
    ckpt = None
    if args.resume:  # validate has checked it: this tokenizer, this model shape, this format
        model, _, ckpt = load_checkpoint(os.path.join(run_dir, "ckpt.pt"), device, full=True)
    start = 1 if ckpt is None else ckpt["step"] + 1
    runs.start_run(run_dir, args, world, start)
    dist.print0(f"run: {run_dir}" + (f" ({world} processes)" if world > 1 else ""))
    if ckpt is None:
        model = initial_model(args, tok, task, rank, device, stop)
    else:
        dist.print0(f"resuming {run_dir} after step {start - 1}")
    model.grad_checkpointing = args.grad_checkpoint
    ref = None
    if args.beta > 0:  # beta 0: no reference model at all; else replicated or sharded as the policy is
        # held in the training dtype, without gradients: under --dtype bf16 half the policy's bytes
        ref_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        ref_model = copy.deepcopy(model).to(ref_dtype).eval().requires_grad_(False)
        if ckpt is not None and ckpt.get("ref") is not None:
            ref_model.load_state_dict(ckpt["ref"])
        ref = dist.Policy(dist.shard(ref_model) if args.fsdp else ref_model)
    policy = dist.wrap(model, args.fsdp)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    if ckpt is not None and ckpt.get("optim") is not None:
        dist.load_optim_state_dict(model, opt, ckpt["optim"])
    rm = {"preference": PreferenceReward(args.reward_model, device)} if args.reward_model else None  # loaded once
    run = Run(run_dir, tok, task, model, policy, ref, opt, parse_rewards(args.rewards, rm),
              questions=random.Random(f"rl-{args.seed}"), shuffle=torch.Generator().manual_seed(args.seed),
              sampling=torch.Generator(device).manual_seed(args.seed + rank),  # per-rank sampling seeds
              sync=dist.all_done if args.fsdp else None)
    if ckpt is not None and not runs.restore_random(ckpt["random"], *streams(run)):
        run.sampling.manual_seed(args.seed + rank + 7919 * (start - 1))  # new streams, not the ones it would have had
        dist.print0(f"note: the checkpoint was written by {len(ckpt['random']['own']['sampling'])} processes, not "
                    f"{world}: sampling streams are re-seeded, so this run is not the uninterrupted one bit for bit")
    return run, start


def initial_model(args, tok, task, rank, device, stop=None):
    """The policy RL starts from, in fp32 (the optimiser's master weights whatever --dtype): --init's
    weights, or the toy base stage (rank 0 trains or loads the cached one, then the others load it)."""
    if args.init and args.init.startswith("hf:"):
        from hf import load_hf
        try:
            return load_hf(args.init.removeprefix("hf:"), device, torch.float32)[0]
        except (ValueError, FileNotFoundError, MemoryError) as e:
            raise SystemExit(f"error: --init {args.init}: {e}")
    if args.init:
        return load_checkpoint(args.init, device)[0]
    if rank == 0:
        model = base_model(args, tok, task, device, log=dist.print0, stop=stop)
    dist.barrier()
    return model if rank == 0 else load_checkpoint(cache_path(args), device)[0]


def streams(run):
    """(shared, own): the random streams of a run, as runs.random_state takes them."""
    return {"questions": run.questions, "shuffle": run.shuffle}, {"sampling": run.sampling}


def rollout_step(run, args, rank, world):
    """G outputs per question from the current policy, pi_theta_old: every rank draws the step's
    questions alike and samples its own block of them -> rollout, texts, scores, rewards, advantages."""
    run.model.eval()
    q = args.questions // world
    problems = run.task.train_problems(run.questions, args.questions)[rank * q:(rank + 1) * q]
    out, texts, scores = rollout(run.model, run.tok, problems, args.group_size, args, run.sampling, args.temperature,
                                 reward_fns=run.reward_fns, all_done=run.sync, correct=run.task.correct)
    rewards = sum(w * scores[name] for name, _, w in run.reward_fns)  # eq. 4; NaN if any declined
    advantages = group_advantages(rewards, args.group_size, scale=args.adv_scale).to(out.batch.rows.device)  # eq. 3
    return out, texts, scores, rewards, advantages


def update_step(run, args, step, out, advantages):
    """eq. 1 on mini-batches of the rollout, then the reference reset every --ref_update_every steps."""
    run.model.train()
    um = grpo_update(run.policy, run.ref, run.opt, out, advantages, args, run.shuffle)
    if run.ref is not None and args.ref_update_every and step % args.ref_update_every == 0:
        p = run.policy
        run.ref.load_state_dict(p.module.state_dict() if hasattr(p, "module") else p.state_dict())
    return um


@torch.no_grad()
def logprobs_in_chunks(policy, batch, rows, temperature):
    return torch.cat([policy(batch.select(idx), temperature) for idx in rows])


def grpo_update(policy, ref, opt, out, advantages, args, generator):
    """
    Train on one rollout (this rank's rows): --ppo_epochs passes, each over --minibatches random
    mini-batches, one optimiser step per mini-batch, its gradient accumulated over micro-batches.
    policy and ref are dist.Policy modules (DDP/FSDP-wrapped or not). The loss divisor and every
    metric are summed over ranks. A mini-batch whose loss or gradient norm is not finite takes no
    optimiser step (weights and optimiser state stay as they were): counted in skipped_steps.
    Returns metrics averaged over all tokens (and over the steps taken for loss and grad norm).
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
    losses, norms, skipped, diff = [], [], 0, None
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
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), args.grad_clip or float("inf")).item()
            if math.isfinite(total) and math.isfinite(grad_norm):  # both global: every rank decides alike
                opt.step()
                losses.append(total), norms.append(grad_norm)
            else:
                skipped += 1
            opt.zero_grad(set_to_none=True)
    sums = dist.all_sum(torch.cat([sums, diff.reshape(1) / world])).tolist()
    metrics = {k: v / max(sums[-2], 1) for k, v in zip(names[:-1], sums)}
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return {"loss": mean(losses), "grad_norm": mean(norms), "skipped_steps": skipped,
            "clip_frac": metrics["clip_low"] + metrics["clip_high"], **metrics, "sampler_logp_diff": sums[-1]}


def log_step(run, args, step, out, texts, scores, rewards, um, t_rollout, t_train):
    """The step's record for log.jsonl: the whole step's rows, gathered from every rank in rank order."""
    lengths = dist.gather_rows(out.batch.completion_mask.sum(1).cpu())
    rewards = dist.gather_rows(rewards)
    scores = {k: dist.gather_rows(v) for k, v in scores.items()}
    truncated = dist.gather_rows(out.truncated.float().cpu())
    reflect = dist.gather_rows(torch.tensor([float(reflects(t)) for t in texts]))
    acc = scores["accuracy"]
    groups = rewards.view(-1, args.group_size)
    return {
        "step": step, "reward": nanmean(rewards), "reward_std": nanstd(rewards),
        **{f"reward_{k}": nanmean(v) for k, v in scores.items()},
        **{f"reward_{k}_std": nanstd(v) for k, v in scores.items()},
        "unscored": rewards.isnan().float().mean().item(),
        "accuracy": nanmean(scores["accuracy"]), "format": nanmean(scores["format"]),
        "length": lengths.mean().item(), "length_min": lengths.min().item(), "length_max": lengths.max().item(),
        "truncated": truncated.mean().item(),
        "zero_var_groups": (groups.std(1) == 0).float().mean().item(),
        # reflection.py: the share that re-examines an earlier step, and whether doing so pays
        "reflection": reflect.mean().item(),
        "acc_reflect": nanmean(acc[reflect == 1]), "acc_no_reflect": nanmean(acc[reflect == 0]),
        **um,
        "tokens_per_s": lengths.sum().item() / (t_rollout + t_train),
        "rollout_s": t_rollout, "train_s": t_train,
    }


def print_step(rec, args, per_step):
    step, left = rec["step"], per_step * (args.rl_steps - rec["step"])
    dist.print0(f"step {step:3d}/{args.rl_steps} | reward {rec['reward']:.3f} | acc {rec['accuracy']:.3f} | "
                f"format {rec['format']:.3f} | len {rec['length']:5.1f} | reflect {rec['reflection']:.2f} | kl {rec['kl']:.4f} | clip {rec['clip_frac']:.3f} | "
                f"{rec['tokens_per_s']:5.0f} tok/s | rollout {rec['rollout_s']:.1f}s train {rec['train_s']:.1f}s | "
                f"{rec['elapsed'] / 60:.1f} min, ~{left / 60:.1f} min left")
    if rec["skipped_steps"]:
        dist.print0(f"  warning: {rec['skipped_steps']} update(s) skipped: non-finite loss or gradient norm")
    if rec["truncated"] > 0.5:
        dist.print0(f"  warning: {rec['truncated']:.0%} of completions hit --max_new_tokens={args.max_new_tokens} (no reward signal)")


def evaluate_and_log(run, args, step):
    """Held-out metrics (rollout.evaluate); rank 0 appends its sample completions to samples.jsonl."""
    m, samples = evaluate(run.model, run.tok, run.task, args, step, run.sync)
    if dist.rank() == 0:
        for s in samples:
            runs.append_jsonl(os.path.join(run.dir, "samples.jsonl"), s)
    return m


def save(run, args, step):
    """A full (unsharded) checkpoint, written by rank 0: weights, reference, optimiser state and every
    random state (runs.random_state), so that --resume continues exactly. It loads at any world size.
    The collectives (FSDP's gathers, the sampling states) need every rank."""
    weights, optim = dist.full_state_dict(run.model), dist.full_optim_state_dict(run.model, run.opt)
    ref_weights = None if run.ref is None else dist.full_state_dict(run.ref.model)
    random_state = runs.random_state(*streams(run))
    if dist.rank() == 0:
        save_checkpoint(os.path.join(run.dir, "ckpt.pt"), run.model, run.tok.name, state_dict=weights, ref=ref_weights,
                        optim=optim, random=random_state, tokenizer_dir=args.tokenizer_dir, step=step, args=vars(args),
                        world_size=dist.world())


if __name__ == "__main__":
    record(main)()  # under torchrun: a crashed rank's traceback is shown, and the job ends

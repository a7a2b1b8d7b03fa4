"""
train.py's command line: its flags, the paper's preset, and every check on them, all before any
work: a bad flag is one line that names it and the fix (runner.Parser: `prog: error: ...`, exit
status 2), never a traceback after minutes of training. About 30 of the flags shape GRPO itself
(the groups "RL: ..."); the rest choose the task, the starting model, the run's files and the
evaluation.

    python train.py --help                # every flag, by group, with its default
    python train.py --preset r1zero ...   # the paper's RL settings; explicit flags still win
"""

import argparse
import os
import random
from functools import partial

import torch

import dist
import runner
from checkpoint import load_checkpoint, memory_error, starting_point
from engines import tools
from engines.vllm_engine import add_engine_args, engine_checks, engine_error
from pretrain import auto_base_dtype, longest_document, saved_base
from r1.reward_model import PreferenceReward, check_reward_model
from rewards import overlong_reward, parse_rewards
from rollout import longest_prompt
from tasks import add_task_args, make_task
from template import CHAT_FLAGS, chat_format

# -----------------------------------------------------------------------------
# flags
parser = runner.Parser(prog="train.py", description="DeepSeek-R1-Zero in miniature: GRPO on a base "
                       "model (the toy base stage, or --init)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
g = parser.add_argument_group("run")
g.add_argument("--run_name", default=None,
               help="outputs go to <out_dir>/<run_name>/ (default: a timestamp); not --run, which "
                    "torchrun would take for its --run-path")
g.add_argument("--out_dir", default="out", help="directory for runs and the base-model cache")
g.add_argument("--resume", action="store_true",
               help="continue the run <out_dir>/<run_name> from its ckpt.pt: exactly at the same "
                    "world size, at another one with new sampling streams")
g.add_argument("--save_every", type=int, default=20,
               help="write ckpt.pt every this many steps (0: only at the end); also at the end and "
                    "on SIGTERM / SIGINT")
g.add_argument("--max_skips", type=int, default=5,
               help="end the run after this many steps in a row that skipped an update for a "
                    "non-finite loss or gradient norm")
g.add_argument("--seed", type=int, default=1337,
               help="seed for the task, the model and the sampling")
g.add_argument("--rl_seed", type=int, default=None,
               help="seed of RL's own streams only (questions, mini-batches, sampling), so that "
                    "runs of several seeds share one base stage and held-out set (default: --seed)")
g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
               help="cpu or cuda")
g.add_argument("--fsdp", action="store_true",
               help="shard the policy and reference with FSDP2 (under torchrun), for models that do"
                    " not fit on one device; default: DDP replicas")
g.add_argument("--no_kernels", action="store_true",
               help="on CUDA, use the plain PyTorch log-prob path instead of the Triton kernels of "
                    "grpo_kernels/")
g.add_argument("--use_exercises", action="store_true",
               help="the course exercises' functions (exercises/work/, python -m exercises) replace"
                    " the project's; every exercise must pass its check first")
g.add_argument("--preset", choices=["r1zero"], default=None,
               help="r1zero: the paper's RL settings (lr, beta, G, questions, ref update, "
                    "mini-batches, epochs, temperature, clip ratio); flags given explicitly still "
                    "win")
add_task_args(parser)  # --task and its flags (tasks/)
g = parser.add_argument_group("the starting model: a pretrained one (--init), or the toy base "
                              "stage on a preset")
g.add_argument("--init", default=None,
               help="start from hf:DIR (a local Hugging Face model directory: weights and "
                    "tokenizer) or a ckpt.pt of ours; default: the toy base model (shipped in "
                    "weights/ for the default flags, else trained and cached)")
g.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
               help="the RL and SFT steps (the base stage: --base_dtype): bf16: forward passes "
                    "under bf16 autocast with fp32 parameters and optimiser state (the reference "
                    "model held in bf16); fp32: everything in fp32")
g.add_argument("--grad_checkpoint", action="store_true",
               help="recompute each block's activations in the backward (less memory, ~1/3 more "
                    "compute)")
g.add_argument("--chat", choices=CHAT_FLAGS, default="auto",
               help="prompt format: the R1-Zero template (none), an instruct model's chat format, "
                    "or auto: the tokenizer's")
g.add_argument("--tokenizer", default="aha",
               help="without --init: aha (a BPE trained on the toy corpora, tokenizer.py), byte, or"
                    " a tiktoken encoding: gpt2, cl100k_base, o200k_base")
g.add_argument("--tokenizer_dir", default="tokenizers",
               help="where named encodings' <name>.tiktoken files are")
g.add_argument("--model", default="tiny",
               help="without --init: model preset: tiny, nano, gpt2-small, qwen2.5-0.5b, "
                    "qwen2.5-1.5b")
g = parser.add_argument_group("the toy base model (pretrain.py; without --init)")
g.add_argument("--base_steps", type=int, default=450, help="pretraining steps on the task corpus")
g.add_argument("--base_batch", type=int, default=32, help="documents per pretraining step")
g.add_argument("--template_frac", type=float, default=0.5,
               help="share of the base steps (the last ones) where half the documents are "
                    "templated: first long answers only, then the style mixture; the rest are "
                    "textbook ones")
g.add_argument("--base_lr", type=float, default=3e-3, help="peak learning rate of pretraining")
g.add_argument("--base_dtype", choices=["auto", "fp32", "bf16"], default="auto",
               help="the base stage's matmuls: bf16 (autocast; weights, optimiser state and, on a "
                    "CPU, attention stay fp32), fp32, or auto: the shipped base model's (weights/) "
                    "where one is shipped for the other flags, else bf16 on a CPU that multiplies "
                    "bf16 natively (AVX512-BF16, AMX), else fp32")
g.add_argument("--no_cache", action="store_true",
               help="train the base model even if it is cached or shipped (weights/)")
g = parser.add_argument_group("RL: rewards and rollouts")
g.add_argument("--rewards", default=None,
               help="weighted sum of reward functions, name:weight,...: built-ins accuracy, format,"
                    " language, countdown, code, overlong (DAPO's), preference (with "
                    "--reward_model), or module.function of your own (default: the task's; eq. 4: "
                    "accuracy:1,format:1)")
g.add_argument("--reward_model", default=None,
               help="a rm.pt of r1/reward_model.py: the `preference` reward scores each output with"
                    " it (eq. 5's model used pointwise, summed as eq. 8)")
g.add_argument("--rl_steps", type=int, default=30, help="GRPO steps")
g.add_argument("--questions", type=int, default=16, help="questions per step (paper: 32)")
g.add_argument("--group_size", type=int, default=8,
               help="G, outputs sampled per question (paper: 16)")
g.add_argument("--temperature", type=float, default=1.0,
               help="sampling temperature of rollouts (paper: 1.0)")
g.add_argument("--max_new_tokens", type=int, default=128, help="length limit of a completion")
# --engine own|vllm, and the importance weights of another sampler (engines/vllm_engine.py)
add_engine_args(parser, train=True)
tools.add_tool_args(parser)  # --max_tool_calls, --tool_max_chars (engines/tools.py)
g = parser.add_argument_group("RL: the GRPO objective (grpo.py) and its update (grpo_update.py)")
g.add_argument("--lr", type=float, default=5e-5,
               help="learning rate of RL, constant (paper: 3e-6, for a 671B model)")
g.add_argument("--beta", type=float, default=0.01,
               help="KL coefficient; 0 runs no reference model (paper: 0.001)")
g.add_argument("--clip_eps", type=float, default=0.2,
               help="clip ratio epsilon of eq. 1 (lower side, and upper unless --clip_eps_high)")
g.add_argument("--clip_eps_high", type=float, default=None,
               help="upper clip epsilon (DAPO's clip-higher, e.g. 0.28); default: --clip_eps")
g.add_argument("--adv_scale", choices=["std", "none", "batch"], default="std",
               help="eq. 3's divisor: group std (paper), none (Dr. GRPO), batch std")
g.add_argument("--loss_type", choices=["grpo", "token", "dr_grpo"], default="grpo",
               help="aggregation over tokens: per-output mean (eq. 1), token mean (DAPO), constant "
                    "(Dr. GRPO)")
g.add_argument("--ref_update_every", type=int, default=400,
               help="replace the reference model by the policy every this many steps (paper: 400; "
                    "0: never)")
g.add_argument("--minibatches", type=int, default=1,
               help="optimiser steps per epoch over a rollout (paper: 16)")
g.add_argument("--ppo_epochs", type=int, default=1, help="passes over each rollout (paper: 1)")
g.add_argument("--micro_batch", type=int, default=0,
               help="rows per forward/backward, gradients accumulated; rows of alike lengths, "
                    "each micro-batch trimmed to its longest (0: ceil(rows / 32) micro-batches cut "
                    "for the least padding)")
g.add_argument("--mask_truncated", action="store_true",
               help="outputs cut off at --max_new_tokens get no loss")
g.add_argument("--policy_loss", choices=["clip", "cispo"], default="clip",
               help="the policy term: eq. 1's clipped surrogate, or CISPO's clipped importance "
                    "weight, detached, times A log pi (MiniMax-M1: with --loss_type token)")
g.add_argument("--cispo_eps_high", type=float, default=4.0,
               help="CISPO: the importance weight is capped at 1 + this (no lower bound)")
g.add_argument("--ratio_level", choices=["token", "sequence"], default="token",
               help="sequence: GSPO's ratio, exp(mean of log rho over an output's sampled tokens), "
                    "clipped per output with --gspo_eps / --gspo_eps_high")
g.add_argument("--gspo_eps", type=float, default=3e-4,
               help="GSPO's lower clip epsilon (its paper: 3e-4), in place of --clip_eps")
g.add_argument("--gspo_eps_high", type=float, default=4e-4,
               help="GSPO's upper clip epsilon (its paper: 4e-4), in place of --clip_eps_high")
g.add_argument("--dual_clip", type=float, default=None,
               help="dual-clip's c > 1 (e.g. 3): for A < 0 the surrogate is bounded below by c A; "
                    "default off")
g.add_argument("--dynamic_sampling", action="store_true",
               help="DAPO: drop groups whose rewards are all equal and sample more questions until "
                    "the step has --questions informative groups")
g.add_argument("--dynamic_rounds", type=int, default=4,
               help="dynamic sampling: at most this many extra rounds per step; then the step is "
                    "filled up with uninformative groups (advantage 0)")
g.add_argument("--overlong_max", type=int, default=None,
               help="the overlong reward's L_max in tokens (DAPO; default --max_new_tokens)")
g.add_argument("--overlong_buffer", type=int, default=None,
               help="the overlong reward's L_cache: the punishment ramps from 0 at L_max - L_cache "
                    "to -1 at L_max (default a fifth of L_max)")
g.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0: off)")
g = parser.add_argument_group("evaluation and logging (evaluation.py)")
g.add_argument("--eval_every", type=int, default=10,
               help="evaluate on held-out problems every this many steps")
g.add_argument("--eval_problems", type=int, default=100, help="held-out problems per evaluation")
g.add_argument("--eval_samples", type=int, default=4,
               help="samples per problem; pass@1 is their mean accuracy")
g.add_argument("--eval_temperature", type=float, default=0.6,
               help="evaluation temperature (R1 paper: 0.6)")
g.add_argument("--eval_top_p", type=float, default=0.95, help="evaluation top-p (R1 paper: 0.95)")
g.add_argument("--log_samples", type=int, default=4,
               help="completions written to samples.jsonl per evaluation")
g.add_argument("--no_plot", action="store_true", help="do not draw curves.png at the end")
g.add_argument("--report_to", default="none",
               help="log.jsonl's numbers also to: none, or tensorboard, wandb (comma-separated; "
                    "interop/trackers.py)")

# the paper's first RL stage (R1 paper, "Training details of DeepSeek-R1-Zero"); the clip ratio is
# 10 as the paper gives it (most reimplementations use 0.2)
PRESETS = {"r1zero": dict(lr=3e-6, beta=0.001, group_size=16, questions=32, ref_update_every=400,
                          minibatches=16, ppo_epochs=1, temperature=1.0, clip_eps=10.0)}


def parse_args(argv=None):
    """Flags over a --preset's values, and on --resume over the resumed run's own
    (runner.parse_args: explicit flags still win); then every check that needs no training."""
    preset = PRESETS.get(parser.parse_known_args(argv)[0].preset)
    args = runner.parse_args(parser, argv, preset)
    validate(args)
    return args


def validate(args):
    """Every check that needs no training, before any: each failure is one line that names the
    flag and the fix (parser.error, exit status 2)."""
    world = dist.launched_world()
    parser.check(flag_checks(args, world))
    parser.check_device(args.device)
    if args.base_dtype == "auto":  # resolved here: the base model's cache key holds what ran
        args.base_dtype = auto_base_dtype(args)
    task = check_task(args)
    if error := tools.check(args, task):  # resolves --max_tool_calls (the task's by default)
        parser.error(error)
    try:
        tok, config = starting_point(args)
    except ValueError as e:
        parser.error(str(e))
    tok.chat = chat_format(args.chat, tok.chat)
    check_lengths(args, task, tok, config)
    if error := (memory_error(args, config, world) or engine_error(args, config, args.device)
                 or runner.check_run_dir(args, report_to=args.report_to)):
        parser.error(error)
    if args.resume:  # the checkpoint must be one this run can continue
        check_resume(args, tok, config)


def check_resume(args, tok, config):
    path = os.path.join(args.out_dir, args.run_name, "ckpt.pt")
    try:
        ckpt = load_checkpoint(path, "cpu", tokenizer=tok.name, config=config, full=True)[2]
    except (ValueError, FileNotFoundError) as e:
        parser.error(f"--resume: {e}")
    if "random" not in ckpt:
        parser.error(f"--resume: the checkpoint of {args.run_name} predates exact resume (format "
                     f"1): start a new --run_name")


def flag_checks(args, world):
    """(ok, message) for each flag that is checked on its own."""
    n_out = args.questions // world * args.group_size  # outputs per rank and step
    a = args
    return [
        (1 <= a.min_digits <= a.max_digits, "--min_digits must be between 1 and --max_digits"),
        (a.group_size >= 2,
         "--group_size must be at least 2: advantages are relative to the group"),
        (a.questions >= 1, "--questions must be at least 1"),
        (min(a.rl_steps, a.base_steps) >= 0, "--rl_steps and --base_steps cannot be negative"),
        (a.base_batch >= 2, "--base_batch must be at least 2"),
        (0 <= a.template_frac <= 1, "--template_frac must be between 0 and 1"),
        (a.max_new_tokens >= 1, "--max_new_tokens must be at least 1"),
        (a.temperature > 0,
         "--temperature must be > 0: the policy's log-probs are taken at this temperature"),
        (a.lr > 0 and a.base_lr > 0, "--lr and --base_lr must be > 0"),
        (a.beta >= 0 and a.grad_clip >= 0, "--beta and --grad_clip cannot be negative (0: off)"),
        (a.clip_eps > 0 and (a.clip_eps_high is None or a.clip_eps_high > 0),
         "--clip_eps and --clip_eps_high must be > 0"),
        (a.minibatches >= 1 and a.ppo_epochs >= 1 and a.micro_batch >= 0,
         "--minibatches and --ppo_epochs must be at least 1, --micro_batch at least 0"),
        (a.questions % world == 0,
         f"--questions {a.questions} does not split across {world} processes: whole groups stay "
         f"on one rank, so make it divisible by the world size"),
        (a.eval_problems % world == 0,
         f"--eval_problems {a.eval_problems} does not split across {world} processes: make it "
         f"divisible by the world size"),
        (n_out % a.minibatches == 0,
         f"a rollout of --questions / world size x --group_size = {n_out} outputs per process does "
         f"not split into --minibatches {a.minibatches}: make it divisible"),
        (not a.fsdp or "RANK" in os.environ,
         "--fsdp needs a distributed launch: torchrun --nproc_per_node=N train.py --fsdp"),
        (a.ref_update_every >= 0, "--ref_update_every cannot be negative (0: never)"),
        *objective_checks(a),
        (a.eval_every >= 1 and a.eval_samples >= 1,
         "--eval_every and --eval_samples must be at least 1"),
        (a.eval_problems >= 1, "--eval_problems must be at least 1"),
        (a.eval_temperature >= 0 and 0 < a.eval_top_p <= 1,
         "--eval_temperature must be >= 0 and --eval_top_p in (0, 1]"),
        (a.log_samples >= 0, "--log_samples cannot be negative"),
        (a.save_every >= 0, "--save_every cannot be negative (0: only at the end)"),
        (a.max_skips >= 1, "--max_skips must be at least 1"),
        (not (a.init and a.init.startswith(("hf:", "gguf:"))
              and a.tokenizer != parser.get_default("tokenizer")),
         "--tokenizer: an --init hf:DIR or gguf:FILE model brings its own tokenizer; leave "
         "--tokenizer out"),
        *engine_checks(a, a.device),
    ]


def objective_checks(a):
    """(ok, message) for the later objectives' flags (grpo.py)."""
    overlong_max = a.overlong_max or a.max_new_tokens
    return [
        (a.policy_loss != "cispo" or (a.ratio_level == "token" and a.dual_clip is None),
         "--policy_loss cispo has no clipped surrogate: leave out --ratio_level sequence and "
         "--dual_clip"),
        (min(a.gspo_eps, a.gspo_eps_high, a.cispo_eps_high) > 0,
         "--gspo_eps, --gspo_eps_high and --cispo_eps_high must be > 0"),
        (a.dual_clip is None or a.dual_clip > 1,
         "--dual_clip must be > 1 (e.g. 3): it bounds the surrogate at c A for A < 0"),
        (a.dynamic_rounds >= 0, "--dynamic_rounds cannot be negative"),
        (a.overlong_max is None or a.overlong_max >= 1, "--overlong_max must be at least 1"),
        (a.overlong_buffer is None or 0 <= a.overlong_buffer <= overlong_max,
         f"--overlong_buffer must be between 0 and the overlong max length ({overlong_max})"),
    ]


def reward_table(args, rm=None) -> dict:
    """The built-in rewards bound to this run's flags (rewards.parse_rewards' `extra`): overlong
    to --overlong_max and --overlong_buffer, preference to its reward model (rm: {"preference":
    scorer}; the class stands in for it where only names are checked)."""
    overlong = partial(overlong_reward, max_len=args.overlong_max or args.max_new_tokens,
                       buffer=args.overlong_buffer)
    return {"preference": PreferenceReward, **(rm or {}), "overlong": overlong}


def check_task(args):
    """The task and its rewards (--rewards defaults to the task's), built once to be checked."""
    try:
        task = make_task(args, log=lambda line: None)  # GRPORun builds it again, and logs it
        task.train_problems(random.Random(0), 1)  # a file task without --train_file fails here
        args.rewards = args.rewards or task.rewards
        # the class stands in for the scorer here: GRPORun loads the reward model, once
        fns = parse_rewards(args.rewards, reward_table(args))
        uses_rm = "preference" in [name for name, _, _ in fns]
    except ValueError as e:
        message = str(e)  # a task's own flag errors name the flag without its dashes
        if "reward" in message:
            parser.error(f"--rewards: {message}")
        parser.error(message.replace("n_test", "--n_test"))
    parser.check([
        (args.reward_model or not uses_rm,
         "--rewards preference needs --reward_model PATH (a rm.pt of r1/reward_model.py)"),
        (uses_rm or not args.reward_model,
         "--reward_model is read only by the preference reward: add preference:W to --rewards"),
        (args.eval_problems <= len(task.test_set),
         f"--eval_problems {args.eval_problems}: the held-out set has {len(task.test_set)} "
         f"problems: use at most that"),
        (args.init or task.has_corpus,
         f"--task {args.task} has no base corpus for a toy base model: start from a pretrained "
         f"one (--init hf:DIR)")])
    return task


def check_lengths(args, task, tok, config):
    """The longest prompt plus --max_new_tokens (rollouts and evaluation) fits the model's context,
    and the reward model's; so does the longest base-corpus document if the base stage is to be
    trained."""
    block, n = config["block_size"], longest_prompt(task, tok)
    if n + args.max_new_tokens > block:
        parser.error(f"--max_new_tokens {args.max_new_tokens}: the longest prompt ({n} tokens with "
                     f"tokenizer {tok.name}) plus it exceeds the model's context of {block}: use "
                     f"at most {block - n}")
    if args.max_tool_calls and (error := tools.context_error(n, args.max_new_tokens, block)):
        parser.error(error)
    # + 1: the reward model reads the score at an <|endoftext|> after the completion
    rm_len = n + args.max_new_tokens + 1
    if args.reward_model and (error := check_reward_model(args.reward_model, tok, rm_len)):
        parser.error(error)
    trains_base = not args.init and not args.resume
    if trains_base and (args.no_cache or not saved_base(args)):
        if (m := longest_document(task, tok)) > block:
            parser.error(f"--task {args.task}: the base corpus's longest document ({m} tokens) "
                         f"exceeds --model {args.model}'s context of {block}: use a smaller "
                         f"problem size")

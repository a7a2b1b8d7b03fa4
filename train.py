"""
DeepSeek-R1-Zero in miniature: train a tiny base model on a task corpus, then run GRPO on it; or
run GRPO on a pretrained model read from a local Hugging Face directory.

    python train.py                       # the default toy run: a few minutes on a laptop CPU
    python train.py --init hf:/models/Qwen2.5-0.5B --task gsm8k --train_file ... --test_file ... \
        --preset r1zero --dtype bf16      # the paper's RL settings on a real model (a GPU)
    torchrun --standalone --nproc_per_node=2 train.py     # the same, in 2 processes (dist.py)

The base model (pretrain.py): a small transformer learns the corpus of the task (tasks.py,
--task); it is cached. With --init (hf:DIR, or a ckpt.pt of ours) there is none to train.
Then RL: each step samples --group_size outputs for each of --questions questions from the current
policy (pi_theta_old; rollout.py; --engine vllm: vllm_engine.py), scores them with the rule-based rewards of rewards.py (eq. 4)
and, with --reward_model, a model-based one (`preference`, reward_model.py; eq. 5 and 8, what the
paper's second RL stage adds), turns rewards into group-normalised advantages (eq. 3), and trains
on the rollout (grpo_update.py: eq. 1-2 over mini-batches and epochs). The k3 KL penalty is to a
frozen reference model, replaced by the policy every --ref_update_every steps; with --beta 0 there
is no reference model at all. Held-out accuracy (pass@1 averaged over --eval_samples samples at
temperature 0.6, top-p 0.95, as in the R1 paper; evaluate.py) is measured before RL and every
--eval_every steps.

Everything goes to out/<run>/ (runs.py): log.jsonl (every metric, every step), samples.jsonl
(completions at each evaluation), ckpt.pt (every --save_every steps, at the end, and on SIGTERM /
SIGINT), curves.png (python plot.py out/<run>); with --report_to, log.jsonl's numbers also go to
TensorBoard or W&B (trackers.py). --resume continues a run exactly where its
checkpoint left it. A step whose loss or gradient norm is not finite skips its optimiser update
(logged as skipped_steps); --max_skips such steps in a row end the run. Every flag that can be
checked is checked before any work (validate). Log-probs come from the Triton kernels of kernels/
on CUDA (--no_kernels: off), from the plain PyTorch reference on a CPU. Simplified: a constant RL
learning rate (as the paper).
"""

import argparse
import os
import random
import sys
import time

import torch
from torch.distributed.elastic.multiprocessing.errors import record

import dist
import grpo
import kernels
import runs
import tools
from checkpoint import load_checkpoint, load_model, memory_error, save_checkpoint, starting_point
from evaluate import evaluate, print_eval
from exercises import plug_in
from grpo_update import grpo_update, reference, reset_reference, wrap_policy
from plot import plot_run
from pretrain import base_model, cache_path, longest_document
from reflection import reflects
from reward_model import PreferenceReward, check_reward_model
from rewards import parse_rewards
from rollout import longest_prompt, rollout
from tasks import add_task_args, make_task
from template import CHAT_FLAGS, chat_format
from vllm_engine import add_engine_args, engine_checks, engine_error, make_engine

# -----------------------------------------------------------------------------
# flags
parser = runs.Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
g = parser.add_argument_group("run")
g.add_argument("--run_name", default=None, help="outputs go to <out_dir>/<run_name>/ (default: a timestamp); not --run, which torchrun would take for its --run-path")
g.add_argument("--out_dir", default="out", help="directory for runs and the base-model cache")
g.add_argument("--resume", action="store_true", help="continue the run <out_dir>/<run_name> from its ckpt.pt: exactly at the same world size, at another one with new sampling streams")
g.add_argument("--save_every", type=int, default=20, help="write ckpt.pt every this many steps (0: only at the end); also at the end and on SIGTERM / SIGINT")
g.add_argument("--max_skips", type=int, default=5, help="end the run after this many steps in a row that skipped an update for a non-finite loss or gradient norm")
g.add_argument("--seed", type=int, default=1337, help="seed for the task, the model and the sampling")
g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
g.add_argument("--fsdp", action="store_true", help="shard the policy and reference with FSDP2 (under torchrun), for models that do not fit on one device; default: DDP replicas")
g.add_argument("--no_kernels", action="store_true", help="on CUDA, use the plain PyTorch log-prob path instead of the Triton kernels of kernels/")
g.add_argument("--use_exercises", action="store_true", help="the course exercises' functions (exercises/work/, "
               "python -m exercises) replace the project's; every exercise must pass its check first")
g.add_argument("--preset", choices=["r1zero"], default=None,
               help="r1zero: the paper's RL settings (lr, beta, G, questions, ref update, mini-batches, epochs, "
                    "temperature, clip ratio); flags given explicitly still win")
add_task_args(parser)  # --task and its flags (tasks.py)
g = parser.add_argument_group("the starting model: a pretrained one (--init), or the toy base stage on a preset")
g.add_argument("--init", default=None, help="start from hf:DIR (a local Hugging Face model directory: weights and "
                                             "tokenizer) or a ckpt.pt of ours; default: train the toy base stage")
g.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
               help="bf16: forward passes under bf16 autocast with fp32 parameters and optimiser state (the "
                    "reference model held in bf16); fp32: everything in fp32")
g.add_argument("--grad_checkpoint", action="store_true", help="recompute each block's activations in the backward (less memory, ~1/3 more compute)")
g.add_argument("--chat", choices=CHAT_FLAGS, default="auto",
               help="prompt format: the R1-Zero template (none), an instruct model's chat format, or auto: the tokenizer's")
g.add_argument("--tokenizer", default="aha", help="without --init: aha (a BPE trained on the toy corpora, tokenizer.py), byte, or a tiktoken encoding: gpt2, cl100k_base, o200k_base")
g.add_argument("--tokenizer_dir", default="tokenizers", help="where named encodings' <name>.tiktoken files are")
g.add_argument("--model", default="tiny", help="without --init: model preset: tiny, nano, gpt2-small, qwen2.5-0.5b, qwen2.5-1.5b")
g = parser.add_argument_group("the toy base model (pretrain.py; without --init)")
g.add_argument("--base_steps", type=int, default=450, help="pretraining steps on the task corpus")
g.add_argument("--base_batch", type=int, default=32, help="documents per pretraining step")
g.add_argument("--template_frac", type=float, default=0.5, help="share of the base steps (the last ones) where half the documents are templated: first all worked, then the style mixture; the rest are textbook ones")
g.add_argument("--base_lr", type=float, default=3e-3, help="peak learning rate of pretraining")
g.add_argument("--no_cache", action="store_true", help="retrain the base model even if it is cached")
g = parser.add_argument_group("RL: rewards and rollouts")
g.add_argument("--rewards", default=None,
               help="weighted sum of reward functions, name:weight,...: built-ins accuracy, format, language, countdown, "
                    "code, preference (with --reward_model), or module.function of your own (default: the task's; "
                    "eq. 4: accuracy:1,format:1)")
g.add_argument("--reward_model", default=None, help="a rm.pt of reward_model.py: the `preference` reward scores each output with it (eq. 5's model used pointwise, summed as eq. 8)")
g.add_argument("--rl_steps", type=int, default=30, help="GRPO steps")
g.add_argument("--questions", type=int, default=16, help="questions per step (paper: 32)")
g.add_argument("--group_size", type=int, default=8, help="G, outputs sampled per question (paper: 16)")
g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of rollouts (paper: 1.0)")
g.add_argument("--max_new_tokens", type=int, default=128, help="length limit of a completion")
add_engine_args(parser, train=True)  # --engine own|vllm, and the importance weights of another sampler (vllm_engine.py)
tools.add_tool_args(parser)  # --max_tool_calls, --tool_max_chars (tools.py)
g = parser.add_argument_group("RL: the GRPO objective (grpo.py) and its update (grpo_update.py)")
g.add_argument("--lr", type=float, default=5e-5, help="learning rate of RL, constant (paper: 3e-6, for a 671B model)")
g.add_argument("--beta", type=float, default=0.01, help="KL coefficient; 0 runs no reference model (paper: 0.001)")
g.add_argument("--clip_eps", type=float, default=0.2, help="clip ratio epsilon of eq. 1 (lower side, and upper unless --clip_eps_high)")
g.add_argument("--clip_eps_high", type=float, default=None, help="upper clip epsilon (DAPO's clip-higher, e.g. 0.28); default: --clip_eps")
g.add_argument("--adv_scale", choices=["std", "none", "batch"], default="std", help="eq. 3's divisor: group std (paper), none (Dr. GRPO), batch std")
g.add_argument("--loss_type", choices=["grpo", "token", "dr_grpo"], default="grpo", help="aggregation over tokens: per-output mean (eq. 1), token mean (DAPO), constant (Dr. GRPO)")
g.add_argument("--ref_update_every", type=int, default=400, help="replace the reference model by the policy every this many steps (paper: 400; 0: never)")
g.add_argument("--minibatches", type=int, default=1, help="optimiser steps per epoch over a rollout (paper: 16)")
g.add_argument("--ppo_epochs", type=int, default=1, help="passes over each rollout (paper: 1)")
g.add_argument("--micro_batch", type=int, default=0, help="rows per forward/backward, gradients accumulated (0: a whole mini-batch)")
g.add_argument("--mask_truncated", action="store_true", help="outputs cut off at --max_new_tokens get no loss")
g.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0: off)")
g = parser.add_argument_group("evaluation and logging (evaluate.py)")
g.add_argument("--eval_every", type=int, default=10, help="evaluate on held-out problems every this many steps")
g.add_argument("--eval_problems", type=int, default=100, help="held-out problems per evaluation")
g.add_argument("--eval_samples", type=int, default=4, help="samples per problem; pass@1 is their mean accuracy")
g.add_argument("--eval_temperature", type=float, default=0.6, help="evaluation temperature (R1 paper: 0.6)")
g.add_argument("--eval_top_p", type=float, default=0.95, help="evaluation top-p (R1 paper: 0.95)")
g.add_argument("--log_samples", type=int, default=4, help="completions written to samples.jsonl per evaluation")
g.add_argument("--no_plot", action="store_true", help="do not draw curves.png at the end")
g.add_argument("--report_to", default="none", help="log.jsonl's numbers also to: none, or tensorboard, wandb (comma-separated; trackers.py)")

# the paper's first RL stage (R1 paper, "Training details of DeepSeek-R1-Zero"); the clip ratio is
# 10 as the seed text gives it (most reimplementations use 0.2)
PRESETS = {"r1zero": dict(lr=3e-6, beta=0.001, group_size=16, questions=32, ref_update_every=400, minibatches=16,
                          ppo_epochs=1, temperature=1.0, clip_eps=10.0)}


def main(argv=None):
    args = parse_args(argv)
    if args.use_exercises:  # the student's own functions, checked, in place of the project's
        if error := plug_in(sys.modules[__name__]):
            parser.error(error)
        args.no_kernels = True  # on CUDA the fused kernels would bypass the student's log-probs and loss
    kernels.USE = "never" if args.no_kernels else "cuda"  # a CPU takes the references
    with runs.session(args.device, args.dtype) as (rank, world, device, stop):  # from here a SIGTERM / SIGINT stops at a step boundary
        run = GRPORun(args, rank, world, device, stop)
        with run.log:  # the trackers of --report_to close however the run ends
            run_dir = run.run()
    return run_dir


def parse_args(argv=None):
    """Flags over a --preset's values, and on --resume over the resumed run's own (runs.parse_args:
    explicit flags still win); then every check that needs no training (validate)."""
    preset = PRESETS.get(parser.parse_known_args(argv)[0].preset)
    args = runs.parse_args(parser, argv, preset)
    validate(args)
    return args


def validate(args):
    """Every check that needs no training, before any: each failure is one line that names the flag
    and the fix (parser.error, exit status 2)."""
    world = dist.launched_world()
    parser.check(flag_checks(args, world))
    parser.check_device(args.device)
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
                 or runs.check_run_dir(args, report_to=args.report_to)):
        parser.error(error)
    if args.resume:  # the checkpoint must be one this run can continue
        try:
            ckpt = load_checkpoint(os.path.join(args.out_dir, args.run_name, "ckpt.pt"), "cpu", tokenizer=tok.name,
                                   config=config, full=True)[2]
        except SystemExit as e:
            parser.error(f"--resume: {str(e.code).removeprefix('error: ')}")
        if "random" not in ckpt:
            parser.error(f"--resume: the checkpoint of {args.run_name} predates exact resume (format 1): start a new --run_name")


def flag_checks(args, world):
    """(ok, message) for each flag that is checked on its own."""
    n_out = args.questions // world * args.group_size  # outputs per rank and step
    return [
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
        *engine_checks(args, args.device),
    ]


def check_task(args):
    """The task and its rewards (--rewards defaults to the task's), built once to be checked."""
    try:
        task = make_task(args, log=lambda line: None)  # GRPORun builds it again, and says what it reports
        task.train_problems(random.Random(0), 1)  # a file task without --train_file fails here
        args.rewards = args.rewards or task.rewards
        # the class stands in for the scorer here: GRPORun loads the reward model, once
        uses_rm = "preference" in [name for name, _, _ in parse_rewards(args.rewards, {"preference": PreferenceReward})]
    except ValueError as e:
        parser.error(f"--rewards: {e}" if "reward" in str(e) else str(e).replace("n_test", "--n_test"))
    parser.check([(args.reward_model or not uses_rm, "--rewards preference needs --reward_model PATH (a rm.pt of reward_model.py)"),
                  (uses_rm or not args.reward_model, "--reward_model is read only by the preference reward: add preference:W to --rewards"),
                  (args.eval_problems <= len(task.test_set), f"--eval_problems {args.eval_problems}: the held-out set has "
                                                              f"{len(task.test_set)} problems: use at most that"),
                  (args.init or task.has_corpus, f"--task {args.task} has no base corpus for a toy base model: start from a "
                                                 f"pretrained one (--init hf:DIR)")])
    return task


def check_lengths(args, task, tok, config):
    """The longest prompt plus --max_new_tokens (rollouts and evaluation) fits the model's context, and
    the reward model's; so does the longest base-corpus document if the base stage is to be trained."""
    block, n = config["block_size"], longest_prompt(task, tok)
    if n + args.max_new_tokens > block:
        parser.error(f"--max_new_tokens {args.max_new_tokens}: the longest prompt ({n} tokens with tokenizer {tok.name}) "
                     f"plus it exceeds the model's context of {block}: use at most {block - n}")
    if args.max_tool_calls and (error := tools.context_error(n, args.max_new_tokens, block)):
        parser.error(error)
    if args.reward_model and (error := check_reward_model(args.reward_model, tok, n + args.max_new_tokens + 1)):
        parser.error(error)  # + 1: the reward model reads the score at an <|endoftext|> after the completion
    if not args.init and not args.resume and (args.no_cache or not os.path.isfile(cache_path(args))):
        if (m := longest_document(task, tok)) > block:
            parser.error(f"--task {args.task}: the base corpus's longest document ({m} tokens) exceeds --model "
                         f"{args.model}'s context of {block}: use a smaller problem size")


# -----------------------------------------------------------------------------
# the run: set-up, then GRPO steps

class GRPORun:
    """What every step touches, set up fresh (the base stage, or --init) or from the checkpoint of
    the run being resumed, with every state it saved: the policy (`model`, the module sampling,
    evaluation and checkpoints use; `policy`, the trainable grpo_update.Policy over it, DDP/FSDP
    wrapped or not), the reference (None with --beta 0), the optimiser, the reward functions, and
    the random streams: the questions and the mini-batch shuffler (alike on every rank) and this
    rank's sampling stream."""

    def __init__(self, args, rank, world, device, stop):
        self.args, self.rank, self.world, self.stop, self.t_start = args, rank, world, stop, time.time()
        self.dir = runs.run_path(args)
        self.tok, _ = starting_point(args)
        self.tok.chat = chat_format(args.chat, self.tok.chat)
        self.task = make_task(args, log=dist.print0)
        ckpt = None
        if args.resume:  # validate has checked it: this tokenizer, this model shape, this format
            model, _, ckpt = load_checkpoint(os.path.join(self.dir, "ckpt.pt"), device, full=True)
        self.start = 1 if ckpt is None else ckpt["step"] + 1
        self.log = runs.start_run(self.dir, args, world, self.start, args.report_to)  # log.jsonl and the trackers
        dist.print0(f"run: {self.dir}" + (f" ({world} processes)" if world > 1 else ""))
        if ckpt is None:
            model = initial_model(args, self.tok, self.task, rank, device, stop)
        else:
            dist.print0(f"resuming {self.dir} after step {self.start - 1}")
        model.grad_checkpointing = args.grad_checkpoint
        self.model = model
        self.engine = make_engine(args, model, self.tok, device, args.seed + rank)  # None: sample.generate on model
        ref_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        self.ref = None if args.beta == 0 else reference(model, ref_dtype, args.fsdp, ckpt and ckpt.get("ref"))
        self.policy = wrap_policy(model, args.fsdp)
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
        if ckpt is not None and ckpt.get("optim") is not None:
            dist.load_optim_state_dict(model, self.opt, ckpt["optim"])
        rm = {"preference": PreferenceReward(args.reward_model, device)} if args.reward_model else None  # loaded once
        self.reward_fns = parse_rewards(args.rewards, rm)
        self.questions, self.shuffle = random.Random(f"rl-{args.seed}"), torch.Generator().manual_seed(args.seed)
        self.sampling = torch.Generator(device).manual_seed(args.seed + rank)  # per-rank sampling seeds
        self.sync = dist.all_done if args.fsdp else None  # FSDP: each decode step is a collective, all ranks decode
        if ckpt is not None and not runs.restore_random(ckpt["random"], *self.streams()):
            self.sampling.manual_seed(args.seed + rank + 7919 * (self.start - 1))  # new streams, not the ones it would have had
            dist.print0(f"note: the checkpoint was written by {len(ckpt['random']['own']['sampling'])} processes, not "
                        f"{world}: sampling streams are re-seeded, so this run is not the uninterrupted one bit for bit")
        self.streak = 0  # steps in a row that skipped their update

    def streams(self):  # (shared, own): the random streams, as runs.random_state takes them
        return {"questions": self.questions, "shuffle": self.shuffle}, {"sampling": self.sampling}

    def run(self):
        """Evaluate the starting policy, then the GRPO steps (runs.run_steps); the curves at the end."""
        if self.start == 1:
            m = self.evaluate(0)
            print_eval(0, m, self.args)
            self.log.write({"step": 0, "elapsed": time.time() - self.t_start, **m})
        self.t_rl = time.time()
        if not runs.run_steps(self.start, self.args.rl_steps, self.step, self.save, self.stop, self.args.save_every,
                              runs.resume_hint(self.args, "train.py")):
            return self.dir
        if self.rank == 0 and not self.args.no_plot:
            print(f"curves: {plot_run(self.dir)}")
        dist.print0(f"done in {(time.time() - self.t_start) / 60:.1f} min: {self.dir}")
        return self.dir

    def step(self, step):
        """One GRPO step: rollout, update, log, evaluate; --max_skips non-finite steps in a row end the run."""
        args, t0 = self.args, time.time()
        out, texts, scores, rewards, advantages = self.rollout()
        t_rollout, t0 = time.time() - t0, time.time()
        um = self.update(step, out, advantages)
        rec = self.record(step, out, texts, scores, rewards, um, t_rollout, time.time() - t0)
        rec["elapsed"] = time.time() - self.t_start
        if step % args.eval_every == 0 or step == args.rl_steps:
            rec.update(self.evaluate(step))
        print_step(rec, args, (time.time() - self.t_rl) / (step - self.start + 1))
        self.log.write(rec)  # on rank 0
        if "eval_accuracy" in rec:
            print_eval(step, rec, args)
        self.streak = self.streak + 1 if um["skipped_steps"] else 0
        if self.streak == args.max_skips:  # the weights are the last finite ones: skipped updates never touch them
            self.save(step)
            raise SystemExit(f"error: {self.streak} steps in a row had a non-finite loss or gradient norm (to step {step}): "
                             f"stopped, the last finite weights are in {self.dir}/ckpt.pt; lower --lr")

    def rollout(self):
        """G outputs per question from the current policy, pi_theta_old: every rank draws the step's
        questions alike and samples its own block of them -> rollout, texts, scores, rewards, advantages."""
        args = self.args
        self.model.eval()
        q = args.questions // self.world
        problems = self.task.train_problems(self.questions, args.questions)[self.rank * q:(self.rank + 1) * q]
        out, texts, scores = rollout(self.model, self.tok, problems, args.group_size, args, self.sampling, args.temperature,
                                     reward_fns=self.reward_fns, all_done=self.sync, correct=self.task.correct,
                                     engine=self.engine)
        rewards = sum(w * scores[name] for name, _, w in self.reward_fns)  # eq. 4; NaN if any declined
        advantages = grpo.group_advantages(rewards, args.group_size, scale=args.adv_scale).to(out.batch.rows.device)  # eq. 3
        return out, texts, scores, rewards, advantages

    def update(self, step, out, advantages):
        """eq. 1 on mini-batches of the rollout (grpo_update), then the reference reset every --ref_update_every steps."""
        self.model.train()
        um = grpo_update(self.policy, self.ref, self.opt, out, advantages, self.args, self.shuffle)
        if self.ref is not None and self.args.ref_update_every and step % self.args.ref_update_every == 0:
            reset_reference(self.ref, self.policy)
        if self.engine is not None:  # the next rollout samples from the weights just trained
            self.engine.sync(dist.full_state_dict(self.model, everywhere=True))
        return um

    def record(self, step, out, texts, scores, rewards, um, t_rollout, t_train):
        """The step's record for log.jsonl: the whole step's rows, gathered from every rank in rank order."""
        lengths = dist.gather_rows(out.batch.completion_mask.sum(1).cpu())
        rewards = dist.gather_rows(rewards)
        scores = {k: dist.gather_rows(v) for k, v in scores.items()}
        truncated = dist.gather_rows(out.truncated.float().cpu())
        reflect = dist.gather_rows(torch.tensor([float(reflects(t)) for t in texts]))
        acc = scores["accuracy"]
        groups = rewards.view(-1, self.args.group_size)
        return {
            "step": step, "reward": runs.nanmean(rewards), "reward_std": runs.nanstd(rewards),
            **{f"reward_{k}": runs.nanmean(v) for k, v in scores.items()},
            **{f"reward_{k}_std": runs.nanstd(v) for k, v in scores.items()},
            "unscored": rewards.isnan().float().mean().item(),
            "accuracy": runs.nanmean(scores["accuracy"]), "format": runs.nanmean(scores["format"]),
            "length": lengths.mean().item(), "length_min": lengths.min().item(), "length_max": lengths.max().item(),
            "truncated": truncated.mean().item(),
            "zero_var_groups": (groups.std(1) == 0).float().mean().item(),
            # reflection.py: the share that re-examines an earlier step, and whether doing so pays
            "reflection": reflect.mean().item(),
            "acc_reflect": runs.nanmean(acc[reflect == 1]), "acc_no_reflect": runs.nanmean(acc[reflect == 0]),
            **tools.metrics(out, acc),  # {} without tools
            **um,
            "tokens_per_s": lengths.sum().item() / (t_rollout + t_train),
            "rollout_s": t_rollout, "train_s": t_train,
        }

    def evaluate(self, step):
        """Held-out metrics (evaluate.py); rank 0 appends its sample completions to samples.jsonl."""
        m, samples = evaluate(self.model, self.tok, self.task, self.args, step, self.sync, self.engine)
        if self.rank == 0:
            for s in samples:
                runs.append_jsonl(os.path.join(self.dir, "samples.jsonl"), s)
        return m

    def save(self, step):
        """A full (unsharded) checkpoint, written by rank 0: weights, reference, optimiser state and
        every random state (runs.random_state), so that --resume continues exactly. It loads at any
        world size. The collectives (FSDP's gathers, the sampling states) need every rank."""
        weights, optim = dist.full_state_dict(self.model), dist.full_optim_state_dict(self.model, self.opt)
        ref_weights = None if self.ref is None else dist.full_state_dict(self.ref.model)
        random_state = runs.random_state(*self.streams())
        if self.rank == 0:
            save_checkpoint(os.path.join(self.dir, "ckpt.pt"), self.model, self.tok.name, state_dict=weights,
                            ref=ref_weights, optim=optim, random=random_state, tokenizer_dir=self.args.tokenizer_dir,
                            step=step, args=vars(self.args), world_size=dist.world())


def initial_model(args, tok, task, rank, device, stop=None):
    """The policy RL starts from, in fp32 (the optimiser's master weights whatever --dtype): --init's
    weights, or the toy base stage (rank 0 trains or loads the cached one, then the others load it)."""
    if args.init:
        return load_model(args.init, device, torch.float32, flag="--init")[0]
    if rank == 0:
        model = base_model(args, tok, task, device, log=dist.print0, stop=stop)
    dist.barrier()
    return model if rank == 0 else load_checkpoint(cache_path(args), device)[0]


def print_step(rec, args, per_step):
    step, left = rec["step"], per_step * (args.rl_steps - rec["step"])
    dist.print0(f"step {step:3d}/{args.rl_steps} | reward {rec['reward']:.3f} | acc {rec['accuracy']:.3f} | "
                f"format {rec['format']:.3f} | len {rec['length']:5.1f} | reflect {rec['reflection']:.2f} | kl {rec['kl']:.4f} | "
                f"clip {rec['clip_frac']:.3f} | {rec['tokens_per_s']:5.0f} tok/s | rollout {rec['rollout_s']:.1f}s "
                f"train {rec['train_s']:.1f}s{tools.describe(rec)} | {rec['elapsed'] / 60:.1f} min, ~{left / 60:.1f} min left")
    if rec["skipped_steps"]:
        dist.print0(f"  warning: {rec['skipped_steps']} update(s) skipped: non-finite loss or gradient norm")
    if rec["truncated"] > 0.5:
        dist.print0(f"  warning: {rec['truncated']:.0%} of completions hit --max_new_tokens={args.max_new_tokens} (no reward signal)")


if __name__ == "__main__":
    record(main)()  # under torchrun: a crashed rank's traceback is shown, and the job ends

"""
DeepSeek-R1-Zero in miniature: GRPO on a base model, step by step. This file is the loop; read it
from `main` down (the flags and their checks are train_args.py).

    python train.py                       # the default toy run: ~1.3 min on a laptop CPU
    python train.py --init hf:/models/Qwen2.5-0.5B --task gsm8k --train_file ... --test_file ... \
        --preset r1zero --dtype bf16      # the paper's RL settings on a real model (a GPU)
    torchrun --standalone --nproc_per_node=2 train.py     # the same, in 2 processes (dist.py)

The starting policy is the toy base model (pretrain.py: a small transformer trained on the task's
corpus, cached; the default flags' is shipped in weights/) or --init (hf:DIR, or a ckpt.pt of
ours). Then each step:

    rollout   G = --group_size outputs for each of --questions questions, sampled from the
              current policy pi_theta_old (rollout.py -> sample.py) and scored (rewards.py)
    eq. 4     the reward: a weighted sum of the reward functions (--rewards)
    eq. 3     group-normalised advantages (grpo.group_advantages)
    eq. 1-2   the update on mini-batches of the rollout (grpo_update.py -> grpo.py), the k3 KL to
              a frozen reference replaced every --ref_update_every steps (none with --beta 0)
    log       one line and one log.jsonl record; held-out pass@1 every --eval_every steps
              (evaluation.py: k samples at T 0.6, top-p 0.95, as the paper)

Everything goes to out/<run>/ (runner.py; docs/runs.md): log.jsonl, samples.jsonl, ckpt.pt (every
--save_every steps, at the end, on SIGTERM), curves.png; --resume continues exactly. Simplified:
a constant RL learning rate (as the paper).
"""

import os
import random
import sys
import time

import torch
from torch.distributed.elastic.multiprocessing.errors import record

import dist
import grpo
import grpo_kernels
import runner
from checkpoint import load_checkpoint, load_model, save_checkpoint, starting_point
from engines import tools
from engines.vllm_engine import make_engine
from evaluation import evaluate, print_eval
from exercises import plug_in
from grpo_update import UpdateConfig, grpo_update, reference, reset_reference, wrap_policy
from plot import plot_run
from pretrain import base_model, saved_base
from r1.reward_model import PreferenceReward
from reflection import reflects
from rewards import parse_rewards
from rollout import concat, rollout, select
from tasks import make_task
from template import chat_format
from train_args import parse_args, parser, reward_table


def main(argv=None):
    args = parse_args(argv)  # every flag checked before any work (train_args.py)
    if args.use_exercises:  # the student's own functions, checked, in place of the project's
        if error := plug_in(sys.modules[__name__]):
            parser.error(error)
        args.no_kernels = True  # on CUDA the fused kernels would bypass the student's functions
    grpo_kernels.USE = "never" if args.no_kernels else "cuda"  # a CPU takes the references
    # from here a SIGTERM / SIGINT stops at a step boundary, with a checkpoint
    with runner.session(args.device, args.dtype) as (rank, world, device, stop):
        with parser.errors():  # bad input found only at set-up: --report_to wandb, not logged in
            run = GRPORun(args, rank, world, device, stop)
        with run.log:  # the trackers of --report_to close however the run ends
            run_dir = run.run()
    return run_dir


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
        self.args, self.rank, self.world, self.stop = args, rank, world, stop
        self.t_start, self.dir = time.time(), runner.run_path(args)
        self.tok, _ = starting_point(args)
        self.tok.chat = chat_format(args.chat, self.tok.chat)
        self.task = make_task(args, log=dist.print0)
        model, ckpt = self.starting_policy(device)
        self.model = model
        # None: sample.generate on model itself; else a vLLM engine holding model's weights
        self.seed = args.seed if args.rl_seed is None else args.rl_seed  # RL's own streams
        self.engine = make_engine(args, model, self.tok, device, self.seed + rank)
        ref_dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        ref_state = ckpt and ckpt.get("ref")
        self.ref = None if args.beta == 0 else reference(model, ref_dtype, args.fsdp, ref_state)
        self.policy = wrap_policy(model, args.fsdp)
        self.update_cfg = UpdateConfig.from_args(args)
        self.opt = policy_optimizer(self.policy.parameters(), args)
        if ckpt is not None and ckpt.get("optim") is not None:
            dist.load_optim_state_dict(model, self.opt, ckpt["optim"])
        rm = None
        if args.reward_model:  # the preference reward's model, loaded once
            rm = {"preference": PreferenceReward(args.reward_model, device)}
        # [(name, fn, weight)]: eq. 4's terms
        self.reward_fns = parse_rewards(args.rewards, reward_table(args, rm))
        self.questions = random.Random(f"rl-{self.seed}")
        self.shuffle = torch.Generator().manual_seed(self.seed)
        self.sampling = torch.Generator(device).manual_seed(self.seed + rank)  # per rank
        self.sync = dist.all_done if args.fsdp else None  # FSDP: every decode step is a collective
        if ckpt is not None:
            self.restore_streams(ckpt)
        self.streak = 0  # steps in a row that skipped their update

    def starting_policy(self, device):
        """The policy in fp32 and, on --resume, the checkpoint it came from (else None)."""
        args, ckpt = self.args, None
        if args.resume:  # train_args has checked it: this tokenizer, this model shape, this format
            model, _, ckpt = load_checkpoint(os.path.join(self.dir, "ckpt.pt"), device, full=True)
        self.start = 1 if ckpt is None else ckpt["step"] + 1
        # log.jsonl and the trackers
        self.log = runner.start_run(self.dir, args, self.world, self.start, args.report_to)
        dist.print0(f"run: {self.dir}" + (f" ({self.world} processes)" if self.world > 1 else ""))
        if ckpt is None:
            model = initial_model(args, self.tok, self.task, self.rank, device, self.stop)
        else:
            dist.print0(f"resuming {self.dir} after step {self.start - 1}")
        model.grad_checkpointing = args.grad_checkpoint
        return model, ckpt

    def restore_streams(self, ckpt):
        """Every random stream as the checkpoint left it; at another world size the per-rank
        sampling streams are new ones."""
        if runner.restore_random(ckpt["random"], *self.streams()):
            return
        self.sampling.manual_seed(self.seed + self.rank + 7919 * (self.start - 1))
        n = len(ckpt["random"]["own"]["sampling"])
        dist.print0(f"note: the checkpoint was written by {n} processes, not {self.world}: "
                    f"sampling streams are re-seeded, so this run is not the uninterrupted one bit "
                    f"for bit")

    def streams(self):  # (shared, own): the random streams, as runner.random_state takes them
        return {"questions": self.questions, "shuffle": self.shuffle}, {"sampling": self.sampling}

    def run(self):
        """Evaluate the starting policy, then the GRPO steps (runner.run_steps); the curves."""
        args = self.args
        if self.start == 1:
            m = self.evaluate(0)
            print_eval(0, m, args)
            self.log.write({"step": 0, "elapsed": time.time() - self.t_start, **m})
        self.t_rl = time.time()
        if not runner.run_steps(self.start, args.rl_steps, self.step, self.save, self.stop,
                                args.save_every, runner.resume_hint(args, "train.py")):
            return self.dir
        if self.rank == 0 and not args.no_plot:
            print(f"curves: {plot_run(self.dir)}")
        dist.print0(f"done in {(time.time() - self.t_start) / 60:.1f} min: {self.dir}")
        return self.dir

    def step(self, step):
        """One GRPO step: a rollout, its rewards and advantages, the update, the log; an evaluation
        every --eval_every steps. --max_skips non-finite steps in a row end the run."""
        args, t0, dyn = self.args, time.time(), {}
        if args.dynamic_sampling:  # DAPO: only groups whose rewards differ
            ro, dyn = self.informative_rollout()
        else:
            ro = self.rollout()                                 # this rank's B = q x G rows
        rewards = self.reward(ro)                               # (B,) eq. 4; NaN: declined
        advantages = grpo.group_advantages(rewards, args.group_size, args.adv_scale)  # (B,) eq. 3
        t_rollout, t0 = time.time() - t0, time.time()
        um = self.update(step, ro.samples, advantages.to(ro.samples.batch.rows.device))  # eq. 1-2
        rec = {**self.record(step, ro, rewards, um, t_rollout, time.time() - t0), **dyn}
        rec["elapsed"] = time.time() - self.t_start
        if step % args.eval_every == 0 or step == args.rl_steps:
            rec.update(self.evaluate(step))
        print_step(rec, args, (time.time() - self.t_rl) / (step - self.start + 1))
        self.log.write(rec)  # on rank 0
        if "eval_accuracy" in rec:
            print_eval(step, rec, args)
        self.streak = self.streak + 1 if um["skipped_steps"] else 0
        if self.streak == args.max_skips:  # skipped updates never touched the weights
            self.save(step)
            raise SystemExit(f"error: {self.streak} steps in a row had a non-finite loss or "
                             f"gradient norm (to step {step}): stopped, the last finite weights "
                             f"are in {self.dir}/ckpt.pt; lower --lr")

    def rollout(self, questions=None):
        """G outputs per question from the current policy, pi_theta_old, scored: every rank draws
        the step's questions (--questions, or `questions`) alike and samples its own block of them
        -> a rollout.Rollout."""
        args = self.args
        self.model.eval()
        questions = questions or args.questions
        q = questions // self.world
        problems = self.task.train_problems(self.questions, questions)
        problems = problems[self.rank * q:(self.rank + 1) * q]
        return rollout(self.model, self.tok, problems, args.group_size, args, self.sampling,
                       args.temperature, reward_fns=self.reward_fns, all_done=self.sync,
                       correct=self.task.correct, engine=self.engine)

    def reward(self, ro):
        """eq. 4: the weighted sum of the --rewards terms, (B,); NaN where a function declined."""
        return sum(w * ro.scores[k] for k, _, w in self.reward_fns)

    def informative_rollout(self):
        """
        DAPO's dynamic sampling (arXiv 2503.14476: 0 < correct outputs < G): groups whose rewards
        are all equal (grpo.constant_groups: advantage 0, no gradient) are dropped, more questions
        are sampled, in at most --dynamic_rounds extra rounds, until every rank has its q =
        --questions / world informative groups. Each extra round draws (on every rank alike) q'
        questions per rank, q' the most any rank still lacks; a rank keeps its first q informative
        groups, so every rank ends with q. When the bound is hit a rank fills up with uninformative
        groups (advantage 0: they add only the KL term, and count in the loss's divisor), logged as
        dyn_filled_groups. -> (the Rollout, its log fields).
        """
        G, q, t0 = self.args.group_size, self.args.questions // self.world, time.time()
        ros, kept, spare, seen, zero, t_first = [], [], [], 0, 0, 0.0  # (round, group) pairs
        while True:
            missing = max(dist.gather_object(q - len(kept)))  # the most any rank still lacks
            if missing <= 0 or len(ros) > self.args.dynamic_rounds:
                break
            ros.append(self.rollout(None if not ros else missing * self.world))
            flat = grpo.constant_groups(self.reward(ros[-1]).view(-1, G)).tolist()  # (groups,)
            kept += [(len(ros) - 1, i) for i, flat_i in enumerate(flat) if not flat_i]
            spare += [(len(ros) - 1, i) for i, flat_i in enumerate(flat) if flat_i]
            seen, zero = seen + len(flat), zero + sum(flat)
            t_first = t_first or time.time() - t0
        take = sorted((kept + spare)[:q])  # fewer than q informative: the bound was hit
        parts = [select(ro, [i * G + j for k, i in take if k == r for j in range(G)])
                 for r, ro in enumerate(ros) if any(k == r for k, _ in take)]
        seen, zero, filled = dist.all_sum(torch.tensor([seen, zero, max(0, q - len(kept))]))
        return concat(parts, self.tok.pad), {
            "dyn_zero_var_groups": (zero / seen).item(), "dyn_rollouts": (seen * G).item(),
            "dyn_rounds": len(ros), "dyn_filled_groups": filled.item(),
            "dyn_extra_rollout_s": time.time() - t0 - t_first}

    def update(self, step, samples, advantages):
        """eq. 1 on mini-batches of the rollout (grpo_update), then the reference reset every
        --ref_update_every steps."""
        self.model.train()
        um = grpo_update(self.policy, self.ref, self.opt, samples, advantages, self.update_cfg,
                         self.shuffle)
        every = self.args.ref_update_every
        if self.ref is not None and every and step % every == 0:
            reset_reference(self.ref, self.policy)
        if self.engine is not None:  # the next rollout samples from the weights just trained
            self.engine.sync(dist.full_state_dict(self.model, everywhere=True))
        return um

    def record(self, step, ro, rewards, um, t_rollout, t_train):
        """The step's record for log.jsonl: the whole step's rows, gathered from every rank in
        rank order."""
        samples, nanmean, nanstd = ro.samples, runner.nanmean, runner.nanstd
        lengths = dist.gather_rows(samples.batch.completion_mask.sum(1).cpu())
        rewards = dist.gather_rows(rewards)
        scores = {k: dist.gather_rows(v) for k, v in ro.scores.items()}
        truncated = dist.gather_rows(samples.truncated.float().cpu())
        reflect = dist.gather_rows(torch.tensor([float(reflects(t)) for t in ro.texts]))
        acc = scores["accuracy"]
        groups = rewards.view(-1, self.args.group_size)
        return {
            "step": step, "reward": nanmean(rewards), "reward_std": nanstd(rewards),
            **{f"reward_{k}": nanmean(v) for k, v in scores.items()},
            **{f"reward_{k}_std": nanstd(v) for k, v in scores.items()},
            "unscored": rewards.isnan().float().mean().item(),
            "accuracy": nanmean(scores["accuracy"]), "format": nanmean(scores["format"]),
            "length": lengths.mean().item(), "length_min": lengths.min().item(),
            "length_max": lengths.max().item(),
            "truncated": truncated.mean().item(),
            "zero_var_groups": (groups.std(1) == 0).float().mean().item(),
            # reflection.py: the share that re-examines an earlier step, and whether doing so pays
            "reflection": reflect.mean().item(),
            "acc_reflect": nanmean(acc[reflect == 1]), "acc_no_reflect": nanmean(acc[reflect == 0]),
            **tools.metrics(samples, acc),  # {} without tools
            **um,
            "tokens_per_s": lengths.sum().item() / (t_rollout + t_train),
            "rollout_s": t_rollout, "train_s": t_train,
        }

    def evaluate(self, step):
        """Held-out metrics (evaluation.py); rank 0 appends its sample completions to
        samples.jsonl."""
        m, logged = evaluate(self.model, self.tok, self.task, self.args, step, self.sync,
                             self.engine)
        if self.rank == 0:
            for s in logged:
                runner.append_jsonl(os.path.join(self.dir, "samples.jsonl"), s)
        return m

    def save(self, step):
        """A full (unsharded) checkpoint, written by rank 0: weights, reference, optimiser state and
        every random state (runner.random_state), so that --resume continues exactly. It loads at
        any world size. The collectives (FSDP's gathers, the sampling states) need every rank."""
        weights = dist.full_state_dict(self.model)
        optim = dist.full_optim_state_dict(self.model, self.opt)
        ref_weights = None if self.ref is None else dist.full_state_dict(self.ref.model)
        random_state = runner.random_state(*self.streams())
        if self.rank == 0:
            save_checkpoint(os.path.join(self.dir, "ckpt.pt"), self.model, self.tok.name,
                            state_dict=weights, ref=ref_weights, optim=optim, random=random_state,
                            tokenizer_dir=self.args.tokenizer_dir, step=step, args=vars(self.args),
                            world_size=dist.world())


def policy_optimizer(params, args):
    """The RL stage's AdamW: a constant --lr, no weight decay."""
    return torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)


def initial_model(args, tok, task, rank, device, stop=None):
    """The policy RL starts from, in fp32 (the optimiser's master weights whatever --dtype):
    --init's weights, or the toy base stage (rank 0 trains or loads the cached one, then the others
    load it)."""
    if args.init:
        return load_model(args.init, device, torch.float32, flag="--init")[0]
    if rank == 0:
        model = base_model(args, tok, task, device, log=dist.print0, stop=stop)
    dist.barrier()
    # what rank 0 trained and cached, or found: the cache file, else the shipped one
    return model if rank == 0 else load_checkpoint(saved_base(args), device)[0]


def print_step(rec, args, per_step):
    r, left = rec, per_step * (args.rl_steps - rec["step"])
    dist.print0(f"step {r['step']:3d}/{args.rl_steps} | reward {r['reward']:.3f} | "
                f"acc {r['accuracy']:.3f} | format {r['format']:.3f} | len {r['length']:5.1f} | "
                f"reflect {r['reflection']:.2f} | kl {r['kl']:.4f} | clip {r['clip_frac']:.3f} | "
                f"{r['tokens_per_s']:5.0f} tok/s | rollout {r['rollout_s']:.1f}s "
                f"train {r['train_s']:.1f}s{tools.describe(r)}{describe_dynamic(r)} | "
                f"{r['elapsed'] / 60:.1f} min, ~{left / 60:.1f} min left")
    if r["skipped_steps"]:
        dist.print0(f"  warning: {r['skipped_steps']} update(s) skipped: non-finite loss or "
                    f"gradient norm")
    if r.get("dyn_filled_groups"):
        dist.print0(f"  warning: dynamic sampling: {r['dyn_filled_groups']:.0f} uninformative "
                    f"group(s) kept after {args.dynamic_rounds} extra rounds (--dynamic_rounds)")
    if r["truncated"] > 0.5:
        dist.print0(f"  warning: {r['truncated']:.0%} of completions hit "
                    f"--max_new_tokens={args.max_new_tokens} (no reward signal)")


def describe_dynamic(r) -> str:
    """Dynamic sampling's part of the step line ('' without it)."""
    if "dyn_rounds" not in r:
        return ""
    return (f" | dyn {r['dyn_rounds']} rounds, {r['dyn_zero_var_groups']:.2f} zero-var, "
            f"{r['dyn_rollouts']:.0f} rollouts")


if __name__ == "__main__":
    record(main)()  # under torchrun: a crashed rank's traceback is shown, and the job ends

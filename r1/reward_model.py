r"""
The reward model of the paper's second RL stage (eq. 5, 6, 8), in miniature: model.py's
transformer with a scalar head, trained on preference pairs the task generates.

eq. 5, helpfulness, pairwise: `RewardModel` is the Transformer trunk, started from a policy
checkpoint, plus a linear head read at the <|endoftext|> appended after the completion (the last
token: its state has seen the prompt and the whole completion), trained with the Bradley-Terry loss
on the score difference:

    L = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))

The pairs (`preference_pairs`): same problem, same final answer; chosen = the task's written
solution in the R1 format, rejected = the same reasoning garbled in one of five ways (GARBLES).
eq. 6, pointwise: the same head scoring one (prompt, completion); the paper's safety model and its
data are left out. In GRPO (eq. 8) `PreferenceReward` is train.py's `preference` reward, the score
squashed to sigmoid(r - center) (why: at PreferenceReward). Simplified: pairs are generated, not
judged by a model; the whole completion is read, not only the summary; constant learning rate.
Training runs on the run skeleton of every stage (runner.py: --save_every, SIGTERM, --resume).
The pairs, eq. 6 and what is left out in full: docs/r1.md, "The reward model".

    python -m r1.reward_model --init out/<run>/ckpt.pt --run_name rm    # out/rm/rm.pt, log.jsonl
    python train.py --init out/<run>/ckpt.pt --reward_model out/rm/rm.pt \
        --rewards accuracy:1,format:1,preference:1
"""

import argparse
import os
import random
import re
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import runner
from batch import forward_rows, pack
from checkpoint import load_checkpoint, load_model, read_header, save_checkpoint, starting_point
from tasks import add_task_args, make_task
from template import render_prompt


class RewardModel(nn.Module):
    """The transformer trunk (model.Transformer; its lm_head unused) and a scalar head on the final
    hidden state of each row's last token."""

    def __init__(self, trunk):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch):
        """Scores (B,) of a batch laid out by batch.pack (completions ending in <|endoftext|>)."""
        h = forward_rows(self.trunk, batch)  # (B, R + C, d)
        last = batch.R + batch.valid[:, batch.R:].sum(1) - 1  # (B,) column of each row's last token
        return self.head(h[torch.arange(h.size(0), device=h.device), last]).squeeze(-1)  # (B,)


def bradley_terry_loss(r_chosen, r_rejected):
    """eq. 5's pairwise loss: -log sigmoid(r_chosen - r_rejected), the mean over pairs (logsigmoid:
    no overflow for large differences)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def score(rm, tok, prompts, completions, device):
    """r(x, y) (B,) of each (prompt, completion) text pair, in one batch; <|endoftext|> is
    appended."""
    batch = pack([tok.encode(p) for p in prompts], [tok.encode(c) + [tok.eot] for c in completions],
                 tok.pad, device)
    return rm(batch)


@torch.no_grad()
def score_all(rm, tok, prompts, completions, device, batch_size=64):
    """score() in batches of batch_size, without gradients."""
    return torch.cat([score(rm, tok, prompts[i:i + batch_size], completions[i:i + batch_size],
                            device).float()
                      for i in range(0, len(prompts), batch_size)])


# -----------------------------------------------------------------------------
# preference pairs: readable versus garbled reasoning, same answer

def steps_of(text):
    """A worked solution's steps: the pieces between '. ' and ', '."""
    return re.split(r"(?<=[.,]) ", text)


def noise(rng):
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789+=#%&*")
                   for _ in range(rng.randint(3, 8)))


def shuffled(steps, rng):
    order = list(range(len(steps)))
    while order == sorted(order):  # a shuffle that changes nothing is no rejected answer
        rng.shuffle(order)
    return [steps[i] for i in order]


def repeated(steps, rng):
    i = rng.randrange(len(steps))
    # a block of one to three steps, bounded so a pair fits the context
    j = rng.randint(i + 1, min(i + 3, len(steps)))
    return steps[:j] + steps[i:j] * rng.randint(1, 2) + steps[j:]  # steps i..j-1 two or three times


def noisy(steps, rng):
    return ([s for step in steps for s in ([step, noise(rng)] if rng.random() < 0.6 else [step])]
            + [noise(rng)])


def dropped(steps, rng):
    keep = sorted(rng.sample(range(1, len(steps)), (len(steps) - 1) // 2))
    # the question restated, then half the steps, out of context
    return [steps[0]] + [steps[i] for i in keep]


# each: (steps, rng) -> garbled steps; "untagged" keeps the steps and drops the think tags
GARBLES = {"shuffle": shuffled, "repeat": repeated, "noise": noisy, "drop": dropped,
           "untagged": None}


def preference_pairs(task, problems, rng, chat=None):
    """One pair per problem, {prompt, chosen, rejected, kind}: chosen the task's written solution
    (tasks/'s `solution`), rejected that solution garbled, the kinds taken in turn (equal shares),
    the same final answer."""
    out = []
    for i, p in enumerate(problems):
        worked, answer = task.solution(p), f" <answer> {p['answer']} </answer>"
        steps = steps_of(worked)
        # one step: nothing to garble
        kind = list(GARBLES)[i % len(GARBLES)] if len(steps) > 1 else "untagged"
        garbled = worked if kind == "untagged" else " ".join(GARBLES[kind](steps, rng))
        rejected = (f" {garbled}{answer}" if kind == "untagged"
                    else f" <think> {garbled} </think>{answer}")
        out.append({"prompt": render_prompt(p["prompt"], chat),
                    "chosen": f" <think> {worked} </think>{answer}", "rejected": rejected,
                    "kind": kind})
    return out


def pairwise_accuracy(rm, tok, pairs, device, batch_size=64):
    """(share of pairs whose chosen scores higher, a tie counting one half; the same by kind; the
    mean score of all the responses)."""
    prompts = [x["prompt"] for x in pairs]
    rc = score_all(rm, tok, prompts, [x["chosen"] for x in pairs], device, batch_size)
    rr = score_all(rm, tok, prompts, [x["rejected"] for x in pairs], device, batch_size)
    win = (rc > rr).float() + 0.5 * (rc == rr).float()  # (N,)
    kinds = [x["kind"] for x in pairs]
    by_kind = {k: win[[i for i, x in enumerate(kinds) if x == k]].mean().item()
               for k in GARBLES if k in kinds}
    return win.mean().item(), by_kind, torch.cat([rc, rr]).mean().item()


# -----------------------------------------------------------------------------
# the reward of GRPO

def load_reward_model(path, device="cpu"):
    """(RewardModel in eval mode, tokenizer, checkpoint dict) of a rm.pt; bad input is a one-line
    ValueError."""
    trunk, tok, ckpt = load_checkpoint(path, device, full=True)
    if "head" not in ckpt:
        raise ValueError(f"{path} is a policy checkpoint, not a reward model: train one with "
                         f"python -m r1.reward_model")
    rm = RewardModel(trunk)
    rm.head.load_state_dict(ckpt["head"])
    return rm.to(device).eval(), tok, ckpt


def check_reward_model(path, tok, context):
    """The one-line error that --reward_model path meets with the policy's tokenizer and a longest
    sequence of `context` tokens, or None; reads the checkpoint without its weights."""
    if not os.path.isfile(path):
        return (f"--reward_model {path}: no such file: train one with python -m r1.reward_model "
                "--init CKPT --run_name NAME")
    try:
        ckpt = read_header(path)
    except ValueError as e:
        return f"--reward_model {e}: give a rm.pt of r1/reward_model.py"
    name, vocab = ckpt["tokenizer"], ckpt["config"]["vocab_size"]
    block = ckpt["config"]["block_size"]
    if "head" not in ckpt:
        return (f"--reward_model {path} is a policy checkpoint, not a reward model: train one with "
                "python -m r1.reward_model")
    if "center" not in ckpt:
        run = argparse.Namespace(**(ckpt.get("args") or {"run_name": "NAME", "out_dir": "out"}))
        return (f"--reward_model {path} stopped at step {ckpt.get('step')} of its training: "
                f"finish it with {runner.resume_hint(run, '-m r1.reward_model')}")
    if (name, vocab) != (tok.name, tok.vocab_size):
        return (f"--reward_model {path} reads tokenizer {name} ({vocab} tokens), the policy "
                f"{tok.name} ({tok.vocab_size}): train the reward model from a checkpoint with the "
                "policy's tokenizer")
    if context > block:
        return (f"--reward_model {path}: its context of {block} tokens is shorter than a prompt "
                f"plus --max_new_tokens ({context}): lower --max_new_tokens")
    return None


class PreferenceReward:
    """train.py's `preference` reward (rewards.py's convention): the reward model, loaded once on
    the policy's device, scores each (prompt, completion) on its own, in batches without gradients.

    Why sigmoid(r - center), not r: Bradley-Terry fixes only differences of scores (r + c is the
    same model for every c), and on separable pairs training grows their scale without bound, so a
    raw score may be -30 or +30. eq. 8 sums it with rule rewards in [0, 1], and --rewards' weights
    mean something only if the terms share a range; GRPO's per-group normalisation (eq. 3) would
    hide the offset but not the scale, and a raw score far larger than the accuracy term would
    drown it. sigmoid(r - center) is Bradley-Terry's probability that the output is preferred to a
    response scoring `center` (the mean score of the held-out responses, stored in rm.pt): in
    (0, 1), 0.5 for a typical response, and capped, so however far a policy pushes the score (reward
    hacking) it gains at most 1 from it."""

    def __init__(self, path, device, batch_size=64):
        self.rm, self.tok, ckpt = load_reward_model(path, device)
        self.center, self.device, self.batch_size = ckpt["center"], device, batch_size

    def __call__(self, prompts, completions, **fields):
        r = score_all(self.rm, self.tok, prompts, completions, self.device, self.batch_size)
        return torch.sigmoid(r - self.center).tolist()


# -----------------------------------------------------------------------------
# training

parser = runner.Parser(description="Train a reward model (eq. 5: Bradley-Terry on preference "
                                   "pairs) from a policy checkpoint.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
g = parser.add_argument_group("run")
g.add_argument("--init", default=None,
               help="(required) the trunk's starting weights: a ckpt.pt of ours (e.g. the "
                    "policy's) or hf:DIR")
g.add_argument("--run_name", required=True,
               help="outputs go to <out_dir>/<run_name>/: rm.pt, log.jsonl, args.json")
g.add_argument("--out_dir", default="out", help="directory for runs")
g.add_argument("--resume", action="store_true",
               help="continue the run <out_dir>/<run_name> from its rm.pt")
g.add_argument("--save_every", type=int, default=0,
               help="write rm.pt every this many steps (0: only at the end); "
                    "also on SIGTERM / SIGINT")
g.add_argument("--seed", type=int, default=1337, help="seed for the head, the pairs and the task")
g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
               help="cpu or cuda")
add_task_args(parser)
g = parser.add_argument_group("training")
g.add_argument("--steps", type=int, default=150, help="optimiser steps")
g.add_argument("--batch", type=int, default=16,
               help="preference pairs per step (each a chosen and a rejected row)")
g.add_argument("--lr", type=float, default=1e-4,
               help="AdamW learning rate, constant (paper: 6e-6 for a 671B model)")
g.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0: off)")
g.add_argument("--eval_batch", type=int, default=64,
               help="rows per batch when scoring the held-out pairs")


def main(argv=None):
    """Train a reward model -> the path of its rm.pt."""
    args, task, heldout = parse_args(argv)
    with runner.session(args.device) as (_, _, device, stop):  # one process, fp32
        path = RewardModelRun(args, task, heldout, device).run(stop)
    return path


def parse_args(argv=None):
    """Flags (on --resume, the run's own from args.json), then every check that needs no training:
    one line naming the fix (exit status 2) -> (args, task, held-out preference pairs)."""
    args = runner.parse_args(parser, argv)
    if error := runner.check_run_dir(args, ckpt="rm.pt"):
        parser.error(error)
    if args.resume:  # its rm.pt must be one this run can continue: unfinished
        try:
            done = read_header(os.path.join(args.out_dir, args.run_name, "rm.pt"))
        except ValueError as e:
            parser.error(f"--resume: {e}")
        if "center" in done:
            parser.error(f"--resume: {args.run_name} finished its {done['step']} steps (its rm.pt "
                         "serves as --reward_model): train a longer one under another --run_name")
    parser.check([
        (args.init, "--init is required: a ckpt.pt of ours (e.g. the policy's) or hf:DIR"),
        (args.steps >= 1 and args.batch >= 1 and args.eval_batch >= 1,
         "--steps, --batch and --eval_batch must be at least 1"),
        (args.lr > 0 and args.grad_clip >= 0 and args.save_every >= 0,
         "--lr must be > 0, --grad_clip and --save_every >= 0 (0: off)"),
    ])
    parser.check_device(args.device)
    try:
        task = make_task(args, log=lambda line: None)
        if not task.has_corpus:
            raise ValueError("has no worked solutions to make preference pairs from: use a "
                             "generated task with a corpus (addition, countdown)")
    except ValueError as e:
        parser.error(f"--task {args.task}: {e}")
    try:
        tok, config = starting_point(args)
    except ValueError as e:
        parser.error(str(e))
    heldout = preference_pairs(task, task.test_set, random.Random(f"rm-heldout-{args.seed}"),
                               tok.chat)
    # a packed batch is as wide as its longest prompt plus its longest completion (+ <|endoftext|>)
    longest = (max(len(tok.encode(x["prompt"])) for x in heldout)
               + max(len(tok.encode(x[k])) for x in heldout for k in ("chosen", "rejected")) + 1)
    if longest > config["block_size"]:
        parser.error(f"--init {args.init}: a batch of preference pairs needs {longest} tokens, the "
                     f"model's context is {config['block_size']}: use smaller problems")
    return args, task, heldout


class RewardModelRun:
    """One reward-model training run on the run skeleton (runner.run_steps): fresh from --init, or
    from the rm.pt of the run being resumed, with its optimiser state and pair stream. Held-out
    pairwise accuracy is measured before and after; the last step's rm.pt carries the score's
    `center` (PreferenceReward's), and only a finished rm.pt serves as --reward_model."""

    def __init__(self, args, task, heldout, device):
        self.args, self.task, self.heldout, self.device = args, task, heldout, device
        self.dir = os.path.join(args.out_dir, args.run_name)
        self.path = os.path.join(self.dir, "rm.pt")
        trunk, self.tok, ckpt = load_model(self.path if args.resume else args.init, device,
                                           torch.float32, "--init")
        torch.manual_seed(args.seed)
        self.rm = RewardModel(trunk).to(device)
        self.opt = torch.optim.AdamW(self.rm.parameters(), lr=args.lr, betas=(0.9, 0.99),
                                     weight_decay=0.0)
        self.pairs = random.Random(f"rm-{args.seed}")  # the training pairs' stream
        self.tokenizer_dir, self.done = ckpt.get("tokenizer_dir", "tokenizers"), {}
        self.start = 1
        if args.resume:
            self.rm.head.load_state_dict(ckpt["head"])
            self.opt.load_state_dict(ckpt["optim"])
            runner.restore_random(ckpt["random"], {"pairs": self.pairs}, {})
            self.start, self.before = ckpt["step"] + 1, ckpt["heldout_accuracy_before"]
        runner.start_run(self.dir, args, 1, self.start)

    def run(self, stop):
        if self.start == 1:
            self.before, kinds, _ = pairwise_accuracy(self.rm.eval(), self.tok, self.heldout,
                                                      self.device, self.args.eval_batch)
            print(f"held-out pairwise accuracy before: {self.before:.3f} "
                  f"({len(self.heldout)} pairs) | " + kind_line(kinds))
        self.t0 = time.time()
        runner.run_steps(self.start, self.args.steps, self.step, self.save, stop,
                         self.args.save_every, runner.resume_hint(self.args, "-m r1.reward_model"))
        return self.path

    def step(self, i):
        """eq. 5 on a batch of fresh pairs; after the last, the held-out accuracy and the center."""
        args, rm = self.args, self.rm.train()
        problems = self.task.train_problems(self.pairs, args.batch)
        pairs = preference_pairs(self.task, problems, self.pairs, self.tok.chat)
        prompts, scores = [x["prompt"] for x in pairs], {}

        def loss_of(pairs):
            # chosen and rejected in one batch: they share the template, which pack runs once
            r = score(rm, self.tok, prompts + prompts,
                      [x["chosen"] for x in pairs] + [x["rejected"] for x in pairs], self.device)
            scores["chosen"], scores["rejected"] = r.view(2, -1)  # (B,) each
            return bradley_terry_loss(scores["chosen"], scores["rejected"])

        loss, grad_norm, _ = runner.optimizer_step(rm, self.opt, [pairs], loss_of, args.grad_clip)
        rc, rr = scores["chosen"].detach(), scores["rejected"].detach()
        rec = {"step": i, "loss": loss, "accuracy": (rc > rr).float().mean().item(),
               "margin": (rc - rr).mean().item(), "grad_norm": grad_norm,
               "elapsed": time.time() - self.t0}
        runner.append_jsonl(os.path.join(self.dir, "log.jsonl"), rec)
        if i % 25 == 0 or i == args.steps:
            print(f"step {i:4d}/{args.steps} | loss {loss:.4f} | batch acc {rec['accuracy']:.3f} | "
                  f"margin {rec['margin']:6.2f} | {rec['elapsed']:.1f}s")
        if i == args.steps:
            self.finish()

    def finish(self):
        t_train = time.time() - self.t0  # this session's training (a resumed run: since the resume)
        after, kinds, center = pairwise_accuracy(self.rm.eval(), self.tok, self.heldout,
                                                 self.device, self.args.eval_batch)
        print(f"held-out pairwise accuracy after:  {after:.3f} ({len(self.heldout)} pairs) | "
              + kind_line(kinds))
        self.done = {"center": center, "heldout_accuracy": after, "task": self.args.task}
        runner.append_jsonl(os.path.join(self.dir, "log.jsonl"), {
            "step": self.args.steps, "heldout_accuracy_before": self.before,
            "heldout_accuracy": after, **{f"heldout_accuracy_{k}": v for k, v in kinds.items()},
            "center": center, "train_s": t_train})
        print(f"reward model: {self.path} ({t_train:.1f}s of training)")

    def save(self, step):
        """rm.pt: the trunk and the head; mid-run also the optimiser state and the pair stream (what
        a resume needs), finished the score's center instead (what --reward_model needs)."""
        resume = {} if self.done else {
            "optim": self.opt.state_dict(),
            "random": runner.random_state({"pairs": self.pairs}, {})}
        save_checkpoint(self.path, self.rm.trunk, self.tok.name, head=self.rm.head.state_dict(),
                        step=step, args=vars(self.args), heldout_accuracy_before=self.before,
                        tokenizer_dir=self.tokenizer_dir, **resume, **self.done)


def kind_line(kinds):
    return " ".join(f"{k} {v:.2f}" for k, v in kinds.items())


if __name__ == "__main__":
    main()

"""
Supervised fine-tuning on (prompt, completion) pairs. Three of the R1 pipeline's stages are this
one step, on three kinds of data:

    the cold start       the base model on a few thousand readable long chains of thought
                         (R1 stage 1; r1/cold_start.py makes the miniature's)
    rejection-sampling   the base model again, on the reasoning-RL model's correct and readable
    SFT                  outputs (R1 stage 3; r1/reject.py makes them)
    distillation         a smaller model on the teacher's traces: r1/reject.py run on the final
                         model (the paper's distilled Qwen and Llama models)

    loss = - sum_{completion tokens t} log pi(o_t | q, o_<t) / (completion tokens in the batch)

The prompt is context only: its tokens are never predicted (sft_loss's mask), and the completion's
<|endoftext|> is, so the model learns to stop. Data is JSONL, one {"prompt": ..., "completion": ...}
per line; the prompt is used as given (already rendered with the R1-Zero template, as r1/reject.py
and r1/cold_start.py write it), or with --render rendered here. AdamW, linear warmup then cosine
decay; under torchrun the update does not depend on the world size; the run is train.py's
(runner.py: --resume, SIGTERM, ckpt.pt that every CLI takes). Left out: FSDP, packing several
examples into one row. The data, the optimisation and the run in full: docs/r1.md, "Supervised
fine-tuning".

    python -m r1.sft --init out/base/ckpt.pt --data cold_start.jsonl --run_name cold --epochs 2
    python -m r1.sft --init hf:/models/Qwen2.5-0.5B --data traces.jsonl --dtype bf16 --lr 1e-5
    torchrun --standalone --nproc_per_node=2 -m r1.sft --init ... --data ...
"""

import argparse
import json
import os
import time

import torch
import torch.nn as nn

import dist
import grpo_kernels
import runner
from batch import forward_rows, pack
from checkpoint import load_checkpoint, load_model, memory_error, save_checkpoint, starting_point
from evaluation import evaluate, print_eval
from tasks import add_task_args, make_task
from template import CHAT_FLAGS, chat_format, render_prompt

parser = runner.Parser(description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
g = parser.add_argument_group("run")
g.add_argument("--run_name", default=None,
               help="outputs go to <out_dir>/<run_name>/ (default: a timestamp)")
g.add_argument("--out_dir", default="out", help="directory for runs")
g.add_argument("--resume", action="store_true",
               help="continue the run <out_dir>/<run_name> from its ckpt.pt")
g.add_argument("--save_every", type=int, default=0,
               help="write ckpt.pt every this many steps (0: only at the end); "
                    "also on SIGTERM / SIGINT")
g.add_argument("--seed", type=int, default=1337,
               help="seed of the data order (and of the evaluation's sampling)")
g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
               help="cpu or cuda")
g.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
               help="bf16: forward passes under bf16 autocast, fp32 weights and optimiser state")
g.add_argument("--report_to", default="none",
               help="log.jsonl's numbers also to: none, or tensorboard, wandb (comma-separated; "
                    "interop/trackers.py)")
g = parser.add_argument_group("model and data")
g.add_argument("--init", default=None,
               help="(required) the model to fine-tune: a ckpt.pt of ours or hf:DIR (a local "
                    "Hugging Face model directory)")
g.add_argument("--chat", choices=CHAT_FLAGS, default="auto",
               help="prompt format of --render and of the evaluation: auto (the tokenizer's), none "
                    "(the R1-Zero template), chatml, llama3")
g.add_argument("--data", default=None,
               help="(required) JSONL file(s) of (prompt, completion) pairs, comma-separated")
g.add_argument("--completion_field", default="completion",
               help="the field of --data holding the completion (its prompt: --prompt_field)")
g.add_argument("--render", action="store_true",
               help="the prompts of --data are raw questions: render them with the template "
                    "(default: used as given)")
g = parser.add_argument_group("optimisation")
g.add_argument("--epochs", type=int, default=2, help="passes over the data")
g.add_argument("--batch", type=int, default=16,
               help="examples per optimiser step (a last partial batch of an epoch is dropped; at "
                    "most the data's size)")
g.add_argument("--micro_batch", type=int, default=0,
               help="rows per forward/backward, gradients accumulated (0: the whole batch)")
g.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
g.add_argument("--warmup", type=float, default=0.05,
               help="share of the steps of linear warmup, then cosine decay to 10%% of --lr")
g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
g.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0: off)")
# the held-out evaluation at the end: --task and its flags (tasks/; its --prompt_field is also the
# data's)
add_task_args(parser)
g = parser.add_argument_group("evaluation at the end")
g.add_argument("--eval_problems", type=int, default=0,
               help="held-out problems of --task to measure pass@1 on at the end (0: none)")
g.add_argument("--eval_samples", type=int, default=4,
               help="samples per problem; pass@1 is their mean accuracy")
g.add_argument("--eval_temperature", type=float, default=0.6,
               help="evaluation temperature (R1 paper: 0.6)")
g.add_argument("--eval_top_p", type=float, default=0.95, help="evaluation top-p (R1 paper: 0.95)")
g.add_argument("--max_new_tokens", type=int, default=128,
               help="length limit of an evaluation completion")
g.add_argument("--log_samples", type=int, default=4,
               help="evaluation completions written to samples.jsonl")


def main(argv=None):
    args, ids = parse_args(argv)
    grpo_kernels.USE = "cuda"  # the Triton kernels on CUDA, the references elsewhere
    with runner.session(args.device, args.dtype) as (rank, world, device, stop):
        run = SFTRun(args, ids, rank, world, device)
        with run.log:  # the trackers of --report_to close however the run ends
            run_dir = run.run(stop)
    return run_dir


def parse_args(argv=None):
    """Flags, and on --resume the run's own (its args.json) as defaults; then every check that needs
    no training: a bad flag, file or line is one line naming the fix (exit status 2)."""
    args = runner.parse_args(parser, argv)
    world = dist.launched_world()
    parser.check([
        (args.init and args.data,
         "--init (a ckpt.pt or hf:DIR) and --data (JSONL files) are required"),
        (args.epochs >= 1, "--epochs must be at least 1"),
        (args.batch >= 1 and args.micro_batch >= 0,
         "--batch must be at least 1, --micro_batch at least 0"),
        (args.batch % world == 0,
         f"--batch {args.batch} does not split across {world} processes: make it divisible"),
        (args.lr > 0 and 0 <= args.warmup < 1, "--lr must be > 0 and --warmup in [0, 1)"),
        (args.grad_clip >= 0 and args.weight_decay >= 0,
         "--grad_clip and --weight_decay cannot be negative"),
        (args.save_every >= 0, "--save_every cannot be negative (0: only at the end)"),
        (args.eval_problems >= 0 and args.eval_samples >= 1,
         "--eval_problems must be >= 0 and --eval_samples >= 1"),
    ])
    parser.check_device(args.device)
    if error := runner.check_run_dir(args, report_to=args.report_to):
        parser.error(error)
    try:
        tok, config = starting_point(args)
        tok.chat = chat_format(args.chat, tok.chat)
        pairs = read_pairs(args.data.split(","), args.prompt_field, args.completion_field)
        if args.eval_problems:
            task = make_task(args, log=lambda line: None)
            if args.eval_problems > len(task.test_set):
                raise ValueError(f"--eval_problems {args.eval_problems}: --task {args.task} has "
                                 f"{len(task.test_set)} held-out problems")
    except ValueError as e:
        parser.error(str(e))
    if args.render:
        pairs = [(render_prompt(p, tok.chat), c) for p, c in pairs]
    ids = encode(tok, pairs)
    check_data(args, ids, config, world)
    if error := memory_error(args, config, world):
        parser.error(error)
    return args, ids


def check_data(args, ids, config, world):
    """Every example fits the model's context; a batch is at most the data (rejection sampling may
    keep fewer examples than a batch: then one step per epoch, of all of them)."""
    longest = max(range(len(ids)), key=lambda i: len(ids[i][0]) + len(ids[i][1]))
    if (n := len(ids[longest][0]) + len(ids[longest][1])) > config["block_size"]:
        parser.error(f"--data: example {longest + 1} is {n} tokens (prompt + completion + end of "
                     f"text), more than the model's context of {config['block_size']}: shorten or "
                     "drop it")
    if len(ids) < args.batch:
        print(f"note: --batch {args.batch} is more than the {len(ids)} examples: using --batch "
              f"{len(ids) // world * world}")
        args.batch = len(ids) // world * world
        parser.check([(args.batch > 0, f"--data: {len(ids)} examples do not make a batch of one "
                                       f"per process ({world})")])


def read_pairs(paths, prompt_field="prompt", completion_field="completion"):
    """[(prompt, completion)] from JSONL files; ValueError 'file:line: what is wrong' for the
    first bad line."""
    pairs = []
    for path in paths:
        if not os.path.isfile(path):
            raise ValueError(f"--data {path}: no such file")
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{path}:{i}: not a JSON object") from None
                for field in (prompt_field, completion_field):
                    if not isinstance(row, dict) or field not in row:
                        raise ValueError(f"{path}:{i}: missing field '{field}' (--prompt_field / "
                                         "--completion_field name the fields)")
                    if not isinstance(row[field], str) or not row[field]:
                        raise ValueError(f"{path}:{i}: field '{field}' must be a non-empty "
                                         "string")
                pairs.append((row[prompt_field], row[completion_field]))
    if not pairs:
        raise ValueError(f"--data {','.join(paths)}: no examples")
    return pairs


def encode(tok, pairs):
    """Token ids (prompt, completion + <|endoftext|>) of each pair."""
    return [(tok.encode(p), tok.encode(c) + [tok.eot]) for p, c in pairs]


def targets_and_mask(batch):
    """The next-token targets (B, S-1) of every row position, and the mask (B, S-1) of those that
    count: the completion's tokens (its <|endoftext|> included), never the prompt's, never
    padding."""
    targets = batch.rows[:, 1:]
    col = torch.arange(1, batch.rows.size(1), device=batch.rows.device)  # the column of each target
    mask = (col >= batch.R) & batch.valid[:, 1:]
    return targets, mask.float()


def sft_loss(model, batch, targets, mask, normalizer):
    """-sum(mask * log pi(targets)) / normalizer: the hidden state at column t predicts the token at
    t + 1 (the shared prefix is all prompt, so it is context only)."""
    h = forward_rows(model, batch)[:, :-1]  # (B, S-1, d)
    # (B, S-1); no logits held on CUDA
    logp = grpo_kernels.logprobs_from_hidden(h, model.lm_head.weight, targets)
    return -(logp * mask).sum() / normalizer


class Loss(nn.Module):
    """The module DDP wraps (dist.replicate): one forward per backward, the SFT loss of a
    micro-batch."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, targets, mask, normalizer):
        return sft_loss(self.model, batch, targets, mask, normalizer)


class SFTRun:
    """One SFT run on the run skeleton (runner.run_steps): fresh from --init (its weights only, not
    its step or optimiser), or from the checkpoint of the run being resumed."""

    def __init__(self, args, ids, rank, world, device):
        self.args, self.ids, self.rank, self.world, self.device = args, ids, rank, world, device
        self.t_start = time.time()
        self.dir = runner.run_path(args, prefix="sft-")
        if args.resume:
            self.model, self.tok, ckpt = load_checkpoint(os.path.join(self.dir, "ckpt.pt"), device,
                                                         full=True)
        else:  # fp32 master weights whatever --dtype
            self.model, self.tok, ckpt = load_model(args.init, device, torch.float32, "--init")
            # a fresh run: not the init's step or optimiser
            ckpt = {"tokenizer_dir": ckpt.get("tokenizer_dir", "tokenizers")}
        self.tok.chat = chat_format(args.chat, self.tok.chat)
        # where its checkpoint's tokenizer is found
        args.tokenizer_dir = ckpt.get("tokenizer_dir", "tokenizers")
        self.start = ckpt.get("step", 0) + 1
        # log.jsonl and the trackers
        self.log = runner.start_run(self.dir, args, world, self.start, args.report_to)
        self.steps_per_epoch = len(ids) // args.batch
        self.total = args.epochs * self.steps_per_epoch
        dist.print0(f"run: {self.dir} | {len(ids)} examples, {args.epochs} epochs x "
                    f"{self.steps_per_epoch} steps of {args.batch}"
                    + (f" | resuming after step {self.start - 1}" if self.start > 1 else ""))
        self.loss = dist.replicate(Loss(self.model))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                     weight_decay=args.weight_decay)
        if ckpt.get("optim") is not None:
            self.opt.load_state_dict(ckpt["optim"])

    def run(self, stop):
        done = runner.run_steps(self.start, self.total, self.step, self.save, stop,
                                self.args.save_every, runner.resume_hint(self.args, "-m r1.sft"))
        if done and self.args.eval_problems:
            self.evaluate_at_end()
        dist.print0(f"done in {(time.time() - self.t_start) / 60:.1f} min: {self.dir}")
        return self.dir

    def step(self, step):
        """One optimiser step on this rank's block of the step's batch, logged."""
        args = self.args
        epoch, i = divmod(step - 1, self.steps_per_epoch)
        gen = torch.Generator().manual_seed(args.seed + epoch)
        order = torch.randperm(len(self.ids), generator=gen)  # (N,)
        rows = order[i * args.batch:(i + 1) * args.batch].tolist()
        # this rank's block
        rows = rows[self.rank * args.batch // self.world:(self.rank + 1) * args.batch // self.world]
        lr = runner.lr_at(step - 1, self.total, args.lr,
                          warmup=max(1, round(args.warmup * self.total)))
        for group in self.opt.param_groups:
            group["lr"] = lr
        t0 = time.time()
        loss, grad_norm, tokens = self.update([self.ids[r] for r in rows])
        rec = {"step": step, "epoch": epoch + (i + 1) / self.steps_per_epoch, "loss": loss,
               "grad_norm": grad_norm, "lr": lr, "tokens": tokens, "step_s": time.time() - t0,
               "elapsed": time.time() - self.t_start}
        self.log.write(rec)  # on rank 0
        if step % 10 == 0 or step == self.total or step == self.start:
            dist.print0(f"step {step:4d}/{self.total} | epoch {rec['epoch']:.2f} | "
                        f"loss {loss:.4f} | lr {lr:.2e} | grad norm {grad_norm:.2f} | "
                        f"{rec['elapsed']:.0f}s")

    def update(self, examples):
        """One optimiser step on this rank's examples -> (global mean loss per completion token,
        gradient norm, completion tokens of the whole batch)."""
        self.model.train()
        micro = self.args.micro_batch or len(examples)
        # the divisor: the whole batch, every rank
        tokens = dist.all_sum(float(sum(len(c) for _, c in examples)))

        def loss_of(chunk):
            batch = pack([p for p, _ in chunk], [c for _, c in chunk], self.tok.pad, self.device)
            targets, mask = targets_and_mask(batch)
            return self.loss(batch, targets, mask, tokens)

        parts = [examples[k:k + micro] for k in range(0, len(examples), micro)]
        loss, grad_norm, _ = runner.optimizer_step(self.loss, self.opt, parts, loss_of,
                                                   self.args.grad_clip)
        return loss, grad_norm, int(tokens)

    def save(self, step):
        if dist.rank() == 0:
            save_checkpoint(os.path.join(self.dir, "ckpt.pt"), self.model, self.tok.name,
                            optim=self.opt.state_dict(), step=step, args=vars(self.args),
                            tokenizer_dir=self.args.tokenizer_dir)

    def evaluate_at_end(self):
        """Held-out pass@1 of --task (evaluation.py), appended to log.jsonl as train.py's
        evaluations are."""
        # the last step trained
        task, step = make_task(self.args, log=dist.print0), max(self.total, self.start - 1)
        m, samples = evaluate(self.model, self.tok, task, self.args, step)
        print_eval(step, m, self.args)
        # at the last step trained: the trackers add it to that step's numbers
        self.log.write({"step": step, **m})
        if dist.rank() == 0:
            for s in samples:
                runner.append_jsonl(os.path.join(self.dir, "samples.jsonl"), s)


if __name__ == "__main__":
    main()

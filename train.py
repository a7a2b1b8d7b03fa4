"""
DeepSeek-R1-Zero in miniature: train a tiny base model on a task corpus, then run GRPO on it.

    python train.py                       # the default toy run: a few minutes on a laptop CPU

Stage 1 (base): a small transformer learns the corpus of tasks.py by next-token prediction: first
textbook worked sums (the skill), then templated problems that, asked plainly, are answered mostly
by short guesses and sometimes by worked sums. The base model is cached under out/cache/, keyed by
every flag it depends on, so a second run reuses it.
Stage 2 (rl): GRPO (grpo.py, eq. 1-3) with the rule-based rewards of rewards.py (eq. 4): for
each of --questions questions, --group_size completions are sampled; rewards become
group-normalised advantages; one clipped policy-gradient update per rollout, with a k3 KL penalty
to the frozen base model when --beta > 0. Held-out accuracy (pass@1 averaged over
--eval_samples samples at temperature 0.6, top-p 0.95, as in the R1 paper) is measured before
RL and every --eval_every steps.

Everything goes to out/<run>/: log.jsonl (every metric, every step), samples.jsonl (completions
at each evaluation), ckpt.pt, curves.png (python plot.py out/<run>). Simplified for now: one
update per rollout (so pi_theta_old = pi_theta, ratio 1 at the update), a single process, the
plain PyTorch log-prob path.
"""

import argparse
import copy
import hashlib
import json
import math
import os
import random
import time

import torch

# -----------------------------------------------------------------------------
# flags
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# run
parser.add_argument("--run", default=None, help="run name; outputs go to <out_dir>/<run>/ (default: a timestamp)")
parser.add_argument("--out_dir", default="out", help="directory for runs and the base-model cache")
parser.add_argument("--seed", type=int, default=1337, help="seed for the task, the model and the sampling")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
# task
parser.add_argument("--min_digits", type=int, default=1, help="fewest digits of an operand")
parser.add_argument("--max_digits", type=int, default=3, help="most digits of an operand")
parser.add_argument("--n_test", type=int, default=200, help="held-out problems, never trained on")
# tokenizer and model
parser.add_argument("--tokenizer", default="byte", help="byte, or a tiktoken encoding: gpt2, cl100k_base, o200k_base")
parser.add_argument("--tokenizer_dir", default="tokenizers", help="where named encodings' <name>.tiktoken files are")
parser.add_argument("--model", default="tiny", help="model preset: tiny, gpt2-small, qwen2.5-0.5b, qwen2.5-1.5b")
# stage 1: base model
parser.add_argument("--base_steps", type=int, default=500, help="pretraining steps on the task corpus")
parser.add_argument("--base_batch", type=int, default=48, help="documents per pretraining step")
parser.add_argument("--template_frac", type=float, default=0.5, help="share of the base steps (the last ones) where half the documents are templated; the rest are textbook ones")
parser.add_argument("--base_lr", type=float, default=3e-3, help="peak learning rate of pretraining")
parser.add_argument("--no_cache", action="store_true", help="retrain the base model even if it is cached")
# stage 2: GRPO
parser.add_argument("--rl_steps", type=int, default=60, help="GRPO steps")
parser.add_argument("--questions", type=int, default=16, help="questions per step (paper: 32)")
parser.add_argument("--group_size", type=int, default=8, help="G, outputs sampled per question (paper: 16)")
parser.add_argument("--lr", type=float, default=5e-4, help="learning rate of RL (paper: 3e-6, for a 671B model)")
parser.add_argument("--beta", type=float, default=0.01, help="KL coefficient; 0 runs no reference model (paper: 0.001)")
parser.add_argument("--clip_eps", type=float, default=0.2, help="clip ratio epsilon of eq. 1")
parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of rollouts (paper: 1.0)")
parser.add_argument("--max_new_tokens", type=int, default=160, help="length limit of a completion")
parser.add_argument("--grad_clip", type=float, default=1.0, help="max gradient norm (0: off)")
# evaluation and logging
parser.add_argument("--eval_every", type=int, default=20, help="evaluate on held-out problems every this many steps")
parser.add_argument("--eval_problems", type=int, default=100, help="held-out problems per evaluation")
parser.add_argument("--eval_samples", type=int, default=4, help="samples per problem; pass@1 is their mean accuracy")
parser.add_argument("--eval_temperature", type=float, default=0.6, help="evaluation temperature (R1 paper: 0.6)")
parser.add_argument("--eval_top_p", type=float, default=0.95, help="evaluation top-p (R1 paper: 0.95)")
parser.add_argument("--log_samples", type=int, default=4, help="completions written to samples.jsonl per evaluation")
parser.add_argument("--no_plot", action="store_true", help="do not draw curves.png at the end")
# -----------------------------------------------------------------------------

from grpo import group_advantages, grpo_loss  # noqa: E402  (flags first, as the reader sees them)
from model import load_checkpoint, make_model, save_checkpoint  # noqa: E402
from rewards import accuracy_reward, format_reward  # noqa: E402
from sample import completion_logprobs, forward_rows, generate, pack  # noqa: E402
from tasks import AdditionTask, render_prompt  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402

REWARDS = {"accuracy": accuracy_reward, "format": format_reward}  # eq. 4: equal weights


def validate(args):
    checks = [
        (args.group_size >= 2, "--group_size must be at least 2: advantages are relative to the group"),
        (args.questions >= 1, "--questions must be at least 1"),
        (min(args.rl_steps, args.base_steps) >= 0, "--rl_steps and --base_steps cannot be negative"),
        (args.base_batch >= 2, "--base_batch must be at least 2"),
        (0 <= args.template_frac <= 1, "--template_frac must be between 0 and 1"),
        (args.max_new_tokens >= 1, "--max_new_tokens must be at least 1"),
        (args.temperature > 0, "--temperature must be > 0: the policy's log-probs are taken at this temperature"),
        (args.eval_every >= 1 and args.eval_samples >= 1, "--eval_every and --eval_samples must be at least 1"),
        (1 <= args.eval_problems <= args.n_test, "--eval_problems must be between 1 and --n_test"),
        (args.device == "cpu" or torch.cuda.is_available(), f"--device {args.device} is not available here: use --device cpu"),
    ]
    for ok, msg in checks:
        if not ok:
            parser.error(msg)


def atomic_write(path, text):
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)


def append_jsonl(path, record):
    # one write of one whole line: an interrupted run keeps every earlier line intact
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def lr_at(step, total, peak, warmup):
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# -----------------------------------------------------------------------------
# stage 1: the base model

def lm_loss(model, tok, packs, device):
    """Next-token loss, averaged over tokens, on documents in several packs; in each pack, every
    token after the pack's shared prefix counts (for templated documents the prefix is the
    template: the same in every document, and run once per batch)."""
    total, count = 0.0, 0
    for docs in packs:
        batch = pack([tok.encode(p) for p, _ in docs], [tok.encode(c) + [tok.eot] for _, c in docs], tok.pad, device)
        logits = model.lm_head(forward_rows(model, batch)[:, :-1])  # (B, S-1, V)
        targets, keep = batch.rows[:, 1:], batch.valid[:, 1:] & batch.valid[:, :-1]
        total = total + torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
        count += int(keep.sum())
    return total / count


def base_model(args, tok, task, device):
    keys = ["seed", "min_digits", "max_digits", "n_test", "tokenizer", "model", "base_steps", "base_batch", "base_lr",
            "template_frac"]
    key = hashlib.sha1(json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(args.out_dir, "cache", f"base-{key}.pt")
    if os.path.isfile(path) and not args.no_cache:
        print(f"base model: reusing {path}")
        return load_checkpoint(path, device)[0]
    torch.manual_seed(args.seed)
    model = make_model(args.model, tok.vocab_size).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"base model: {n_params / 1e6:.2f}M parameters, {args.base_steps} steps x {args.base_batch} documents")
    opt = torch.optim.AdamW(model.parameters(), lr=args.base_lr, betas=(0.9, 0.95), weight_decay=0.1)
    # a curriculum: the skill first, on short textbook documents; then the template as well, with
    # half of each step's documents from the templated corpus (a pack of their own: they share it)
    n_template, half = round(args.template_frac * args.base_steps), args.base_batch // 2
    textbook = iter(task.textbook(args.base_steps * args.base_batch, seed=args.seed))
    corpus = iter(task.corpus(n_template * half, seed=args.seed))
    take = lambda it, k: [next(it) for _ in range(k)]
    t0 = time.time()
    for step in range(args.base_steps):
        if step < args.base_steps - n_template:
            packs = [take(textbook, args.base_batch)]
        else:
            packs = [take(textbook, args.base_batch - half), take(corpus, half)]
        loss = lm_loss(model, tok, [p for p in packs if p], device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.base_steps, args.base_lr, warmup=max(1, args.base_steps // 20))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == args.base_steps - 1:
            print(f"base {step:4d}/{args.base_steps} | loss {loss.item():.3f} | {time.time() - t0:5.1f}s")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_checkpoint(path, model, args.tokenizer, tokenizer_dir=args.tokenizer_dir)
    return model.eval()


# -----------------------------------------------------------------------------
# rollouts, rewards, evaluation

def rollout(model, tok, problems, G, args, generator, temperature, top_p=1.0):
    """Sample G completions per problem and score them. Rows i*G..i*G+G-1 answer problems[i]."""
    prompts = [render_prompt(p["prompt"]) for p in problems]
    out = generate(model, [tok.encode(p) for p in prompts], G, args.max_new_tokens, [tok.eot, tok.end_answer],
                   tok.pad, temperature=temperature, top_p=top_p, generator=generator)
    texts = [tok.decode([t for t in ids if t != tok.eot]) for ids in out.batch.completions.tolist()]
    prompts = [p for p in prompts for _ in range(G)]
    fields = {k: [p[k] for p in problems for _ in range(G)] for k in problems[0]}
    scores = {name: torch.tensor(fn(prompts, texts, **fields)) for name, fn in REWARDS.items()}
    return out, texts, scores


@torch.no_grad()
def evaluate(model, tok, task, args, step, run_dir):
    """pass@1 on held-out problems, averaged over eval_samples samples each."""
    model.eval()
    problems = task.test_set[:args.eval_problems]
    gen = torch.Generator(args.device).manual_seed(args.seed + 1)  # the same draws at every evaluation
    acc, fmt, lengths, samples = [], [], [], []
    for i in range(0, len(problems), 25):
        chunk = problems[i:i + 25]
        out, texts, scores = rollout(model, tok, chunk, args.eval_samples, args, gen, args.eval_temperature, args.eval_top_p)
        acc.append(scores["accuracy"]), fmt.append(scores["format"]), lengths.append(out.batch.completion_mask.sum(1))
        if i == 0:
            samples = [{"step": step, "prompt": p["prompt"], "answer": p["answer"], "completion": texts[j * args.eval_samples],
                        "accuracy": scores["accuracy"][j * args.eval_samples].item()} for j, p in enumerate(chunk[:args.log_samples])]
    for s in samples:
        append_jsonl(os.path.join(run_dir, "samples.jsonl"), s)
    return {"eval_accuracy": torch.cat(acc).mean().item(), "eval_format": torch.cat(fmt).mean().item(),
            "eval_length": torch.cat(lengths).mean().item()}


def print_eval(step, m, args):
    print(f"eval step {step:3d} | held-out pass@1 {m['eval_accuracy']:.3f} (k={args.eval_samples}, "
          f"T={args.eval_temperature}, top-p={args.eval_top_p}) | format {m['eval_format']:.3f} | length {m['eval_length']:.1f}")


# -----------------------------------------------------------------------------
# stage 2: GRPO

def main(argv=None):
    args = parser.parse_args(argv)
    validate(args)
    torch.set_flush_denormal(True)  # tiny gradients become denormal floats, which make CPU matmuls ~20x slower
    device = args.device
    run = args.run or time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(args.out_dir, run)
    if os.path.exists(os.path.join(run_dir, "log.jsonl")):
        parser.error(f"{run_dir} already holds a run: pick another --run")
    os.makedirs(run_dir, exist_ok=True)
    atomic_write(os.path.join(run_dir, "args.json"), json.dumps(vars(args), indent=2))
    print(f"run: {run_dir}")

    tok = get_tokenizer(args.tokenizer, args.tokenizer_dir)
    task = AdditionTask(args.min_digits, args.max_digits, args.n_test, seed=args.seed)
    t_start = time.time()
    model = base_model(args, tok, task, device)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if args.beta > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    log_path = os.path.join(run_dir, "log.jsonl")

    m = evaluate(model, tok, task, args, 0, run_dir)
    print_eval(0, m, args)
    append_jsonl(log_path, {"step": 0, "elapsed": time.time() - t_start, **m})

    rng = random.Random(f"rl-{args.seed}")
    gen = torch.Generator(device).manual_seed(args.seed)
    t_rl = time.time()
    for step in range(1, args.rl_steps + 1):
        # rollout: G outputs per question from the current (= old) policy
        t0 = time.time()
        model.eval()
        problems = task.train_problems(rng, args.questions)
        out, texts, scores = rollout(model, tok, problems, args.group_size, args, gen, args.temperature)
        rewards = sum(scores.values())                        # eq. 4
        advantages = group_advantages(rewards, args.group_size).to(device)  # eq. 3
        batch, mask = out.batch, out.batch.completion_mask
        t_rollout = time.time() - t0

        # update: one clipped policy-gradient step on the whole rollout
        t0 = time.time()
        model.train()
        logp = completion_logprobs(model, batch, args.temperature)
        old_logp = logp.detach()  # one update per rollout: pi_theta_old is pi_theta here
        with torch.no_grad():
            ref_logp = completion_logprobs(ref, batch, args.temperature) if ref is not None else None
        loss, lm = grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps=args.clip_eps, beta=args.beta)
        if not torch.isfinite(loss):
            raise RuntimeError(f"step {step}: non-finite loss {loss.item()}; lower --lr")
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        t_train = time.time() - t0

        # log
        lengths = mask.sum(1)
        groups = rewards.view(-1, args.group_size)
        elapsed, per_step = time.time() - t_start, (time.time() - t_rl) / step
        rec = {
            "step": step, "reward": rewards.mean().item(), "reward_std": rewards.std().item(),
            **{f"reward_{k}": v.mean().item() for k, v in scores.items()},
            "accuracy": scores["accuracy"].mean().item(), "format": scores["format"].mean().item(),
            "length": lengths.mean().item(), "length_min": lengths.min().item(), "length_max": lengths.max().item(),
            "truncated": out.truncated.float().mean().item(),
            "zero_var_groups": (groups.std(1) == 0).float().mean().item(),
            "reflection": sum("wait" in t.lower() for t in texts) / len(texts),
            "loss": loss.item(), "grad_norm": grad_norm.item(), **{k: v.item() for k, v in lm.items()},
            "sampler_logp_diff": ((logp.detach() - out.sampler_logp).abs() * mask).sum().item() / mask.sum().item(),
            "tokens_per_s": lengths.sum().item() / (t_rollout + t_train),
            "rollout_s": t_rollout, "train_s": t_train, "elapsed": elapsed,
        }
        if step % args.eval_every == 0 or step == args.rl_steps:
            rec.update(evaluate(model, tok, task, args, step, run_dir))
        append_jsonl(log_path, rec)
        left = per_step * (args.rl_steps - step)
        print(f"step {step:3d}/{args.rl_steps} | reward {rec['reward']:.3f} | acc {rec['accuracy']:.3f} | "
              f"format {rec['format']:.3f} | len {rec['length']:5.1f} | kl {rec['kl']:.4f} | clip {rec['clip_frac']:.3f} | "
              f"{rec['tokens_per_s']:5.0f} tok/s | rollout {t_rollout:.1f}s train {t_train:.1f}s | "
              f"{elapsed / 60:.1f} min, ~{left / 60:.1f} min left")
        if rec["truncated"] > 0.5:
            print(f"  warning: {rec['truncated']:.0%} of completions hit --max_new_tokens={args.max_new_tokens} (no reward signal)")
        if "eval_accuracy" in rec:
            print_eval(step, rec, args)
            save_checkpoint(os.path.join(run_dir, "ckpt.pt"), model, args.tokenizer, tokenizer_dir=args.tokenizer_dir,
                            step=step, args=vars(args))

    if args.rl_steps == 0:
        save_checkpoint(os.path.join(run_dir, "ckpt.pt"), model, args.tokenizer, tokenizer_dir=args.tokenizer_dir, step=0)
    if not args.no_plot:
        from plot import plot_run
        print(f"curves: {plot_run(run_dir)}")
    print(f"done in {(time.time() - t_start) / 60:.1f} min: {run_dir}")
    return run_dir


if __name__ == "__main__":
    main()

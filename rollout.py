"""
Rollouts: G completions sampled from the policy for each question, scored by reward functions.
Evaluation is a rollout on held-out questions, measured as in the R1 paper: pass@1 averaged over
k samples per question at temperature 0.6, top-p 0.95, with those settings printed beside it.

    python rollout.py --ckpt out/default/ckpt.pt      # held-out pass@1 of a checkpoint

Under torchrun each rank evaluates an equal block of the held-out questions and the results are
gathered (dist.py); with FSDP every decode step is a collective, so all ranks decode until every
rank is done.
"""

import argparse
import math

import torch

import dist
from rewards import accuracy_reward, format_reward
from sample import generate
from tasks import render_prompt

# measured on every rollout and evaluation whatever --rewards trains on
METRICS = [("accuracy", accuracy_reward), ("format", format_reward)]


def rollout(model, tok, problems, G, args, generator, temperature, top_p=1.0, reward_fns=(), all_done=None):
    """Sample G completions per problem and score them with reward_fns and METRICS: name -> (B,)
    tensor, NaN where a function declined to score. Rows i*G..i*G+G-1 answer problems[i]."""
    prompts = [render_prompt(p["prompt"]) for p in problems]
    out = generate(model, [tok.encode(p) for p in prompts], G, args.max_new_tokens, [tok.eot, tok.end_answer],
                   tok.pad, temperature=temperature, top_p=top_p, generator=generator, all_done=all_done)
    texts = [tok.decode([t for t in ids if t != tok.eot]) for ids in out.batch.completions.tolist()]
    prompts = [p for p in prompts for _ in range(G)]
    fields = {k: [p[k] for p in problems for _ in range(G)] for k in problems[0]}
    scores = {}
    for name, fn in [(n, f) for n, f, _ in reward_fns] + METRICS:
        if name not in scores:
            r = list(fn(prompts, texts, **fields))
            if len(r) != len(texts):
                raise ValueError(f"reward {name} returned {len(r)} values for {len(texts)} completions")
            scores[name] = torch.tensor([math.nan if x is None else float(x) for x in r])
    return out, texts, scores


@torch.no_grad()
def evaluate(model, tok, task, args, step, all_done=None):
    """pass@1 on the first --eval_problems held-out problems, averaged over --eval_samples samples
    each -> (metrics, the first --log_samples completions of rank 0's block, for samples.jsonl)."""
    model.eval()
    k = args.eval_problems // dist.world()
    problems = task.test_set[dist.rank() * k:(dist.rank() + 1) * k]
    gen = torch.Generator(model.lm_head.weight.device).manual_seed(args.seed + 1 + dist.rank())  # the same draws every time
    acc, fmt, lengths, samples = [], [], [], []
    for i in range(0, len(problems), 25):
        chunk = problems[i:i + 25]
        out, texts, scores = rollout(model, tok, chunk, args.eval_samples, args, gen, args.eval_temperature, args.eval_top_p,
                                     all_done=all_done)
        acc.append(scores["accuracy"]), fmt.append(scores["format"]), lengths.append(out.batch.completion_mask.sum(1).cpu())
        if i == 0:
            samples = [{"step": step, "prompt": p["prompt"], "answer": p["answer"], "completion": texts[j * args.eval_samples],
                        "accuracy": scores["accuracy"][j * args.eval_samples].item()} for j, p in enumerate(chunk[:args.log_samples])]
    gathered = [dist.gather_rows(torch.cat(x)) for x in (acc, fmt, lengths)]
    return {f"eval_{name}": x.mean().item() for name, x in zip(("accuracy", "format", "length"), gathered)}, samples


def print_eval(step, m, args):
    dist.print0(f"eval step {step:3d} | held-out pass@1 {m['eval_accuracy']:.3f} (k={args.eval_samples}, "
                f"T={args.eval_temperature}, top-p={args.eval_top_p}) | format {m['eval_format']:.3f} | length {m['eval_length']:.1f}")


def main():
    parser = argparse.ArgumentParser(description="Held-out pass@1 of a checkpoint written by train.py.")
    parser.add_argument("--ckpt", required=True, help="e.g. out/default/ckpt.pt; its task flags pick the held-out set")
    parser.add_argument("--eval_problems", type=int, default=100, help="held-out problems")
    parser.add_argument("--eval_samples", type=int, default=4, help="samples per problem; pass@1 is their mean accuracy")
    parser.add_argument("--eval_temperature", type=float, default=0.6, help="sampling temperature (R1 paper: 0.6)")
    parser.add_argument("--eval_top_p", type=float, default=0.95, help="top-p (R1 paper: 0.95)")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="length limit of a completion")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    args = parser.parse_args()

    from model import load_checkpoint
    from tasks import AdditionTask
    model, tok = load_checkpoint(args.ckpt, args.device)
    ckpt = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    run = ckpt.get("args") or {}  # the flags of the run that wrote it
    task = AdditionTask(run.get("min_digits", 2), run.get("max_digits", 2), run.get("n_test", 200), seed=run.get("seed", 1337))
    if not 1 <= args.eval_problems <= len(task.test_set):
        parser.error(f"--eval_problems must be between 1 and {len(task.test_set)}")
    args.seed, args.log_samples = run.get("seed", 1337), 0
    print_eval(ckpt.get("step", 0), evaluate(model, tok, task, args, step=ckpt.get("step", 0))[0], args)


if __name__ == "__main__":
    main()

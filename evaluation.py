"""
Evaluation, as the R1 paper measures: k samples per held-out question at temperature 0.6, top-p
0.95 (the settings are printed beside the numbers), reported as

    pass@1   the mean correctness over the k samples, averaged over questions (R1's protocol)
    pass@k   the chance that at least one of k samples is correct, by the unbiased estimator of
             Chen et al. 2021 (Codex, eq. 1) from n >= k samples: 1 - C(n-c, k) / C(n, k)
    cons@k   the majority vote: correct when the most frequent final answer among the k samples
             is (answers the task calls the same, e.g. "0.5" and "1/2", vote together)

per `subject` and `level` as well when the problems have them (MATH), with the share of outputs
that are formatted, whose thought is in one language (eq. 7), that reflect (reflection.py), and
their mean length. "Correct" is the task's own check (tasks/: math accuracy, or countdown's).
train.py's periodic evaluation, r1/sft.py's at the end and r1/pipeline.py's table are `evaluate`.

    python evaluation.py --ckpt out/default/ckpt.pt        # the task of the run that wrote it
    python evaluation.py --ckpt CKPT --eval_samples 16 --json           # JSON only, for scripts
    python evaluation.py --ckpt CKPT --json eval.json --log_samples 5   # to a file, with samples
    python evaluation.py --ckpt CKPT --task gsm8k --test_file gsm8k_test.jsonl
    python evaluation.py --ckpt hf:/models/my-policy --engine vllm      # sampled by vLLM

Under torchrun each rank evaluates an equal block of the held-out questions and the results are
gathered (dist.py); with FSDP every decode step is a collective, so all ranks decode until every
rank is done. Left out: greedy pass@1 (R1 samples), and benchmarks scored by a model judge.
"""

import argparse
import json
import math
import sys
from dataclasses import asdict

import torch

import dist
from engines import tools
from checkpoint import load_for_cli
from reflection import reflects
from rewards import extract_answer, language_reward
from rollout import rollouts
from runner import Parser, atomic_write
from tasks import add_task_args, make_task
from template import CHAT_FLAGS
from engines.vllm_engine import add_engine_args, engine_checks, engine_error, make_engine


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. 2021's unbiased pass@k from n samples of which c are correct, as a product
    (the binomials themselves overflow a float for large n)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_correct(texts, correct, same) -> float:
    """cons@k of one question: cluster the final answers (same(a, b): one vote), and score the
    largest cluster's first answer; ties go to the cluster seen first; no answer never votes."""
    clusters = []  # [answer, its first index, count]
    for i, t in enumerate(texts):
        a = extract_answer(t)
        if a is None or not a.strip():
            continue
        for c in clusters:
            if same(a, c[0]):
                c[2] += 1
                break
        else:
            clusters.append([a, i, 1])
    if not clusters:
        return 0.0
    best = max(clusters, key=lambda c: c[2])  # max keeps the first of equals
    return float(correct[best[1]] == 1)


@torch.no_grad()
def evaluate(model, tok, task, args, step, all_done=None, engine=None):
    """Held-out pass@1 (over --eval_samples samples), pass@k and cons@k (k = --eval_samples) on the
    first --eval_problems held-out problems, with per-subject / per-level tables when the problems
    have those fields -> (metrics, the first --log_samples completions of rank 0's block). engine:
    a vllm_engine.VLLMEngine holding model's weights, or None (sample.generate)."""
    model.eval()
    n, k = args.eval_samples, args.eval_problems // dist.world()
    problems = task.test_set[dist.rank() * k:(dist.rank() + 1) * k]
    # the same draws every time
    gen = torch.Generator(model.lm_head.weight.device).manual_seed(args.seed + 1 + dist.rank())
    acc, fmt, lang, lengths, cons, refl, logged, sampled = [], [], [], [], [], [], [], []
    for i, (chunk, ro) in enumerate(rollouts(
            model, tok, problems, n, args, gen, args.eval_temperature, args.eval_top_p,
            reward_fns=[("language", language_reward, 1.0)], all_done=all_done,
            correct=task.correct, engine=engine)):
        texts, scores = ro.texts, ro.scores
        acc.append(scores["accuracy"]), fmt.append(scores["format"])
        lang.append(scores["language"])
        lengths.append(ro.samples.batch.completion_mask.sum(1).cpu())
        sampled.append(ro.samples)
        refl.append(torch.tensor([float(reflects(t)) for t in texts]))
        right = scores["accuracy"].view(len(chunk), n)  # (problems, samples)
        cons.append(torch.tensor([majority_correct(texts[j * n:(j + 1) * n], right[j].tolist(),
                                                   lambda a, b, p=p: task.same(a, b, p))
                                  for j, p in enumerate(chunk)]))
        if i == 0:
            logged = [{"step": step, "prompt": p["prompt"], "answer": p.get("answer"),
                        "completion": texts[j * n], "accuracy": scores["accuracy"][j * n].item(),
                        "reflects": reflects(texts[j * n])}
                       for j, p in enumerate(chunk[:args.log_samples])]
    acc, fmt, lang, lengths, cons, refl = (dist.gather_rows(torch.cat(x))
                                           for x in (acc, fmt, lang, lengths, cons, refl))
    per_problem = acc.view(-1, n)  # (problems, samples), every rank's block in rank order
    passk = [pass_at_k(n, int((row == 1).sum()), n) for row in per_problem]
    m = {"eval_accuracy": acc.mean().item(), "eval_format": fmt.mean().item(),
         "eval_language": lang.mean().item(), "eval_length": lengths.mean().item(),
         f"eval_pass@{n}": sum(passk) / len(passk), f"eval_cons@{n}": cons.mean().item(),
         "eval_reflection": refl.mean().item(), **tools.metrics(sampled, acc, prefix="eval_")}
    evaluated = task.test_set[:len(passk)]
    for field in ("subject", "level"):  # MATH's tables: pass@1 and count per value
        if any(field in p for p in evaluated):
            table = {}
            for p, row in zip(evaluated, per_problem):
                t = table.setdefault(str(p.get(field)), [0.0, 0])
                t[0], t[1] = t[0] + row.mean().item(), t[1] + 1
            m[f"eval_by_{field}"] = {v: {"pass@1": s / c, "problems": c}
                                     for v, (s, c) in sorted(table.items())}
    return m, logged


def print_eval(step, m, args):
    n = args.eval_samples
    dist.print0(f"eval step {step:3d} | held-out pass@1 {m['eval_accuracy']:.3f} "
                f"(k={n}, T={args.eval_temperature}, top-p={args.eval_top_p}) | "
                f"pass@{n} {m[f'eval_pass@{n}']:.3f} | cons@{n} {m[f'eval_cons@{n}']:.3f} | "
                f"format {m['eval_format']:.3f} | length {m['eval_length']:.1f} | "
                f"reflection {m['eval_reflection']:.2f}"
                f"{tools.describe(m, 'eval_')}")
    for field in ("subject", "level"):
        for value, row in m.get(f"eval_by_{field}", {}).items():
            dist.print0(f"    {field} {value:<28} pass@1 {row['pass@1']:.3f}  "
                        f"({row['problems']} problems)")


parser = Parser(description="Held-out pass@1, pass@k and cons@k of a checkpoint.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--ckpt", required=True,
                    help="out/<run>/ckpt.pt (its task flags are the defaults of the task group), "
                         "or hf:DIR, a local Hugging Face model directory, or gguf:FILE, a "
                         "llama.cpp file")
g = parser.add_argument_group("evaluation")
g.add_argument("--eval_problems", type=int, default=100,
               help="the first this many held-out problems (0 or more than there are: all)")
g.add_argument("--eval_samples", type=int, default=4,
               help="k, samples per problem: pass@1 is their mean accuracy")
g.add_argument("--eval_temperature", type=float, default=0.6,
               help="sampling temperature (R1 paper: 0.6)")
g.add_argument("--eval_top_p", type=float, default=0.95, help="top-p (R1 paper: 0.95)")
g.add_argument("--max_new_tokens", type=int, default=128, help="length limit of a completion")
g.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's)")
g.add_argument("--chat", choices=CHAT_FLAGS, default=None,
               help="prompt format (default: the run's --chat; auto: the tokenizer's chat format, "
                    "none: the R1-Zero template)")
g.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
               help="the metrics and settings as one JSON object, printed and nothing else, or "
                    "written to FILE")
g.add_argument("--log_samples", type=int, default=0,
               help="with --json: also the first completion of each of the first this many "
                    "problems (at most one batch of them)")
g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
               help="cpu or cuda")
add_engine_args(parser)
# the run's values are the defaults
TASK_FLAGS = add_task_args(parser) + tools.add_tool_args(parser)


def main(argv=None):
    args, model, tok, task, step = parse_args(argv)
    try:
        m, samples = evaluate(model, tok, task, args, step=step,
                              engine=make_engine(args, model, tok, args.device, args.seed))
    except ValueError as e:  # a prompt plus --max_new_tokens longer than the model's context
        parser.error(f"--max_new_tokens {args.max_new_tokens}: {e}")
    settings = {"ckpt": args.ckpt, "step": step, "task": args.task, "problems": args.eval_problems,
                "k": args.eval_samples, "temperature": args.eval_temperature,
                "top_p": args.eval_top_p, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    if args.json:
        out = json.dumps({"settings": settings,
                          **{key.removeprefix("eval_"): v for key, v in m.items()},
                          **({"samples": samples} if args.log_samples else {})})
        if args.json == "-":
            print(out)
        elif dist.rank() == 0:
            atomic_write(args.json, out)
    else:
        print(f"{args.task}, {args.eval_problems} held-out problems")
        print_eval(step, m, args)


def parse_args(argv=None):
    """The flags over the task flags of the run that wrote the checkpoint (flags given here win),
    then the checks -> (args, model, tokenizer, task, the checkpoint's step)."""
    a = parser.parse_known_args(argv)[0]  # this CLI's own flags are checked before the model loads
    parser.check([(a.eval_problems >= 0, "--eval_problems must be at least 0 (0: all)"),
                  (a.eval_samples >= 1, "--eval_samples must be at least 1"),
                  (a.max_new_tokens >= 1, "--max_new_tokens must be at least 1"),
                  (a.eval_temperature >= 0, "--eval_temperature must be >= 0 (0: greedy)"),
                  (0 < a.eval_top_p <= 1, "--eval_top_p must be in (0, 1] (1: off)"),
                  *engine_checks(a, a.device),
                  (a.log_samples >= 0, "--log_samples must be at least 0"),
                  (not a.log_samples or a.json, "--log_samples needs --json")])
    args, model, tok, ckpt = load_for_cli(parser, argv, TASK_FLAGS)
    if error := engine_error(args, asdict(model.config), args.device):
        parser.error(error)
    step = ckpt.get("step", 0)
    if args.seed is None:
        args.seed = (ckpt.get("args") or {}).get("seed", 1337)
    try:
        task = make_task(args, log=lambda s: print(s, file=sys.stderr))
    except ValueError as e:
        parser.error(str(e))
    if error := tools.check(args, task):
        parser.error(error)
    # printed with the results
    args.eval_problems = min(args.eval_problems or len(task.test_set), len(task.test_set))
    return args, model, tok, task, step


if __name__ == "__main__":
    main()

"""
Rejection sampling (R1 paper, stage 3): from a checkpoint, sample k outputs for each of --questions
training questions and keep those that are correct AND readable, at most --keep_per_question per
question, as SFT data (r1/sft.py's JSONL: the rendered prompt, the completion, the reference
answer). The paper used it on the reasoning-RL checkpoint to build ~600k reasoning samples,
filtering out "chain-of-thought with mixed languages, long paragraphs, and code blocks"; here the
filters, in the order they are applied and reported, are

    correct     the task's own check (tasks/: accuracy, or countdown's) is 1
    format      format_reward is 1: one <think> ... </think> then one <answer> ... </answer>
    language    language consistency (rewards.language_reward, eq. 7) of the thought
                >= --min_language
    repeats     no repeated block: no sentence (split at . ! ? and line ends) of the thought occurs
                twice, and no run of --repeat_words or more words is immediately followed by itself
    length      --min_tokens <= completion tokens <= --max_tokens, and not cut off at
                --max_new_tokens

Each filter's own pass rate and the cumulative one are printed. Simplified: the paper also used
DeepSeek-V3 as a judge for answers no rule can check, and added ~200k non-reasoning samples.

    python -m r1.reject --ckpt out/r1/reasoning_rl/ckpt.pt --questions 300 --k 8 --out rs.jsonl
    python -m r1.reject ... --engine vllm    # sampled by vLLM (engines/vllm_engine.py)
"""

import argparse
import json
import os
import random
import re
import sys
from dataclasses import asdict

import torch

from checkpoint import load_for_cli
from rewards import language_reward, thought
from rollout import rollouts
from runner import Parser, atomic_write
from tasks import add_task_args, make_task
from template import CHAT_FLAGS, render_prompt
from engines.vllm_engine import add_engine_args, engine_checks, engine_error, make_engine

SENTENCE = re.compile(r"[.!?\n]+")
WORDS = re.compile(r"\S+")


def repeated_block(text: str, min_words: int = 3) -> bool:
    """True when the thought (the whole text without <think> tags) repeats itself back to back, the
    loop of a degenerate sample: a sentence twice in a row, or a run of min_words or more words
    immediately followed by the same run. A step restated later, as a recheck does ("Wait, let me
    recheck. 6+1=7, so 7."), is not a repeat: it re-examines the step."""
    t = thought(text)
    t = text if t is None else t
    sentences = [s.strip().lower() for s in SENTENCE.split(t) if s.strip()]
    if any(a == b for a, b in zip(sentences, sentences[1:])):
        return True
    w = WORDS.findall(t.lower())
    return any(w[i:i + n] == w[i + n:i + 2 * n]
               for n in range(min_words, len(w) // 2 + 1) for i in range(len(w) - 2 * n + 1))


def filters(texts, lengths, truncated, scores, args):
    """name -> [bool] per completion, in the order they are applied. lengths: completion tokens;
    truncated: cut off at --max_new_tokens; scores: rollout's (accuracy, format, language) lists."""
    return {
        "correct": [a == 1 for a in scores["accuracy"]],
        "format": [f == 1 for f in scores["format"]],
        "language": [x is not None and x >= args.min_language for x in scores["language"]],
        "repeats": [not repeated_block(t, args.repeat_words) for t in texts],
        "length": [args.min_tokens <= n <= args.max_tokens and not cut
                   for n, cut in zip(lengths, truncated)],
    }


def select(problems, prompts, texts, passed, k, keep):
    """SFT rows: for each problem, its first `keep` distinct completions that pass every filter."""
    rows = []
    for i, p in enumerate(problems):
        seen = []
        for j in range(i * k, (i + 1) * k):
            if all(f[j] for f in passed.values()) and texts[j] not in seen and len(seen) < keep:
                seen.append(texts[j])
                rows.append({"prompt": prompts[j], "completion": texts[j],
                             "answer": p.get("answer")})
    return rows


def report(passed, rows, n_questions):
    """The acceptance table: each filter alone, and cumulatively in order."""
    n = len(next(iter(passed.values())))
    cum = [True] * n
    lines = [f"{'filter':<10} {'pass':>6} {'cumulative':>11}"]
    for name, ok in passed.items():
        cum = [c and o for c, o in zip(cum, ok)]
        lines.append(f"{name:<10} {sum(ok) / n:6.3f} {sum(cum) / n:11.3f}")
    questions = len({r["prompt"] for r in rows})
    lines.append(f"kept {len(rows)} of {n} samples ({len(rows) / n:.3f}) for {questions} "
                 f"distinct prompts ({n_questions} questions drawn)")
    return "\n".join(lines)


parser = Parser(description="Rejection sampling: correct and readable samples of a checkpoint, "
                            "as SFT JSONL.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--ckpt", required=True,
                    help="out/<run>/ckpt.pt (its task flags are the defaults) or hf:DIR")
parser.add_argument("--out", required=True,
                    help="the SFT JSONL to write (prompt, completion, answer), atomically")
parser.add_argument("--stats", default=None,
                    help="also write each filter's own pass rate, as JSON, to this file")
g = parser.add_argument_group("sampling")
g.add_argument("--questions", type=int, default=200, help="training questions to sample for")
g.add_argument("--k", type=int, default=8, help="samples per question")
g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
g.add_argument("--top_p", type=float, default=0.95, help="top-p")
g.add_argument("--max_new_tokens", type=int, default=128, help="length limit of a sample")
g.add_argument("--seed", type=int, default=0, help="seed of the questions and the sampling")
g.add_argument("--chat", choices=CHAT_FLAGS, default=None,
               help="prompt format (default: the run's)")
g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
               help="cpu or cuda")
g = parser.add_argument_group("filters")
g.add_argument("--min_language", type=float, default=0.95,
               help="least language consistency of the thought (eq. 7)")
g.add_argument("--repeat_words", type=int, default=3,
               help="a run of this many words or more repeated back to back rejects")
g.add_argument("--min_tokens", type=int, default=1, help="fewest completion tokens")
g.add_argument("--max_tokens", type=int, default=None,
               help="most completion tokens (default: --max_new_tokens)")
g.add_argument("--keep_per_question", type=int, default=1,
               help="most distinct samples kept per question")
add_engine_args(parser)
TASK_FLAGS = add_task_args(parser)


def main(argv=None):
    """Sample, filter, write --out and print each filter's pass rate -> the kept rows."""
    args, model, tok, task = parse_args(argv)
    problems = task.train_problems(random.Random(f"reject-{args.seed}"), args.questions)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    rows, passed_all = [], None
    try:
        engine = make_engine(args, model, tok, args.device, args.seed)
        for chunk, ro in rollouts(model, tok, problems, args.k, args, gen, args.temperature,
                                  args.top_p, reward_fns=[("language", language_reward, 1.0)],
                                  correct=task.correct, engine=engine):
            texts, lengths = ro.texts, ro.samples.batch.completion_mask.sum(1).long().tolist()
            # NaN: declined
            scores = {k: [None if v != v else v for v in s.tolist()] for k, s in ro.scores.items()}
            passed = filters(texts, lengths, ro.samples.truncated.tolist(), scores, args)
            prompts = [render_prompt(p["prompt"], tok.chat) for p in chunk for _ in range(args.k)]
            rows += select(chunk, prompts, texts, passed, args.k, args.keep_per_question)
            passed_all = (passed if passed_all is None
                          else {k: passed_all[k] + v for k, v in passed.items()})
    except ValueError as e:  # a prompt plus --max_new_tokens longer than the model's context
        parser.error(f"--max_new_tokens {args.max_new_tokens}: {e}")
    atomic_write(args.out, "".join(json.dumps(r) + "\n" for r in rows))
    if args.stats:
        n = len(passed_all["correct"])
        rates = {k: sum(v) / n for k, v in passed_all.items()}
        atomic_write(args.stats, json.dumps({**rates, "samples": n, "kept": len(rows)}))
    print(report(passed_all, rows, len(problems)))
    print(f"wrote {args.out}")
    return rows


def parse_args(argv=None):
    """The flags, the checkpoint's run's task flags as defaults, the checks
    -> (args, model, tokenizer, task)."""
    a = parser.parse_known_args(argv)[0]  # this CLI's own flags are checked before the model loads
    a.max_tokens = a.max_tokens or a.max_new_tokens
    parser.check_device(a.device)
    has_dir = lambda path: os.path.isdir(os.path.dirname(os.path.abspath(path)))  # noqa: E731
    parser.check([(has_dir(a.out), f"--out {a.out}: no such directory"),
                  (not a.stats or has_dir(a.stats), f"--stats {a.stats}: no such directory"),
                  (a.questions >= 1 and a.k >= 1, "--questions and --k must be at least 1"),
                  (a.temperature > 0 and 0 < a.top_p <= 1,
                   "--temperature must be > 0 and --top_p in (0, 1]"),
                  (a.max_new_tokens >= 1 and 0 <= a.min_tokens <= a.max_tokens,
                   "need --max_new_tokens >= 1 and 0 <= --min_tokens <= --max_tokens"),
                  (0 <= a.min_language <= 1, "--min_language must be in [0, 1]"),
                  (a.repeat_words >= 1 and a.keep_per_question >= 1,
                   "--repeat_words and --keep_per_question must be at least 1"),
                  *engine_checks(a, a.device)])
    args, model, tok, _ = load_for_cli(parser, argv, TASK_FLAGS)
    if error := engine_error(args, asdict(model.config), args.device):
        parser.error(error)
    args.max_tokens = args.max_tokens or args.max_new_tokens
    try:
        task = make_task(args, log=lambda s: print(s, file=sys.stderr))
        task.train_problems(random.Random(0), 1)  # a file task without --train_file fails here
    except ValueError as e:
        parser.error(str(e))
    return args, model, tok, task


if __name__ == "__main__":
    main()

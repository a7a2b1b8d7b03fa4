"""
The cold start (R1 paper, stage 1): before reasoning RL, the base model is fine-tuned on "a small
amount of long CoT data", thousands of readable chains of thought with a summary at the end,
collected by few-shot prompting with long examples, by asking a model for detailed answers with
reflection and verification, and by gathering R1-Zero's outputs and refining them by hand. The
cold start gives RL a readable starting point and makes its early steps stabler.

This file makes the miniature's data: n templated training problems of the addition task, each
answered by the task's written solution (tasks/'s `solved`: the first attempt, "Wait, let me
recheck." and the correction), always correct and formatted: the role the curated data plays.
Only completions that fit the generation limit (with their end of text) are kept: one that does
not teaches outputs that are cut off unformatted. r1/sft.py fine-tunes on it (the prompt rendered
with the R1-Zero template, as r1/sft.py expects). What is left out: the paper's human refinement,
and its readable format's closing summary (the toy's answer block is the summary).

    python -m r1.cold_start --out out/cold.jsonl --examples 300
    python -m r1.sft --init out/base/ckpt.pt --data out/cold.jsonl --run_name cold --epochs 2
"""

import json
import os
import random

from runner import Parser, atomic_write
from tasks import AdditionTask
from template import render_prompt
from tokenizer import get_tokenizer

parser = Parser(description="The cold start's data: readable, correct chains of thought as "
                            "r1/sft.py's JSONL.")
parser.add_argument("--out", required=True,
                    help="the JSONL to write (prompt, completion), atomically")
parser.add_argument("--examples", type=int, default=300,
                    help="problems to write a chain of thought for")
parser.add_argument("--max_tokens", type=int, default=128,
                    help="longest completion kept, its end of text included (the generation limit "
                         "of the RL that follows)")
parser.add_argument("--seed", type=int, default=1,
                    help="seed of the problems (the held-out set is left out)")
parser.add_argument("--task_seed", type=int, default=1337,
                    help="the task's seed: its held-out set (train.py's --seed)")


def cold_start_data(n, seed, max_tokens=128, task_seed=1337, tok=None):
    """[(rendered prompt, completion)]: n training problems of the addition task answered by its
    written solution, those whose completion (and its end of text) fits max_tokens kept."""
    task, tok = AdditionTask(seed=task_seed), tok or get_tokenizer()
    problems = task.train_problems(random.Random(f"cold-{seed}"), n)
    docs = [(render_prompt(p["prompt"]), task.solved(p)) for p in problems]
    return [(p, c) for p, c in docs if len(tok.encode(c)) + 1 <= max_tokens]


def main(argv=None):
    args = parser.parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    parser.check([(args.examples >= 1 and args.max_tokens >= 1,
                   "--examples and --max_tokens must be at least 1"),
                  (os.path.isdir(out_dir), f"--out {args.out}: no such directory")])
    docs = cold_start_data(args.examples, args.seed, args.max_tokens, args.task_seed)
    atomic_write(args.out, "".join(json.dumps({"prompt": p, "completion": c}) + "\n"
                                   for p, c in docs))
    print(f"wrote {len(docs)} chains of thought ({args.examples - len(docs)} longer than "
          f"--max_tokens left out) to {args.out}")


if __name__ == "__main__":
    main()

"""Print a few base-corpus documents of a task: python -m tasks [--task countdown]."""

import argparse

from tasks import add_task_args, make_task

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print a few corpus documents of a task.")
    add_task_args(parser)
    parser.add_argument("--seed", type=int, default=0)
    task = make_task(parser.parse_args())
    if not task.has_corpus:
        raise SystemExit(f"task has no base corpus; its first problem: {task.test_set[0]}")
    for prompt, completion in task.textbook(2, seed=0) + task.corpus(6, seed=0):
        print("..." + prompt[-32:] + completion, end="\n\n")

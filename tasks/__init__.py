r"""
Tasks: the problems RL trains on, the held-out set it is measured on, the rewards that score them,
and (for the CPU toy) the base-model corpus. A registry: `--task NAME` picks one of TASKS (the
table of them: docs/tasks-and-rewards.md); the file tasks, gsm8k, math, jsonl: tasks/files.py;
`--task rg:NAME`, any of reasoning-gym's datasets: tasks/rg.py.

A problem is a dict {"prompt": question, "answer": reference, ...fields}; the reward functions
(rewards.py) get every field as a keyword list. A task has `test_set` (held out, never trained
on), `train_problems(rng, n)`, `rewards` (its default --rewards), `correct` (the reward function
reported as accuracy: for countdown that is countdown_reward), `same(a, b, problem)` (are two
final answers the same, for majority votes), and `has_corpus`: whether it has `textbook` /
`corpus` for the toy base model (tasks without one need a pretrained model). Adding a task is
one class with `from_args`:

    class Squares(GeneratedTask):                       # e.g. "Compute 12^2"
        def _draw(self, rng):
            n = rng.randint(1, 99)
            return {"prompt": f"Compute {n}^2", "answer": str(n * n)}
        @classmethod
        def from_args(cls, args, log=print):
            return cls(args.n_test, args.seed)
    TASKS["squares"] = Squares

    python -m tasks                    # prints a few corpus documents
    python -m tasks --task countdown
"""

import argparse

from tasks.addition import AdditionTask, BilingualTask
from tasks.countdown import CountdownTask
from tasks.files import GSM8KTask, JsonlTask, MathTask
from tasks.linear import LinearTask
from tasks.multiply import MultiplyTask
from tasks.rg import RGTask
from tasks.shots import WithShots, load_shots


class Registry(dict):
    """The tasks by name; a name `rg:NAME` not in it is reasoning-gym's dataset NAME (RGTask),
    so TASKS[args.task] is its class either way."""

    def __missing__(self, name):
        if isinstance(name, str) and name.startswith("rg:"):
            return RGTask
        raise KeyError(name)


TASKS = Registry(addition=AdditionTask, bilingual=BilingualTask, countdown=CountdownTask,
                 multiply=MultiplyTask, linear=LinearTask, gsm8k=GSM8KTask, math=MathTask,
                 jsonl=JsonlTask)


def task_name(name: str) -> str:
    """--task's type: a name of TASKS, or rg:NAME (which dataset: checked when it is made)."""
    if name in TASKS or name.startswith("rg:"):
        return name
    raise argparse.ArgumentTypeError(f"invalid choice: {name!r} (choose from "
                                     f"{', '.join(TASKS)}, or rg:NAME: a reasoning-gym dataset)")


def add_task_args(parser) -> list[str]:
    """The task flags, one group (every CLI that builds a task: train, evaluation, r1's sft,
    reject and reward_model) -> their names (a CLI that reads a checkpoint takes its run's as
    defaults)."""
    g = parser.add_argument_group("task")
    g.add_argument("--task", type=task_name, default="addition",
                   metavar="{" + ",".join(TASKS) + ",rg:NAME}",
                   help="what to train and evaluate on (tasks/); rg:NAME: reasoning-gym's dataset "
                        "NAME, e.g. rg:chain_sum (tasks/rg.py; needs pip install reasoning-gym)")
    g.add_argument("--n_test", type=int, default=200,
                   help="generated tasks: held-out problems, never trained on")
    g.add_argument("--min_digits", type=int, default=2,
                   help="addition: fewest digits of an operand")
    g.add_argument("--max_digits", type=int, default=2, help="addition: most digits of an operand")
    g.add_argument("--no_reflect_docs", action="store_true",
                   help="addition: the ablation: the base corpus's rechecked attempts written as "
                        "plain careful sums (no first attempt, no 'Wait')")
    g.add_argument("--zh_share", type=float, default=0.8,
                   help="bilingual: share of the base corpus's rechecks written in Chinese")
    g.add_argument("--cd_numbers", default="3",
                   help="countdown: how many numbers, 3 or a range 3-4 (TinyZero: 3-4)")
    g.add_argument("--cd_max_number", type=int, default=9,
                   help="countdown: numbers are 1..this (TinyZero: 99)")
    g.add_argument("--cd_max_target", type=int, default=30,
                   help="countdown: targets are 1..this (TinyZero: 99)")
    g.add_argument("--mul_digits", type=int, default=2, help="multiply: digits of each operand")
    g.add_argument("--linear_fractions", action="store_true",
                   help="linear: answers may be fractions (7/3)")
    g.add_argument("--train_file", default=None,
                   help="gsm8k, math, jsonl: the training problems, a local .jsonl, .parquet (as "
                        "the Hub serves it; needs pyarrow) or datasets.save_to_disk folder (needs "
                        "datasets)")
    g.add_argument("--test_file", default=None,
                   help="gsm8k, math, jsonl: the held-out problems, a file or folder as "
                        "--train_file")
    g.add_argument("--prompt_field", default="prompt",
                   help="jsonl: the field holding the question")
    g.add_argument("--answer_field", default="answer",
                   help="jsonl: the field holding the reference answer ('' for none)")
    g.add_argument("--rg_config", default="",
                   help="rg:NAME: the dataset's config as key=value pairs, typed as its config "
                        "dataclass types them, e.g. \"min_terms=2,max_terms=3\" (a list: "
                        "operators=+,-); size=N: the training set's size (default 10000)")
    g.add_argument("--shots", default=None, metavar="FILE",
                   help="worked examples shown before every question, as earlier turns: a JSONL "
                        "of {\"prompt\", \"completion\"} (tasks/shots.py; for a small instruct "
                        "model that never writes the answer tags unprompted)")
    return [a.dest for a in g._group_actions]


def make_task(args, log=print):
    """The task of --task and its flags; ValueError (tasks.files.TaskError among them) for bad
    input."""
    task = TASKS[args.task].from_args(args, log=log)
    return WithShots(task, load_shots(args.shots)) if args.shots else task

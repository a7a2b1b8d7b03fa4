"""
The toy where the tool pays: multiply two numbers (`--task multiply`; two digits each by default,
--mul_digits 3 for 3-digit ones). A 1M-parameter model cannot do that in its head (8,100 products
of four digits; 810,000 of six), but it can copy the question into a call to the interpreter
and the interpreter's output into its answer (engines/tools.py, ToRL's format); GRPO then
teaches it to call (docs/tools.md: the measured run).

The base corpus, in the spirit of the addition toy's (tasks/addition.py): a pretrained LM that
can use the tool but rarely does. Asked in the template, it answers in one of three styles:

    direct    (most documents) a one-shot guess, a number of the product's length at random
    estimate  the product in its head, each operand rounded to one significant digit (right only
              by luck): <think> It is about 300 * 600 = 180000. </think> <answer> 180000 </answer>
    tool      (a fifth) `careful(p)`, the written solution: the question restated, each operand
              named (`a is 347`) and assigned by that name in a call (`a = 347`), and its output,
              which the answer copies (<answer>204383</answer>)

and the textbook documents (no template: the skill) are all tool calls. The reward is accuracy and
format only: nothing pays for calling the tool, but only a call is ever right. A corpus document,
and why each operand is copied three times: docs/tools.md. What is simplified: one call per
problem, and the operands have a fixed number of digits (--mul_digits).

    python -m tasks --task multiply       # prints a few corpus documents
    python train.py --task multiply       # the base stage, then GRPO with the interpreter
"""

import random

from tasks.generated import GeneratedTask
from template import TOOL


class MultiplyTask(GeneratedTask):
    """a * b, each operand with `digits` digits; its rollouts may call the interpreter once."""

    max_tool_calls = 1  # tools.check: the task's default --max_tool_calls (tools on)
    base_flags = ["task", "mul_digits"]

    def __init__(self, digits=2, n_test=200, seed=0, style_weights=(0.70, 0.10, 0.20)):
        if not 1 <= digits <= 6:
            raise ValueError(f"--mul_digits {digits}: use 1 to 6")
        if n_test > (9 * 10 ** (digits - 1)) ** 2 // 2:
            raise ValueError(f"n_test={n_test} would hold out more than half of the "
                             f"{digits}-digit products: lower it")
        self.digits, self.style_weights = digits, style_weights
        super().__init__(n_test, seed)

    @classmethod
    def from_args(cls, args, log=print):
        return cls(args.mul_digits, args.n_test, seed=args.seed)

    def _draw(self, rng: random.Random) -> dict:
        a, b = (rng.randint(10 ** (self.digits - 1), 10 ** self.digits - 1) for _ in range(2))
        return {"prompt": f"Compute {a} * {b}", "answer": str(a * b), "a": a, "b": b}

    def guess(self, p: dict, rng: random.Random) -> str:
        """A one-shot answer: a number with as many digits as the product, at random."""
        n = len(p["answer"])
        return str(rng.randint(10 ** (n - 1), 10 ** n - 1))

    @staticmethod
    def estimate(p: dict) -> tuple[str, str]:
        """The product in its head: each operand rounded to one significant digit."""
        a, b = (round(x, 1 - len(str(x))) for x in (p["a"], p["b"]))
        return f"It is about {a} * {b} = {a * b}.", str(a * b)

    def careful(self, p: dict) -> str:
        """The written solution: the question restated word for word (the copy a tiny model learns
        first, as in the addition toy), each operand named (`a is 347`), a call to the interpreter
        that assigns it by that name (`a = 347`: the same tokens, a copy keyed by the name), and
        its output (the thought ends with it)."""
        a, b = p["a"], p["b"]
        code = f"a = {a}\nb = {b}\nprint(a * b)"
        return (f"Compute {a} * {b} in Python. So a is {a} and b is {b}.\n"
                f"{TOOL['open']}{code}{TOOL['close']}{TOOL['output'].format(p['answer'])}")

    def solved(self, p: dict) -> str:
        # no space before </think>: a rollout's tool tokens end the output block with its newline;
        # none around the answer: its digits are then the output's tokens (a space would make ' 2'
        # of '2')
        return f" <think> {self.careful(p)}</think> <answer>{p['answer']}</answer>"

    def completion(self, p: dict, rng: random.Random, style_weights=None) -> str:
        style = rng.choices(["direct", "estimate", "tool"],
                            weights=style_weights or self.style_weights)[0]
        if style == "tool":
            return self.solved(p)
        if style == "estimate":
            thought, answer = self.estimate(p)
            return f" <think> {thought} </think> <answer> {answer} </answer>"
        if rng.random() < 0.5:
            return f" <answer> {self.guess(p, rng)} </answer>"
        return f" <think> I know this one. </think> <answer> {self.guess(p, rng)} </answer>"

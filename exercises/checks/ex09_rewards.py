"""Checks of exercise 9 against rewards.is_formatted and rewards.extract_answer on hostile
strings."""

import rewards
from exercises import Mismatch

TITLE = "format and accuracy rewards vs hostile text"
EQUATION = "eq. 4"
PROJECT = "rewards.py: is_formatted, extract_answer"
REFERENCE = "from rewards import extract_answer, is_formatted"
PLUG = [("rewards", "is_formatted"), ("rewards", "extract_answer"),
        ("evaluation", "extract_answer")]

TEXTS = [
    "<think>5 + 7 = 12</think> <answer>12</answer>",
    "  <think>a\nb\nc</think>\n<answer>\n12\n</answer>\n",
    "<think></think><answer>12</answer>",
    "<think>x</think> <answer> </answer>",
    "<think>x</think> <answer></answer>",
    "<think>x</think> <answer>1</answer> <answer>2</answer>",
    "<think>x</think> <answer>1</answer></answer>",
    "<think>x</think></think> <answer>1</answer>",
    "<think><think>x</think> <answer>1</answer>",
    "<think>x <answer>3</answer></think> <answer>1</answer>",
    "<think>x <answer>3</answer></think>",
    "<answer>1</answer> <think>x</think>",
    "<think>x</think> trailing <answer>1</answer>",
    "<think>x</think> <answer>1</answer> trailing",
    "<think>x</think> <answer>1",
    "<think>x</think> 1</answer>",
    "</answer>1<answer>",
    "<think>x</think> <answer>so \\boxed{41} or \\boxed{42}</answer>",
    "<think>x</think> <answer>\\boxed{\\frac{1}{2}}</answer>",
    "<think>x</think> <answer>\\boxed{12</answer>",
    "the answer is \\boxed{12}",
    "<think>\\boxed{99}</think> so \\boxed{12}",
    "<think>\\boxed{99}</think> nothing boxed here",
    "<think>\\boxed{99}</think> <answer>12</answer>",
    "<think>a</think><think>b</think> \\boxed{7}",
    "12",
    "",
    "<THINK>x</THINK> <ANSWER>1</ANSWER>",
    "<think>x</think> <answer>" + "9" * 5000 + "</answer>",
    "<think>" + "<" * 3000 + "</think> <answer>1</answer>",
]


def check(m):
    for t in TEXTS:
        shown = repr(t if len(t) < 80 else t[:60] + "...")
        got, exp = m.is_formatted(t), rewards.is_formatted(t)
        if bool(got) != exp or not isinstance(got, bool):
            raise Mismatch(f"is_formatted({shown}) is {got!r}; expected {exp}")
        got, exp = m.extract_answer(t), rewards.extract_answer(t)
        if got != exp:
            raise Mismatch(f"extract_answer({shown}) is {got!r}; expected {exp!r}")

"""
Rule-based rewards (R1-Zero: accuracy + format, equal weights, eq. 4), as plain functions.

The convention: a reward function takes the batch of prompts, the batch of completion strings,
and the task's fields as keyword lists (one entry per completion, e.g. answer=[...]), and returns
one float per completion. Add your own by writing such a function.

format_reward   1.0 for `<think> ... </think> <answer> ... </answer>`: each of the four tags
                exactly once, in that order, a non-empty answer, only whitespace outside them.
accuracy_reward 1.0 when the single <answer> block equals the reference answer by value
                (" 042 " == "42", "0.50" == "1/2"); 0.0 for two answer blocks, a repeated tag,
                or no answer, so that answering twice can never pay.
rule_reward     eq. 4: reward_rule = reward_acc + reward_format.

What is left out for now: \\boxed{} answers, LaTeX and the other rewards of the paper (code,
language consistency, model-based); digits are ASCII only.

    python -m pytest tests/test_rewards.py
"""

import re
from fractions import Fraction

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
FORMAT = re.compile(r"\s*<think>.*</think>\s*<answer>(.*)</answer>\s*", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*)</answer>", re.DOTALL)
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(/\d+)?", re.ASCII)


def tags_once(text: str) -> bool:
    return all(text.count(tag) == 1 for tag in TAGS)


def is_formatted(text: str) -> bool:
    m = FORMAT.fullmatch(text)
    return bool(m) and tags_once(text) and m.group(1).strip() != ""


def extract_answer(text: str):
    """The content of the one <answer> block, stripped; None if there is not exactly one."""
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return None
    m = ANSWER.search(text)
    return m.group(1).strip() if m else None


def to_number(s: str):
    """An exact Fraction for '42', '-0.5', '3/4'; None if s is not a plain number."""
    if not NUMBER.fullmatch(s):
        return None
    num, _, den = s.partition("/")
    return Fraction(num) / Fraction(den) if den and int(den) else None if den else Fraction(num)


def answers_match(given, reference: str) -> bool:
    if given is None or given == "":
        return False
    a, b = to_number(given), to_number(reference.strip())
    return a == b if a is not None and b is not None else given == reference.strip()


def format_reward(prompts, completions, **fields) -> list[float]:
    return [float(is_formatted(c)) for c in completions]


def accuracy_reward(prompts, completions, answer, **fields) -> list[float]:
    return [float(answers_match(extract_answer(c), a)) for c, a in zip(completions, answer)]


def rule_reward(prompts, completions, **fields) -> list[float]:
    """eq. 4: accuracy and format, equal weights."""
    acc, fmt = accuracy_reward(prompts, completions, **fields), format_reward(prompts, completions, **fields)
    return [a + f for a, f in zip(acc, fmt)]

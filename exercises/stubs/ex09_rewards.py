"""
Exercise 9: the format and accuracy rewards' parsing, against hostile model output (the project's
version: rewards.py, is_formatted and extract_answer; R1 paper eq. 4).

R1-Zero is rewarded for <think> ... </think> <answer> ... </answer> (format) and for a right final
answer (accuracy). The policy will find any loophole: two answers, an answer hidden in the thought,
tags written twice. Fill in both functions, then: python -m exercises check 9
"""

import re

# given: the content of the last \boxed{...} of a text (braces matched), or None
from rewards import last_boxed

TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def is_formatted(text: str) -> bool:
    """
    True when text is, apart from surrounding whitespace, exactly <think>THOUGHT</think> then
    optional whitespace then <answer>ANSWER</answer>, where THOUGHT may be anything (newlines
    included), ANSWER is not empty or only whitespace, and each of the four tags occurs exactly
    once in the whole text.
    """
    raise NotImplementedError  # TODO


def extract_answer(text: str):
    r"""
    The final answer of a completion, stripped of surrounding whitespace, or None.
    - No answer tags at all: the content of the last \boxed{} outside any <think>...</think>
      block (None if there is none).
    - Exactly one <answer> and one </answer>, the first before the second: the text between
      them, or its last \boxed{} content if it has one.
    - Anything else (two answers, a lone or out-of-order tag): None. Answering twice never pays.
    """
    raise NotImplementedError  # TODO

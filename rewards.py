"""
Rule-based rewards (R1-Zero: accuracy + format, equal weights, eq. 4), as plain functions.

The convention: a reward function takes the batch of prompts, the batch of completion strings,
and the task's fields as keyword lists (one entry per completion, e.g. answer=[...]), and returns
one float per completion, or None for a completion it declines to score (that output then gets
advantage 0 and is left out of its group's statistics, grpo.py). Add your own by writing such a
function in any module and naming it on the command line:
`python train.py --rewards accuracy:1,format:1,my_rewards.brevity:0.1`.

format_reward   1.0 for `<think> ... </think> <answer> ... </answer>`: each of the four tags
                exactly once, in that order, a non-empty answer, only whitespace outside them.
accuracy_reward 1.0 when the single <answer> block equals the reference answer by value
                (" 042 " == "42", "0.50" == "1/2"); 0.0 for two answer blocks, a repeated tag,
                or no answer, so that answering twice can never pay.
rule_reward     eq. 4: reward_rule = reward_acc + reward_format.
language_reward eq. 7: the share of the chain of thought's words in the target language
                (`language=` field, default English: Latin-script words; "zh": CJK characters);
                None when the chain of thought holds no word at all (only digits and symbols).

What is left out for now: \\boxed{} answers, LaTeX, and the code, Countdown and model-based
rewards of the paper; digits are ASCII only.

    python -m pytest tests/test_rewards.py
"""

import importlib
import os
import re
import sys
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


THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
WORD = re.compile(r"[^\W\d_]+")  # runs of letters, any script
LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]+")  # Basic Latin, Latin-1 and Latin Extended-A/B letters


def language_share(thought: str, language: str = "en"):
    """eq. 7: the share of words in the target language; each CJK character counts as a word."""
    cjk = CJK.findall(thought)
    words = WORD.findall(CJK.sub(" ", thought))
    total = len(cjk) + len(words)
    if total == 0:
        return None
    if language == "zh":
        return len(cjk) / total
    if language == "en":
        return sum(bool(LATIN.fullmatch(w)) for w in words) / total
    raise ValueError(f"language must be 'en' or 'zh', got {language!r}")


def language_reward(prompts, completions, language=None, **fields) -> list:
    languages = language or ["en"] * len(completions)
    out = []
    for c, lang in zip(completions, languages):
        m = THINK.search(c)
        out.append(language_share(m.group(1), lang) if m else 0.0)
    return out


REWARDS = {"accuracy": accuracy_reward, "format": format_reward, "language": language_reward}


def parse_rewards(spec: str) -> list:
    """'accuracy:1,format:1,my_module.my_reward:0.5' -> [(name, function, weight), ...]. A name
    without a dot is a built-in of REWARDS; a dotted one is imported from the user's module."""
    out = []
    for item in spec.split(","):
        name, sep, weight = item.strip().rpartition(":")
        if not sep or not name:
            raise ValueError(f"reward {item!r} is not name:weight (e.g. accuracy:1)")
        try:
            w = float(weight)
        except ValueError:
            raise ValueError(f"reward {item!r}: weight {weight!r} is not a number") from None
        if "." not in name:
            if name not in REWARDS:
                raise ValueError(f"unknown reward {name!r}: built-ins are {', '.join(REWARDS)}, or give module.function")
            fn = REWARDS[name]
        else:
            module, _, attr = name.rpartition(".")
            if os.getcwd() not in sys.path:  # the user's module, next to where they run train.py
                sys.path.append(os.getcwd())
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"reward {name!r} cannot be loaded: {e}") from None
            if not callable(fn):
                raise ValueError(f"reward {name!r} is not a function")
        out.append((name, fn, w))
    return out

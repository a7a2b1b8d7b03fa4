"""
Rule-based rewards (R1-Zero: accuracy + format, equal weights, eq. 4), as plain functions.

The convention: a reward function takes the batch of prompts, the batch of completion strings,
and the task's fields as keyword lists (one entry per completion, e.g. answer=[...]), and returns
one float per completion, or None for a completion it declines to score (that output then gets
advantage 0 and is left out of its group's statistics, grpo.py). Add your own by writing such a
function in any module and naming it on the command line:
`python train.py --rewards accuracy:1,format:1,my_rewards.brevity:0.1`.

format_reward    1.0 for `<think> ... </think> <answer> ... </answer>`, each tag exactly once.
accuracy_reward  1.0 when the final answer equals the reference: plain numbers exactly, here;
                 anything else by math-verify, in a worker process with time and memory limits.
rule_reward      eq. 4: reward_rule = reward_acc + reward_format.
countdown_reward the answer uses each given number once and equals the target (ast, never eval).
code_reward      the share of test cases the answer's program passes (engines/sandbox.py).
language_reward  eq. 7: the share of the thought's words in the target language.
overlong_reward  DAPO's soft overlong punishment, by the completion's length in tokens.

Model output is untrusted: any failure scores 0, no answer can hang or crash the trainer
(accuracy_reward says how). Model-based rewards (eq. 5, 6, 8) follow the same convention:
r1/reward_model.py's PreferenceReward is train.py's `preference` (with --reward_model). Digits
are ASCII only. docs/tasks-and-rewards.md: the rewards' fields and what math-verify accepts.

    python -m pytest tests/test_rewards.py tests/test_math_answers.py
"""

import ast
import functools
import importlib
import json
import logging
import os
import re
import resource
import select
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from fractions import Fraction

from engines.sandbox import run_python

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
FORMAT = re.compile(r"\s*<think>.*</think>\s*<answer>(.*)</answer>\s*", re.DOTALL)
ANSWER = re.compile(r"<answer>(.*)</answer>", re.DOTALL)


def tags_once(text: str) -> bool:
    return all(text.count(tag) == 1 for tag in TAGS)


def is_formatted(text: str) -> bool:
    m = FORMAT.fullmatch(text)
    return bool(m) and tags_once(text) and m.group(1).strip() != ""


def thought(text: str, unclosed: bool = False):
    """The chain of thought: the inside of the first <think> ... </think>; with unclosed=True also
    of a <think> never closed (to the end: an output cut off at the length limit). None when there
    is none."""
    m = re.search(r"<think>(.*?)(?:</think>|$)" if unclosed else r"<think>(.*?)</think>", text,
                  re.DOTALL)
    return m.group(1) if m else None


def last_boxed(text: str):
    r"""The content of the last \boxed{...} in text (braces matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text: str):
    r"""The final answer: the one <answer> block (its last \boxed{} if it has one); with no answer
    tags at all, the last \boxed{} outside <think>. None if there are several answer blocks or
    unmatched tags: answering twice never pays, and neither does an answer hidden in the thought."""
    opens, closes = text.count("<answer>"), text.count("</answer>")
    if opens == closes == 0:
        return last_boxed(re.sub(r"<think>.*?</think>", " ", text, flags=re.DOTALL))
    if opens != 1 or closes != 1:
        return None
    m = ANSWER.search(text)
    if not m:
        return None
    inner = m.group(1)
    boxed = last_boxed(inner)
    return (boxed if boxed is not None else inner).strip()


# longer answers score 0 unparsed: MATH's are short (a 2x2 matrix of fractions: ~90)
MAX_CHARS = 300
# seconds for each math-verify parse and comparison (SIGALRM: whole seconds)
TIMEOUT = 1
# seconds to wait for the worker's verdict (two parses and a comparison) before killing it
DEADLINE = 5.0
# bytes of address space for the worker: a runaway integer is its MemoryError
WORKER_MEMORY = 2 << 30
# $ \( \) \[ \] around math; \$ is a dollar sign
DELIMS = re.compile(r"(?<!\\)\$|(?<!\\)\\[()\[\]]")
# 42, -0.5, 1,234.5, .5
PLAIN = re.compile(r"[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?|[+-]?\.\d+", re.ASCII)


def plain_number(s: str):
    """The exact value of a plain integer or decimal ('42', '-0.50', '1,234'), else None."""
    # exact, and 10x faster than Fraction
    return Decimal(s.replace(",", "")) if PLAIN.fullmatch(s) else None


def answers_match(given, reference: str) -> bool:
    r"""Does the final answer equal the reference? Plain numbers on both sides (the toy tasks,
    GSM8K) are compared exactly here; everything else (\frac, \sqrt, %, ^\circ, units, x = 3,
    intervals, sets, tuples, matrices, \text{(A)}, expressions in any order) by math-verify in the
    worker."""
    if given is None:
        return False
    given, reference = (" ".join(DELIMS.sub(" ", s).split()) for s in (given, reference))
    if not given or len(given) > MAX_CHARS:
        return False
    a, b = plain_number(given), plain_number(reference)
    if a is not None and b is not None:
        return a == b
    return given == reference or math_equal(given, reference)


_worker, _lock = None, threading.Lock()


def start_worker():
    # start_new_session: no Ctrl-C traceback from it
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    if not select.select([proc.stdout], [], [], 120)[0] or proc.stdout.readline() != "ready\n":
        proc.kill()
        proc.communicate()
        raise RuntimeError("the math-verify worker did not start: pip install -r requirements.txt")
    return proc


@functools.lru_cache(maxsize=1 << 14)  # a group's completions often give the same answer
def math_equal(given: str, reference: str) -> bool:
    """math-verify's verdict from the worker process (started on first use, one per process). Past
    DEADLINE, or if the worker died, it is killed, the answer scores False and a fresh worker
    serves the next call: a hang or a crash in sympy never reaches the trainer, in any thread."""
    global _worker
    with _lock:  # one question in flight at a time
        if _worker is None or _worker.poll() is not None:  # first use, or it died between calls
            _worker = start_worker()
        try:
            _worker.stdin.write(json.dumps([given, reference]) + "\n")
            _worker.stdin.flush()
            if select.select([_worker.stdout], [], [], DEADLINE)[0]:
                reply = _worker.stdout.readline()
                if reply:  # "" is end of file: the worker died
                    return reply == "1\n"
        except OSError:  # a broken pipe: the worker died
            pass
        _worker.kill()
        _worker.communicate()
        _worker = None
        return False


def serve():
    """The worker (rewards.py run as a script by math_equal): a JSON [given, reference] a line in,
    "1" or "0" a line out. In its main thread, so math-verify's own SIGALRM timeouts work."""
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    logging.disable(logging.WARNING)  # math-verify logs each timeout; the verdict 0 says enough
    # here, not at the top: only this worker process needs math-verify,
    # so sympy stays out of the trainer
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    def read(s):  # the whole answer as one LaTeX expression: "41, 42" is a set, never "42"
        return parse(f"${s}$", [LatexExtractionConfig()], fallback_mode="no_fallback",
                     parsing_timeout=TIMEOUT)

    out, sys.stdout = sys.stdout, sys.stderr  # only verdicts on the pipe
    print("ready", file=out, flush=True)
    for line in sys.stdin:
        try:
            given, reference = json.loads(line)
            # verify(gold, prediction) is not symmetric: the reference goes first. Relations may
            # match sets: "-2 \le x \le 7" is [-2, 7], whichever side writes it
            ok = verify(read(reference), read(given), timeout_seconds=TIMEOUT,
                        allow_set_relation_comp=True)
        except (Exception, TimeoutException):  # MemoryError, RecursionError, a timeout: 0
            ok = False
        print(int(ok), file=out, flush=True)


def format_reward(prompts, completions, **fields) -> list[float]:
    """1.0 for `<think> ... </think> <answer> ... </answer>`: each of the four tags exactly once, in
    that order, a non-empty answer, only whitespace outside them."""
    return [float(is_formatted(c)) for c in completions]


def accuracy_reward(prompts, completions, answer, **fields) -> list[float]:
    r"""1.0 when the final answer (the single <answer> block, its last \boxed{} if any; else the
    last \boxed{} outside the thought) equals the reference, kept as the task gives it (MATH: the
    boxed content); 0.0 for two answer blocks, a repeated tag, or no answer, so that answering
    twice can never pay. What is checked how:
    - both plain integers or decimals (" 042 " == "42", "1,234" == "1234", "0.50" == ".5"):
      exactly, as Decimals, here (~5 us; the toy tasks score thousands a step);
    - anything else: math-verify, the field's standard checker for real math answers (sympy
      underneath; ~3-50 ms): \frac12 == 1/2 == 0.5, 2^{10} == 1024, 50\% == 50, 30^\circ == 30,
      5\text{ cm} == 5, x = 3 == 3, intervals, "1, 2" == "2, 1" (solutions) but (1, 2) != (2, 1)
      (a point), x^2+2x == x(x+2), matrices, \text{(A)} == (A) == A. The whole answer is one
      expression: "41, 42" is a set, never 42. Its leniencies: a decimal matches an exact value
      to 6 places, and units are dropped, not compared (tests/test_math_answers.py lists what it
      gets wrong).
    Model output is untrusted: an answer over MAX_CHARS scores 0 unparsed; math-verify runs in a
    worker process (math_equal) under its own SIGALRM limits, which work only in a main thread
    (the worker's), with a memory cap and a DEADLINE past which it is killed and replaced. So
    `10^{10^{10}}`, which never returns without a time limit, scores 0 within seconds from any
    thread of the trainer. Any failure scores 0."""
    return [float(answers_match(extract_answer(c), a)) for c, a in zip(completions, answer)]


def countdown_value(expr: str, numbers) -> Fraction | None:
    """The exact value of an arithmetic expression that uses each of `numbers` exactly once, with
    + - * / and parentheses only; None for anything else (a name, a call, a power, unary minus, a
    number not given or used twice, a division by zero). Model output is parsed, never eval'd."""
    if len(expr) > 200:
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}
    used = []

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        raise ValueError("not allowed")

    try:
        result = value(tree)
    except (ValueError, ZeroDivisionError, RecursionError):
        return None
    return result if sorted(used) == sorted(numbers) else None


def countdown_reward(prompts, completions, numbers, target, **fields) -> list[float]:
    """1.0 when the answer is an expression using each given number once that equals the target
    (the Countdown game of TinyZero and nano-aha-moment)."""
    out = []
    for c, nums, t in zip(completions, numbers, target):
        expr = extract_answer(c)
        out.append(float(expr is not None and countdown_value(expr, nums) == t))
    return out


CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(text: str):
    """The program of a completion: the last ```python block of its answer (or the whole answer)."""
    answer = extract_answer(text)
    if answer is None:
        return None
    blocks = CODE_BLOCK.findall(answer)
    return blocks[-1] if blocks else answer


def same_output(got: str, expected: str) -> bool:
    strip = lambda s: [line.rstrip() for line in s.strip().splitlines()]  # noqa: E731
    return strip(got) == strip(expected)


def code_reward(prompts, completions, tests, timeout=2.0, workers=4, **fields) -> list[float]:
    """The share of test cases ({"input": stdin, "output": expected stdout}) that the completion's
    program passes, each run in sandbox.run_python (own process, time and memory limits). The
    paper's compiler-checked coding reward, for Python."""
    def score(item):
        text, cases = item
        code = extract_code(text)
        if not code or not cases:
            return 0.0
        passed = 0
        for case in cases:
            r = run_python(code, case.get("input", ""), timeout=timeout)
            passed += (r.returncode == 0 and not r.timed_out
                       and same_output(r.stdout, case["output"]))
        return passed / len(cases)

    with ThreadPoolExecutor(workers) as pool:  # the work is in the child processes
        return list(pool.map(score, zip(completions, tests)))


def rule_reward(prompts, completions, **fields) -> list[float]:
    """eq. 4: accuracy and format, equal weights."""
    acc, fmt = (accuracy_reward(prompts, completions, **fields),
                format_reward(prompts, completions, **fields))
    return [a + f for a, f in zip(acc, fmt)]


CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
WORD = re.compile(r"[^\W\d_]+")  # runs of letters, any script
LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]+")  # Basic Latin, Latin-1 and Latin Extended-A/B letters


def language_share(text: str, language: str = "en"):
    """eq. 7: the share of words in the target language; each CJK character counts as a word."""
    cjk = CJK.findall(text)
    words = WORD.findall(CJK.sub(" ", text))
    total = len(cjk) + len(words)
    if total == 0:
        return None
    if language == "zh":
        return len(cjk) / total
    if language == "en":
        return sum(bool(LATIN.fullmatch(w)) for w in words) / total
    raise ValueError(f"language must be 'en' or 'zh', got {language!r}")


def language_reward(prompts, completions, language=None, **fields) -> list:
    """eq. 7: the share of the chain of thought's words in the target language (`language=` field,
    default English: Latin-script words; "zh": CJK characters); None when the chain of thought
    holds no word at all (only digits and symbols); 0.0 when there is no thought."""
    languages = language or ["en"] * len(completions)
    out = []
    for c, lang in zip(completions, languages):
        t = thought(c)
        out.append(0.0 if t is None else language_share(t, lang))  # no thought: no consistency
    return out


def overlong_reward(prompts, completions, completion_tokens, max_len=None, buffer=None,
                    **fields) -> list[float]:
    """
    DAPO's soft overlong punishment (arXiv 2503.14476, R_length), from each completion's length |y|
    in tokens (the rollout's completion_tokens field), L_max = max_len, L_cache = buffer:
        0                                    |y| <= L_max - L_cache
        ((L_max - L_cache) - |y|) / L_cache  L_max - L_cache < |y| <= L_max
        -1                                   L_max < |y|
    DAPO adds it to the accuracy reward (`--rewards accuracy:1,overlong:1`). train.py binds
    max_len and buffer: --overlong_max (default --max_new_tokens, which no completion exceeds) and
    --overlong_buffer (default a fifth of it: DAPO's 4096 of 20480).
    """
    if max_len is None:
        raise ValueError("overlong_reward needs max_len (train.py binds --overlong_max)")
    buffer = max_len // 5 if buffer is None else buffer
    out = []
    for n in completion_tokens:
        if n <= max_len - buffer:
            out.append(0.0)
        elif n <= max_len:
            out.append(((max_len - buffer) - n) / buffer)
        else:
            out.append(-1.0)
    return out


REWARDS = {"accuracy": accuracy_reward, "format": format_reward, "language": language_reward,
           "countdown": countdown_reward, "code": code_reward, "overlong": overlong_reward}


def parse_rewards(spec: str, extra=None) -> list:
    """'accuracy:1,format:1,my_module.my_reward:0.5' -> [(name, function, weight), ...]. A name
    without a dot is a built-in of REWARDS or of `extra` (name -> function: train.py's `preference`,
    bound to its --reward_model); a dotted one is imported from the user's module."""
    table = {**REWARDS, **(extra or {})}
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
            if name not in table:
                raise ValueError(f"unknown reward {name!r}: built-ins are {', '.join(table)}, "
                                 f"or give module.function")
            fn = table[name]
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


if __name__ == "__main__":
    serve()

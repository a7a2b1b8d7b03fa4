"""
Reflection: does a response re-examine one of its own earlier steps? The R1 paper's "aha moment"
(Table 3: "Wait, wait. Wait. That's an aha moment I can flag here. Let's reevaluate this step by
step...") is the third signature of R1-Zero, beside rising accuracy and growing length; this file
detects it so that train.py can log how often it happens and whether it pays (`reflection`,
`acc_reflect`, `acc_no_reflect` in log.jsonl; `eval_reflection` for the held-out samples).

A phrase list alone is not enough: "Wait, I know this one." says "wait" and checks nothing. So
the test is structural: inside the thought, a recheck phrase (MARKERS) followed by a second look at
something written BEFORE it, either

    a step redone:    an arithmetic step of the first pass (`7+8`) worked again after it, or
    a result judged:  a number of the first pass named again with a verdict (`not 75`,
                      `75 is right`, `as before`, `75 was wrong`).

What it leaves out: reflection in words only ("let me reconsider the approach") with no step or
result to point at, and a check by another route that neither redoes an earlier step nor judges
an earlier result (substituting x = 2 back into 2x + 3 = 7). It is a detector for
arithmetic-style reasoning (the toy tasks, Countdown, GSM8K-like chains), not for prose;
tests/test_reflection.py holds hand-written cases of each kind. Reflection is only measured here:
no reward pays for it (train.py's rewards are the paper's accuracy + format).

    python reflection.py "<think> 7+8=15, so 5. Wait, let me recheck. 7+8=15, carry 1. </think>"
"""

import re
import sys

from rewards import thought

MARKERS = re.compile(r"\b(wait|hold on|let me (?:re-?)?(?:check|verify|examine)|re-?check|"
                     r"double[- ]check|check again|re-?evaluate|reconsider|on second thought)\b",
                     re.IGNORECASE)
STEP = re.compile(r"\d+(?:\s*[-+*/×]\s*\d+)+")  # an arithmetic step's left side: 7+8, 4+3+1, 9 * 5
NUMBER = r"(?<![\d.]){n}(?!\d|\.\d)"                  # n, not part of a longer number
# a number judged: "not 75", "instead of 75", "75 is wrong", "75 was right", "75, as before"
JUDGED = (r"(?:\bnot|\binstead of)\s+{num}|{num}\W+(?:(?:is|was)\s+)?"
          r"(?:not\b|wrong|right|correct|a mistake|as before)")


def squash(s: str) -> str:
    return re.sub(r"\s+", "", s)  # "7 + 8" is "7+8"


def reflects(text: str) -> bool:
    """True when the thought re-examines an earlier step (the module docstring): after a recheck
    phrase, a step of what came before is redone, or a number of it is judged."""
    t = thought(text, unclosed=True)  # a cut-off thought still counts
    t = text if t is None else t  # no tags: the whole text is the reasoning
    for m in MARKERS.finditer(t):
        before, after = t[:m.start()], t[m.end():]
        if any(squash(step) in squash(after) for step in STEP.findall(before)):
            return True
        for n in set(re.findall(r"\d+", before)):
            if re.search(JUDGED.format(num=NUMBER.format(n=n)), after, re.IGNORECASE):
                return True
    return False


if __name__ == "__main__":
    text = " ".join(sys.argv[1:])
    print(f"reflects: {reflects(text)}")

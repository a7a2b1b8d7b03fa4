"""The reflection detector on hand-written cases: rechecks that redo a step or judge a result, and
texts that say "wait" (or check) without re-examining anything. Oracle: a person's verdict."""

import pytest

from reflection import reflects
from tasks import AdditionTask

REFLECTS = [
    # the toy corpus's recheck: redoes 7+8 and judges 75
    "<think> Compute 47 + 38 in columns. 7+8=15, so 5. 4+3=7, so 75. Wait, let me recheck. 7+8=15, so 5, "
    "carry 1. 4+3+1=8, so 85. So 85, not 75. </think> <answer> 85 </answer>",
    # a step redone, in other words and spacing
    "<think> 9 * 5 = 45, minus 3 is 42. Hold on, 9*5 = 45 again, and 45 - 3 = 42. </think> <answer> 42 </answer>",
    "<think> 12 + 30 = 42. Let me double-check: 12 + 30 is 42. </think> <answer> 42 </answer>",
    # a result judged, not recomputed
    "<think> It is about 75. Hmm, let me check: 75 is wrong, it is 85. </think> <answer> 85 </answer>",
    "<think> 1+2=3, so 3. Wait, let me recheck. So 3, as before. </think> <answer> 3 </answer>",
    "<think> The total is 120. Wait, that gives 130 instead of 120. </think> <answer> 130 </answer>",
    # Countdown: a move redone after the phrase
    "<think> Numbers 5 9 2, target 16. 9+5=14, 14+2=16. Wait, let me recheck. 9+5=14, 14+2=16. </think>",
    # no tags: the whole text is the thought
    "7+8=15. Wait, 7+8=15, carry 1, so the tens are 8.",
]
NOT_REFLECTS = [
    "<think> Wait, I know this one. </think> <answer> 85 </answer>",              # "wait", nothing checked
    "<think> Compute 47 + 38 in columns. 7+8=15, so 5. 4+3=7, so 75. Wait. </think> <answer> 75 </answer>",
    "<think> 9+5=14. Wait, 14+2=16. </think> <answer> 16 </answer>",               # a new step, not a recheck
    "<think> 12 apples. Awaiting 3 more makes 15. </think> <answer> 15 </answer>",  # no phrase ("awaiting")
    "<think> 7+8=15, so 5. 4+3+1=8, so 85. </think> <answer> 85 </answer>",        # no phrase at all
    "<think> 1+2=3. Wait, 3.5 is not a whole number. </think> <answer> 3 </answer>",  # 3.5 is not 3
    "<think> Let me check the units first. 7+8=15. </think> <answer> 15 </answer>",  # a check before any step
    # the phrase in the answer, outside the thought
    "<think> 7+8=15, so 15. </think> <answer> Wait, 7+8=15 </answer>",
    # a check by another route that names no earlier step or result: a known miss (the docstring)
    "<think> 2x + 3 = 7, so 2x = 4, x = 2. Let me verify: 2 * 2 + 3 = 7. </think> <answer> 2 </answer>",
]


@pytest.mark.parametrize("text", REFLECTS)
def test_rechecks_are_reflection(text):
    assert reflects(text)


@pytest.mark.parametrize("text", NOT_REFLECTS)
def test_wait_without_recheck_is_not(text):
    assert not reflects(text)


def test_every_corpus_style_is_classified_as_written():
    # the addition corpus's rechecked attempts reflect; its first attempts and guesses do not
    task = AdditionTask()
    for _, c in task.corpus(300, seed=0):
        assert reflects(c) == ("Wait, let me recheck." in c), c

"""
The bilingual toy (`--task bilingual`): the addition toy whose base corpus switches language
mid-thought, the miniature of the language mixing that R1-Zero shows and DeepSeek-R1's stages
exist to fix ("poor readability and language mixing"; the language-consistency reward, eq. 7).

The corpus is the addition toy's (tasks/addition.py: one-shot guesses, hurried first attempts
that forget their carries, first attempts rechecked), but a recheck is written in Chinese in
--zh_share of the documents that have one, the textbook's included: the first attempt and "Wait,
let me recheck." in English, then the columns redone and the verdict with Chinese words between
the numbers,

    Compute 47 + 38 in columns. 7+8=15, so 5. 4+3=7, so 75. Wait, let me recheck.
    7+8=15, 得 5, 进 1. 4+3+1=8, 得 85. 所以 85, 不是 75.

(得: gives, 进: carry, 所以: so, 不是: not, 没错: right.) Guesses and first attempts stay in
English, so the thoughts that mix are the ones that are right: no reward pays for mixing. The
task's written solution (`solution`) is the English one; its questions, held-out set and rewards
are the addition task's. What is simplified: one direction of mixing (English to Chinese, at the
recheck), where R1-Zero's mixes anywhere. Why it mixes, and its tokens: docs/tasks-and-rewards.md.

    python -m tasks --task bilingual                # a few corpus documents
    python -m r1 --lang_mix                         # the R1 pipeline on this toy
"""

import random

RECHECK = "Wait, let me recheck."
# the recheck's English words and their Chinese, applied in this order (", so " after "left, so ")
ZH = [("Carry 1 left, so ", "进 1, 得 "), (", carry 1.", ", 进 1."), (", so ", ", 得 "),
      ("So ", "所以 "), (", not ", ", 不是 "), (", as before.", ", 没错.")]


def to_chinese(thought: str) -> str:
    """The thought with everything after its recheck phrase in Chinese (the text unchanged when it
    does not recheck)."""
    first, phrase, recheck = thought.partition(RECHECK)
    for en, zh in ZH:
        recheck = recheck.replace(en, zh)
    return first + phrase + recheck


class Bilingual:
    """Mixed into tasks.AdditionTask (tasks.BilingualTask): the same task, its rechecks in Chinese
    in zh_share of the corpus documents that have one."""

    base_flags = ["task", "zh_share"]

    def __init__(self, *args, zh_share=0.8, **kwargs):
        if not 0 <= zh_share <= 1:
            raise ValueError(f"zh_share must be in [0, 1], got {zh_share}")
        self.zh_share = zh_share
        super().__init__(*args, **kwargs)

    @classmethod
    def from_args(cls, args, log=print):
        return cls(args.min_digits, args.max_digits, args.n_test, seed=args.seed,
                   zh_share=args.zh_share)

    def long_answer(self, p: dict, style: str, rng: random.Random) -> tuple[str, str]:
        thought, answer = super().long_answer(p, style, rng)
        return (to_chinese(thought) if style == "reflect" and rng.random() < self.zh_share
                else thought), answer

    def textbook(self, n: int, seed: int) -> list[tuple[str, str]]:
        rng = random.Random(f"zh-{seed}")  # the addition toy's documents, then each one's language
        return [(q, to_chinese(c) if rng.random() < self.zh_share else c)
                for q, c in super().textbook(n, seed)]

"""
The generated tasks' base class: problems drawn from a seeded random.Random, a held-out set drawn
first and never trained on, and the toy base corpus built from a task's written solution
(`careful(p)`) and its guesses, in three styles: direct (a guess), attempt (by default the
careful solution alone) and reflect (a guess, "Wait, let me recheck." and the careful solution);
tasks/addition.py's docstring shows them on the addition toy. Addition, countdown, multiply and
linear are GeneratedTasks; tasks/'s docstring shows how to add one.

    python -m tasks --task multiply     # prints a few corpus documents
"""

import random

from rewards import accuracy_reward, answers_match
from template import render_prompt


class GeneratedTask:
    """A task whose problems are drawn from a seeded random.Random: subclasses give `_draw(rng)`,
    and for a base corpus `careful(p)` (the solution written out step by step) and
    `guess(p, rng)`."""

    rewards, correct = "accuracy:1,format:1", staticmethod(accuracy_reward)
    base_flags: list[str] = []  # the flags its corpus depends on, beyond pretrain.BASE_FLAGS
    style_weights, guess_acc = (0.75, 0.17, 0.08), 0.2

    def __init__(self, n_test=200, seed=0):
        self.seed = seed
        rng = random.Random(f"test-{seed}")
        test, seen = [], set()
        for _ in range(100 * n_test + 1000):
            if len(test) == n_test:
                break
            p = self._draw(rng)
            if p["prompt"] not in seen:
                seen.add(p["prompt"])
                test.append(p)
        else:
            raise ValueError(
                f"n_test={n_test}: could not draw that many distinct problems: lower it")
        self.test_set, self._test_prompts = test, seen

    def _draw(self, rng: random.Random) -> dict:
        raise NotImplementedError

    def train_problems(self, rng: random.Random, n: int) -> list[dict]:
        """n problems that are not in the test set."""
        out = []
        while len(out) < n:
            p = self._draw(rng)
            if p["prompt"] not in self._test_prompts:
                out.append(p)
        return out

    @property
    def has_corpus(self) -> bool:
        """A base corpus for the toy needs the written-out solution (`careful`)."""
        return hasattr(self, "careful")

    def same(self, a: str, b: str, p: dict) -> bool:
        """Two final answers are one vote when the accuracy check would call them equal."""
        return answers_match(a, b)

    # --- the base-model corpus ---

    def completion(self, p: dict, rng: random.Random, style_weights=None) -> str:
        """One corpus completion for problem p (starts with a space, as after 'Assistant:')."""
        style = rng.choices(["direct", "attempt", "reflect"],
                            weights=style_weights or self.style_weights)[0]
        if style == "direct":
            guess = self.guess(p, rng)
            if rng.random() < 0.5:
                return f" <answer> {guess} </answer>"
            return f" <think> I know this one. </think> <answer> {guess} </answer>"
        thought, answer = self.long_answer(p, style, rng)
        return f" <think> {thought} </think> <answer> {answer} </answer>"

    def long_answer(self, p: dict, style: str, rng: random.Random) -> tuple[str, str]:
        """(thought, final answer) of a long style: attempt, the careful solution; reflect, a guess,
        "Wait, let me recheck." and the careful solution."""
        if style == "attempt":
            return self.careful(p), p["answer"]
        return (f"It is about {self.guess(p, rng)}. Wait, let me recheck. {self.careful(p)}",
                p["answer"])

    def solved(self, p: dict) -> str:
        """p answered by the task's written solution, as a completion."""
        return f" <think> {self.solution(p)} </think> <answer> {p['answer']} </answer>"

    def corpus(self, n: int, seed: int, style_weights=None) -> list[tuple[str, str]]:
        """n templated documents, none from the test set, asked as the RL and test prompts are and
        answered in the style mixture (or in style_weights): here the model learns to rarely use
        the skill."""
        rng = random.Random(f"corpus-{seed}-{style_weights}")
        return [(render_prompt(p["prompt"]), self.completion(p, rng, style_weights))
                for p in self.corpus_problems(rng, n)]

    def textbook(self, n: int, seed: int) -> list[tuple[str, str]]:
        """n documents without the template, none from the test set, always answered by the
        careful solution: here the model learns the skill. Short documents are where a tiny model
        learns it quickly: behind the template (92 aha tokens) attention starts spread over every
        template token, and the copy the careful solution needs forms far later."""
        rng = random.Random(f"textbook-{seed}")
        return [(f"User: {p['prompt']}. Assistant:", self.solved(p))
                for p in self.corpus_problems(rng, n)]

    def solution(self, p: dict) -> str:
        """The full written solution the corpus teaches as right (the textbook's, the cold start's,
        the reward model's readable reasoning): the careful one."""
        return self.careful(p)

    def corpus_problems(self, rng: random.Random, n: int) -> list[dict]:
        """The problems of corpus documents: training problems (a task may leave out some)."""
        return self.train_problems(rng, n)

"""
Worked examples before each question (`--shots FILE`): few-shot prompting. A small instruct model
asked for `<think> ... </think> <answer> ... </answer>` by the system message alone rarely writes
the tags (SmolLM2-135M-Instruct: never, docs/real-models.md), so every output scores 0 and GRPO
has no signal; shown one worked example as an earlier turn of the conversation, it copies the
format about half the time, and RL can take it from there.

FILE is a JSONL, one example a line: {"prompt": a question, "completion": its whole answer, tags
included}. Each becomes a user turn and an assistant turn before the question, in the prompt's
format (template.render_prompt). Every question of the task carries them (`shots`, a field of the
problem), so rollouts, evaluation and the checkpoint's run (its --shots) render the same prompt;
the examples are the same for every question, so they join the prefix the sampler and the trainer
run once (batch.py). An example that is a held-out question is refused.

    printf '%s\\n' '{"prompt": "What is 3 + 5?", "completion": "<think>3 + 5 = 8</think>
        <answer>8</answer>"}' > shots.jsonl
    python train.py --init gguf:FILE --task rg:chain_sum --shots shots.jsonl
"""

import json


def load_shots(path: str) -> list[tuple[str, str]]:
    """The worked examples of a JSONL file -> [(prompt, completion)]; ValueError naming the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
    except OSError as e:
        raise ValueError(f"--shots {path}: cannot read it ({e.strerror})") from None
    shots = []
    for i, line in lines:
        try:
            ex = json.loads(line)
        except json.JSONDecodeError:
            ex = None
        if not (isinstance(ex, dict) and isinstance(ex.get("prompt"), str)
                and isinstance(ex.get("completion"), str)):
            raise ValueError(f"--shots {path}:{i}: each line must be a JSON object with string "
                             f"fields \"prompt\" and \"completion\"")
        shots.append((ex["prompt"], ex["completion"]))
    if not shots:
        raise ValueError(f"--shots {path}: no examples in it (one JSON object a line)")
    return shots


class WithShots:
    """A task whose problems carry the worked examples (field `shots`); everything else is the
    task's own."""

    def __init__(self, task, shots: list[tuple[str, str]]):
        held_out = {p["prompt"] for p in task.test_set}
        if clash := [q for q, _ in shots if q in held_out]:
            raise ValueError(f"--shots: the example {clash[0]!r} is a held-out question: "
                             f"a worked example must not be one the evaluation asks")
        self.task, self.shots = task, [list(s) for s in shots]
        self.test_set = [self.add(p) for p in task.test_set]

    def add(self, problem: dict) -> dict:
        return {**problem, "shots": self.shots}

    def train_problems(self, rng, n: int) -> list[dict]:
        return [self.add(p) for p in self.task.train_problems(rng, n)]

    def __getattr__(self, name):  # the task's rewards, correct, same, corpus, ...
        return getattr(self.task, name)

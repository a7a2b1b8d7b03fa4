"""
The finale: train with your own functions. When exercises 1-10 pass,

    python train.py --use_exercises --run_name ex

runs the default toy run (GRPO from the shipped base model) with your advantages, KL, clipped
surrogate, aggregation, token weights, log-probs, sampler, KV cache, rewards and update in place of
the project's. It must reach a held-out pass@1 of at least TARGET at its last evaluation, in about
the default run's time on a CPU (README: ~1.3 min; the checks add seconds). Then: python -m
exercises check 11 (it reads out/ex/log.jsonl; EXERCISES_RUN names another run directory).
"""

import json
import os

TITLE = "finale: your GRPO learns the toy task"
EQUATION = "eq. 1-4"
PROJECT = "train.py --use_exercises"
TARGET = 0.6     # held-out pass@1 at the end of the run
__doc__ = __doc__.replace("TARGET", str(TARGET))


def verdict():
    """(passed, message) from the run's log."""
    run = os.environ.get("EXERCISES_RUN", os.path.join("out", "ex"))
    try:
        with open(os.path.join(run, "args.json")) as f:
            used = json.load(f).get("use_exercises")
        with open(os.path.join(run, "log.jsonl")) as f:
            evals = [r for r in map(json.loads, f) if "eval_accuracy" in r]
    except (OSError, ValueError):
        return False, f"no finished run in {run}: python train.py --use_exercises --run_name ex"
    if not used:
        return False, (f"{run} was not trained with --use_exercises: "
                       f"python train.py --use_exercises --run_name ex")
    if len(evals) < 2:
        return False, f"{run} has not finished (no evaluation after training yet)"
    first, last = evals[0]["eval_accuracy"], evals[-1]["eval_accuracy"]
    if last < TARGET:
        return False, (f"held-out pass@1 went {first:.3f} -> {last:.3f} at step "
                       f"{evals[-1]['step']}; the target is {TARGET}")
    return True, (f"PASS: your GRPO took held-out pass@1 {first:.3f} -> {last:.3f} in "
                  f"{evals[-1]['elapsed'] / 60:.1f} min")

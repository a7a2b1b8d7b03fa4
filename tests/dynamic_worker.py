"""
Run by tests/test_objectives.py as one process or under torchrun: train.GRPORun.informative_rollout
(DAPO's dynamic sampling) over scripted rollouts whose informative groups differ by rank, so that
the ranks need different numbers of rounds. Each rank writes what it kept to OUT.rank<r>.json.

    torchrun --standalone --nproc_per_node=2 tests/dynamic_worker.py OUT
"""

import json
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dist  # noqa: E402
import train  # noqa: E402
from batch import pack  # noqa: E402
from rollout import Rollout  # noqa: E402
from sample import Samples  # noqa: E402
from tiny_runs import thread_share  # noqa: E402

G, QUESTIONS, PAD = 2, 4, 0
# per rank, for each round, which of its groups are informative (rewards 0, 1) or not (1, 1):
# rank 0 has its 2 groups at once; rank 1 finds 1, then 0, then 1 (three rounds, two of them extra)
INFORMATIVE = {0: [[True, True], [False], [True]], 1: [[True, False], [False], [True]]}


def scripted(rank, world):
    """A fake GRPORun: rollout() hands out rows whose tokens name (rank, round, group, sample)."""
    run = types.SimpleNamespace(args=types.SimpleNamespace(group_size=G, questions=QUESTIONS,
                                                           dynamic_rounds=int(sys.argv[2])),
                                world=world, rank=rank, tok=types.SimpleNamespace(pad=PAD),
                                reward_fns=[("accuracy", None, 1.0)], rounds=0)

    def rollout(questions=None):
        flags = INFORMATIVE[rank][run.rounds]
        n = (questions or QUESTIONS) // world
        assert n == len(flags), (n, flags)  # each round draws what the neediest rank lacks
        prompts, comps, acc = [], [], []
        for g, informative in enumerate(flags):
            for j in range(G):
                prompts.append([7, 8, 9, 10 + run.rounds])
                comps.append([20 + rank, 30 + run.rounds, 40 + g, 50 + j][:2 + g + j])
                acc.append(float(j) if informative else 1.0)
        run.rounds += 1
        batch = pack(prompts, comps, PAD)
        samples = Samples(batch, -0.5 * batch.completion_mask, torch.zeros(len(prompts), dtype=torch.bool))
        return Rollout(samples, [str(c) for c in comps], {"accuracy": torch.tensor(acc)})

    run.rollout = rollout
    run.reward = lambda ro: train.GRPORun.reward(run, ro)
    return run


def main():
    rank, world, _ = dist.setup("cpu")
    torch.set_num_threads(thread_share(world))  # the workers run at once: each its share of the cores
    ro, log = train.GRPORun.informative_rollout(scripted(rank, world))
    b = ro.samples.batch
    rows = [[t for t, v in zip(r, m) if v] for r, m in zip(b.completions.tolist(), b.valid[:, b.R:].tolist())]
    with open(f"{sys.argv[1]}.rank{rank}.json", "w") as f:
        json.dump({"rows": rows, "accuracy": ro.scores["accuracy"].tolist(), "log": log,
                   "logp": ro.samples.sampler_logp.sum(1).tolist()}, f)
    dist.cleanup()


if __name__ == "__main__":
    main()

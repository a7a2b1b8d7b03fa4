"""
The paper's GRPO against the objectives that came after it, on the default toy, side by side: each
objective x each seed is one train.py run (a job of r1/jobs.py), all from the same cached base
stage (--seed 1337) with their own RL streams (--rl_seed), then one table (held-out pass@1 at
steps 0/10/20/30 as mean +- std over seeds, final held-out length, rollouts generated, wall time)
and one figure of the curves. Every run is the default toy with --minibatches 4 --lr 1.25e-5: four
optimiser steps per rollout, so that the policy moves within it and the ratios that tell the
objectives apart act (with one, every ratio is 1: GSPO is then eq. 1's gradient, CISPO DAPO's
REINFORCE), at a quarter of the rate, so that the pace stays about the default run's and 30 steps
stay under the toy's ceiling. A finished run is not run again (its job.json); --fresh: all again.

    python -m ablations.objectives                       # 5 objectives x 3 seeds: ~30 min, 2 cores
    python -m ablations.objectives --seeds 1337 --steps 10  # a quick look
"""

import argparse
import json
import os
import shutil
import statistics
import sys

from plot import pyplot, read_log, save, smooth
import train_args
from r1.jobs import Job, run_jobs
from runner import Parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (label, its flags over the shared ones)
OBJECTIVES = {
    "grpo": ("GRPO (the paper)", []),
    "dr_grpo": ("Dr. GRPO", ["--adv_scale", "none", "--loss_type", "dr_grpo"]),
    "dapo": ("DAPO", ["--loss_type", "token", "--clip_eps_high", "0.28", "--dynamic_sampling",
                      "--rewards", "accuracy:1,format:1,overlong:1"]),
    "gspo": ("GSPO", ["--ratio_level", "sequence"]),
    "cispo": ("CISPO", ["--policy_loss", "cispo", "--loss_type", "token"]),
}
SHARED = ["--minibatches", "4", "--lr", "1.25e-5", "--no_plot", "--save_every", "0"]
EVAL_STEPS = (0, 10, 20, 30)


def jobs(a):
    """The base stage (train.py with --rl_steps 0: it trains and caches the base model), then one
    run per objective and seed, each in a directory of its own under <out_dir>/objectives/."""
    d = os.path.join(a.out_dir, "objectives")
    train = [sys.executable, "-m", "train", "--out_dir", a.out_dir, "--model", a.model, *a.extra]
    base = Job("base", train + ["--run_name", "objectives/base", "--rl_steps", "0",
                                "--eval_problems", "4", "--no_plot"],
               os.path.join(d, "base", "log.jsonl"), meta=os.path.join(d, "base", "job.json"),
               fresh_dir=os.path.join(d, "base"))
    runs = [Job(f"{name}-{seed}", train + ["--run_name", f"objectives/{name}-{seed}", "--rl_seed",
                                           str(seed), "--rl_steps", str(a.steps), *SHARED, *flags],
                os.path.join(d, f"{name}-{seed}", "ckpt.pt"), needs=["base"],
                meta=os.path.join(d, f"{name}-{seed}", "job.json"),
                log=os.path.join(d, f"{name}-{seed}", "output.txt"),
                fresh_dir=os.path.join(d, f"{name}-{seed}"))
            for name, (_, flags) in OBJECTIVES.items() for seed in a.seeds]
    return [base, *runs]


def mean_std(xs) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}" if len(xs) > 1 \
        else f"{xs[0]:.3f}"


def summary(a):
    """name -> its runs' logs, for the objectives whose runs are all there."""
    d = os.path.join(a.out_dir, "objectives")
    return {name: [read_log(os.path.join(d, f"{name}-{seed}")) for seed in a.seeds]
            for name in OBJECTIVES}


def table(a, logs) -> str:
    """The markdown table: pass@1 at each evaluation (mean ± std over seeds), the last evaluation's
    held-out length, the rollouts generated (summed over the steps) and the wall time per run."""
    steps = [s for s in EVAL_STEPS if s <= a.steps]
    head = ("| objective | " + " | ".join(f"pass@1 step {s}" for s in steps)
            + " | final length | rollouts | wall time |")
    lines = [head, "| --- " * (len(steps) + 1) + "| ---: | ---: | ---: |"]
    for name, runs in logs.items():
        evals = [{r["step"]: r for r in log if "eval_accuracy" in r} for log in runs]
        cells = [mean_std([e[s]["eval_accuracy"] for e in evals]) for s in steps]
        length = statistics.mean(e[max(e)]["eval_length"] for e in evals)
        rollouts = statistics.mean(sum(r.get("dyn_rollouts", a.questions * a.group_size)
                                       for r in log if "reward" in r) for log in runs)
        wall = statistics.mean(log[-1]["elapsed"] for log in runs) / 60
        lines.append(f"| {OBJECTIVES[name][0]} | " + " | ".join(cells)
                     + f" | {length:.1f} | {rollouts:.0f} | {wall:.1f} min |")
    return "\n".join(lines)


def figure(logs, path):
    """Held-out pass@1 (mean over seeds, the band their range), train accuracy and mean length per
    step (mean over seeds, 5-step mean), one line per objective."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for c, (name, runs) in enumerate(logs.items()):
        color, label = f"C{c}", OBJECTIVES[name][0]
        steps = sorted(r["step"] for r in runs[0] if "eval_accuracy" in r)
        ev = [[{r["step"]: r for r in log}[s]["eval_accuracy"] for log in runs] for s in steps]
        axes[0].plot(steps, [statistics.mean(v) for v in ev], "o-", color=color, label=label)
        axes[0].fill_between(steps, [min(v) for v in ev], [max(v) for v in ev], color=color,
                             alpha=0.12)
        for ax, key in ((axes[1], "accuracy"), (axes[2], "length")):
            per_step = [[r[key] for r in log if "reward" in r] for log in runs]
            n = min(map(len, per_step))
            y = [statistics.mean(v[i] for v in per_step) for i in range(n)]
            ax.plot(range(1, n + 1), smooth(y), color=color, label=label)
    for ax, title in zip(axes, ("held-out pass@1 (mean over seeds; band: their range)",
                                "train accuracy (mean over seeds, 5-step mean)",
                                "mean response length, tokens (train)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save(fig, path)


def parse_args(argv=None):
    p = Parser(prog="python -m ablations.objectives",
               description="GRPO, Dr. GRPO, DAPO, GSPO and CISPO on the default toy, side by side.",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out_dir", default="out", help="runs go to <out_dir>/objectives/")
    p.add_argument("--seeds", default="1337,1,2", help="RL seeds (--rl_seed), comma-separated")
    p.add_argument("--steps", type=int, default=30, help="RL steps of each run")
    p.add_argument("--model", default="tiny", help="the toy's model preset (nano: about half time)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, the cores shared among them (r1/jobs.py)")
    p.add_argument("--figure", default=None,
                   help="where the figure goes (default <out_dir>/objectives/objectives.png)")
    p.add_argument("--fresh", action="store_true", help="run everything again")
    a, extra = p.parse_known_args(argv)
    a.extra = extra  # any other train.py flag, given to every run (e.g. --eval_problems 50)
    try:
        a.seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {a.seeds!r}: give integers, comma-separated")
    p.check([(a.steps >= 1, "--steps must be at least 1"), (a.jobs >= 1, "--jobs must be >= 1"),
             (len(set(a.seeds)) == len(a.seeds), "--seeds: each seed once")])
    sizes = argparse.ArgumentParser(add_help=False)  # for the rollouts' count: train.py's
    for k in ("questions", "group_size"):
        sizes.add_argument(f"--{k}", type=int, default=train_args.parser.get_default(k))
    a.questions, a.group_size = sizes.parse_known_args(extra)[0].__dict__.values()
    return a


def main(argv=None):
    a = parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    if a.fresh:
        shutil.rmtree(os.path.join(a.out_dir, "objectives"), ignore_errors=True)
    run_jobs(jobs(a), a.jobs, say=lambda line: print(line, flush=True))
    logs = summary(a)
    text = table(a, logs)
    path = figure(logs, a.figure or os.path.join(a.out_dir, "objectives", "objectives.png"))
    with open(os.path.join(a.out_dir, "objectives", "table.md"), "w") as f:
        f.write(text + "\n")
    print(text + f"\n\nfigure: {path}\nruns: " + json.dumps([j.name for j in jobs(a)[1:]]))


if __name__ == "__main__":
    main()

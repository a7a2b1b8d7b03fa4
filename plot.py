"""
Training curves in the spirit of the R1-Zero figures: reward, accuracy and mean response length
against RL step, from a run's log.jsonl.

    python plot.py out/<run>          # writes out/<run>/curves.png (train.py calls this at the end)
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_log(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no log found: {path}")
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a run killed mid-write leaves at most one partial last line
                pass
    return records


def series(records, key):
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in pts], [v for _, v in pts]


def smooth(values, k=5):
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def plot_run(run_dir):
    records = read_log(run_dir)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        ("reward", "reward (accuracy + format)", [("reward", "train, per step")]),
        ("accuracy", "accuracy", [("accuracy", "train, per step"), ("eval_accuracy", "held-out pass@1")]),
        ("length", "mean response length (tokens)", [("length", "train, per step"), ("eval_length", "held-out")]),
    ]
    for ax, (_, title, keys) in zip(axes, panels):
        for key, label in keys:
            x, y = series(records, key)
            if not x:
                continue
            if key.startswith("eval_"):
                ax.plot(x, y, "o-", color="C3", label=label, zorder=3)
            else:
                ax.plot(x, y, color="C0", alpha=0.25)
                ax.plot(x, smooth(y), color="C0", label=f"{label} (5-step mean)")
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"GRPO on the toy task: {os.path.basename(os.path.normpath(run_dir))}")
    fig.tight_layout()
    out = os.path.join(run_dir, "curves.png")
    fig.savefig(out + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(out + ".tmp.png", out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python plot.py out/<run>")
    print(plot_run(sys.argv[1]))

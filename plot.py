"""
Training curves in the spirit of the R1-Zero figures: reward, accuracy, mean response length and
the share of responses that reflect (reflection.py) against RL step, from a run's log.jsonl. A line a crash tore (at most the last one) is skipped and
reported; a run still going is redrawn every few seconds with --follow.

    python plot.py out/<run>              # writes out/<run>/curves.png (train.py calls this at the end)
    python plot.py out/<run> --follow     # redraws it every 10 s while the run goes on (Ctrl-C ends)
"""

import os
import sys
import time

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402

from runs import Parser, read_jsonl  # noqa: E402


def read_log(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no log found: {path}: give the directory of a run, e.g. out/<run>")
    records, torn = read_jsonl(path)
    if torn:  # a run killed mid-write, or one writing right now
        print(f"note: skipped {len(torn)} torn line(s) of {path} (line {', '.join(map(str, torn))})", file=sys.stderr)
    return records


def series(records, key):
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in pts], [v for _, v in pts]


def smooth(values, k=5):
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def plot_run(run_dir):
    records = read_log(run_dir)
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    panels = [
        ("reward", "reward (accuracy + format)", [("reward", "train, per step")]),
        ("accuracy", "accuracy", [("accuracy", "train, per step"), ("eval_accuracy", "held-out pass@1")]),
        ("length", "mean response length (tokens)", [("length", "train, per step"), ("eval_length", "held-out")]),
        ("reflection", "responses that recheck an earlier step", [("reflection", "train, per step"),
                                                                   ("eval_reflection", "held-out")]),
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


def main(argv=None):
    parser = Parser(description="Draw a run's curves.png from its log.jsonl.")
    parser.add_argument("run_dir", help="the run's directory, e.g. out/<run>")
    parser.add_argument("--follow", action="store_true", help="redraw every --every seconds until Ctrl-C")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between redraws with --follow")
    args = parser.parse_args(argv)
    if args.every <= 0:
        parser.error("--every must be > 0")
    print(plot_run(args.run_dir), flush=True)
    try:
        while args.follow:
            time.sleep(args.every)
            plot_run(args.run_dir)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

"""
Training curves in the spirit of the R1-Zero figures: reward, accuracy, mean response length and
the share of responses that reflect (reflection.py) against RL step, from a run's log.jsonl
(log.jsonl is the source of truth: every figure is drawn from it). A line a crash tore (at most
the last one) is skipped and reported; a run still going is redrawn every few seconds with
--follow. `plot_runs` puts the first steps of several runs side by side (r1/pipeline.py's cold start
against R1-Zero). Left out: the trackers (TensorBoard, W&B): log.jsonl is the source.

    python plot.py out/<run>            # writes out/<run>/curves.png (train.py calls it at the end)
    python plot.py out/<run> --follow   # redraws it every 10 s while the run goes on (Ctrl-C ends)
"""

import os
import sys
import time

from runner import Parser, atomic_write, read_json, read_jsonl


def pyplot():
    """matplotlib.pyplot, imported when a figure is first drawn: ~0.3 s of start-up that a run
    which draws none (train.py --help, --no_plot) does not pay."""
    import matplotlib  # heavy, and only for drawing: not on the import path of train.py
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    return plt


def read_log(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no log found: {path}: give the directory of a run, "
                                f"e.g. out/<run>")
    records, torn = read_jsonl(path)
    if torn:  # a run killed mid-write, or one writing right now
        print(f"note: skipped {len(torn)} torn line(s) of {path} "
              f"(line {', '.join(map(str, torn))})", file=sys.stderr)
    return records


def series(records, key):
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [s for s, _ in pts], [v for _, v in pts]


def run_task(run_dir) -> str:
    """The run's --task, from its args.json (the toy's, addition, when there is none)."""
    path, task = os.path.join(run_dir, "args.json"), "addition"
    if os.path.isfile(path):
        task = read_json(path, "the run's flags").get("task", task)
    return "the toy task" if task == "addition" else task


def smooth(values, k=5):
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1])
            for i in range(len(values))]


def plot_run(run_dir):
    records = read_log(run_dir)
    panels = [
        ("reward", "reward (accuracy + format)", [("reward", "train, per step")]),
        ("accuracy", "accuracy", [("accuracy", "train, per step"),
                                  ("eval_accuracy", "held-out pass@1")]),
        ("length", "mean response length (tokens)", [("length", "train, per step"),
                                                     ("eval_length", "held-out")]),
        ("reflection", "responses that recheck an earlier step",
         [("reflection", "train, per step"), ("eval_reflection", "held-out")]),
    ]
    # a run with tool calls (engines/tools.py): two panels more
    if any("tool_share" in r for r in records):
        panels += [("tools", "rollouts that call the interpreter",
                    [("tool_share", "train, per step"), ("eval_tool_share", "held-out")]),
                   ("tool_acc", "accuracy: calling vs not (train)", [("acc_tool", "calls"),
                                                                     ("acc_no_tool", "no call")])]
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.75 * len(panels), 4.2))
    for ax, (_, title, keys) in zip(axes, panels):
        for key, label in keys:
            x, y = series(records, key)
            if not x:
                continue
            if key.startswith("eval_"):
                ax.plot(x, y, "o-", color="C3", label=label, zorder=3)
            else:
                color = "C2" if key == "acc_no_tool" else "C0"
                ax.plot(x, y, color=color, alpha=0.25)
                ax.plot(x, smooth(y), color=color, label=f"{label} (5-step mean)")
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a panel the log has no values for stays empty
            ax.legend(fontsize=8)
    fig.suptitle(f"GRPO on {run_task(run_dir)}: {os.path.basename(os.path.normpath(run_dir))}")
    return save(fig, os.path.join(run_dir, "curves.png"))


def plot_runs(runs, keys, n, path):
    """The first n RL steps of several runs side by side, one panel per key of their logs (e.g.
    reward_accuracy, format); runs: (run directory, label) pairs."""
    fig, axes = pyplot().subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for run_dir, label in runs:
        log = [r for r in read_log(run_dir) if "reward" in r][:n]
        for ax, key in zip(axes[0], keys):
            ax.plot([r["step"] for r in log], [r[key] for r in log], label=label)
            ax.set_xlabel("RL step")
            ax.set_title(f"train {key.removeprefix('reward_')} (per step)")
    axes[0, 0].legend()
    return save(fig, path)


def save(fig, path):
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    pyplot().close(fig)
    return path


def main(argv=None):
    parser = Parser(description="Draw a run's curves.png from its log.jsonl.")
    parser.add_argument("run_dir", help="the run's directory, e.g. out/<run>")
    parser.add_argument("--follow", action="store_true",
                        help="redraw every --every seconds until Ctrl-C")
    parser.add_argument("--every", type=float, default=10.0,
                        help="seconds between redraws with --follow")
    args = parser.parse_args(argv)
    if args.every <= 0:
        parser.error("--every must be > 0")
    with parser.errors():
        print(plot_run(args.run_dir), flush=True)
    try:
        while args.follow:
            time.sleep(args.every)
            plot_run(args.run_dir)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

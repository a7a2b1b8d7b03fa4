"""
Experiment trackers: the numbers of log.jsonl also in TensorBoard or Weights & Biases, where users
of TRL or nanochat already look (--report_to tensorboard,wandb on train.py and r1/sft.py).
log.jsonl stays the source of truth (plot.py draws from it, a resume cuts it back); a tracker gets
a copy of each record as it is appended (runner.RunLog writes both, on rank 0 only):

    <run_dir>/tensorboard/   TensorBoard's event files: tensorboard --logdir out/
    <run_dir>/wandb/         the W&B run's local files; with WANDB_MODE=offline nothing leaves the
                             machine (no account needed) and `wandb sync` uploads it later

Every number of a record is logged at the record's step under its log.jsonl name (a nested table,
evaluation.py's eval_by_<field>, as eval_by_<field>/<value>/<key>); text and booleans are not. The
run's flags are the run's config (W&B's config; a table in TensorBoard's text tab). A resumed run
continues the same tracker run: TensorBoard writes to the same directory and hides what was logged
from the resumed step on (purge_step, as log.jsonl sets those lines aside), W&B resumes the run of
the same id (found in the name of its directory, wandb/[offline-]run-<time>-<id>); W&B's steps only
go forward, so a step it already holds keeps its first values. TensorBoard stores scalars as
float32.
Left out: other trackers (MLflow, Comet, ...), media, system metrics beyond W&B's own.

    python train.py --report_to tensorboard && tensorboard --logdir out/
    WANDB_MODE=offline python train.py --report_to tensorboard,wandb
"""

import importlib.util
import numbers
import os
import re

NAMES = ("tensorboard", "wandb")  # each is also the name of its pip package


def parse(report_to):
    """'none', or tracker names comma-separated -> [names]; ValueError naming an unknown one."""
    if report_to == "none":
        return []
    names = [n.strip() for n in report_to.split(",")]
    for n in names:
        if n not in NAMES:
            raise ValueError(f"--report_to {report_to}: unknown tracker '{n}': use none, or one or "
                             f"more of {', '.join(NAMES)}, comma-separated")
    return list(dict.fromkeys(names))


def check(report_to):
    """The one-line error that opening these trackers would meet, or None: an unknown name, or a
    package that is not installed (found, not imported: every rank checks, rank 0 alone imports
    it)."""
    try:
        names = parse(report_to)
    except ValueError as e:
        return str(e)
    for name in names:
        if importlib.util.find_spec(name) is None:
            return f"--report_to {name}: the {name} package is not installed: pip install {name}"
    return None


class Trackers:
    """The trackers of --report_to for one run: opened at its start (start: the first step it will
    log, > 1 on a resume), log(record) at record["step"], close() at its end. config: the
    flags."""

    def __init__(self, report_to, run_dir, config, start=1):
        names, self.tb, self.wandb = parse(report_to), None, None
        if "tensorboard" in names:
            # optional dependency: only with --report_to tensorboard
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(run_dir, "tensorboard"),
                                    purge_step=start if start > 1 else None)
            self.tb.add_text("flags", flags_table(config), start - 1)
        if "wandb" in names:
            import wandb  # optional dependency: only with --report_to wandb
            run_id = wandb_run_id(run_dir) if start > 1 else None
            # the mode (online, offline, disabled) is W&B's own: WANDB_MODE, or `wandb offline`
            try:
                self.wandb = wandb.init(dir=run_dir, project=os.environ.get("WANDB_PROJECT", "aha"),
                                        name=os.path.basename(run_dir), config=config, id=run_id,
                                        resume="allow" if run_id else None)
            except wandb.errors.UsageError as e:  # not logged in, most often
                raise ValueError(f"--report_to wandb: {str(e).rstrip('.')}; or set "
                                 f"WANDB_MODE=offline (the run stays in {run_dir}/wandb/, "
                                 f"`wandb sync` uploads it later)") from None

    def log(self, record):
        step = record["step"]
        scalars = {k: v for k, v in numbers_in(record) if k != "step"}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()  # on disk at each record, as log.jsonl is
        if self.wandb is not None:
            # a second record at the same step (sft's evaluation) adds to it
            self.wandb.log(scalars, step=step)

    def close(self, failed=False):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
        self.tb = self.wandb = None


def numbers_in(record, prefix=""):
    """(name, number) for each number of a record, nested tables' as outer/inner names."""
    for k, v in record.items():
        if isinstance(v, dict):
            yield from numbers_in(v, f"{prefix}{k}/")
        elif isinstance(v, numbers.Real) and not isinstance(v, bool):
            yield f"{prefix}{k}", v


def flags_table(config):
    # a | would end the cell
    rows = [f"| {k} | {str(v).replace('|', '/')} |" for k, v in config.items()]
    return "\n".join(["| flag | value |", "| --- | --- |", *rows])


def wandb_run_id(run_dir):
    """The id of the latest W&B run in run_dir (W&B names its directory
    [offline-]run-<time>-<id>), or None."""
    root = os.path.join(run_dir, "wandb")
    found = [m for n in (os.listdir(root) if os.path.isdir(root) else [])
             if (m := re.fullmatch(r"(?:offline-)?run-(\d{8}_\d{6})-(\w+)", n))]
    return max(found, key=lambda m: m.group(1)).group(2) if found else None

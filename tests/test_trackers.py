"""Experiment trackers (interop/trackers.py, runner.RunLog), on real train.py and r1/sft.py runs with W&B offline:
TensorBoard's event files, read back by TensorBoard's own reader (EventAccumulator), and the W&B
run's .wandb log, read back by W&B's own (`wandb leet inspect --json`), hold log.jsonl's numbers at
log.jsonl's steps, written by rank 0 only under torchrun; a resume continues the same tracker runs;
a missing package is one line before any work, and nothing imports one unless asked to."""

import argparse
import ast
import glob
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # tests/requirements.txt
from torch.utils.tensorboard import SummaryWriter
from wandb.util import get_core_path

import runner
from r1 import sft
import train
from interop import trackers
from tasks import AdditionTask
from tiny_runs import DDP, ROOT, copy_run, wandb_offline


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def numbers(log, cast=float):
    """{name: [(step, value)]} of every number in the log's records (the step itself aside)."""
    out = {}
    for r in log:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, []).append((r["step"], cast(v)))
    return out


def tensorboard_scalars(run_dir):
    """{tag: [(step, value)]} as TensorBoard shows them: every event file of the directory, in order."""
    ea = EventAccumulator(os.path.join(run_dir, "tensorboard"))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}, ea


def wandb_runs(run_dir, wait=30.0):
    """[(run id, [records])] of each W&B run directory in run_dir, oldest first: its .wandb log read by
    wandb-core, the reader `wandb leet inspect --json` runs (called directly: the CLI's start-up is seconds).
    W&B's service writes the offline log on its own; on a loaded machine it can lag the run's finish(), so a
    log without its history yet is read again, for up to `wait` seconds."""
    out = []
    for path in sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))):
        deadline = time.time() + wait
        while True:
            res = subprocess.run([get_core_path(), "leet", "inspect", "--no-observability", "--json", "--run-file",
                                  path, os.path.join(run_dir, "wandb")], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            records = [json.loads(line) for line in res.stdout.splitlines()]
            if any(r["type"] == "history" for r in records) or time.time() > deadline:
                break
            time.sleep(1)
        out.append((os.path.basename(path)[len("run-"):-len(".wandb")], records))
    return out


def wandb_history(records):
    """{name: [(step, value)]} of a W&B run's history, without W&B's own _step, _runtime, _timestamp."""
    out = {}
    for r in records:
        if r["type"] == "history":
            for k, v in r["history"]["item"].items():
                if not k.startswith("_"):
                    out.setdefault(k, []).append((r["history"]["step"].get("num", 0), math.nan if v == "NaN" else v))
    return out


@pytest.fixture(scope="module")
def ddp(ddp_run, tmp_path_factory):
    """conftest.py's 2-process torchrun run of train.py reporting to both trackers, copied here (the
    resume below writes to it) -> (the tmp directory of its W&B offline settings, the copy)."""
    tmp, run_dir, _ = ddp_run
    return tmp, copy_run(run_dir, str(tmp_path_factory.mktemp("trackers")))


def test_the_trackers_hold_log_jsonl_numbers_written_by_rank_0_only(ddp):
    _, run_dir = ddp
    log = read_log(run_dir)
    assert [r["step"] for r in log] == [0, 1, 2]
    want = numbers(log)
    assert {"reward", "kl", "grad_norm", "sampler_logp_diff", "eval_accuracy", "eval_pass@1", "rollout_s"} <= want.keys()
    # rank 0 alone wrote: one event file, one W&B run
    assert len(os.listdir(os.path.join(run_dir, "tensorboard"))) == 1
    (run_id, records), = wandb_runs(run_dir)
    # TensorBoard: every number at its step, as float32 (how it stores scalars); nothing else
    scalars, ea = tensorboard_scalars(run_dir)
    np.testing.assert_equal(scalars, numbers(log, np.float32))
    flags = ea.Tensors("flags/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| rl_steps | 2 |" in flags and "| report_to | tensorboard,wandb |" in flags
    # W&B: every number at its step, exactly; the flags as the run's config
    np.testing.assert_equal(wandb_history(records), want)
    config = next(r["run"]["config"]["update"] for r in records if r["type"] == "run")
    with open(os.path.join(run_dir, "args.json")) as f:
        assert {k: v for k, v in config.items() if k != "_wandb"} == json.load(f)
    assert trackers.wandb_run_id(run_dir) == run_id


def test_a_resume_continues_the_same_tracker_runs(ddp, monkeypatch, capsys):
    tmp, run_dir = ddp
    for k, v in wandb_offline(tmp).items():
        monkeypatch.setenv(k, v)
    # as if the run had logged a step 3 before it was killed, after its step-2 checkpoint
    with SummaryWriter(os.path.join(run_dir, "tensorboard")) as w:
        w.add_scalar("reward", 99.0, 3)
    with open(os.path.join(run_dir, "log.jsonl"), "a") as f:
        f.write('{"step": 3, "reward": 99.0}\n')
    # in this one process, its --report_to read back from args.json
    train.main(["--out_dir", os.path.dirname(run_dir), "--run_name", "ddp-straight", "--rl_steps", "3", "--resume"])
    assert "resuming" in capsys.readouterr().out
    log = read_log(run_dir)
    assert [r["step"] for r in log] == [0, 1, 2, 3] and log[3]["reward"] != 99.0
    # TensorBoard hides what was logged from the resumed step on: its step 3 is the resumed run's
    scalars, _ = tensorboard_scalars(run_dir)
    np.testing.assert_equal(scalars, numbers(log, np.float32))
    # W&B: a second offline run of the same id (`wandb sync` uploads them in order, as one run) with step 3
    (first, _), (second, records) = wandb_runs(run_dir)
    assert first == second
    np.testing.assert_equal(wandb_history(records), numbers(log[3:]))


def test_sft_reports_its_steps_and_its_evaluation(ddp, monkeypatch):
    tmp, run_dir = ddp
    for k, v in wandb_offline(tmp).items():
        monkeypatch.setenv(k, v)
    data = tmp / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n"
                            for p, c in AdditionTask(n_test=4).textbook(8, seed=0)))
    sft.main(["--init", os.path.join(run_dir, "ckpt.pt"), "--data", str(data), "--epochs", "1", "--batch", "4",
              "--eval_problems", "2", "--eval_samples", "1", "--n_test", "4", "--max_new_tokens", "16",
              "--out_dir", str(tmp / "out"), "--run_name", "sft", "--report_to", "wandb,tensorboard"])
    sft_dir = str(tmp / "out" / "sft")
    log = read_log(sft_dir)
    assert [r["step"] for r in log] == [1, 2, 2] and "eval_accuracy" in log[2]  # the evaluation: at the last step
    want = numbers(log)
    scalars, _ = tensorboard_scalars(sft_dir)
    np.testing.assert_equal(scalars, numbers(log, np.float32))
    (_, records), = wandb_runs(sft_dir)
    np.testing.assert_equal(wandb_history(records), want)  # the evaluation's numbers join the step's


def test_a_record_numbers_nested_tables_and_skips_the_rest():
    record = {"step": 4, "reward": 1.5, "n": 3, "nan": math.nan, "crashed": True, "name": "x",
              "eval_by_level": {"1": {"pass@1": 0.5, "problems": 2}}}
    assert dict(trackers.numbers_in(record)) == {"step": 4, "reward": 1.5, "n": 3, "nan": math.nan,
                                                 "eval_by_level/1/pass@1": 0.5, "eval_by_level/1/problems": 2}


@pytest.mark.parametrize("cli, missing", [("train", "wandb"), ("train", "tensorboard"), ("sft", "tensorboard")])
def test_a_missing_package_is_one_line_before_any_work(cli, missing, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now fails, as when it is not installed
    out = str(tmp_path / "out")
    argv = ({"train": DDP, "sft": ["--init", "nowhere.pt", "--data", "nowhere.jsonl"]}[cli]
            + ["--out_dir", out, "--run_name", "r", "--report_to", f"tensorboard,{missing}"])
    with pytest.raises(SystemExit) as e:
        {"train": train.main, "sft": sft.main}[cli](argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"--report_to {missing}: the {missing} package is not installed: pip install {missing}" in err
    assert not os.path.exists(out)  # nothing started


def test_an_unknown_tracker_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(DDP + ["--out_dir", str(tmp_path), "--report_to", "tensorbord"])
    assert e.value.code == 2 and "--report_to tensorbord: unknown tracker 'tensorbord'" in capsys.readouterr().err


def test_no_tracker_is_imported_unless_asked_for(tmp_path, monkeypatch):
    # no project file imports one at its top (interop/trackers.py does in the function that opens it) ...
    for path in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True):  # glob skips hidden directories
        if not {"tests", "site-packages"} & set(os.path.relpath(path, ROOT).split(os.sep)):
            with open(path) as f:
                tree = ast.parse(f.read())
            names = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
            names += [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
            assert not [n for n in names if n.split(".")[0] in ("wandb", "tensorboard") or "tensorboard" in n], path
    # ... and with none asked for, the checks and the run log import none: here they cannot be imported
    for name in ("wandb", "tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, name, None)
    train.parse_args(DDP + ["--out_dir", str(tmp_path)])
    with runner.start_run(str(tmp_path / "r"), argparse.Namespace(lr=1.0), 1, 1) as log:
        log.write({"step": 1, "loss": 0.5})
    assert read_log(str(tmp_path / "r")) == [{"step": 1, "loss": 0.5}]

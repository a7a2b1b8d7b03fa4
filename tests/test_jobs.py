"""r1/jobs.py, the pipeline runner, on tiny commands that log when they start and end; and r1/pipeline.py's
pipeline built on it (which stage needs which)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from r1 import pipeline as r1
from r1.jobs import Job, run_jobs, to_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a job: waits `sleep` seconds, then writes {start, end, threads} to its product
SCRIPT = ("import json, os, sys, time; t = time.time(); time.sleep(float(sys.argv[2])); "
          "json.dump({'start': t, 'end': time.time(), 'threads': os.environ['OMP_NUM_THREADS']}, open(sys.argv[1], 'w'))")


def job(tmp, name, needs=(), sleep=0.3, code=None, meta=True):
    cmd = [sys.executable, "-c", code or SCRIPT, str(tmp / f"{name}.json"), str(sleep)]
    return Job(name, cmd, str(tmp / f"{name}.json"), list(needs), meta=str(tmp / f"{name}.meta") if meta else None,
               log=str(tmp / f"{name}.log"))


def read(tmp, name):
    return json.loads((tmp / f"{name}.json").read_text())


def test_a_job_starts_once_what_it_needs_is_done_and_independent_ones_run_side_by_side(tmp_path):
    # a -> b; c independent; d needs b and c
    run_jobs([job(tmp_path, "a"), job(tmp_path, "b", ["a"]), job(tmp_path, "c", sleep=1.0),
              job(tmp_path, "d", ["b", "c"])], n_jobs=2, n_cores=2, say=lambda s: None)
    a, b, c, d = (read(tmp_path, n) for n in "abcd")
    assert a["end"] <= b["start"] and max(b["end"], c["end"]) <= d["start"]
    assert a["start"] < c["end"] and c["start"] < a["end"]  # a and c overlapped
    assert a["threads"] == c["threads"] == "1"  # two cores, two jobs
    assert d["threads"] == "2"  # alone at the end: both cores
    meta = json.loads((tmp_path / "d.meta").read_text())
    assert meta["threads"] == 2 and meta["wall_s"] > 0.3 and meta["command"][-1] == "0.3"


def test_one_job_at_a_time_runs_the_ready_ones_in_the_order_given(tmp_path):
    said = []
    # given in the order b, x, a: b needs a, so x goes first, then a, then b
    run_jobs([job(tmp_path, "b", ["a"], sleep=0), job(tmp_path, "x", sleep=0), job(tmp_path, "a", sleep=0)],
             n_jobs=1, n_cores=2, say=said.append)
    assert [s.split(":")[0] for s in said if not s.endswith(" s")] == ["== x", "== a", "== b"]
    assert read(tmp_path, "x")["threads"] == "2" and not (tmp_path / "x.log").exists()  # one at a time: the terminal


def test_a_sigterm_to_the_runner_stops_its_jobs(tmp_path):
    # the runner in a process of its own, killed while its job sleeps: the job goes with it
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from r1.jobs import Job, run_jobs; "  # no torch to import
            "run_jobs([Job('slow', [sys.executable, '-c', 'import time; time.sleep(30)', sys.argv[2]], sys.argv[2], "
            "log=sys.argv[2] + '.log')], n_jobs=2, say=print)")
    runner = subprocess.Popen([sys.executable, "-c", code, ROOT, str(tmp_path / "slow.json")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "slow.json.log").exists():
        assert runner.poll() is None and time.time() < deadline, runner.stderr.read() if runner.poll() else "no job"
        time.sleep(0.05)
    time.sleep(0.5)  # the job has started
    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=30)
    assert runner.returncode == 1 and "stopped by signal 15" in err
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "slow.json")], capture_output=True).returncode == 1  # none left


def test_done_jobs_are_skipped_and_a_product_without_its_meta_is_redone(tmp_path):
    run_jobs([job(tmp_path, "a"), job(tmp_path, "b", ["a"])], n_jobs=2, n_cores=2, say=lambda s: None)
    first = read(tmp_path, "a"), read(tmp_path, "b")
    (tmp_path / "b.meta").unlink()  # b cut short after writing its product: not done
    said = []
    run_jobs([job(tmp_path, "a"), job(tmp_path, "b", ["a"])], n_jobs=2, n_cores=2, say=said.append)
    assert read(tmp_path, "a") == first[0] and read(tmp_path, "b") != first[1]
    assert any(s.startswith("== a: done before") for s in said)


def test_a_job_whose_command_changed_runs_again_and_so_does_every_job_that_reads_it(tmp_path):
    jobs = lambda b_sleep: [job(tmp_path, "a", sleep=0), job(tmp_path, "b", ["a"], sleep=b_sleep),  # noqa: E731
                            job(tmp_path, "c", ["b"], sleep=0), job(tmp_path, "d", ["a"], sleep=0)]
    run_jobs(jobs(0), n_jobs=1, n_cores=1, say=lambda s: None)
    first = {n: read(tmp_path, n) for n in "abcd"}
    assert to_run(jobs(0)) == {}
    assert to_run(jobs(0.1)) == {"b": "changed", "c": "b runs again"}  # b's flags changed; c reads b; d reads only a
    said = []
    run_jobs(jobs(0.1), n_jobs=1, n_cores=1, say=said.append)
    assert [n for n in "abcd" if read(tmp_path, n) != first[n]] == ["b", "c"]
    assert "== b: done before, runs again: its command changed" in said and "== c: done before, runs again: b runs again" in said
    assert to_run(jobs(0.1)) == {}


def test_a_job_that_was_to_run_again_stays_to_do_when_the_call_is_cut_short_before_it(tmp_path):
    # b's flags change; a failing job x, given before c, stops the call after b and before c: the next
    # call still runs c (its meta went at the start), though b is done and c's command never changed
    chain = lambda b_sleep: [job(tmp_path, "a", sleep=0), job(tmp_path, "b", ["a"], sleep=b_sleep),  # noqa: E731
                             job(tmp_path, "c", ["b"], sleep=0)]
    run_jobs(chain(0), n_jobs=1, n_cores=1, say=lambda s: None)
    fail = job(tmp_path, "x", ["b"], code="import sys; sys.exit(1)")
    with pytest.raises(SystemExit, match="job x failed"):
        run_jobs(chain(0.1)[:2] + [fail, chain(0.1)[2]], n_jobs=1, n_cores=1, say=lambda s: None)
    assert to_run(chain(0.1)) == {"c": "to do"}


def test_a_fresh_dir_is_emptied_just_before_its_job_starts(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("from an earlier, other run")
    j = job(tmp_path, "a", sleep=0)
    j.fresh_dir = str(tmp_path / "run")
    run_jobs([j], n_jobs=1, n_cores=1, say=lambda s: None)
    assert os.listdir(tmp_path / "run") == [] and read(tmp_path, "a")


def test_a_failing_job_stops_the_others_and_says_which_with_its_output(tmp_path):
    boom = "import sys; print('the reason it broke'); sys.exit(3)"
    slow = job(tmp_path, "slow", sleep=30)
    with pytest.raises(SystemExit) as e:
        run_jobs([slow, job(tmp_path, "boom", code=boom), job(tmp_path, "after", ["boom"])], n_jobs=2, n_cores=2,
                 say=lambda s: None)
    msg = str(e.value)
    assert "the reason it broke" in msg and "error: job boom failed (exit status 3)" in msg and "boom.log" in msg
    assert not (tmp_path / "slow.json").exists() and not (tmp_path / "after.json").exists()  # stopped; never started


def test_exit_zero_without_its_product_or_failing_the_check_is_a_failure(tmp_path):
    with pytest.raises(SystemExit, match="job quiet failed .it wrote no .*quiet.json"):
        run_jobs([job(tmp_path, "quiet", code="pass")], n_jobs=1, n_cores=1, say=lambda s: None)
    with pytest.raises(SystemExit, match=r"job a failed \(too small\)"):
        run_jobs([job(tmp_path, "a")], n_jobs=1, n_cores=1, check=lambda j: "too small", say=lambda s: None)
    assert not (tmp_path / "a.meta").exists()  # not done: the next run redoes it


def test_a_missing_or_circular_need_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="job a needs nope, which is not a job"):
        run_jobs([job(tmp_path, "a", ["nope"])], n_jobs=1, say=lambda s: None)
    with pytest.raises(RuntimeError, match="wait on each other"):
        run_jobs([job(tmp_path, "a", ["b"]), job(tmp_path, "b", ["a"])], n_jobs=1, say=lambda s: None)
    assert not os.path.exists(tmp_path / "a.json")


@pytest.mark.parametrize("flags", [[], ["--lang_mix"], ["--rl2_rm_steps", "0"]])
def test_r1_pipeline_needs_are_the_products_each_stage_reads(tmp_path, monkeypatch, flags):
    monkeypatch.setattr(sys, "argv", ["r1/pipeline.py", "--out_dir", str(tmp_path), *flags])
    a = r1.parse_args()
    js, commands = r1.pipeline(a, str(tmp_path / "r1"), r1.chosen_stages(a))
    needs = {j.name: set(j.needs) for j in js}
    assert needs["base"] == needs["cold_data"] == needs["student_base"] == set()
    assert needs["cold_sft"] == {"base", "cold_data"} and needs["rs_sft"] == {"base", "rs_data"}
    assert needs["rs_data"] == {"reasoning_rl"} and needs["traces"] == {"rl2"}
    assert needs["student_sft"] == {"student_base", "traces"} and needs["student_grpo"] == {"student_base"}
    assert needs["rl2"] == ({"rl2_rules", "rm"} if a.rl2_rm_steps else {"rl2_rules"})
    assert ("rm" in needs) == (a.rl2_rm_steps > 0)
    assert ("r1zero_lang" in needs) == ("reasoning_rl_rules" in needs) == a.lang_mix
    assert all(needs[f"{s} eval"] == {s} for s, *_ in r1.ROWS if s in needs)
    stages = [s for s in r1.chosen_stages(a) if s in needs]
    assert [j.name for j in js] == stages + [f"{s} eval" for s, *_ in r1.ROWS if s in needs]  # pipeline order, then the rows


@pytest.mark.parametrize("flags, r1zero, reasoning", [([], 30, 30), (["--lang_mix"], 30, 15),
                                                     (["--lang_mix", "--reasoning_rl_steps", "7"], 30, 7)])
def test_r1_rl_steps_of_each_ablation_pair(tmp_path, monkeypatch, flags, r1zero, reasoning):
    # --rl_steps sizes R1-Zero's pair, --reasoning_rl_steps the cold-started pair; --lang_mix's sizes yield to flags given
    monkeypatch.setattr(sys, "argv", ["r1/pipeline.py", "--out_dir", str(tmp_path), *flags])
    a = r1.parse_args()
    commands = r1.stage_commands(a)
    steps = lambda s: int(commands[s][0][commands[s][0].index("--rl_steps") + 1])  # noqa: E731
    pairs = [("r1zero", "r1zero_lang"), ("reasoning_rl", "reasoning_rl_rules")] if a.lang_mix else [("r1zero",), ("reasoning_rl",)]
    assert {steps(s) for s in pairs[0]} == {r1zero} and {steps(s) for s in pairs[1]} == {reasoning}


def test_r1_measures_again_an_eval_json_an_older_r1_wrote(tmp_path, monkeypatch):
    # an older r1/pipeline.py wrote eval.json itself (keys pass@1, ...) and no eval_job.json: the stage is done, its row is not
    monkeypatch.setattr(sys, "argv", ["r1/pipeline.py", "--out_dir", str(tmp_path)])
    a = r1.parse_args()
    js = {j.name: j for j in r1.pipeline(a, str(tmp_path / "r1"), r1.chosen_stages(a))[0]}
    base = tmp_path / "r1" / "base"
    base.mkdir(parents=True)
    (base / "ckpt.pt").write_text("")
    (base / "stage.json").write_text(json.dumps({"command": js["base"].cmd}))
    (base / "eval.json").write_text(json.dumps({"pass@1": 0.3}))
    assert js["base"].done() and not js["base eval"].done()


def test_r1_runs_again_the_stages_a_changed_size_reaches_and_only_those(tmp_path, monkeypatch):
    # every job of a --lang_mix pipeline finished (its product and meta as run_jobs writes them); then
    # --reasoning_rl_steps changes: the pair, what reads reasoning_rl downstream, and their rows run again
    def pipeline(*flags):
        monkeypatch.setattr(sys, "argv", ["r1/pipeline.py", "--out_dir", str(tmp_path), "--lang_mix", *flags])
        a = r1.parse_args()
        return r1.pipeline(a, str(tmp_path / "r1"), r1.chosen_stages(a))[0]
    for j in pipeline():
        os.makedirs(os.path.dirname(j.product), exist_ok=True)
        open(j.product, "w").close()
        with open(j.meta, "w") as f:
            json.dump({"command": j.cmd}, f)
    assert to_run(pipeline()) == {}
    rerun = to_run(pipeline("--reasoning_rl_steps", "10"))
    stages = ["reasoning_rl", "reasoning_rl_rules", "rs_data", "rs_sft", "rl2_rules", "rl2", "traces", "student_sft"]
    assert list(rerun) == stages + [f"{s} eval" for s in ("reasoning_rl", "reasoning_rl_rules", "rs_sft", "rl2", "student_sft")]
    assert rerun["reasoning_rl"] == rerun["reasoning_rl_rules"] == "changed" and rerun["rs_data"] == "reasoning_rl runs again"
    # --from rs_data empties its directory: it runs again with what reads it, not the student base beside it
    shutil.rmtree(tmp_path / "r1" / "rs_data")
    assert list(to_run(pipeline())) == ["rs_data", "rs_sft", "rl2_rules", "rl2", "traces", "student_sft", "rs_sft eval",
                                        "rl2 eval", "student_sft eval"]


@pytest.mark.parametrize("flags, error", [
    (["--from", "r1zero_lang"], "--from r1zero_lang: not a stage of this pipeline (it is --lang_mix's)"),
    (["--from", "student_sft_grpo", "--no_student_sft_grpo"], "--from student_sft_grpo: not a stage of this pipeline"),
    (["--from", "rm", "--rl2_rm_steps", "0"], "--from rm: --rl2_rm_steps 0 runs no reward model")])
def test_r1_from_a_stage_this_pipeline_does_not_run_is_one_line(tmp_path, monkeypatch, capsys, flags, error):
    monkeypatch.setattr(sys, "argv", ["r1/pipeline.py", "--out_dir", str(tmp_path), *flags])
    with pytest.raises(SystemExit) as e:
        r1.parse_args()
    assert e.value.code == 2 and error in capsys.readouterr().err and not os.listdir(tmp_path)

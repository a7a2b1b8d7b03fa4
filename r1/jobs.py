"""
A pipeline's jobs, each a command that reads what other jobs wrote, run as subprocesses: a job
starts once every job it needs is done, up to --jobs at once, the CPU's cores split among the ones
that run (each gets OMP_NUM_THREADS). r1/pipeline.py's stages and their evaluations are its jobs.

Why several at once: a stage that cannot keep every core busy (a tiny model on a many-core machine)
leaves cores that another stage can use. On a 2-core CPU it does not pay (measured: docs/r1.md), so
r1/pipeline.py runs one job at a time unless told otherwise. Ready jobs start in the order given
(make's rule; r1/pipeline.py gives its stages in pipeline order, the evaluations last). A job is
done when its product file is there and, for a job with a meta file, that file, written here when
the job succeeds with its wall time and its command. So a pipeline that was cut short skips the
jobs that finished, and runs again a job whose command changed (new flags) and every job that
reads what a job about to run writes. What is simplified: the cores are split when a job starts
and never rebalanced; no estimate of a job's length is used; a job's inputs are known by its
needs, not by their contents (a file edited by hand is not noticed).

    python -m r1 --jobs 4    # r1/pipeline.py's stages, up to four at a time, the cores shared
"""

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field

from runner import atomic_write


@dataclass
class Job:
    name: str
    cmd: list[str]
    # the file it writes: done when it is there (and meta, when meta is set)
    product: str
    # the jobs whose files it reads
    needs: list[str] = field(default_factory=list)
    # written when it succeeds: {"wall_s", "threads", "command"}
    meta: str | None = None
    # its stdout and stderr while others run beside it (None: the terminal's)
    log: str | None = None
    # emptied just before it starts (for a command that refuses to overwrite)
    fresh_dir: str | None = None

    def state(self) -> str:
        """'done'; 'to do' (no product, or a product without its meta: cut short); or 'changed'
        (done by another command: its meta's, less the interpreter and the script's directory,
        differs)."""
        if not os.path.isfile(self.product) or (self.meta and not os.path.isfile(self.meta)):
            return "to do"
        if self.meta:
            with open(self.meta) as f:
                if shown(json.load(f).get("command", [])) != shown(self.cmd):
                    return "changed"
        return "done"

    def done(self) -> bool:
        return self.state() == "done"


def shown(cmd: list[str]) -> list[str]:
    """A command less its interpreter and its script's directory: what is printed, and compared."""
    return [os.path.basename(c) for c in cmd[1:2]] + cmd[2:]


def to_run(jobs: list[Job]) -> dict[str, str]:
    """name -> why, for every job that has to run: not done, or it reads what such a job writes (a
    fixed point: the jobs that need those, and so on). In the order given."""
    why = {j.name: state for j in jobs if (state := j.state()) != "done"}
    while more := {j.name: f"{need} runs again" for j in jobs for need in j.needs
                   if need in why and j.name not in why}:
        why |= more
    return {j.name: why[j.name] for j in jobs if j.name in why}


def cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_jobs(jobs: list[Job], n_jobs: int, n_cores: int | None = None, check=None, say=print):
    """Run every job that is not done, each once the jobs it needs are, at most n_jobs at once.
    check(job) -> an error line or None, after a job exits 0 (its product is checked here). A job
    that fails stops the others (SIGTERM) and raises SystemExit with its last lines of output."""
    names = {j.name for j in jobs}
    if bad := [(j.name, n) for j in jobs for n in j.needs if n not in names]:
        raise ValueError(f"job {bad[0][0]} needs {bad[0][1]}, which is not a job")
    why = to_run(jobs)
    todo = [j for j in jobs if j.name in why]
    for j in jobs:
        if j.name not in why:
            say(f"== {j.name}: done before ({j.product})")
        elif why[j.name] != "to do":  # a finished job: say why it runs again
            reason = "its command changed" if why[j.name] == "changed" else why[j.name]
            say(f"== {j.name}: done before, runs again: {reason}")
    # not done until it succeeds again, even if this call is cut short before it starts
    for j in todo:
        if j.meta and os.path.isfile(j.meta):
            os.remove(j.meta)
    n_cores = n_cores or cores()
    running = {}  # name -> (job, Popen, threads, start time, log file or None)
    sigterm = signal.signal(signal.SIGTERM, stop)  # a kill of the runner reaches its jobs (below)
    try:
        while todo or running:
            waiting = set(running) | {t.name for t in todo}
            ready = [j for j in todo if not waiting.intersection(j.needs)]
            free = n_cores - sum(r[2] for r in running.values())
            start = ready[:max(0, min(n_jobs - len(running), free, len(ready)))]
            # the free cores shared out, the first jobs taking what is left over
            for i, j in enumerate(start):
                threads = free // len(start) + (i < free % len(start))
                running[j.name] = launch(j, threads, n_jobs > 1, say)
                todo.remove(j)
            if not running:
                raise RuntimeError("jobs wait on each other: " + ", ".join(j.name for j in todo))
            time.sleep(0.2)
            for name, (j, p, threads, t0, log) in list(running.items()):
                if p.poll() is not None:
                    del running[name]
                    finish(j, p.returncode, threads, time.time() - t0, log, check, say)
    finally:
        # a failure, ^C or a SIGTERM: the jobs stop too (each cuts its work short as SIGTERM
        # tells it)
        signal.signal(signal.SIGTERM, sigterm)
        for j, p, *_ in running.values():
            p.terminate()
        for j, p, *_ in running.values():
            p.wait()


def stop(signum, frame):
    raise SystemExit(f"stopped by signal {signum}: the running jobs were stopped; "
                     "run it again to go on")


def launch(j: Job, threads: int, to_log: bool, say):
    say(f"== {j.name}: {' '.join(shown(j.cmd))}"
        + (f"  [{threads} thread{'s' * (threads > 1)}]" if to_log else ""))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if j.fresh_dir:
        shutil.rmtree(j.fresh_dir, ignore_errors=True)
        os.makedirs(j.fresh_dir)
    log = None
    # several at once: each one's output to its own file, not interleaved on the terminal
    if to_log:
        os.makedirs(os.path.dirname(j.log) or ".", exist_ok=True)
        log = open(j.log, "w")
    p = subprocess.Popen(j.cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None)
    return j, p, threads, time.time(), log


def finish(j: Job, code: int, threads: int, wall: float, log, check, say):
    if log:
        log.close()
    if code:
        error = f"exit status {code}"
    elif not os.path.isfile(j.product):
        error = f"it wrote no {j.product}"
    else:
        error = check(j) if check else None
    if error:
        tail = ""
        if log:
            with open(j.log) as f:
                tail = "".join(f.readlines()[-15:])
        where = f"; its output: {j.log}" if log else ""
        raise SystemExit(f"{tail}error: job {j.name} failed ({error}){where}")
    if j.meta:
        atomic_write(j.meta, json.dumps({"wall_s": wall, "threads": threads, "command": j.cmd}))
    say(f"== {j.name}: done in {wall:.0f} s")

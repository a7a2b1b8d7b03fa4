"""
Running model-generated code, which is hostile by assumption: the paper's compiler-checked code
reward runs the policy's programs against test cases, and a policy under RL will find whatever
the runner lets through.

`run_python(source, stdin)` runs a program in a separate process, in layers:
  - a new session (process group), killed as a whole at the end, whatever happened;
  - a wall-clock timeout, and rlimits on CPU time, address space (memory), file size (which also
    caps the output: stdout and stderr go to files), open files, core dumps and processes (root
    ignores the last one: there the hook below is what stops a fork bomb);
  - an empty temporary working directory, removed afterwards, and an empty environment (python
    -I: no inherited variables, so no secrets, no user site, no PYTHONPATH);
  - inside the child, an audit hook (PEP 578), installed before the program runs and impossible
    to remove from Python, that refuses subprocesses, fork/exec, sockets, ctypes, and opening
    files for writing outside the working directory.
What is left out: this is not a kernel-level sandbox (no namespaces, seccomp or containers); a
program that escapes Python through a native extension already on the machine is not stopped by
the hook, only by the rlimits. Run untrusted code at scale in a container as well.

    python -m pytest tests/test_sandbox.py
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# runs first in the child: installs the hook, then executes program.py from the working directory
BOOTSTRAP = r"""
import os, sys
ROOT = os.path.realpath(os.getcwd())
WRITE = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
BLOCKED = ("subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
           "pty.", "socket.", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill", "sys.addaudithook",
           "os.chdir", "os.symlink", "os.link", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree")

# the functions the hook needs are bound now: a program that patches os.path later cannot fool it
def hook(event, args, realpath=os.path.realpath, commonpath=os.path.commonpath, fsdecode=os.fsdecode,
         ROOT=ROOT, WRITE=WRITE, BLOCKED=BLOCKED):
    if event.startswith(BLOCKED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or path is None:
            return
        writing = (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE)
        full = realpath(fsdecode(path))
        if writing and commonpath([full, ROOT]) != ROOT:
            raise PermissionError(f"sandbox: writing {full} is not allowed")

sys.addaudithook(hook)
source = open("program.py").read()
exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})  # its own namespace
"""


@dataclass
class Result:
    returncode: int   # negative: killed by that signal (SIGKILL on timeout, SIGXCPU, SIGXFSZ)
    stdout: str
    stderr: str
    timed_out: bool


def _limit(cpu_s, memory_bytes, output_bytes, processes):
    def apply():  # runs in the child, between fork and exec
        for what, value in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory_bytes),
                            (resource.RLIMIT_FSIZE, output_bytes), (resource.RLIMIT_NOFILE, 64),
                            (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(what, (value, value))
        # root ignores RLIMIT_NPROC; there the audit hook's ban on fork/exec/subprocess is what holds
        resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    return apply


def _read(path, limit):
    with open(path, errors="replace") as f:
        return f.read(limit)


def run_python(source: str, stdin: str = "", timeout: float = 2.0, cpu_s: int = 2, memory_mb: int = 256,
               output_bytes: int = 1 << 20, processes: int = 16) -> Result:
    """Run `source` as a Python program with `stdin`, within the limits above."""
    work = tempfile.mkdtemp(prefix="aha-sandbox-")
    try:
        with open(os.path.join(work, "program.py"), "w") as f:
            f.write(source)
        out_path, err_path = os.path.join(work, ".stdout"), os.path.join(work, ".stderr")
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", BOOTSTRAP], cwd=work, env={},
                                    stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
                                    preexec_fn=_limit(cpu_s, memory_mb << 20, output_bytes, processes))
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: stray children too
                except ProcessLookupError:
                    pass
                proc.wait()
        return Result(proc.returncode, _read(out_path, output_bytes), _read(err_path, output_bytes), timed_out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

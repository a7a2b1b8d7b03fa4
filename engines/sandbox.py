"""
Running model-generated code, which is hostile by assumption: the paper's compiler-checked code
reward runs the policy's programs against test cases, and a policy under RL will find whatever
the runner lets through.

`run_python(source, stdin)` runs a program under kernel-level isolation that does not depend on
Python's cooperation, built from what a stock Linux host provides (bubblewrap, util-linux): an
unprivileged uid without capabilities; its own user, PID, network, IPC, UTS and mount namespaces,
the program being the init of its PID namespace, so nothing it starts outlives the run; a
read-only filesystem but for two small private tmpfs; an empty environment; a seccomp filter on
x86_64; rlimits (CPU, memory, output, open files, processes) and a wall-clock timeout. Process
creation, threads and file writes are allowed inside, because they are contained.

What is left out: the seccomp filter is a deny-list, so a kernel exploit through the remaining
system calls is not stopped; no cgroup, so memory is bounded per process; world-readable files
under /usr can be read. Where the isolation cannot be set up, run_python refuses with one line
(SandboxError); it runs code without isolation only when asked by the loudly named opt-out,
run_python(..., unsafe_no_isolation=True) or AHA_UNSAFE_NO_SANDBOX=1. Needs `apt-get install
bubblewrap` and unprivileged user namespaces. Each layer in detail, and the cost: docs/sandbox.md.

    python -m pytest tests/test_sandbox.py
    python -m engines.sandbox    # the cost of one sandboxed run, and of a code reward's 48 programs
"""

import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

UID = 1 << 30  # the sandbox's uid and gid when the trainer is root: far above any real account's
UNSAFE_ENV = "AHA_UNSAFE_NO_SANDBOX"  # =1: run untrusted code WITHOUT isolation
SCRATCH = "/tmp"  # the sandbox's working directory, a private tmpfs


# seccomp, a second layer (x86_64 only): the system calls behind most kernel privilege escalations,
# none of which a Python program needs, fail with EPERM (numbers from asm/unistd_64.h)
DENIED = dict(ptrace=101, syslog=103, uselib=134, pivot_root=155, acct=163, mount=165, umount2=166,
              swapon=167, swapoff=168, reboot=169, init_module=175, delete_module=176, quotactl=179,
              kexec_load=246, add_key=248, request_key=249, keyctl=250, unshare=272,
              perf_event_open=298, name_to_handle_at=303, open_by_handle_at=304, setns=308,
              process_vm_readv=310, process_vm_writev=311, finit_module=313, kexec_file_load=320,
              bpf=321, userfaultfd=323, io_uring_setup=425, io_uring_enter=426,
              io_uring_register=427, open_tree=428, move_mount=429, fsopen=430, fsconfig=431,
              fsmount=432, fspick=433, mount_setattr=442)


def seccomp_filter() -> bytes:
    """The filter for bwrap --seccomp, as classic BPF (struct sock_filter[]): another architecture's
    calls (i386 through int 0x80) kill the process, x32 calls and DENIED fail with EPERM, the rest
    pass."""
    # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    # SECCOMP_RET_KILL_PROCESS, _ERRNO | EPERM, _ALLOW
    kill, eperm, allow = 0x80000000, 0x00050001, 0x7FFF0000
    nrs = sorted(DENIED.values())
    # seccomp_data.arch == AUDIT_ARCH_X86_64
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, kill),
            # seccomp_data.nr; x32 calls have this bit
            (ld, 0, 0, 0), (jge, len(nrs) + 1, 0, 0x40000000)]
    # jump to the last instruction: EPERM
    prog += [(jeq, len(nrs) - i, 0, nr) for i, nr in enumerate(nrs)]
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm)]
    return b"".join(struct.pack("HBBI", *ins) for ins in prog)


class SandboxError(RuntimeError):
    """The isolation cannot be set up here; the message says what is missing."""


@dataclass
class Result:
    returncode: int   # negative: killed by that signal (SIGKILL on the timeout or the CPU limit)
    stdout: str
    stderr: str
    timed_out: bool


def _reachable(path):
    """Whether any user may run `path`: o+rx on it, o+x on every directory above it (a pyenv under
    /root fails this)."""
    parts = path.split("/")
    dirs = ["/".join(parts[:i]) for i in range(2, len(parts))]
    return (os.path.isfile(path) and all(os.stat(d).st_mode & 0o001 for d in dirs)
            and os.stat(path).st_mode & 0o005 == 0o005)


def _python():
    """The child's interpreter and the prefix to bind for it: the trainer's own when the sandbox
    user can run it, else the system's."""
    own = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    if _reachable(own):
        return own, os.path.realpath(sys.base_prefix)
    for exe in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if _reachable(exe):
            return exe, "/usr"
    raise SandboxError(f"sandbox: the interpreter {own} is not readable by an unprivileged user "
                       f"and there is no /usr/bin/python3: install python3 "
                       f"(apt-get install python3-minimal)")


_checked = None


def check():
    """What the isolation needs, found once: (bwrap, interpreter, its prefix). Raises SandboxError
    with one line saying what is missing. Call it at start-up to refuse before long work starts."""
    global _checked
    if _checked:
        return _checked
    hint = f" (or set {UNSAFE_ENV}=1 to run untrusted code WITHOUT isolation)"
    if sys.platform != "linux":
        raise SandboxError(f"sandbox: needs Linux namespaces, this is {sys.platform}{hint}")
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise SandboxError(
            f"sandbox: bubblewrap is not installed: apt-get install bubblewrap{hint}")
    if not os.path.isfile("/usr/bin/prlimit"):
        raise SandboxError(
            f"sandbox: /usr/bin/prlimit is missing: apt-get install util-linux{hint}")
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                raise SandboxError(f"sandbox: user namespaces are disabled: "
                                   f"sysctl -w user.max_user_namespaces=15000{hint}")
    except FileNotFoundError:
        raise SandboxError(f"sandbox: this kernel has no user namespaces "
                           f"(/proc/sys/user/max_user_namespaces){hint}")
    python, prefix = _python()
    _checked = bwrap, python, prefix
    # the whole chain once: bwrap's own error if any link fails
    r = run_python("print(6 * 7)", timeout=10)
    if r.stdout != "42\n":
        _checked = None
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise SandboxError(f"sandbox: isolation cannot be set up here: {why}{hint}")
    return _checked


def _command(program_fd, info_fd, seccomp_fd, cpu_s, memory_bytes, output_bytes, processes,
             scratch_bytes):
    bwrap, python, prefix = _checked
    limits = ["/usr/bin/prlimit", f"--cpu={cpu_s}", f"--as={memory_bytes}",
              f"--fsize={output_bytes}", "--nofile=64", "--core=0", f"--nproc={processes}", "--"]
    binds = [] if prefix == "/usr" or prefix.startswith("/usr/") else ["--ro-bind", prefix, prefix]
    # --info-fd: it writes the program's host pid there, for the timeout
    return [bwrap, "--info-fd", str(info_fd),
            "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session",
            # the program is the PID namespace's init: bwrap returns after the kernel has killed
            # the rest
            "--as-pid-1",
            "--clearenv", "--setenv", "PATH", "/usr/bin",
            "--ro-bind", "/usr", "/usr", *binds,
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--proc", "/proc", "--dev", "/dev", "--size", str(scratch_bytes), "--tmpfs", SCRATCH,
            # multiprocessing's semaphores live here
            "--size", str(scratch_bytes), "--tmpfs", "/dev/shm",
            "--ro-bind-data", str(program_fd), f"{SCRATCH}/program.py", "--chdir", SCRATCH,
            # bwrap's own tmpfs for both: unbounded if writable
            "--remount-ro", "/dev", "--remount-ro", "/",
            *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
            *limits, python, "-I", "-S", "program.py"]


_warned = False


def _unsafe_command(cpu_s, memory_bytes, output_bytes):
    global _warned
    if not _warned:  # once per process, on stderr
        print(f"WARNING: sandbox: running model-generated code WITHOUT isolation ({UNSAFE_ENV}): "
              f"it can read, write and signal whatever the trainer can", file=sys.stderr)
        _warned = True
    return ["/usr/bin/prlimit", f"--cpu={cpu_s}", f"--as={memory_bytes}",
            f"--fsize={output_bytes}", "--nofile=64", "--core=0", "--",
            sys.executable, "-I", "-S", "program.py"]


def _memfd(name, data):
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _read(path, limit):
    with open(path, errors="replace") as f:
        return f.read(limit)


def _kill(proc, info):
    """Kill a sandbox that is still running. The program is the init of its PID namespace: killed,
    the kernel kills everything else in the namespace before bwrap, its parent, sees it exit."""
    pid = None
    if info is not None:  # None: the unsafe path, a plain process group
        try:
            pid = json.loads(os.read(info, 4096)).get("child-pid")
        except (BlockingIOError, ValueError):
            pass  # bwrap is still setting up
    try:
        # bwrap has not reaped it, so the pid cannot have been reused
        if pid and proc.poll() is None:
            os.kill(pid, signal.SIGKILL)
        else:
            # bwrap itself; --die-with-parent takes the program along
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_python(source: str, stdin: str = "", timeout: float = 2.0, cpu_s: int = 2,
               memory_mb: int = 256, output_bytes: int = 1 << 20, processes: int = 16,
               scratch_mb: int = 16, unsafe_no_isolation: bool = False) -> Result:
    """Run `source` as a Python program with `stdin`, isolated, within the limits above."""
    unsafe = unsafe_no_isolation or os.environ.get(UNSAFE_ENV) == "1"
    if not unsafe:
        check()
    # root-only (0700): stdout and stderr, opened here
    host = tempfile.mkdtemp(prefix="aha-sandbox-")
    program = info = seccomp = read_info = None
    try:
        out_path, err_path = os.path.join(host, "stdout"), os.path.join(host, "stderr")
        limits = (cpu_s, memory_mb << 20, output_bytes, processes, scratch_mb << 20)
        if unsafe:
            with open(os.path.join(host, "program.py"), "w") as f:
                f.write(source)
            cmd, fds, cwd, user = _unsafe_command(*limits[:3]), (), host, {}
        else:
            # bwrap copies it into the scratch tmpfs
            program = _memfd("program.py", source.encode())
            seccomp = (_memfd("seccomp", seccomp_filter()) if platform.machine() == "x86_64"
                       else None)
            read_info, info = os.pipe()  # bwrap writes the host pid of the sandbox's init here
            os.set_blocking(read_info, False)
            cmd = _command(program, info, seccomp, *limits)
            fds, cwd = [fd for fd in (program, info, seccomp) if fd is not None], host
            user = dict(user=UID, group=UID, extra_groups=[]) if os.geteuid() == 0 else {}
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, cwd=cwd, env={}, stdin=subprocess.PIPE, stdout=out,
                                    stderr=err, pass_fds=fds, start_new_session=True, **user)
            for fd in (program, info, seccomp):
                if fd is not None:
                    os.close(fd)
            program = info = seccomp = None
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                # timed out (or interrupted): nothing it started outlives the run
                if proc.poll() is None:
                    _kill(proc, read_info)
                proc.wait()
        rc = proc.returncode
        if not unsafe and rc > 128:  # bwrap exits 128 + n when the program was killed by signal n
            rc = 128 - rc
        return Result(rc, _read(out_path, output_bytes), _read(err_path, output_bytes), timed_out)
    finally:
        for fd in (program, info, seccomp, read_info):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(host, ignore_errors=True)


def bench(n=50, tests=48, workers=4):
    """The cost of the isolation: one trivial program at a time, then a code reward's load (16
    completions x 3 test cases, as rewards.code_reward runs them: a pool of `workers` threads)."""
    check()
    t0 = time.perf_counter()
    for _ in range(n):
        run_python("pass")
    print(f"one trivial program: {(time.perf_counter() - t0) / n * 1000:.1f} ms")
    program = "a, b = map(int, input().split())\nprint(a + b)\n"
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda i: run_python(program, f"{i} {i}\n"), range(tests)))
    dt = time.perf_counter() - t0
    assert [r.stdout for r in results] == [f"{2 * i}\n" for i in range(tests)]
    print(f"{tests} test programs in {workers} threads "
          f"(a code reward of 16 completions x 3 tests): {dt:.2f} s ({tests / dt:.0f} programs/s)")


if __name__ == "__main__":
    bench()

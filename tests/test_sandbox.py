"""Hostile programs against sandbox.run_python, one per route, each asserting that the harmful side
effect is absent (a marker file outside the scratch directory was not created, a secret did not
appear in the output, the trainer was not signalled, a server in the test saw no connection, no
process of the sandbox's uid is alive afterwards), not merely that the program failed.

The policy they check: inside the sandbox a program may fork, spawn, write files and start threads,
because all of it is contained (bounded by rlimits, confined to the scratch tmpfs, killed at the
end); what it must never do is reach anything outside. The process-creation routes therefore also
assert that the route worked inside, so that the containment, not a refusal, is what is tested.
The battery runs in parallel, in the test process, which plays the trainer: it stays alive and keeps
its data throughout. Needs bubblewrap (apt-get install bubblewrap); runs as root, as in CI.

    python -m pytest -q tests/test_sandbox.py
"""

import os
import platform
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from engines import sandbox
from engines.sandbox import SandboxError, run_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "hunter2-" + os.urandom(4).hex()
SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

# prepended to every program: each attempt prints whether the kernel let it through, then END
PRELUDE = """import os, sys, signal, time
def attempt(f, *a):
    try:
        print("allowed:", repr(f(*a))[:200])
    except BaseException as e:
        print("refused:", type(e).__name__, str(e)[:200])
"""
SH = "['/usr/bin/sh', '-c', 'echo x > MARKER; sleep 30 &']"  # a shell that writes outside and leaves a child
FORK_EXEC = """import _posixsubprocess
r, w = os.pipe()
pid = _posixsubprocess.fork_exec([b'/usr/bin/sh', b'-c', b'echo x > MARKER'], [b'/usr/bin/sh'], True, (), None,
    None, -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None, -1, None, False)
return os.waitpid(pid, 0)"""

# (name, program, check): MARKER, DATA, SECRET_PATH, PARENT, PGID, PORT, ABSTRACT are filled in per run;
# a check gets (result, world, name) and asserts the harmful side effect is absent
ROUTES = {
    # --- process creation: allowed inside, contained ---
    "os.fork": ("pid = os.fork()\nif pid == 0:\n    attempt(lambda: open('MARKER', 'w').write('x'))\n    os._exit(0)\n"
                "attempt(os.waitpid, pid, 0)", "spawned"),
    "os.posix_spawn": (f"attempt(lambda: os.waitpid(os.posix_spawn('/usr/bin/sh', {SH}, {{}}), 0))", "spawned"),
    "subprocess": (f"import subprocess\nattempt(subprocess.run, {SH})", "spawned"),
    "os.system": ("attempt(os.system, 'echo x > MARKER; sleep 30 &')", "spawned"),
    "os.execv": (f"sys.stdout.flush()\nos.execv('/usr/bin/sh', {SH}[:2] + ['echo x > MARKER; echo allowed; echo END'])",
                 "spawned"),
    "multiprocessing": ("import multiprocessing as mp\n"
                        "def write():\n    open('MARKER', 'w').write('x')\n"
                        "p = mp.Process(target=write)\nattempt(p.start)\np.join()", "spawned"),
    "pty.fork": ("import pty\npid, fd = pty.fork()\nif pid == 0:\n    open('MARKER', 'w').write('x')\n    os._exit(0)\n"
                 "attempt(os.waitpid, pid, 0)", "spawned"),
    "_posixsubprocess": ("def spawn():\n" + "\n".join("    " + line for line in FORK_EXEC.splitlines())
                         + "\nattempt(spawn)", "spawned"),
    "fork bomb": ("n = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n"
                  "        n += 1\nexcept OSError:\n    pass\nprint('forks', n)", "bounded forks"),
    "become root": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nattempt(os.setuid, 0)\nattempt(os.setgid, 0)\n"
                    "attempt(libc.unshare, 0x10000000)\nattempt(libc.setuid, 0)\n"
                    "import subprocess\nattempt(lambda: subprocess.run(['/usr/bin/su', '-c', 'echo x > MARKER'], stdin=-3))\n"
                    "print('euid', os.geteuid(), [l for l in open('/proc/self/status') if l.startswith('CapEff')])",
                    "no root"),
    # --- file writes outside the scratch directory ---
    "open": ("attempt(lambda: open('MARKER', 'w').write('x'))", "no marker"),
    "os.open dir_fd": ("attempt(lambda: os.open('MARKER'[1:], os.O_CREAT | os.O_WRONLY, dir_fd=os.open('/', os.O_RDONLY)))\n"
                       "attempt(lambda: os.makedirs(os.path.dirname('MARKER')))\n"
                       "d = os.open(os.path.dirname('MARKER'), os.O_RDONLY)\n"
                       "attempt(lambda: os.write(os.open(os.path.basename('MARKER'), os.O_CREAT | os.O_WRONLY, dir_fd=d), b'x'))",
                       "no marker"),
    "io.FileIO": ("import io\nattempt(lambda: io.FileIO('MARKER', 'w').write(b'x'))", "no marker"),
    "rename": ("open('x', 'w').write('x')\nattempt(os.rename, 'x', 'MARKER')\nattempt(os.replace, 'x', 'MARKER')", "no marker"),
    "link": ("open('x', 'w').write('x')\nattempt(os.link, 'x', 'MARKER')\nattempt(os.link, 'program.py', 'MARKER')",
             "no marker"),
    "symlink": ("attempt(os.symlink, 'MARKER', 'ln')\nattempt(lambda: open('ln', 'w').write('x'))", "no marker"),
    "/proc/self/cwd": ("for p in ('/proc/self/cwd/' + '../' * 12 + 'MARKER', '/proc/self/root/MARKER', '/proc/1/cwd/../MARKER'):\n"
                       "    attempt(lambda: open(p, 'w').write('x'))", "no marker"),
    "/dev/shm": ("attempt(lambda: open('/dev/shm/' + os.path.basename('MARKER'), 'w').write('x'))", "no shm marker"),
    "the trainer's data": ("attempt(lambda: open('DATA', 'w').write('gone'))\nattempt(os.remove, 'DATA')\n"
                           "attempt(os.truncate, 'DATA', 0)", "data intact"),
    "the project directory": (f"attempt(lambda: open('{REPO}/aha-sandbox-escape', 'w').write('x'))\n"
                              f"attempt(os.listdir, '{REPO}')", "no project write"),
    # --- secrets ---
    "root-only file": ("for p in ('SECRET_PATH', '/etc/shadow', '/root/.bash_history'):\n"
                       "    attempt(lambda: open(p).read())", "no secret"),
    "the parent's /proc": ("for p in ('/proc/PARENT/environ', '/proc/PARENT/cmdline', '/proc/PARENT/root/SECRET_PATH'):\n"
                           "    attempt(lambda: open(p, 'rb').read())\n"
                           "for p in os.listdir('/proc'):\n    attempt(lambda: open(f'/proc/{p}/environ', 'rb').read())",
                           "no secret"),
    "environment": ("print(dict(os.environ))\nattempt(lambda: open('/proc/self/environ', 'rb').read())", "no secret"),
    # --- network ---
    "socket": ("import socket\nattempt(lambda: socket.create_connection(('127.0.0.1', PORT), timeout=1).send(b'NAME'))",
               "no connection"),
    "_socket": ("import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\n"
                "attempt(s.connect, ('127.0.0.1', PORT))\nattempt(s.send, b'NAME')", "no connection"),
    "abstract unix socket": ("import socket\ns = socket.socket(socket.AF_UNIX)\nattempt(s.connect, 'ABSTRACT')\n"
                             "attempt(s.send, b'NAME')", "no connection"),
    "inherited descriptor": ("for fd in range(3, 1024):\n    try:\n        os.write(fd, b'NAME')\n        print('wrote fd', fd)\n"
                             "    except OSError:\n        pass", "no connection"),
    # --- signals ---
    "kill the parent": ("attempt(os.kill, PARENT, signal.SIGUSR1)\nattempt(os.kill, os.getppid(), signal.SIGUSR1)",
                        "no signal"),
    "kill everyone": ("attempt(os.kill, -1, signal.SIGUSR1)", "no signal"),
    "kill the parent's group": ("attempt(os.killpg, PGID, signal.SIGUSR1)", "no signal"),
    # --- native code ---
    "ctypes": ("import ctypes\nlibc = ctypes.CDLL(None)\nattempt(libc.system, b'echo x > MARKER')\n"
               "attempt(libc.kill, PARENT, signal.SIGUSR1)", "marker and signal"),
    "_ctypes": ("import _ctypes\nclass Libc:\n    _handle = _ctypes.dlopen(None, 0)\n"
                "class F(_ctypes.CFuncPtr):\n    _flags_ = _ctypes.FUNCFLAG_CDECL\n"
                "attempt(F(('system', Libc())), b'echo x > MARKER')\nattempt(F(('kill', Libc())), PARENT, 10)",
                "marker and signal"),
    "kernel attack surface": ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                              "for name, nr in (('ptrace', 101), ('keyctl', 250), ('bpf', 321), ('userfaultfd', 323),\n"
                              "                 ('io_uring_setup', 425), ('perf_event_open', 298)):\n"
                              "    print('syscall', name, libc.syscall(nr, 0, 0, 0, 0, 0), ctypes.get_errno())",
                              "seccomp"),
    # --- resource exhaustion ---
    "memory": ("chunks = []\ntry:\n    while True:\n        chunks.append(bytearray(32 << 20))\nexcept MemoryError:\n    pass\n"
               "print('MB', 32 * len(chunks))", "bounded memory"),
    "disk": ("def fill(d):\n    n = 0\n    try:\n        while True:\n            with open(f'{d}/f{n}', 'wb') as f:\n"
             "                f.write(b'x' * (1 << 20))\n            n += 1\n    except OSError:\n        pass\n    return n\n"
             "print('MB', fill('.'), fill('/dev/shm'), fill(''), fill('/dev'))", "bounded disk"),
    "descriptors": ("fds = []\ntry:\n    while True:\n        fds.append(os.open('/dev/null', os.O_RDONLY))\nexcept OSError:\n"
                    "    pass\nprint('fds', len(fds))", "bounded descriptors"),
    "threads": ("import threading\nn = 0\ntry:\n    while True:\n"
                "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n        n += 1\n"
                "except RuntimeError:\n    pass\nprint('threads', n)", "bounded threads"),
    "output": ("sys.stdout.write('x' * 10_000_000)\nsys.stderr.write('y' * 10_000_000)", "bounded output"),
    "cpu": ("while True:\n    pass", "killed"),
}


def processes_of(uid):
    """Host pids of the processes running as `uid`."""
    pids = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{p}/status") as f:
                if int(next(line for line in f if line.startswith("Uid:")).split()[1]) == uid:
                    pids.append(int(p))
        except (OSError, StopIteration):
            pass  # it ended while we looked
    return pids


def serve(server, received):
    """Accept connections on `server` and record every byte that arrives, per connection."""
    def read(conn):
        with conn:
            while data := conn.recv(4096):
                received.append(data)

    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return  # closed at teardown
        received.append(b"<connection>")
        threading.Thread(target=read, args=(conn,), daemon=True).start()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The trainer's side: data, a root-only secret, a secret in its environment, a loopback and an
    abstract-unix server, a connected socket that a careless runner would hand down, and signal traps."""
    tmp = tmp_path_factory.mktemp("trainer")
    w = SimpleNamespace(tmp=tmp, data=tmp / "data.txt", secret=tmp / "secret.txt", received=[], signals=[])
    w.data.write_text("the trainer's checkpoint")
    w.secret.write_text(SECRET)
    w.secret.chmod(0o600)
    os.environ["AHA_TEST_SECRET"] = SECRET
    tcp, unix = socket.create_server(("127.0.0.1", 0)), socket.socket(socket.AF_UNIX)
    w.abstract = f"\0aha-test-{os.getpid()}"
    unix.bind(w.abstract)
    unix.listen()
    for server in (tcp, unix):
        threading.Thread(target=serve, args=(server, w.received), daemon=True).start()
    w.port = tcp.getsockname()[1]
    w.client = socket.create_connection(("127.0.0.1", w.port))
    os.set_inheritable(w.client.fileno(), True)  # the worst case: even an inheritable descriptor must not pass
    old = {s: signal.signal(s, lambda n, _: w.signals.append(n)) for s in SIGNALS}
    w.results = battery(w)
    yield w
    for s, handler in old.items():
        signal.signal(s, handler)
    del os.environ["AHA_TEST_SECRET"]
    for s in (w.client, tcp, unix):
        s.close()


def marker(w, name):
    return str(w.tmp / (re.sub(r"\W", "_", name) + ".marker"))


def program(w, name, body):
    fill = {"MARKER": marker(w, name), "DATA": str(w.data), "SECRET_PATH": str(w.secret), "PARENT": str(os.getpid()),
            "PGID": str(os.getpgrp()), "PORT": str(w.port), "ABSTRACT": w.abstract.replace("\0", "\\0"), "NAME": name}
    for key, value in fill.items():
        body = body.replace(key, value)
    return PRELUDE + body + "\nprint('END')\n"


def battery(w):
    def run(name):
        t0 = time.time()
        r = run_python(program(w, name, ROUTES[name][0]), timeout=1.5)
        return name, (r, time.time() - t0)

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(run, ROUTES))


def check(r, w, name, kind):
    out = r.stdout + r.stderr
    if kind not in ("bounded output", "killed", "spawned"):
        assert r.stdout.rstrip().endswith("END"), "the program did not run to its end"
    if kind == "spawned":  # the route worked inside the sandbox, and nothing reached outside
        assert "allowed" in r.stdout and r.stdout.rstrip().endswith("END")
        assert not os.path.exists(marker(w, name))
    elif kind in ("no marker", "marker and signal"):
        assert not os.path.exists(marker(w, name))
    elif kind == "no shm marker":
        base = os.path.basename(marker(w, name))
        assert not os.path.exists(f"/dev/shm/{base}") and not os.path.exists(f"/tmp/{base}")
    elif kind == "data intact":
        assert w.data.read_text() == "the trainer's checkpoint"
    elif kind == "no project write":
        assert not os.path.exists(f"{REPO}/aha-sandbox-escape") and "engines/sandbox.py" not in out
    elif kind == "no secret":
        assert SECRET not in out and "root:" not in out
    elif kind == "no connection":  # the server thread records what arrives: give a late arrival time to show
        deadline = time.time() + 0.5
        while time.time() < deadline and not any(name.encode() in data for data in w.received):
            time.sleep(0.02)
        assert not any(name.encode() in data for data in w.received)
    elif kind == "no root":
        euid = int(re.search(r"euid (\d+)", r.stdout).group(1))
        assert euid != 0 and "CapEff:\\t0000000000000000" in r.stdout and not os.path.exists(marker(w, name))
    elif kind == "bounded forks":  # the sandbox's init and the program itself count as processes too
        assert int(re.search(r"forks (\d+)", r.stdout).group(1)) <= 16
    elif kind == "bounded memory":
        assert int(re.search(r"MB (\d+)", r.stdout).group(1)) <= 256
    elif kind == "bounded disk":  # 16 MB of scratch, 16 MB of /dev/shm, nothing elsewhere
        here, shm, root, dev = map(int, re.search(r"MB (\d+) (\d+) (\d+) (\d+)", r.stdout).groups())
        assert here <= 16 and shm <= 16 and root == dev == 0
    elif kind == "bounded descriptors":
        assert int(re.search(r"fds (\d+)", r.stdout).group(1)) <= 64
    elif kind == "bounded threads":
        assert int(re.search(r"threads (\d+)", r.stdout).group(1)) <= 16
    elif kind == "bounded output":
        assert len(r.stdout) <= 1 << 20 and len(r.stderr) <= 1 << 20 and r.returncode != 0
    elif kind == "killed":
        assert r.returncode < 0
    elif kind == "seccomp":  # a second layer, on x86_64: each call refused with EPERM before it reaches the kernel
        calls = re.findall(r"syscall (\w+) (-?\d+) (\d+)", r.stdout)
        assert len(calls) == 6 and (platform.machine() != "x86_64" or all(rc == "-1" and e == "1" for _, rc, e in calls))
    elif kind != "no signal":
        raise AssertionError(kind)
    if kind in ("no signal", "marker and signal"):
        assert w.signals == []


@pytest.mark.parametrize("name", list(ROUTES))
def test_hostile_program_has_no_side_effect(name, world):
    r, seconds = world.results[name]
    assert seconds < 5, "the run outlived its timeout"
    check(r, world, name, ROUTES[name][1])


@pytest.mark.parametrize("name, body", [
    ("setsid", "if os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n    os._exit(0)"),
    ("double fork", "if os.fork() == 0:\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(30)\n    os._exit(0)"),
    ("new process group, past the timeout", "if os.fork() == 0:\n    os.setpgid(0, 0)\n    time.sleep(30)\n"
                                            "    os._exit(0)\ntime.sleep(30)"),
])
@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox has a uid of its own only when the trainer is root")
def test_nothing_outlives_the_run(name, body, world):
    r = run_python(PRELUDE + body + "\nprint('END')", timeout=1.0)
    assert r.timed_out or r.stdout.strip() == "END", r
    assert processes_of(sandbox.UID) == []


def test_the_trainer_survives_the_battery_with_its_data(world):
    assert world.data.read_text() == "the trainer's checkpoint" and world.secret.read_text() == SECRET
    assert world.signals == [] and world.received == [b"<connection>"]  # only the trainer's own client
    world.client.send(b"still here")  # its own socket still works
    time.sleep(0.1)
    assert world.received[-1] == b"still here"
    if os.geteuid() == 0:
        assert processes_of(sandbox.UID) == []


def test_the_battery_detects_escapes_without_isolation(world, capfd, monkeypatch):
    """The checks can fail: the same programs, run without isolation, leave their side effects."""
    monkeypatch.setattr(sandbox, "_warned", False)
    for name in ("open", "root-only file", "socket"):
        r = run_python(program(world, name, ROUTES[name][0]), timeout=5, unsafe_no_isolation=True)
        with pytest.raises(AssertionError):
            check(r, world, name, ROUTES[name][1])
    assert "WITHOUT isolation" in capfd.readouterr().err


def test_a_plain_program_runs_with_its_input():
    r = run_python("n = int(input())\nprint(n * 2)", "21\n")
    assert (r.returncode, r.stdout, r.timed_out) == (0, "42\n", False)
    r = run_python("open('notes.txt', 'w').write('ok')\nprint(open('notes.txt').read())")  # its own directory
    assert r.stdout == "ok\n"
    r = run_python("import time\ntime.sleep(60)", timeout=0.5)
    assert r.timed_out and r.returncode == -signal.SIGKILL


def test_no_isolation_refuses_with_one_line(monkeypatch):
    monkeypatch.setattr(sandbox, "_checked", None)
    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap to be found
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    with pytest.raises(SandboxError, match=r"bubblewrap is not installed: apt-get install bubblewrap") as e:
        run_python("print(1)")
    assert "\n" not in str(e.value) and sandbox.UNSAFE_ENV in str(e.value)

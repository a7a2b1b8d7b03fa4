"""Hostile programs against sandbox.run_python: each ends with a defined result within its limits,
and the test process (the trainer, in real use) is untouched."""

import os
import time

import pytest

from sandbox import run_python


def test_a_plain_program_runs_with_its_input():
    r = run_python("n = int(input())\nprint(n * 2)", "21\n")
    assert (r.returncode, r.stdout, r.timed_out) == (0, "42\n", False)
    r = run_python("open('notes.txt', 'w').write('ok')\nprint(open('notes.txt').read())")  # its own directory
    assert r.stdout == "ok\n"


@pytest.mark.parametrize("name, source, check", [
    ("infinite loop", "while True: pass", lambda r: r.returncode < 0),  # killed: wall clock or CPU limit
    ("sleep", "import time\ntime.sleep(60)", lambda r: r.timed_out),
    ("fork bomb", "import os\nwhile True: os.fork()", lambda r: "os.fork is not allowed" in r.stderr),
    ("multiprocessing", "import multiprocessing as mp\nmp.Process(target=print).start()",
     lambda r: r.returncode != 0),
    ("subprocess", "import subprocess\nsubprocess.run(['id'])", lambda r: "subprocess.Popen is not allowed" in r.stderr),
    ("os.system", "import os\nos.system('id')", lambda r: "os.system is not allowed" in r.stderr),
    ("memory bomb", "x = ' ' * 10 ** 10", lambda r: "MemoryError" in r.stderr),
    ("write outside", "open('/tmp/aha-sandbox-escape', 'w').write('x')", lambda r: "not allowed" in r.stderr),
    ("write via ..", "open('../aha-sandbox-escape', 'w').write('x')", lambda r: "not allowed" in r.stderr),
    ("patch the check", "import os\nos.path.realpath = lambda p: '.'\nopen('/tmp/aha-sandbox-escape', 'w')",
     lambda r: "not allowed" in r.stderr),
    ("secrets", "import os\nprint(os.environ.get('AHA_TEST_SECRET'), len(os.environ))",
     lambda r: "hunter2" not in r.stdout),
    ("network", "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", lambda r: "not allowed" in r.stderr),
    ("raw socket", "import socket\nsocket.socket()", lambda r: "not allowed" in r.stderr),
    ("ctypes", "import ctypes\nctypes.CDLL(None).system(b'id')", lambda r: "not allowed" in r.stderr),
    ("10 MB of output", "print('x' * 10_000_000)", lambda r: r.returncode != 0 and len(r.stdout) <= 1 << 20),
    ("kill the parent", "import os\nos.kill(os.getppid(), 9)", lambda r: "not allowed" in r.stderr),
])
def test_hostile_programs_are_contained(name, source, check, monkeypatch):
    monkeypatch.setenv("AHA_TEST_SECRET", "hunter2")
    t0 = time.time()
    r = run_python(source, timeout=2.0)
    assert time.time() - t0 < 5, name
    assert check(r), (name, r)
    assert not os.path.exists("/tmp/aha-sandbox-escape")

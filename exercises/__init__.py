"""
Course exercises: implement the pieces of GRPO yourself, each checked in seconds against the
project's own code, then train with them. Thirteen exercises: ten pieces of GRPO, the finale
(ex11: the toy run with your functions plugged in), the tool-output mask (ex12) and GSPO's
sequence-level ratio (ex13); docs/course.md.

Each exercise N is three files named exNN_<name> (the finale, a run to make, has no stub):
    stubs/exNN_<name>.py   what the student gets: the project function's signature, its spec as
                           a docstring, a body that raises NotImplementedError
    checks/exNN_<name>.py  the checks: TITLE, EQUATION, PROJECT (file: function), REFERENCE (the
                           import that re-exports the project's own function, for tests), PLUG
                           (where --use_exercises puts the student's function) and check(m),
                           which compares the student's module m with the project's code on random
                           and edge-case inputs, values and gradients, and raises Mismatch with
                           the first difference in words
    hints/exNN_<name>.md   what to think about, not the answer
The student's files live in the work directory, exercises/work/ (ignored by git; the environment
variable EXERCISES_WORK moves it, which the tests do).

    python -m exercises list | start N | check N|all | hint N
    python train.py --use_exercises    # the student's functions replace the project's in the run
"""

import contextlib
import importlib
import importlib.util
import io
import os
import pathlib
import sys

import torch

from runner import atomic_write

HERE = pathlib.Path(__file__).parent
# ex01_advantages, ...
NAMES = sorted(p.stem for p in (HERE / "checks").glob("ex[0-9][0-9]_*.py"))


REPLACED = {}  # (module, name) -> the project's function that plug replaced


class Mismatch(Exception):
    """The first difference between the student's code and the project's, in words."""


def work_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("EXERCISES_WORK") or HERE / "work")


def name(n: int) -> str:
    if not 1 <= n <= len(NAMES):
        raise ValueError(f"there is no exercise {n}: they are numbered 1 to {len(NAMES)} "
                         f"(python -m exercises list)")
    return NAMES[n - 1]


def spec(n: int):
    """The check module of exercise n: its metadata and check()."""
    return importlib.import_module(f"exercises.checks.{name(n)}")


def student_file(n: int) -> pathlib.Path:
    return work_dir() / f"{name(n)}.py"


def start(n: int, force=False) -> pathlib.Path:
    """Copy exercise n's stub to the work directory; never over the student's file unless force."""
    path = student_file(n)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (your work): edit it, or pass --force to start over")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), (HERE / "stubs" / f"{name(n)}.py").read_text())
    return path


def load(n: int):
    """The student's module of exercise n (imported afresh from its file)."""
    path = student_file(n)
    s = importlib.util.spec_from_file_location(f"student_{name(n)}", path)
    m = importlib.util.module_from_spec(s)
    s.loader.exec_module(m)
    return m


def check(n: int) -> tuple[bool, str]:
    """Run exercise n's checks on the student's file -> (passed, one message)."""
    path, hint = student_file(n), f"python -m exercises hint {n}"
    if hasattr(spec(n), "verdict"):  # the finale: a training run's log, not a file
        return spec(n).verdict()
    if not path.exists():
        return False, f"not started: python -m exercises start {n}"
    threads = torch.get_num_threads()
    # tiny tensors: a thread pool only adds waiting, many times over on a busy machine
    torch.set_num_threads(1)
    try:
        # a student's debugging prints stay out of the verdict
        with contextlib.redirect_stdout(io.StringIO()):
            spec(n).check(load(n))
    except NotImplementedError:
        return False, f"not implemented yet: fill in the TODO in {path}"
    except Mismatch as e:
        return False, f"{e} (hint: {hint})"
    except Exception as e:  # the student's code raised: say where, not a traceback
        tb = e.__traceback__
        while tb.tb_next:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        return False, f"your code raised {type(e).__name__}: {e} (at {where}) (hint: {hint})"
    finally:
        torch.set_num_threads(threads)
    return True, "PASS"


def status(n: int) -> str:
    if hasattr(spec(n), "verdict"):
        return "passing" if check(n)[0] else "not run"
    if not student_file(n).exists():
        return "not started"
    return "passing" if check(n)[0] else "started"


def plug_in(train_module) -> str | None:
    """--use_exercises: every exercise's file must exist and pass; then the student's functions
    replace the project's where the real run looks them up (each check module's PLUG, plus the
    running train module's own imports). Returns an error line, or None when plugged in."""
    for n in range(1, len(NAMES) + 1):
        s = spec(n)
        if not getattr(s, "PLUG", None):
            continue  # the finale has nothing to plug
        ok, msg = check(n)
        if not ok:
            return (f"--use_exercises: exercise {n} ({s.TITLE}) does not pass: {msg}; "
                    f"python -m exercises check {n}")
    plug(train_module)
    return None


def plug(train_module):
    """Put every exercise's functions where the run looks them up (no checks: see plug_in): in the
    module PLUG names and wherever a module of the project holds the same function under the same
    name (a `from grpo import group_advantages`), so that no import style keeps the project's."""
    for n in range(1, len(NAMES) + 1):
        s = spec(n)
        m = load(n) if getattr(s, "PLUG", None) else None
        for target, attr in getattr(s, "PLUG", ()):
            module = importlib.import_module(target)
            original = REPLACED.setdefault((target, attr), getattr(module, attr))
            new = s.plugged(m, attr) if hasattr(s, "plugged") else getattr(m, attr)
            for holder in project_modules():
                if getattr(holder, attr, None) is original:
                    setattr(holder, attr, new)
            setattr(module, attr, new)
            if hasattr(train_module, attr):  # the running train module's own import (a __main__)
                setattr(train_module, attr, new)


def project_modules() -> list:
    """The project's modules loaded in this process (not the exercises' own)."""
    root = str(HERE.parent) + os.sep
    return [m for name, m in list(sys.modules.items())
            if (getattr(m, "__file__", None) or "").startswith(root)
            and not name.startswith("exercises")]


def unplugged() -> list[str]:
    """`module.name` wherever a project module still holds a function that plug replaced: empty
    after plug (what the tests check, so that the run calls the student's functions)."""
    return [f"{m.__name__}.{attr}" for (target, attr), original in REPLACED.items()
            if getattr(importlib.import_module(target), attr) is not original  # a re-export is not
            for m in project_modules() if getattr(m, attr, None) is original]

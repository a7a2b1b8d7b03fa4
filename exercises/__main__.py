"""
The course exercises' one entry point (see exercises/__init__.py):

    python -m exercises list         # the exercises in order: paper equation, project file, status
    python -m exercises start N      # writes exercises/work/exNN_<name>.py (--force: over your own)
    python -m exercises check N|all  # PASS, or the first difference and where the hint is
    python -m exercises hint N       # what to think about
"""

import argparse
import sys

import exercises as ex


def numbers(arg):
    if arg == "all":
        return list(range(1, len(ex.NAMES) + 1))
    if not arg.isdigit():
        raise ValueError(f"{arg!r} is not an exercise number (1 to {len(ex.NAMES)}) or 'all'")
    ex.name(int(arg))
    return [int(arg)]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m exercises",
                                     description="GRPO course exercises, checked against the "
                                                 "project's own code. Your files: "
                                                 + str(ex.work_dir()))
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the exercises in order, with their status")
    p = sub.add_parser("start", help="write exercise N's stub to your work directory")
    p.add_argument("n")
    p.add_argument("--force", action="store_true",
                   help="overwrite your existing file with the stub")
    sub.add_parser("check", help="check exercise N (or all)").add_argument("n")
    sub.add_parser("hint", help="print exercise N's hint").add_argument("n")
    args = parser.parse_args(argv)
    try:
        ns = numbers(args.n) if args.command != "list" else list(range(1, len(ex.NAMES) + 1))
        if args.command == "start" and len(ns) > 1:
            raise ValueError("start one exercise at a time: python -m exercises start N")
        if args.command == "list":
            for n in ns:
                s = ex.spec(n)
                print(f"{n:2d}  {s.TITLE:<44} {s.EQUATION:<10} {s.PROJECT:<44} {ex.status(n)}")
        elif args.command == "start" and hasattr(ex.spec(ns[0]), "verdict"):
            print(ex.spec(ns[0]).__doc__.strip())  # the finale: a run to make, no file to write
        elif args.command == "start":
            print(f"wrote {ex.start(ns[0], args.force)}: fill in the TODO, then "
                  f"python -m exercises check {ns[0]}")
        elif args.command == "hint":
            print((ex.HERE / "hints" / f"{ex.name(ns[0])}.md").read_text().rstrip())
        else:
            results = [(n, *ex.check(n)) for n in ns]
            for n, ok, msg in results:
                print(f"{n:2d} {ex.spec(n).TITLE}: {msg}")
            return 0 if all(ok for _, ok, _ in results) else 1
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

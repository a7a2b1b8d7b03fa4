r"""
Tasks read from the user's local files (the registry is tasks/): GSM8K, MATH / MATH-500 and any
JSONL with a field mapping. One record is one problem; training draws from --train_file, the
held-out set is --test_file. A file is read as the dataset is downloaded: a .jsonl (one JSON
object a line), a .parquet (one row a record, read with pyarrow: how the Hugging Face Hub serves
datasets) or a folder written by `datasets`' save_to_disk (read with `datasets`; a DatasetDict's
folder holds one folder a split: give that one). A table's column is a field, a null a missing
field. The formats share the field mapping:

    gsm8k   `question`, `answer` ending in `#### 42` (the number after it, commas removed)
    math    `problem`, and `answer` or a `solution` whose last \boxed{} is the answer; `level` and
            `subject` (MATH's `type`) kept, for per-subject evaluation tables
    jsonl   --prompt_field, --answer_field ('' for none); every other field goes to the reward
            functions (e.g. `tests` for the code reward)

Nothing is downloaded. A malformed record is one TaskError naming the file, the line (a table's
row, from 1) and the field; held-out problems that also appear in the training file are reported.
pyarrow and datasets are optional, imported only when such a file is given. What is left out:
files are read whole into memory (GSM8K's 7.5k problems, MATH's 12.5k are small); a dataset split
into several Parquet shards is read one file at a time (give the one you mean). The commands that
download GSM8K, and more: docs/tasks-and-rewards.md.

    python -m pytest tests/test_tasks.py tests/test_file_tasks.py
"""

import errno
import json
import os
import random

from rewards import accuracy_reward, answers_match, last_boxed, parse_rewards


class TaskError(ValueError):
    """Bad task input (a file, a line, a field): shown as a one-line error."""


FORMATS = " (a .jsonl, a .parquet or a save_to_disk folder)"  # what --train_file / --test_file read


# --- the file formats: each gives (row number, record) pairs ---

def why(e: Exception) -> str:
    """A library's error in one line: its message's first line."""
    return (str(e).splitlines() or [type(e).__name__])[0]


def records(path: str):
    """The records of a .jsonl, a .parquet or a save_to_disk folder, each with its line or row
    number, and a table's column names (None for JSONL, whose lines may differ)."""
    if not os.path.exists(path):
        raise TaskError(f"cannot read {path}: {os.strerror(errno.ENOENT)}")
    if os.path.isdir(path):
        table = read_saved(path)
    elif path.endswith(".parquet"):
        table = read_parquet(path)
    else:
        return jsonl_records(path), None
    return enumerate(table.to_pylist(), 1), table.column_names


def jsonl_records(path: str):
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise TaskError(f"cannot read {path}: {e.strerror}") from None
    with f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{i}: not a JSON object ({e.msg})") from None
            if not isinstance(rec, dict):
                raise TaskError(f"{path}:{i}: not a JSON object")
            yield i, rec


def read_parquet(path: str):
    """The whole file as a pyarrow Table."""
    try:
        import pyarrow.parquet as pq  # optional: only a Parquet file needs it
    except ImportError:
        raise TaskError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        return pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise TaskError(f"cannot read {path}: {why(e)}") from None


def read_saved(path: str):
    """A datasets.save_to_disk folder's rows as a pyarrow Table: the raw Arrow rows (as Parquet
    gives them), not `datasets`' Python formatting of them."""
    splits = os.path.join(path, "dataset_dict.json")
    if os.path.exists(splits):
        with open(splits, encoding="utf-8") as f:
            names = json.load(f).get("splits", [])
        raise TaskError(f"{path} is a DatasetDict with the splits {', '.join(names)}: "
                        f"give one split's folder, e.g. "
                        f"{os.path.join(path, names[0] if names else 'train')}")
    if not os.path.exists(os.path.join(path, "state.json")):
        raise TaskError(f"{path} is a folder but not a datasets.save_to_disk one (no state.json): "
                        "give a .jsonl or .parquet file, or such a folder")
    try:
        import datasets  # optional, and ~1.5 s to import: only a save_to_disk folder needs it
    except ImportError:
        raise TaskError(f"{path}: reading a save_to_disk folder needs datasets: "
                        f"pip install datasets") from None
    try:
        ds = datasets.load_from_disk(path)
    except (OSError, ValueError) as e:
        raise TaskError(f"cannot read {path}: {why(e)}") from None
    return ds.with_format("arrow")[:]  # the rows in order (any indices mapping applied)


class FileTask:
    """Problems read from files (JSONL, Parquet, a save_to_disk folder): `parse(record)` turns one
    record into a problem (or raises KeyError(field) / TaskError). Training draws from the train
    file; the test file is the held-out set."""

    rewards, correct = "accuracy:1,format:1", staticmethod(accuracy_reward)
    base_flags: list[str] = []
    has_corpus = False

    def same(self, a: str, b: str, p: dict) -> bool:
        """Two final answers are one vote when the accuracy check would call them equal."""
        return answers_match(a, b)

    def __init__(self, train_file=None, test_file=None, log=print):
        if not test_file:
            raise TaskError(f"task {self.name} reads its held-out problems from a file: "
                            f"give --test_file PATH{FORMATS}")
        self.test_set = self.read(test_file)
        self.train = self.read(train_file) if train_file else None
        self.overlap = 0
        if self.train:
            seen = {p["prompt"].strip() for p in self.train}
            self.overlap = sum(p["prompt"].strip() in seen for p in self.test_set)
            if self.overlap:
                log(f"warning: {self.overlap} of the {len(self.test_set)} held-out problems of "
                    f"{test_file} also appear in {train_file}: the held-out accuracy is not held "
                    f"out")

    @classmethod
    def from_args(cls, args, log=print):
        return cls(args.train_file, args.test_file, log=log)

    def read(self, path: str) -> list[dict]:
        rows, columns = records(path)
        out = []
        for i, rec in rows:
            # a null is a missing field: a table's row holds one where a JSONL line leaves the key
            # out
            try:
                out.append(self.parse({k: v for k, v in rec.items() if v is not None}))
            except KeyError as e:
                field = e.args[0]
                hint = (f" (no such column; it has {', '.join(columns)})"
                        if columns and field not in columns else "")
                raise TaskError(f"{path}:{i}: missing field {field!r}{hint}") from None
            except TaskError as e:
                raise TaskError(f"{path}:{i}: {e}") from None
        if not out:
            raise TaskError(f"{path} holds no problems")
        return out

    def train_problems(self, rng: random.Random, n: int) -> list[dict]:
        """n problems drawn (with replacement) from the training file."""
        if not self.train:
            raise TaskError(
                f"task {self.name} trains on a file: give --train_file PATH{FORMATS}")
        return [rng.choice(self.train) for _ in range(n)]


class GSM8KTask(FileTask):
    """GSM8K's own format: `question`, and `answer` = the worked solution, then `#### 42`."""

    name = "gsm8k"

    def parse(self, rec):
        solution = str(rec["answer"])
        if "####" not in solution:
            raise TaskError("field 'answer' has no final '#### <answer>'")
        final = solution.rpartition("####")[2].strip().replace(",", "")
        return {"prompt": str(rec["question"]).strip(), "answer": final, "solution": solution}


class MathTask(FileTask):
    r"""MATH / MATH-500: `problem`, and `answer`, or else the last \boxed{} of `solution`; `level`
    and `subject` (MATH's `type`) kept for per-subject and per-level tables."""

    name = "math"

    def parse(self, rec):
        if "answer" in rec:
            answer = str(rec["answer"])
        else:
            answer = last_boxed(str(rec["solution"]))
            if answer is None:
                raise TaskError("no field 'answer', and field 'solution' has no \\boxed{} answer")
        p = {"prompt": str(rec["problem"]).strip(), "answer": answer.strip()}
        for field, key in (("subject", "subject"), ("type", "subject"), ("level", "level")):
            if field in rec and key not in p:
                p[key] = str(rec[field])
        return p


class JsonlTask(FileTask):
    """Any JSONL: the prompt and answer from named fields (no answer field: "" makes none, e.g.
    for code with `tests`); every other field is passed on to the reward functions. Its accuracy
    is the first reward of --rewards."""

    name = "jsonl"

    def __init__(self, train_file=None, test_file=None, prompt_field="prompt",
                 answer_field="answer", rewards=None, log=print):
        self.prompt_field, self.answer_field = prompt_field, answer_field
        if rewards:
            self.rewards, self.correct = rewards, parse_rewards(rewards)[0][1]
        super().__init__(train_file, test_file, log)

    @classmethod
    def from_args(cls, args, log=print):
        return cls(args.train_file, args.test_file, args.prompt_field, args.answer_field,
                   args.rewards, log=log)

    def parse(self, rec):
        p = {k: v for k, v in rec.items() if k not in (self.prompt_field, self.answer_field)}
        p["prompt"] = str(rec[self.prompt_field]).strip()
        if self.answer_field:
            p["answer"] = str(rec[self.answer_field]).strip()
        return p

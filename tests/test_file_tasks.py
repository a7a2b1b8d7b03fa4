"""The file tasks read datasets as they are downloaded: the same records as JSONL, as Parquet (written
by pyarrow, and by `datasets` as the Hub's files are) and as a datasets.save_to_disk folder give the
same problems, and bad input is one line. `datasets` takes ~1.5 s to import: it is imported here
only, once."""

import json
import os
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.files import TaskError
from tasks import make_task
from test_tasks import args_for  # the task flags as train.py parses them

# GSM8K's rows as openai/gsm8k has them (the worked solution, then `#### answer`)
GSM8K = [{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                      "How many clips did Natalia sell altogether in April and May?",
          "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                    "altogether in April and May.\n#### 72"},
         {"question": "  Tom has 3 apples and buys 1,231 more. How many? ", "answer": "3 + 1231 = 1234\n#### 1,234"},
         {"question": "Half of 9, in €?", "answer": "9 / 2 = 4.5\n#### 4.5"}]
# MATH's rows (problem, level, type, solution), the first with MATH-500's `answer` (here unlike the
# solution's \boxed{}, to tell which was read), the others without: a table holds their answers as
# nulls, which must read as the missing field JSONL has
MATH = [{"problem": "Find $x$ if $2x = 8$.", "level": "Level 1", "type": "Algebra",
         "solution": r"So $x = \boxed{8/2}$.", "answer": "4"},
        {"problem": r"What is $\frac{1}{2} + \frac{1}{3}$?", "level": "Level 2", "type": "Prealgebra",
         "solution": r"$\frac{3}{6} + \frac{2}{6} = \boxed{\frac{5}{6}}$."},
        {"problem": r"Compute $\sqrt{50}$.", "level": "Level 3", "type": "Algebra",
         "solution": r"First $\boxed{25 \cdot 2}$, so $\boxed{5\sqrt{2}}$."}]
# any JSONL, with a nested field (the code reward's tests: a list of structs in a table)
CODE = [{"q": "Print 1", "tests": [{"input": "", "output": "1"}], "id": 7},
        {"q": "Echo", "tests": [{"input": "a", "output": "a"}, {"input": "b", "output": "b"}], "id": 8}]


def write_all(tmp_path, rows):
    """The same rows in every format a user has them in -> {format: path}."""
    paths = {"jsonl": str(tmp_path / "rows.jsonl"), "parquet": str(tmp_path / "rows.parquet"),
             "hub_parquet": str(tmp_path / "train-00000-of-00001.parquet"), "save_to_disk": str(tmp_path / "saved")}
    with open(paths["jsonl"], "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(paths["hub_parquet"])  # as the Hub's Parquet files are written (datasets' schema metadata)
    ds.save_to_disk(paths["save_to_disk"])
    return paths


def problems(argv, path):
    return make_task(args_for(argv + ["--test_file", path])).test_set


def test_gsm8k_reads_jsonl_parquet_and_a_saved_dataset_alike(tmp_path):
    paths = write_all(tmp_path, GSM8K)
    want = problems(["--task", "gsm8k"], paths["jsonl"])
    assert [p["answer"] for p in want] == ["72", "1234", "4.5"]
    assert want[1]["prompt"] == "Tom has 3 apples and buys 1,231 more. How many?"
    assert want[0]["solution"] == GSM8K[0]["answer"]
    for fmt, path in paths.items():
        assert problems(["--task", "gsm8k"], path) == want, fmt
    # formats mix: a Parquet training file and a saved held-out set, with their overlap counted
    said = []
    task = make_task(args_for(["--task", "gsm8k", "--train_file", paths["parquet"], "--test_file",
                               paths["save_to_disk"]]), log=said.append)
    assert task.train == want and task.overlap == 3 and len(said) == 1


def test_math_reads_jsonl_parquet_and_a_saved_dataset_alike(tmp_path):
    paths = write_all(tmp_path, MATH)
    want = problems(["--task", "math"], paths["jsonl"])
    assert [(p["answer"], p["subject"], p["level"]) for p in want] == [
        ("4", "Algebra", "Level 1"), (r"\frac{5}{6}", "Prealgebra", "Level 2"), (r"5\sqrt{2}", "Algebra", "Level 3")]
    assert pq.read_table(paths["parquet"]).column("answer").null_count == 2  # the case the null rule is for
    for fmt, path in paths.items():
        assert problems(["--task", "math"], path) == want, fmt


def test_jsonl_task_reads_nested_fields_alike(tmp_path):
    paths = write_all(tmp_path, CODE)
    argv = ["--task", "jsonl", "--prompt_field", "q", "--answer_field", "", "--rewards", "code:1,format:1"]
    want = problems(argv, paths["jsonl"])
    assert want == [{"prompt": r.pop("q"), **r} for r in json.loads(json.dumps(CODE))]
    for fmt, path in paths.items():
        assert problems(argv, path) == want, fmt


def test_a_parquet_file_missing_a_column_is_one_line_before_any_work(tmp_path, capsys):
    import train
    f = str(tmp_path / "gsm.parquet")
    pq.write_table(pa.Table.from_pylist([{"question": r["question"]} for r in GSM8K]), f)
    with pytest.raises(TaskError) as e_read:
        problems(["--task", "gsm8k"], f)
    assert str(e_read.value) == f"{f}:1: missing field 'answer' (no such column; it has question)"
    argv = ["--task", "gsm8k", "--train_file", f, "--test_file", f, "--out_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.endswith(f": error: {e_read.value} (see --help)\n")
    assert len(err.strip().splitlines()) == 1 and not os.path.exists(tmp_path / "out")  # one line; nothing written


def table(rows, name="bad.parquet"):
    """A fixture maker: write rows (a pyarrow Table or dicts) as a Parquet file in the folder given -> its path."""
    def make(d):
        pq.write_table(rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows), d / name)
        return d / name
    return make


def dataset_dict(d):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K), "test": datasets.Dataset.from_list(GSM8K)}
                         ).save_to_disk(d / "gsm8k")
    return d / "gsm8k"


@pytest.mark.parametrize("task, make, message", [
    # a null in a column is that row's missing field, as a JSONL line without the key
    ("gsm8k", table(GSM8K[:2] + [{"question": "q", "answer": None}]), "{p}:3: missing field 'answer'"),
    ("math", table([{"problem": "p", "level": "Level 1"}]),
     "{p}:1: missing field 'solution' (no such column; it has problem, level)"),
    ("gsm8k", table(GSM8K[:1] + [{"question": "q", "answer": "no hashes"}]),
     "{p}:2: field 'answer' has no final '#### <answer>'"),
    ("gsm8k", table(pa.Table.from_pylist(GSM8K).slice(0, 0)), "{p} holds no problems"),
    ("gsm8k", lambda d: (d / "bad.parquet", (d / "bad.parquet").write_text("question,answer\n"))[0], "cannot read {p}: "),
    ("gsm8k", lambda d: d / "nowhere.parquet", "cannot read {p}: No such file or directory"),
    ("gsm8k", dataset_dict, "{p} is a DatasetDict with the splits train, test: give one split's folder, e.g. {p}/train"),
    ("gsm8k", lambda d: d, "{p} is a folder but not a datasets.save_to_disk one (no state.json)"),
])
def test_bad_tables_are_one_line(tmp_path, task, make, message):
    p = str(make(tmp_path))
    with pytest.raises(TaskError) as e:
        problems(["--task", task], p)
    assert str(e.value).startswith(message.format(p=p)) and "\n" not in str(e.value)


@pytest.mark.parametrize("module, fmt, install", [("pyarrow.parquet", "parquet", "pip install pyarrow"),
                                                  ("datasets", "save_to_disk", "pip install datasets")])
def test_a_missing_optional_library_is_one_line_naming_the_install(tmp_path, monkeypatch, module, fmt, install):
    path = write_all(tmp_path, GSM8K)[fmt]
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: `import` raises ImportError
    with pytest.raises(TaskError) as e:
        problems(["--task", "gsm8k"], path)
    assert str(e.value).endswith(install) and "\n" not in str(e.value)
    assert len(problems(["--task", "gsm8k"], str(tmp_path / "rows.jsonl"))) == 3  # JSONL needs neither

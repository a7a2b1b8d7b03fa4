"""--shots FILE (tasks/shots.py, template.render_prompt): worked examples as earlier exchanges of the
conversation. The chat formats are checked against the formats' own Jinja chat templates (rendered
with jinja2, as transformers renders them), the examples against the shared prefix the sampler and
the trainer run once, and bad files against one-line errors."""

import json
import os
import random
import subprocess
import sys

import jinja2
import pytest

from batch import pack
from template import SYSTEM, TEMPLATE, render_prompt
from tasks import make_task
from test_tasks import args_for
from tokenizer import get_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ChatML as Qwen2 / SmolLM2 write it, and Llama 3's (their tokenizer_config.json's chat_template,
# without the default system message and tool branches)
JINJA = {
    "chatml": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
               "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "llama3": ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] "
               "+ '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
               "{% endif %}"),
}
SHOTS = [("Compute 12 + 30", "<think>12 + 30 = 42</think> <answer>42</answer>"),
         ("Compute {1} + 2", "<think>{braces} stay</think> <answer>3</answer>")]


@pytest.mark.parametrize("chat", ["chatml", "llama3"])
def test_chat_formats_with_examples_are_the_formats_own_rendering(chat):
    messages = [{"role": "system", "content": SYSTEM}]
    for q, c in SHOTS:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": c}]
    messages.append({"role": "user", "content": "Compute 5 + 6"})
    expected = jinja2.Template(JINJA[chat]).render(messages=messages, add_generation_prompt=True)
    assert render_prompt("Compute 5 + 6", chat, SHOTS) == expected
    assert render_prompt("Compute 5 + 6", chat) == jinja2.Template(JINJA[chat]).render(
        messages=[messages[0], messages[-1]], add_generation_prompt=True)


def test_table_1_with_examples_and_without():
    q, c = SHOTS[0]
    assert render_prompt("Compute 5 + 6") == TEMPLATE.format(prompt="Compute 5 + 6")
    text = render_prompt("Compute 5 + 6", None, SHOTS[:1])
    assert text == SYSTEM + f" User: {q}. Assistant: {c}" + " User: Compute 5 + 6. Assistant:"


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_every_question_carries_the_examples_and_they_join_the_shared_prefix(tmp_path):
    f = write(tmp_path / "shots.jsonl", [json.dumps({"prompt": q, "completion": c}) for q, c in SHOTS])
    task = make_task(args_for(["--task", "addition", "--n_test", "20", "--shots", f]), log=lambda s: None)
    plain = make_task(args_for(["--task", "addition", "--n_test", "20"]), log=lambda s: None)
    train = task.train_problems(random.Random(0), 8)
    assert [p["prompt"] for p in task.test_set] == [p["prompt"] for p in plain.test_set]
    assert all(p["shots"] == [list(s) for s in SHOTS] for p in task.test_set + train)
    assert task.rewards == plain.rewards and task.correct is plain.correct
    tok = get_tokenizer("aha")
    prompts = [tok.encode(render_prompt(p["prompt"], None, p["shots"])) for p in train]
    head = tok.encode(render_prompt("Compute", None, SHOTS).split(" User: Compute. Assistant:")[0])
    assert pack(prompts, [[] for _ in prompts], tok.pad).prefix.numel() >= len(head) - 1


@pytest.mark.parametrize("lines, error", [
    (None, "cannot read it"),
    ([], "no examples in it"),
    (['{"prompt": "Compute 1 + 2", "completion": "3"}', "not json"], "shots.jsonl:2: each line"),
    (['{"prompt": "Compute 1 + 2"}'], "shots.jsonl:1: each line"),
    (['{"prompt": 3, "completion": "3"}'], "shots.jsonl:1: each line"),
])
def test_bad_files_are_one_line(tmp_path, lines, error):
    f = str(tmp_path / "shots.jsonl") if lines is None else write(tmp_path / "shots.jsonl", lines)
    with pytest.raises(ValueError, match=error) as e:
        make_task(args_for(["--task", "addition", "--n_test", "5", "--shots", f]), log=lambda s: None)
    assert "\n" not in str(e.value)


def test_a_held_out_question_is_refused_and_train_py_says_so_before_any_work(tmp_path):
    task = make_task(args_for(["--task", "addition", "--seed", "1337"]), log=lambda s: None)  # train.py's
    f = write(tmp_path / "shots.jsonl", [json.dumps({"prompt": task.test_set[3]["prompt"],
                                                     "completion": "<answer>1</answer>"})])
    res = subprocess.run([sys.executable, "train.py", "--shots", f,
                          "--out_dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "is a held-out question" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()

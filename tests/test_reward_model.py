"""The reward model (r1/reward_model.py, eq. 5): its loss by hand, its pairs, a short real training
run, and its use as train.py's `preference` reward, bad input included."""

import json
import os
import random

import pytest
import torch

from r1 import reward_model
import train
from checkpoint import save_checkpoint
from model import make_model
from rewards import accuracy_reward, format_reward
from r1.reward_model import GARBLES, PreferenceReward, bradley_terry_loss, preference_pairs
from tasks import AdditionTask
from tokenizer import get_tokenizer


def test_bradley_terry_loss_by_hand():
    r_c = torch.tensor([2.0, -1.0], requires_grad=True)
    r_r = torch.tensor([0.5, 1.0])
    loss = bradley_terry_loss(r_c, r_r)
    # -log sigmoid(1.5) = log(1 + e^-1.5) = 0.2014133; -log sigmoid(-2) = log(1 + e^2) = 2.1269280
    assert loss.item() == pytest.approx((0.2014133 + 2.1269280) / 2, abs=1e-6)
    loss.backward()
    # d/dr_c of the mean: -sigmoid(-(r_c - r_r)) / 2 = -0.1824255 / 2, -0.8807971 / 2
    assert r_c.grad.tolist() == pytest.approx([-0.1824255 / 2, -0.8807971 / 2], abs=1e-6)
    # a pair ranked wrong by 200: loss 200, not inf (log(sigmoid(-200)) underflows to -inf)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0])).item() == pytest.approx(200.0)


def test_pairs_same_answer_readable_against_garbled():
    task = AdditionTask(n_test=50)
    pairs = preference_pairs(task, task.test_set, random.Random(0))
    assert {x["kind"] for x in pairs} == set(GARBLES)
    for x, p in zip(pairs, task.test_set):
        assert p["prompt"] in x["prompt"] and x["chosen"] != x["rejected"]
        both = [x["chosen"], x["rejected"]]
        assert accuracy_reward([x["prompt"]] * 2, both, answer=[p["answer"]] * 2) == [1.0, 1.0]
        assert format_reward(None, both) == [1.0, float(x["kind"] != "untagged")]
    # rejected answers both longer and shorter than the chosen: length alone does not separate them
    longer = [len(x["rejected"]) > len(x["chosen"]) for x in pairs]
    assert any(longer) and not all(longer)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random tiny checkpoint (the policy) and a reward model trained from it by the CLI."""
    d = tmp_path_factory.mktemp("rm")
    torch.manual_seed(0)
    save_checkpoint(str(d / "init.pt"), make_model("tiny", get_tokenizer().vocab_size, n_layer=1, n_embd=32, n_head=2, n_kv_head=2,
                                                   ffn_hidden=64), "aha")
    out = str(d / "out")
    path = reward_model.main(["--init", str(d / "init.pt"), "--run_name", "rm", "--out_dir", out, "--steps", "40",
                              "--batch", "8", "--lr", "3e-3", "--n_test", "40", "--device", "cpu"])
    with open(os.path.join(out, "rm", "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    return d, path, log


def test_training_raises_heldout_accuracy(trained):
    _, path, log = trained
    final = log[-1]
    assert [r["step"] for r in log[:-1]] == list(range(1, 41))
    assert final["heldout_accuracy"] >= 0.75 and final["heldout_accuracy"] > final["heldout_accuracy_before"] + 0.1, final
    assert sum(r["loss"] for r in log[-10:-1]) < sum(r["loss"] for r in log[:9])
    assert os.path.getsize(path) > 0 and not os.path.exists(path + ".tmp")


def test_preference_reward_is_pointwise_and_bounded(trained):
    _, path, _ = trained
    reward = PreferenceReward(path, "cpu", batch_size=3)
    task = AdditionTask(n_test=40)
    pairs = preference_pairs(task, task.test_set, random.Random(1))[:10]
    prompts = [x["prompt"] for x in pairs]
    chosen, rejected = reward(prompts, [x["chosen"] for x in pairs]), reward(prompts, [x["rejected"] for x in pairs])
    assert all(0 < r < 1 for r in chosen + rejected)
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 7
    # a score is the output's own: the same alone as beside other rows of other lengths (padding)
    alone = reward(prompts[:1], [pairs[0]["rejected"]])
    assert alone[0] == pytest.approx(rejected[0], abs=1e-5)


def test_preference_reward_in_a_train_run(trained):
    d, path, _ = trained
    run_dir = train.main(["--init", str(d / "init.pt"), "--reward_model", path, "--rewards", "accuracy:1,format:1,preference:1",
                          "--rl_steps", "2", "--questions", "2", "--group_size", "2", "--max_new_tokens", "16",
                          "--eval_every", "2", "--eval_problems", "2", "--eval_samples", "1", "--n_test", "8",
                          "--no_plot", "--device", "cpu", "--out_dir", str(d / "out"), "--run_name", "pref"])
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        steps = [json.loads(line) for line in f][1:]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert 0 < r["reward_preference"] < 1
        assert r["reward"] == pytest.approx(r["reward_accuracy"] + r["reward_format"] + r["reward_preference"], abs=1e-5)


def one_line_error(capsys, fn, argv):
    with pytest.raises(SystemExit) as e:
        fn(argv)
    err = capsys.readouterr().err.strip() or str(e.value.code)
    assert e.value.code not in (0, None) and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_one_line(trained, capsys, tmp_path):
    d, path, _ = trained
    base = ["--init", str(d / "init.pt"), "--out_dir", str(tmp_path), "--n_test", "8", "--eval_problems", "2",
            "--device", "cpu"]
    rewards = ["--rewards", "accuracy:1,format:1,preference:1"]
    assert "--reward_model" in one_line_error(capsys, train.parse_args, base + rewards)
    assert "no such file" in one_line_error(capsys, train.parse_args, base + rewards + ["--reward_model", str(tmp_path / "no.pt")])
    assert "preference" in one_line_error(capsys, train.parse_args, base + ["--reward_model", path])
    assert "policy checkpoint" in one_line_error(capsys, train.parse_args, base + rewards + ["--reward_model", str(d / "init.pt")])
    other = torch.load(path, weights_only=True)
    other["tokenizer"] = "cl100k_base"
    torch.save(other, tmp_path / "other.pt")
    assert "tokenizer" in one_line_error(capsys, train.parse_args, base + rewards + ["--reward_model", str(tmp_path / "other.pt")])
    assert train.parse_args(base + rewards + ["--reward_model", path]).reward_model == path
    # the training CLI
    cli = ["--run_name", "x", "--out_dir", str(tmp_path), "--device", "cpu"]
    assert "no such checkpoint" in one_line_error(capsys, reward_model.main, cli + ["--init", str(tmp_path / "no.pt")])
    assert "worked solutions" in one_line_error(capsys, reward_model.main, cli + ["--init", str(d / "init.pt"), "--task", "linear"])
    assert "already holds" in one_line_error(capsys, reward_model.main, ["--init", str(d / "init.pt"), "--run_name", "rm",
                                                                         "--out_dir", str(d / "out")])


def test_a_stopped_reward_model_resumes_exactly(trained, monkeypatch, capsys, tmp_path):
    # the run skeleton of every stage (runner.run_steps): a stop request after step 3 checkpoints rm.pt,
    # which --reward_model refuses until --resume finishes it as the uninterrupted run would have
    d, _, _ = trained
    argv = ["--init", str(d / "init.pt"), "--out_dir", str(tmp_path), "--steps", "6", "--batch", "4", "--lr", "3e-3",
            "--n_test", "16", "--device", "cpu"]
    straight = reward_model.main(argv + ["--run_name", "straight"])
    asked = []

    def requested(self):  # a SIGTERM that arrives during step 3
        asked.append(1)
        return len(asked) == 4

    monkeypatch.setattr(reward_model.runner.StopSignal, "requested", requested)
    cut = reward_model.main(argv + ["--run_name", "cut"])
    assert "stopped by a signal after step 3" in capsys.readouterr().out
    assert torch.load(cut, weights_only=True)["step"] == 3
    tok = get_tokenizer()
    assert "stopped at step 3 of its training" in reward_model.check_reward_model(cut, tok, 100)
    monkeypatch.undo()
    reward_model.main(["--out_dir", str(tmp_path), "--run_name", "cut", "--resume"])  # its flags come from args.json
    logs = [[json.loads(line) for line in open(tmp_path / name / "log.jsonl")] for name in ("straight", "cut")]
    clock = ("elapsed", "train_s")
    assert [{k: v for k, v in r.items() if k not in clock} for r in logs[0]] == \
           [{k: v for k, v in r.items() if k not in clock} for r in logs[1]]
    a, b = (torch.load(p, weights_only=True) for p in (straight, cut))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and torch.equal(a["head"]["weight"], b["head"]["weight"])
    assert reward_model.check_reward_model(cut, tok, 100) is None
    # a finished run is not resumed (its rm.pt keeps no optimiser state), a missing one says so: one line each
    again = ["--out_dir", str(tmp_path), "--resume", "--run_name"]
    assert "finished its 6 steps" in one_line_error(capsys, reward_model.main, again + ["cut"])
    assert "--resume needs the --run_name of a run with a checkpoint" in one_line_error(capsys, reward_model.main, again + ["nope"])

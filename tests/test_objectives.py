"""The rollout side of the later objectives: DAPO's dynamic sampling (train.GRPORun.informative_rollout,
rollout.select and rollout.concat), in one process and across two (tests/dynamic_worker.py), with the own
sampler, tool calls and a real run; DAPO's overlong reward against its definition. The objectives
themselves (GSPO, CISPO, dual-clip) are tested in tests/test_grpo.py and tests/test_train.py."""

import json
import os
import subprocess
from functools import partial

import pytest
import torch

import grpo_update
import rewards
import sample
import train
from engines import tools
from rollout import Rollout, concat, rollout, select
from tiny_runs import ROOT, TINY, TORCHRUN
from tokenizer import get_tokenizer

TOK = get_tokenizer()


# --- DAPO's overlong reward ---

def test_overlong_reward_against_its_definition():
    # DAPO's R_length with L_max = 20, L_cache = 5: 0 up to 15 tokens, then -1/5 per token, -1 past 20
    lengths = [0, 10, 15, 16, 18, 20, 21, 400]
    got = rewards.overlong_reward(None, [""] * 8, lengths, max_len=20, buffer=5)
    assert got == pytest.approx([0, 0, 0, -0.2, -0.6, -1.0, -1.0, -1.0])
    # the default buffer is a fifth of the max (DAPO's 4096 of 20480); buffer 0: a hard step
    assert rewards.overlong_reward(None, [""] * 3, [103, 104, 128], max_len=128) == pytest.approx([0, -0.04, -1])
    assert rewards.overlong_reward(None, [""] * 2, [128, 129], max_len=128, buffer=0) == [0.0, -1.0]
    with pytest.raises(ValueError, match="needs max_len"):
        rewards.overlong_reward(None, [""], [3])


def test_overlong_is_a_reward_of_the_command_line_bound_to_its_flags():
    args = train.parse_args(["--rewards", "accuracy:1,overlong:1", "--max_new_tokens", "50", "--overlong_buffer", "10"])
    fns = rewards.parse_rewards(args.rewards, train.reward_table(args))
    fn = dict((n, f) for n, f, _ in fns)["overlong"]
    assert fn(None, [""] * 3, completion_tokens=[40, 45, 50]) == pytest.approx([0, -0.5, -1])
    args = train.parse_args(["--rewards", "overlong:1", "--overlong_max", "30"])
    fn = rewards.parse_rewards(args.rewards, train.reward_table(args))[0][1]
    assert fn(None, [""] * 2, completion_tokens=[24, 27]) == pytest.approx([0, -0.5])  # buffer 30 // 5


def tiny_model(seed=0):
    from model import ModelConfig, Transformer
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=TOK.vocab_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                                   ffn_hidden=64, block_size=256))


def own_rollout(model, questions, seed, G=3, max_new=16, reward_fns=()):
    args = train.parse_args(["--max_new_tokens", str(max_new)])
    problems = [{"prompt": q, "answer": "1"} for q in questions]
    return rollout(model, TOK, problems, G, args, torch.Generator().manual_seed(seed), 1.0,
                   reward_fns=reward_fns)


def test_rollouts_get_their_completion_lengths_as_a_field():
    seen = {}

    def spy(prompts, completions, completion_tokens, **fields):
        seen["n"] = completion_tokens
        return [0.0] * len(completions)

    ro = own_rollout(tiny_model(), ["Compute 1 + 2", "Compute 10 + 20"], 0, reward_fns=[("spy", spy, 1.0)])
    assert seen["n"] == ro.samples.batch.completion_mask.sum(1).long().tolist()
    assert max(seen["n"]) == 16 and min(seen["n"]) >= 1


# --- select and concat: rows of several rounds laid out as one ---

def test_concat_keeps_every_token_its_log_prob_and_what_the_trainer_computes():
    model = tiny_model()
    a = own_rollout(model, ["Compute 1 + 2", "Compute 10 + 20"], 0, max_new=12)
    b = own_rollout(model, ["Compute 3 + 4. Show your work", "Compute 5 + 6"], 1, max_new=16)  # other widths
    parts = [select(a, [3, 4, 5]), select(b, [0, 1, 2]), b]
    merged = concat(parts, TOK.pad)
    assert merged.samples.batch.rows.size(0) == 12 and merged.texts == a.texts[3:] + b.texts[:3] + b.texts
    with torch.no_grad():
        new = grpo_update.completion_logprobs(model, merged.samples.batch)
        old = [grpo_update.completion_logprobs(model, p.samples.batch) for p in parts]
    i = 0
    for p, lp in zip(parts, old):
        for r in range(p.samples.batch.rows.size(0)):
            n = int(p.samples.batch.completion_mask[r].sum())
            assert n == int(merged.samples.batch.completion_mask[i].sum())
            assert torch.equal(merged.samples.batch.completions[i, :n], p.samples.batch.completions[r, :n])
            assert torch.equal(merged.samples.sampler_logp[i, :n], p.samples.sampler_logp[r, :n])
            torch.testing.assert_close(new[i, :n], lp[r, :n], atol=1e-5, rtol=0)  # same positions, same context
            i += 1
    assert merged.samples.sampler_logp[merged.samples.batch.completion_mask == 0].abs().sum() == 0
    for k in merged.scores:
        assert torch.equal(merged.scores[k], torch.cat([p.scores[k] for p in parts]))
    assert concat([a], TOK.pad) is a


def test_concat_of_multi_turn_rollouts_keeps_the_tool_mask_and_the_calls():
    # the real sampler with a format a random model closes often (tests/test_tools.py's), two rounds
    model = tiny_model()
    fmt = dict(open="", close=" ", output="```output\n{}\n```\n")
    outs = [tools.generate(partial(sample.generate, model), TOK.encode, [TOK.encode(q)], 2, 30, TOK.stop_ids, TOK.pad,
                           generator=torch.Generator().manual_seed(s), decode=TOK.decode, max_calls=2, fmt=fmt)
            for s, q in ((0, "Compute 12 * 34."), (1, "Compute 5 * 6 and then some more."))]
    ros = [Rollout(o, ["x", "y"], {"accuracy": torch.tensor([1.0, 0.0])}) for o in outs]
    merged = concat([ros[0], select(ros[1], [1])], TOK.pad).samples
    assert merged.tool_mask.any()
    assert merged.tool_stats["calls"].tolist() == outs[0].tool_stats["calls"].tolist() + outs[1].tool_stats["calls"][1:].tolist()
    assert merged.tool_stats["seconds"] == outs[0].tool_stats["seconds"] + outs[1].tool_stats["seconds"]
    with torch.no_grad():
        lp = grpo_update.completion_logprobs(model, merged.batch)
    gap = (lp - merged.sampler_logp).abs() * merged.sampled_mask  # tool tokens have no sampler log-prob
    assert gap.max() < 1e-5
    for i, (o, r) in enumerate(((outs[0], 0), (outs[0], 1), (outs[1], 1))):
        n = int(o.batch.completion_mask[r].sum())
        assert torch.equal(merged.tool_mask[i, :n], o.tool_mask[r, :n]) and not merged.tool_mask[i, n:].any()


# --- dynamic sampling ---

def scripted_run(informative, questions=2, G=2, rounds=4):
    """A GRPORun with only what informative_rollout reads; its k-th rollout's groups are informative
    as informative[k] says."""
    import types
    run = types.SimpleNamespace(args=types.SimpleNamespace(group_size=G, questions=questions, dynamic_rounds=rounds),
                                world=1, rank=0, tok=TOK, reward_fns=[("accuracy", None, 1.0)], asked=[])
    model = tiny_model()

    def fake_rollout(n=None):
        run.asked.append(n)
        flags = informative[len(run.asked) - 1]
        assert len(flags) == (n or questions)
        ro = own_rollout(model, [f"Compute {len(run.asked)} + {g}" for g in range(len(flags))], len(run.asked), G=G)
        ro.scores["accuracy"] = torch.tensor([float(j) if f else 1.0 for f in flags for j in range(G)])
        return ro

    run.rollout = fake_rollout
    run.reward = lambda ro: train.GRPORun.reward(run, ro)
    return run


def test_dynamic_sampling_keeps_informative_groups_and_samples_what_is_missing():
    run = scripted_run([[True, False, False], [False, True], [True]], questions=3)
    ro, log = train.GRPORun.informative_rollout(run)
    assert run.asked == [None, 2, 1]  # each extra round asks for the groups still missing
    assert ro.scores["accuracy"].tolist() == [0, 1] * 3  # three informative groups, in order
    assert log == pytest.approx({"dyn_zero_var_groups": 3 / 6, "dyn_rollouts": 12, "dyn_rounds": 3,
                                 "dyn_filled_groups": 0, "dyn_extra_rollout_s": log["dyn_extra_rollout_s"]})
    assert log["dyn_extra_rollout_s"] > 0
    # all informative at once: one round, nothing dropped
    run = scripted_run([[True, True]])
    ro, log = train.GRPORun.informative_rollout(run)
    assert run.asked == [None] and log["dyn_rounds"] == 1 and log["dyn_zero_var_groups"] == 0


def test_dynamic_sampling_fills_up_when_the_bound_is_hit():
    # --dynamic_rounds 1: two rounds at most, then the step keeps uninformative groups (advantage 0)
    run = scripted_run([[False, False], [True, False]], rounds=1)
    ro, log = train.GRPORun.informative_rollout(run)
    assert log["dyn_rounds"] == 2 and log["dyn_filled_groups"] == 1 and log["dyn_zero_var_groups"] == 3 / 4
    assert ro.samples.batch.rows.size(0) == 4  # still --questions groups
    assert sorted(ro.scores["accuracy"].tolist()) == [0, 1, 1, 1]


def test_two_ranks_that_need_different_rounds_keep_the_same_number_of_groups(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out = {}
    for rounds in (4, 1):
        base = str(tmp_path / f"r{rounds}")
        res = subprocess.run([*TORCHRUN, "tests/dynamic_worker.py", base, str(rounds)], cwd=ROOT, capture_output=True,
                             text=True, timeout=240, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        out[rounds] = [json.load(open(f"{base}.rank{r}.json")) for r in range(2)]
    r0, r1 = out[4]
    # rank 0 had its two groups at once, rank 1 only after two extra rounds: both keep 2 groups
    assert len(r0["rows"]) == len(r1["rows"]) == 4
    assert [row[:2] for row in r0["rows"]] == [[20, 30]] * 4  # its first round's groups
    assert [row[:2] for row in r1["rows"]] == [[21, 30], [21, 30], [21, 32], [21, 32]]  # rounds 1 and 3
    assert r0["accuracy"] == r1["accuracy"] == [0, 1, 0, 1]
    assert r0["logp"] == [-0.5 * len(row) for row in r0["rows"]]
    assert r0["log"] == r1["log"] | {"dyn_extra_rollout_s": r0["log"]["dyn_extra_rollout_s"]}
    assert r0["log"]["dyn_rounds"] == 3 and r0["log"]["dyn_zero_var_groups"] == 3 / 8 and r0["log"]["dyn_rollouts"] == 16
    # --dynamic_rounds 1: rank 1 still lacks a group after its extra round, and fills it up
    r0, r1 = out[1]
    assert len(r0["rows"]) == len(r1["rows"]) == 4 and r1["accuracy"] == [0, 1, 1, 1]
    assert r0["log"]["dyn_filled_groups"] == 1 and r0["log"]["dyn_rounds"] == 2


def read_log(run_dir):
    return [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]


def test_a_run_with_dynamic_sampling_and_tools(tmp_path):
    # the real train.py on the multiply toy, whose rollouts go through the interpreter's engine; a
    # barely trained base model answers nothing right, so every group is all 0: two rounds (the
    # bound, --dynamic_rounds 1), both merged, then the step filled with uninformative groups
    out = str(tmp_path / "out")
    run = train.main([*TINY, "--task", "multiply", "--out_dir", out, "--run_name", "dyn", "--rl_steps", "1",
                      "--dynamic_sampling", "--dynamic_rounds", "1", "--rewards", "accuracy:1",
                      "--ratio_level", "sequence"])
    r = read_log(run)[1]
    assert "tool_share" in r and r["zero_var_groups"] == 1 and r["skipped_steps"] == 0
    assert (r["dyn_rounds"], r["dyn_filled_groups"], r["dyn_rollouts"], r["dyn_zero_var_groups"]) == (2, 2, 16, 1)


def test_torchrun_with_dynamic_sampling(tmp_path):
    from tiny_runs import DDP, torchrun_train
    out = str(tmp_path / "out")
    stdout = torchrun_train([*DDP, "--out_dir", out, "--run_name", "ddp-dyn", "--rl_steps", "2", "--dynamic_sampling",
                             "--rewards", "accuracy:1,overlong:1", "--overlong_buffer", "24"])
    log = read_log(os.path.join(out, "ddp-dyn"))
    assert [r["step"] for r in log] == [0, 1, 2] and all("dyn_rounds" in r for r in log[1:])
    assert "dyn" in stdout

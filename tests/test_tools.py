"""Tool calls (engines/tools.py): the multi-turn rollout, the mask that keeps tool output out of the loss,
hostile calls, and the default run left as it was. Engines here are either the real sampler on a
small random model, or `scripted`: an engine (sample.generate's signature) that writes given texts,
so that a rollout makes exactly the calls a test needs."""

import glob
import os
import time
import types
from functools import partial

import pytest
import torch

import grpo
import grpo_update
import sample
from engines import sandbox
from engines import tools
import train
from batch import pack
from model import Transformer, ModelConfig
from tasks.multiply import MultiplyTask
from template import TOOL
from tokenizer import get_tokenizer

TOK = get_tokenizer()
PROMPTS = [TOK.encode("Compute 12 * 34."), TOK.encode("Compute 5 * 6.")]


def small_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=TOK.vocab_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, ffn_hidden=64,
                           block_size=256))


def scripted(texts):
    """An engine whose k-th call writes texts[k] (one text, or one per row) as every row's completion,
    with made-up log-probs; it stops where a stop text or a stop id ends the text, as an engine does."""
    calls = []

    def gen(prompts, G, max_new_tokens, stop_ids, pad, temperature=1.0, top_k=0, top_p=1.0, generator=None,
            all_done=None, stop_texts=(), decode=None):
        calls.append([p for p in prompts for _ in range(G)])
        text = texts[min(len(calls) - 1, len(texts) - 1)]
        comps = []
        for i in range(len(prompts) * G):
            ids = TOK.encode(text if isinstance(text, str) else text[i])
            for n in range(1, len(ids) + 1):  # the first stop wins
                if ids[n - 1] in stop_ids or any(s in decode(ids[:n]) for s in stop_texts):
                    ids = ids[:n]
                    break
            comps.append(ids[:max_new_tokens])
        rows = calls[-1]
        batch = pack(rows, comps, pad)
        logp = -0.5 * batch.completion_mask  # every sampled token: log-prob -0.5
        stopped = [bool(c) and (c[-1] in stop_ids or any(s in decode(c) for s in stop_texts)) for c in comps]
        return sample.Samples(batch, logp, ~torch.tensor(stopped))
    gen.calls = calls
    return gen


def with_tools(gen, prompts=PROMPTS, G=2, max_new=100, max_calls=2, max_chars=64):
    return tools.generate(gen, TOK.encode, prompts, G, max_new, TOK.stop_ids, TOK.pad, decode=TOK.decode,
                          max_calls=max_calls, max_chars=max_chars)


def row(out, i):
    keep = out.batch.completion_mask[i].bool()
    return out.batch.completions[i][keep].tolist(), out.tool_mask[i][keep].tolist(), out.sampler_logp[i][keep].tolist()


CALL = " <think> Let me compute it.\n```python\nprint(12 * 34)\n```\n"


def test_a_call_pauses_the_row_runs_and_its_output_is_appended_as_tool_tokens():
    gen = scripted([CALL, "</think> <answer> 408 </answer>"])
    out = with_tools(gen)
    assert out.tool_stats["calls"].tolist() == [1, 1, 1, 1] and out.tool_stats["errors"].tolist() == [0] * 4
    ids, tool, logp = row(out, 0)
    first, output = TOK.encode(CALL), TOK.encode("```output\n408\n```\n")
    assert ids == first + output + TOK.encode("</think> <answer> 408 </answer>")
    assert tool == [False] * len(first) + [True] * len(output) + [False] * (len(ids) - len(first) - len(output))
    assert all(lp == 0 for lp, t in zip(logp, tool) if t) and all(lp == -0.5 for lp, t in zip(logp, tool) if not t)
    # the resumed rows' prompt: the question, what the row sampled, the tool's output; G=1 each
    assert gen.calls[1][0] == PROMPTS[0] + first + output and len(gen.calls[1]) == 4
    assert not out.truncated.any()
    # the layout is batch.py's, as the engine's: the same shared prefix and prompt width
    assert out.batch.R == pack([p for p in PROMPTS for _ in range(2)], [[1]] * 4, TOK.pad).R


def test_the_length_limit_counts_sampled_and_tool_tokens_and_calls_are_capped():
    out = with_tools(scripted([CALL, "</think> <answer> 408 </answer>"]), max_new=len(TOK.encode(CALL)) + 3)
    ids, tool, _ = row(out, 0)
    assert len(ids) == len(TOK.encode(CALL)) + 3 and tool[-3:] == [True] * 3 and out.truncated.all()
    # a block closed after the last allowed call is not run: the row resumes as it is (ToRL)
    gen = scripted([CALL, CALL, CALL, "</answer>"])
    out = with_tools(gen, max_new=200, max_calls=2)
    assert out.tool_stats["calls"].tolist() == [2] * 4 and len(gen.calls) == 4 and not out.truncated.any()
    ids, tool, _ = row(out, 0)
    assert ids[-len(TOK.encode(CALL + "</answer>")):] == TOK.encode(CALL + "</answer>") and not any(tool[-12:])
    assert gen.calls[3][0][-len(TOK.encode(CALL)):] == TOK.encode(CALL)  # resumed right after the ignored call


def test_a_call_that_never_closes_is_just_text():
    text = " <think> ```python\nprint(12 * 34) </think> <answer> 408 </answer>"
    gen = scripted([text])
    out = with_tools(gen)
    assert len(gen.calls) == 1 and out.tool_stats["calls"].sum() == 0 and not out.tool_mask.any()
    assert row(out, 0)[0] == TOK.encode(text)
    assert tools.pending_code("x\n```\n") is None  # a fence of another kind closes no call
    assert tools.pending_code("```python\na = 1\nprint(a)\n```\n") == "a = 1\nprint(a)"


def test_an_error_comes_back_as_its_last_line_cut_to_max_chars():
    gen = scripted([" ```python\nprint('ab' * 100)\n1 / 0\n```\n", "</answer>"])
    out = with_tools(gen, max_chars=40)
    text = TOK.decode([t for t, m in zip(*row(out, 0)[:2]) if m])
    body = text.removeprefix("```output\n").removesuffix("\n```\n")
    assert body.endswith("\nZeroDivisionError: division by zero") and len(body) == 40 and body.startswith("abab")
    assert out.tool_stats["errors"].tolist() == [1] * 4


HOSTILE = {  # each must cost at most the sandbox's limits and come back as an error line
    "endless loop": "while True:\n    pass",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "huge print": "print('x' * 10 ** 8)",
    "write outside scratch": f"open('{os.getcwd()}/aha-tool-escape', 'w').write('x')",
    "network": "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
}


def test_hostile_calls_cost_their_limits_leave_nothing_and_never_stop_the_run():
    sandbox.check()
    before = set(glob.glob("/tmp/aha-sandbox-*"))
    codes = list(HOSTILE.values())
    gen = scripted([[f" ```python\n{c}\n```\n" for c in codes], "</think> <answer> 1 </answer>"])
    t0 = time.perf_counter()
    out = with_tools(gen, prompts=[PROMPTS[0]], G=len(codes), max_new=200)
    took = time.perf_counter() - t0
    assert took < 2.0 * 2 + 6  # the sandbox's 2 s wall and CPU limits, each call in parallel, plus start-up
    outputs = {}
    for i, name in enumerate(HOSTILE):
        ids, tool, _ = row(out, i)
        outputs[name] = TOK.decode([t for t, m in zip(ids, tool) if m])
        assert TOK.decode(ids).endswith("<answer> 1 </answer>"), name  # the rollout went on after its call
        assert len(outputs[name]) <= 64 + len("```output\n\n```\n"), name
    assert "TimeoutError" in outputs["endless loop"] or "Killed" in outputs["endless loop"]
    assert outputs["huge print"].startswith("```output\nxxxx")
    assert "Error" in outputs["write outside scratch"] and not os.path.exists("aha-tool-escape")
    assert "Error" in outputs["network"]
    assert out.tool_stats["errors"].tolist() == [1, 1, 0, 1, 1] or out.tool_stats["errors"][[0, 3, 4]].eq(1).all()
    uid = sandbox.UID if os.geteuid() == 0 else None
    if uid is not None:
        from test_sandbox import processes_of
        assert processes_of(uid) == []  # nothing it started outlives the call
    assert set(glob.glob("/tmp/aha-sandbox-*")) == before


# --- the loss sees only what the policy chose ---

def grads(model, out, advantages, loss_type, mask=None):
    """The policy's gradient through grpo_update's loss (the reference path; a second model as pi_ref)."""
    model.zero_grad()
    ref = small_model(seed=1)
    with torch.no_grad():
        ref_logp = grpo_update.completion_logprobs(ref, out.batch)
    mask = out.sampled_mask if mask is None else mask
    norm = grpo.loss_normalizer(loss_type, mask, 40)
    terms = grpo_update.LossTerms(None, ref_logp, advantages, mask, norm, beta=0.1, loss_type=loss_type)
    loss = grpo_update.completion_grpo_loss(model, out.batch, 1.0, terms).loss
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def relabel(out, i, j, new):
    """The rollout with completion token j of row i replaced by `new`."""
    rows = out.batch.rows.clone()
    rows[i, out.batch.R + j] = new
    return sample.Samples(type(out.batch)(out.batch.prefix, rows, out.batch.valid, out.batch.R), out.sampler_logp,
                          out.truncated, out.tool_mask, out.tool_stats)


@pytest.mark.parametrize("loss_type", ["grpo", "token", "dr_grpo"])
def test_a_tool_tokens_label_changes_no_gradient_a_sampled_ones_does(loss_type):
    # row 0 ends in its tool output (a call that filled the length limit): its last token is a label
    # and nothing after it reads it; row 1 has a tool output in its middle and ends in a sampled token
    rest = " </think> <answer> 408 </answer>"
    n_call, n_out, n_rest = (len(TOK.encode(t)) for t in (CALL, "```output\n408\n```\n", rest))
    gen = scripted([[" 1" * (n_out + n_rest - 4) + CALL, CALL], rest])
    out = with_tools(gen, prompts=[PROMPTS[0]], max_new=n_call + n_out + n_rest)
    assert out.truncated.tolist() == [True, False] and out.tool_mask[0, -4:].all() and out.tool_mask[1].sum() == n_out
    model, A = small_model(), torch.tensor([1.0, -0.5])
    base = grads(model, out, A, loss_type)
    j0, j1 = int(out.batch.completion_mask[0].sum()) - 1, int(out.batch.completion_mask[1].sum()) - 1
    new = TOK.encode(" 7")[0]
    assert torch.equal(grads(model, relabel(out, 0, j0, new), A, loss_type), base)  # a tool token: nothing
    assert not torch.allclose(grads(model, relabel(out, 1, j1, new), A, loss_type), base)  # a sampled one moves it
    # the test can fail: with the completion mask alone (tool tokens in the loss) the tool label moves it
    full = out.batch.completion_mask
    assert not torch.allclose(grads(model, relabel(out, 0, j0, new), A, loss_type, full), grads(model, out, A, loss_type, full))


def test_the_per_output_mean_counts_only_sampled_tokens():
    out = with_tools(scripted([CALL, "</think> <answer> 408 </answer>"]))
    mask = out.sampled_mask
    n_sampled = (~out.tool_mask & out.batch.completion_mask.bool()).sum(1)
    assert (n_sampled < out.batch.completion_mask.sum(1)).all()  # every row has tool tokens
    w = grpo.token_weights(mask, "grpo")
    expected = mask / (mask.size(0) * n_sampled[:, None])
    torch.testing.assert_close(w, expected)
    assert w[out.tool_mask].abs().max() == 0
    # eq. 1 itself: 1/G sum_i 1/|o_i| sum over o_i's sampled tokens, |o_i| its sampled tokens only
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(mask.shape, generator=g), -torch.rand(mask.shape, generator=g)
    A = torch.randn(mask.size(0), generator=g)
    loss = grpo.grpo_loss(logp, old, None, A, mask)[0]
    s = grpo.clipped_surrogate(logp, old, A)
    by_hand = -sum((s[i][mask[i].bool()]).mean() for i in range(mask.size(0))) / mask.size(0)
    torch.testing.assert_close(loss, by_hand)


def test_sampler_and_trainer_agree_on_the_sampled_tokens_of_a_multi_turn_rollout():
    # the real sampler, with a format a random model closes often (a space), so that rows pause,
    # run (an empty program) and resume; sampler_logp_diff counts the sampled tokens only
    model = small_model()
    fmt = dict(open="", close=" ", output="```output\n{}\n```\n")
    out = tools.generate(partial(sample.generate, model), TOK.encode, PROMPTS, 2, 30, TOK.stop_ids, TOK.pad,
                         generator=torch.Generator().manual_seed(0), decode=TOK.decode, max_calls=2, fmt=fmt)
    assert out.tool_stats["calls"].sum() >= 2 and out.tool_mask.any()
    args = train.parse_args(["--questions", "2", "--group_size", "2", "--max_new_tokens", "30", "--beta", "0"])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    m = grpo_update.grpo_update(grpo_update.Policy(model), None, opt, out, torch.tensor([1.0, -1, 0.5, -0.5]),
                                grpo_update.UpdateConfig.from_args(args), torch.Generator().manual_seed(0))
    assert m["sampler_logp_diff"] < 1e-5
    with torch.no_grad():  # the test can fail: on tool tokens the sampler's log-prob is 0, the trainer's is not
        lp = grpo_update.completion_logprobs(model, out.batch)
    assert (lp - out.sampler_logp)[out.tool_mask].abs().min() > 1e-3


# --- the default run is unchanged ---

def test_tools_are_off_unless_the_task_or_a_flag_turns_them_on(monkeypatch):
    assert train.parse_args([]).max_tool_calls == 0
    assert train.parse_args(["--task", "multiply"]).max_tool_calls == 1
    assert train.parse_args(["--task", "multiply", "--max_tool_calls", "0"]).max_tool_calls == 0
    assert train.parse_args(["--max_tool_calls", "2"]).max_tool_calls == 2
    # tools off: rollout is the plain sampler's call, token for token, and logs no tool metric
    from rollout import rollout
    model = small_model()
    args = types.SimpleNamespace(max_new_tokens=12, max_tool_calls=0, tool_max_chars=64)
    problems = [{"prompt": "Compute 1 + 2", "answer": "3"}]
    out = rollout(model, TOK, problems, 3, args, torch.Generator().manual_seed(0), 1.0).samples
    from template import render_prompt
    plain = sample.generate(model, [TOK.encode(render_prompt("Compute 1 + 2"))], 3, 12, TOK.stop_ids, TOK.pad,
                            generator=torch.Generator().manual_seed(0), stop_texts=TOK.stop_texts, decode=TOK.decode)
    assert torch.equal(out.batch.rows, plain.batch.rows) and out.tool_mask is None
    assert tools.metrics(out, torch.zeros(3)) == {} and tools.describe({}) == ""


@pytest.mark.parametrize("argv, message", [
    (["--max_tool_calls", "-1"], "--max_tool_calls cannot be negative"),
    (["--task", "multiply", "--max_new_tokens", "300"], "with tool calls the longest prompt"),
])
def test_bad_tool_flags_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err.strip().splitlines()[-1]



def count(ids, sub):
    return sum(ids[i:i + len(sub)] == sub for i in range(len(ids) - len(sub) + 1))


def test_the_multiply_corpus_call_is_what_a_rollout_would_hold_and_copies_the_same_tokens():
    """The base corpus's call, cut where the engine stops, runs in the sandbox to the very output
    block the document holds and the answer copies it; each operand is practised three times in
    the question's own tokens (the thought's restatement, its name, the code); the answer's digits
    are the output's tokens."""
    sandbox.check()
    task = MultiplyTask()
    docs = [(p, task.solved(p)) for p in task.test_set[:3]]
    codes = [tools.pending_code(c) for _, c in docs]
    for (p, c), code, (out, failed) in zip(docs, codes, tools.run_calls(codes, 256)):
        assert not failed and out == p["answer"]
        assert c.split(TOOL["close"], 1)[1].startswith(TOOL["output"].format(out)) and c.endswith(f"<answer>{out}</answer>")
        ids = TOK.encode(c)
        for x in (p["a"], p["b"]):
            assert count(ids, TOK.encode(f" {x}")) == 3 + (p["a"] == p["b"]) * 3
        digits = TOK.encode(f"\n{out}")[1:]
        assert count(ids, digits) == 2  # the output's digits, and the answer's: the same tokens

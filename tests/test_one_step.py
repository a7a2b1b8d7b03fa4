"""docs/one-step.md against the code: one GRPO step of the default run, shapes and line numbers.

The page quotes, stage by stage, the shape of every tensor of the step (its tables: key | shape in
symbols | shape at the defaults | what it is) and names each function as `name` (`file.py:LINE`).
Here one real step of train.py runs (GRPORun.step at the default flags, on a freshly initialised
`tiny` model instead of the pretrained base stage, its <|endoftext|> embedding scaled up so that
completions stop after 1 to ~15 tokens: C < N, so the two cannot be mistaken for each other, and
the step costs ~5x less than 128 tokens), every function of the step is traced
(sys.settrace: the locals at its return), and each quoted shape must be the one measured. Every
`file.py:LINE` must be the line of that name's `def` / `class`, every `file.py:function` of the
equation table must exist, and the page's sizes must be the defaults'.

    python -m pytest -q -p no:cacheprovider tests/test_one_step.py
    python tests/test_one_step.py --fix      # rewrite the page's line numbers from the code
    python tests/test_one_step.py --shapes   # every key: the page's shape and the measured one
"""

import ast
import inspect
import os
import re
import sys
import tempfile
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "one-step.md")
if ROOT not in sys.path:  # run as a script
    sys.path.insert(0, ROOT)

N_TEST = 32  # the test step's --max_new_tokens

REF = re.compile(r"`([A-Za-z_][\w.]*)`(\s+)\(`([\w/]+\.py):(\d+)`\)")  # `name` (`file.py:LINE`)
BARE = re.compile(r"`([\w/]+\.py):(\d+)`")
EQ_REF = re.compile(r"`([\w/]+\.py):([A-Za-z_][\w.]*)`")            # `file.py:function`
SHAPE_ROW = re.compile(r"^\| `([^`]+)` \| `(\([^`]*\))` \| `(\([^`]*\))` \|", re.M)
SIZE_ROW = re.compile(r"^\| `([A-Za-z]+)` \| `(<= )?(\d+)` \|", re.M)


# -----------------------------------------------------------------------------
# the page

def read_page():
    with open(PAGE) as f:
        return f.read()


def page_shapes(text):
    """{key: (symbolic shape, shape at the defaults)} from the page's shape tables."""
    out = {}
    for key, sym, num in SHAPE_ROW.findall(text):
        assert key not in out, f"shape key {key!r} appears twice on the page"
        out[key] = (sym, num)
    return out


def page_sizes(text):
    """{symbol: (value, is an upper bound)} from the page's sizes table."""
    return {s: (int(v), bool(bound)) for s, bound, v in SIZE_ROW.findall(text)}


def evaluate(expr, sizes):
    value = eval(expr, {"__builtins__": {}}, dict(sizes))  # the page's own "(B, R + C, d)"
    return tuple(value) if isinstance(value, tuple) else (value,)


def definitions(path):
    """{qualified name: line of its def / class} of a project file (methods as Class.method)."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    out = {}

    def walk(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out[prefix + node.name] = node.lineno  # the def line, decorators apart
                if isinstance(node, ast.ClassDef):
                    walk(node.body, prefix + node.name + ".")
    walk(tree.body, "")
    return out


def fix_page():
    """Rewrite every `name` (`file.py:LINE`) of the page with the line of name's def."""
    text, changed = read_page(), []

    def fix(m):
        name, space, path, line = m.groups()
        new = definitions(path).get(name)
        if new is None:
            raise SystemExit(f"{path} has no def or class {name}: fix the page by hand")
        if new != int(line):
            changed.append(f"{name}: {path}:{line} -> {new}")
        return f"`{name}`{space}(`{path}:{new}`)"
    text = REF.sub(fix, text)
    with open(PAGE, "w") as f:
        f.write(text)
    print("\n".join(changed) or "the line numbers were right")


# -----------------------------------------------------------------------------
# one step, traced

class Trace:
    """sys.settrace over the given functions: each call's enclosing traced functions (`path`),
    its locals at its return and its return value, in the order the calls returned."""

    def __init__(self, functions):
        self.names = {inspect.unwrap(f).__code__: f.__qualname__ for f in functions}
        self.calls, self.stack = [], []

    def __enter__(self):
        self.previous = sys.gettrace()
        sys.settrace(self.on_call)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.previous)

    def on_call(self, frame, event, arg):
        name = self.names.get(frame.f_code)
        if name is None:
            return None
        self.stack.append(name)
        return self.on_event

    def on_event(self, frame, event, arg):
        if event == "return":
            self.calls.append((tuple(self.stack), dict(frame.f_locals), arg))
            self.stack.pop()
        return self.on_event

    def find(self, name, inside=None):
        """[(locals, return value)] of the calls of name, with `inside` among their callers."""
        return [(loc, ret) for path, loc, ret in self.calls
                if path[-1] == name and (inside is None or inside in path[:-1])]

    def one(self, name, inside=None):
        calls = self.find(name, inside)
        assert len(calls) == 1, f"{name} ran {len(calls)} times in the step, not once"
        return calls[0]

    def first(self, name, inside=None):
        """The first call of name: the first micro-batch's, for what runs once for each."""
        calls = self.find(name, inside)
        assert calls, f"{name} never ran in the step"
        return calls[0]


def shape(x):
    if torch.is_tensor(x):
        return tuple(x.shape)
    if isinstance(x, (int, float)):
        return ()
    if all(isinstance(e, list) for e in x):  # token lists: (n, their one length)
        (n,) = {len(e) for e in x}
        return (len(x), n)
    return (len(x),)


def run_step(out_dir, max_new_tokens=N_TEST):
    """GRPORun.step(1) of `python train.py` (the default flags), on a fresh `tiny` model, traced:
    -> (run, trace, args)."""
    import batch
    import grpo
    import grpo_kernels
    import grpo_update
    import rollout
    import runner
    import sample
    import train
    from model import Transformer, make_model
    from tasks.generated import GeneratedTask
    from train_args import parse_args

    def fresh_model(args, tok, task, rank, device, stop=None):  # in place of the base stage
        torch.manual_seed(args.seed)
        model = make_model(args.model, tok.vocab_size).to(device)
        with torch.no_grad():  # tied: <|endoftext|>'s logit h . e_eot 100x larger, so that
            model.embed.weight[tok.eot] *= 100  # completions stop at varied lengths, C < N
        return model

    traced = [train.GRPORun.step, train.GRPORun.rollout, train.GRPORun.record,
              GeneratedTask.train_problems, rollout.rollout, sample.generate, sample.prefill,
              sample.sample_next,
              batch.pack, batch.positions_and_mask, batch.forward_rows, Transformer.forward,
              grpo.group_advantages, grpo_update.grpo_update,
              grpo_update.logprobs_in_chunks, grpo_update.completion_logprobs,
              grpo_update.completion_grpo_loss, grpo_kernels.logprobs_from_hidden,
              grpo.loss_normalizer, grpo.grpo_loss, grpo.grpo_metrics, grpo.kl_k3,
              grpo.clipped_surrogate, grpo.token_weights, runner.optimizer_step]
    saved = train.initial_model, grpo_kernels.USE, torch.get_num_threads()
    train.initial_model, grpo_kernels.USE = fresh_model, "cuda"  # train.main's default
    torch.set_num_threads(1)  # on 2 shared cores, several times faster than 2 threads
    try:
        args = parse_args(["--out_dir", out_dir, "--run_name", "one-step", "--device", "cpu",
                           "--max_new_tokens", str(max_new_tokens), "--no_plot"])
        run = train.GRPORun(args, 0, 1, "cpu", None)
        run.t_rl = time.time()  # GRPORun.run sets it, after the step-0 evaluation skipped here
        with run.log, Trace(traced) as trace:
            run.step(1)
    finally:
        train.initial_model, grpo_kernels.USE = saved[:2]
        torch.set_num_threads(saved[2])
    return run, trace, args


def measured(run, trace, args):
    """-> (sizes, {key: shape}, facts) of the step: the keys are the page's."""
    t = trace
    gen, samples = t.one("generate")
    batch = samples.batch
    c = run.model.config
    fr = t.find("forward_rows", inside="completion_grpo_loss")  # one for each micro-batch
    sizes = dict(Q=args.questions, G=args.group_size, B=batch.rows.size(0), P=batch.prefix.numel(),
                 R=batch.R, C=batch.completions.size(1), N=args.max_new_tokens, V=c.vocab_size,
                 d=c.n_embd, L=c.n_layer, H=c.n_head, hd=c.hd, b=fr[0][1].size(0))
    fwd = t.find("Transformer.forward", inside="generate")
    (prefix_h, prefix_past), (rows_h, rows_cache), (dec_h, _) = (r for _, r in fwd[:3])
    pack_out = t.one("pack")[1]
    pos, mask = t.find("positions_and_mask", inside="generate")[0][1]
    nxt_loc, (nxt_tok, nxt_logp) = t.find("sample_next")[0]
    step_loc, _ = t.one("GRPORun.step")
    ro = t.one("rollout")[1]
    adv_loc, advantages = t.one("group_advantages")
    upd_loc, _ = t.one("grpo_update")
    ref_loc, ref_logp = t.one("logprobs_in_chunks")
    # the first micro-batch's: it holds the longest completion (grpo_update.micro_batches)
    fr_out = fr[0][1]
    pm2 = t.first("positions_and_mask", inside="completion_grpo_loss")[1]
    cl_loc, (logp, entropy) = t.first("completion_logprobs", inside="completion_grpo_loss")
    lh_loc, _ = t.first("logprobs_from_hidden", inside="completion_grpo_loss")
    gl_loc, (loss, _) = t.first("grpo_loss")
    cs_loc, surrogate = t.first("clipped_surrogate")
    kl = t.first("kl_k3", inside="grpo_loss")[1]
    norm = t.one("loss_normalizer")[1]
    weights = t.first("token_weights")[1]
    total, grad_norm, stepped = t.one("optimizer_step")[1]
    rec_loc, rec = t.one("GRPORun.record")
    shapes = {
        "problems": t.one("GeneratedTask.train_problems")[1],
        "prompt_ids": gen["prompts"],
        "prefix": pack_out.prefix, "prompt_rows": pack_out.rows, "prompt_valid": pack_out.valid,
        "prefill_pos": pos, "prefill_mask": mask,
        "prefix_h": prefix_h, "prefix_k": prefix_past[0][0],
        "rows_h": rows_h, "rows_k": rows_cache[0][0],
        "KVCache.k": t.one("prefill")[1][0][0].rows.k,
        "logits": nxt_loc["logits"], "next_tok": nxt_tok, "next_logp": nxt_logp,
        "decode_h": dec_h, "decode_mask": fwd[2][0]["mask"], "done": gen["done"],
        "samples.batch.prefix": batch.prefix, "samples.batch.rows": batch.rows,
        "samples.batch.valid": batch.valid, "samples.batch.completions": batch.completions,
        "samples.batch.completion_mask": batch.completion_mask,
        "samples.sampler_logp": samples.sampler_logp, "samples.truncated": samples.truncated,
        "ro.texts": ro.texts, "ro.scores['accuracy']": ro.scores["accuracy"],
        "ro.scores['format']": ro.scores["format"],
        "rewards": step_loc["rewards"], "r": adv_loc["r"], "advantages": advantages,
        "mask": upd_loc["mask"], "mb": upd_loc["mb"], "norm": norm, "ref_logp": ref_logp,
        "pos": pm2[0], "attn_mask": pm2[1], "forward_rows(model, batch)": fr_out,
        "h": cl_loc["h"], "h @ weight.t()": lh_loc["logits"], "logp": logp, "entropy": entropy,
        "old_logp": gl_loc["old_logp"], "kl": kl, "ratio": cs_loc["ratio"], "A": cs_loc["A"],
        "surrogate": surrogate, "weights": weights, "per_token": gl_loc["per_token"],
        "loss": loss, "total": total, "grad_norm": grad_norm,
        "lengths": rec_loc["lengths"], "groups": rec_loc["groups"],
    }
    facts = dict(stepped=stepped, norm=norm, rec=rec, old_is_none=upd_loc["old_logp"] is None,
                 ref_grad=ref_logp.requires_grad, logp_grad=gl_loc["logp"].requires_grad,
                 by_ref=ref_loc["policy"] is run.ref, widths=[r.size(1) for _, r in fr],
                 n_decode=len(fwd) - 2, samples=samples, ro=ro, opt=run.opt)
    return sizes, {k: shape(v) for k, v in shapes.items()}, facts


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    run, trace, args = run_step(str(tmp_path_factory.mktemp("one-step")))
    return measured(run, trace, args)


# -----------------------------------------------------------------------------
# the checks

def test_shapes_on_the_page_are_the_measured_ones(step):
    sizes, shapes, _ = step
    quoted = page_shapes(read_page())
    assert sorted(quoted) == sorted(shapes), (
        f"on the page, not measured: {sorted(set(quoted) - set(shapes))}; "
        f"measured, not on the page: {sorted(set(shapes) - set(quoted))}")
    wrong = {k: (sym, evaluate(sym, sizes), shapes[k]) for k, (sym, _) in quoted.items()
             if evaluate(sym, sizes) != shapes[k]}
    assert not wrong, f"key: (page, page at this step's sizes {sizes}, measured): {wrong}"


def test_numbers_on_the_page_are_its_shapes_at_the_defaults():
    text = read_page()
    defaults = {s: v for s, (v, _) in page_sizes(text).items()}
    for C, b in ((1, 32), (77, 5)):  # the step's own: the numbers keep them as symbols
        own = {"C": C, "b": b}
        wrong = {k: (sym, num) for k, (sym, num) in page_shapes(text).items()
                 if evaluate(num, own) != evaluate(sym, {**defaults, **own})}
        assert not wrong, f"shape at the defaults disagrees with the symbols: {wrong}"


def test_sizes_on_the_page_are_the_defaults(step):
    from grpo_update import MICRO_ROWS
    from model import PRESETS
    from tokenizer import get_tokenizer
    from train_args import parse_args
    sizes, _, _ = step
    page, args, tiny = page_sizes(read_page()), parse_args([]), PRESETS["tiny"]
    assert args.model == "tiny" and args.tokenizer == "aha"
    defaults = dict(Q=args.questions, G=args.group_size, B=args.questions * args.group_size,
                    N=args.max_new_tokens, C=args.max_new_tokens, P=sizes["P"], R=sizes["R"],
                    V=get_tokenizer("aha").vocab_size, d=tiny["n_embd"], L=tiny["n_layer"],
                    H=tiny["n_head"], hd=tiny["n_embd"] // tiny["n_head"], b=MICRO_ROWS)
    assert {s: v for s, (v, _) in page.items()} == defaults
    assert [s for s, (_, bound) in page.items() if bound] == ["b", "C"]  # b <= 32, C <= N
    assert sizes["C"] < sizes["N"] and sizes["V"] == defaults["V"]  # the test's C, N differ
    assert sizes["b"] <= MICRO_ROWS  # the first micro-batch: the longest rows
    assert {k: sizes[k] for k in ("Q", "G", "B", "d", "L", "H", "hd")} == {
        k: defaults[k] for k in ("Q", "G", "B", "d", "L", "H", "hd")}


def test_what_the_page_says_of_the_step(step):
    from grpo_update import MICRO_ROWS
    sizes, _, facts = step
    B, C = sizes["B"], sizes["C"]
    assert facts["norm"] == B                        # loss_type grpo: the number of outputs
    assert facts["old_is_none"]                      # one step per rollout: rho = 1
    assert facts["by_ref"] and not facts["ref_grad"] and facts["logp_grad"]
    # B / MICRO_ROWS micro-batches, each trimmed to its longest row: the first, with the longest
    # completion, R + C wide, the later ones narrower
    widths = facts["widths"]
    assert len(widths) == -(-B // MICRO_ROWS) and widths[0] == sizes["R"] + C
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0]
    # decode forwards, after the two prefills: C - 1 (none after the last token drawn)
    samples = facts["samples"]
    assert facts["n_decode"] == C - 1
    assert samples.batch.valid[:, sizes["R"] - 1].all()  # every row's last prompt token: R - 1
    assert not samples.batch.valid[:, -1].all()          # completions of several lengths
    ro = facts["ro"]
    assert set(ro.scores) == {"accuracy", "format"}
    assert facts["stepped"] and all(s["step"] == 1 for s in facts["opt"].state.values())
    rec = facts["rec"]
    for k in ("reward", "accuracy", "format", "length", "kl", "clip_frac", "loss", "grad_norm"):
        assert k in rec, k
    assert rec["sampler_logp_diff"] < 1e-5  # the shift is right: the trainer's log-probs of
    assert rec["kl"] == 0.0                  # the tokens are the sampler's; step 1: pi_ref = pi


def test_line_numbers_point_at_their_definitions():
    text = read_page()
    refs = REF.findall(text)
    assert refs and len(refs) == len(BARE.findall(text)), (
        "a `file.py:LINE` without its `name` before it: write `name` (`file.py:LINE`)")
    wrong = []
    for name, _, path, line in refs:
        defs = definitions(path)
        with open(os.path.join(ROOT, path)) as f:
            source = f.read().splitlines()
        text_ok = re.match(rf"\s*(async\s+def|def|class)\s+{re.escape(name.split('.')[-1])}\b",
                           source[int(line) - 1] if int(line) <= len(source) else "")
        if defs.get(name) != int(line) or not text_ok:
            wrong.append(f"{name} ({path}:{line}): defined at {defs.get(name)}")
    assert not wrong, "stale; run `python tests/test_one_step.py --fix`:\n" + "\n".join(wrong)


def test_equation_table_names_functions_that_exist():
    refs = EQ_REF.findall(read_page())
    assert len(refs) >= 10
    missing = [f"{p}:{n}" for p, n in refs if n not in definitions(p)]
    assert not missing, missing


if __name__ == "__main__":
    if sys.argv[1:] == ["--fix"]:
        fix_page()
    elif sys.argv[1:] == ["--shapes"]:
        sizes, shapes, _ = measured(*run_step(tempfile.mkdtemp()))
        quoted = page_shapes(read_page())
        print(f"sizes of this step: {sizes}")
        for k, s in shapes.items():
            sym = quoted.get(k, ("(not on the page)",))[0]
            ok = "ok " if k in quoted and evaluate(sym, sizes) == s else "!! "
            print(f"{ok}{k:32s} {sym:28s} {s}")
    else:
        sys.exit("usage: python tests/test_one_step.py --fix | --shapes")

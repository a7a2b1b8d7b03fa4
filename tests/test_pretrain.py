"""pretrain.py's packed rows against the padded reference: each document several to a row, its
attention kept inside it, gives the padded layout's loss and gradients to fp32 rounding, and a whole
short base stage learns the same weights. Also: what `import train` loads (no matplotlib, no
triton on a CPU run's path).

    python -m pytest -q tests/test_pretrain.py
    python tests/test_pretrain.py --bench [train.py flags]   # s/step padded, packed, bf16
"""

import copy
import os
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script
    sys.path.insert(0, ROOT)

import pretrain  # noqa: E402
import runner  # noqa: E402
from checkpoint import starting_point  # noqa: E402
from model import make_model  # noqa: E402
from tasks import make_task  # noqa: E402
from train_args import parse_args  # noqa: E402

# 8 steps of 12 documents: phase 1 (textbook) is steps 0-3, phase 2 (long answers) 4-5, phase 3
# (the corpus's mixture, mostly short guesses) 6-7
FLAGS = ["--base_steps", "8", "--base_batch", "12", "--seed", "0", "--device", "cpu",
         "--base_dtype", "fp32"]


@pytest.fixture(scope="module")
def setup():
    args = parse_args(FLAGS)
    tok, _ = starting_point(args)
    task = make_task(args, log=lambda s: None)
    torch.manual_seed(0)
    return args, tok, list(pretrain.curriculum(args, task)), make_model("tiny", tok.vocab_size)


def loss_and_grads(fn, model, tok, packs, **kw):
    model.zero_grad(set_to_none=True)
    loss = fn(model, tok, packs, "cpu", **kw)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def doc_tokens(tok, docs):
    """The documents of one pack as lm_loss lays them out -> (P, their token lists after it)."""
    prompts = [tok.encode(p) for p, _ in docs]
    P = pretrain.shared_prefix(prompts)
    return P, [p[P:] + tok.encode(c) + [tok.eot] for p, (_, c) in zip(prompts, docs)]


@pytest.mark.parametrize("step, width", [(0, None), (5, None), (7, None), (7, 300)])
def test_packed_loss_and_gradients_are_the_padded_ones(setup, step, width):
    args, tok, steps, model = setup
    packs = steps[step]
    if step == 7:  # the mixture's short guesses share rows: the packing is exercised
        _, seqs = doc_tokens(tok, packs[1])
        assert pretrain.pack_documents(seqs, tok.pad, width)[0].size(0) < len(seqs)
    ref, ref_g = loss_and_grads(pretrain.lm_loss_padded, model, tok, packs)
    got, got_g = loss_and_grads(pretrain.lm_loss, model, tok, packs, width=width)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-6)
    for name, g in ref_g.items():
        torch.testing.assert_close(got_g[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_a_token_never_attends_across_documents(setup):
    # a row's first document replaced by another of its length: the same layout, every other
    # document's states unchanged (the masked keys contribute exactly 0), its own changed
    args, tok, steps, model = setup
    P, seqs = doc_tokens(tok, steps[7][1])
    seg = pretrain.pack_documents(seqs, tok.pad)[1]  # (N, W)
    shared = next(r for r in seg if len(set(r.tolist()) - {-1}) > 1)  # a row of several documents
    j = int(shared[0])
    other = seqs[j][::-1]

    def states(seqs):
        rows, seg, pos = pretrain.pack_documents(seqs, tok.pad)
        prefix = torch.tensor(tok.encode(steps[7][1][0][0])[:P])[None]  # (1, P)
        with torch.no_grad():
            past = model(prefix)[1]
            return model(rows, P + pos, pretrain.document_mask(P, seg), past)[0], seg  # (N, W, d)

    (h, seg), (h2, seg2) = states(seqs), states(seqs[:j] + [other] + seqs[j + 1:])
    assert torch.equal(seg, seg2) and (seg == j).any() and ((seg >= 0) & (seg != j)).any()
    rest = (seg >= 0) & (seg != j)  # (N, W)
    assert torch.equal(h[rest], h2[rest])
    assert not torch.allclose(h[seg == j], h2[seg == j])


def test_pack_documents_lays_each_document_whole_at_its_own_positions():
    seqs = [[1] * 5, [2] * 2, [3] * 4, [4] * 1, [5] * 3]
    rows, seg, pos = pretrain.pack_documents(seqs, pad=0)  # width 5: the longest
    assert rows.shape == (3, 5)  # 15 tokens in 3 rows of 5, first fit, longest first
    for i, s in enumerate(seqs):
        r, cols = (seg == i).nonzero(as_tuple=True)
        assert len(set(r.tolist())) == 1 and cols.tolist() == list(range(cols[0], cols[0] + len(s)))
        assert rows[seg == i].tolist() == s and pos[seg == i].tolist() == list(range(len(s)))
    assert (rows[seg < 0] == 0).all()
    with pytest.raises(ValueError, match="wider than a row"):
        pretrain.pack_documents(seqs, pad=0, width=4)


def test_a_short_base_stage_learns_the_padded_layouts_weights(setup, tmp_path, monkeypatch):
    # the real base stage, its loss packed, then the reference's: the same weights to rounding
    args, tok, _, _ = setup
    task = make_task(args, log=lambda s: None)
    args = copy.copy(args)
    args.out_dir, args.no_cache = str(tmp_path), True
    packed = pretrain.base_model(args, tok, task, "cpu", log=lambda s: None).state_dict()
    monkeypatch.setattr(pretrain, "lm_loss", pretrain.lm_loss_padded)
    padded = pretrain.base_model(args, tok, task, "cpu", log=lambda s: None).state_dict()
    moved = 0.0
    torch.manual_seed(args.seed)
    init = make_model(args.model, tok.vocab_size).state_dict()
    for name, w in padded.items():
        torch.testing.assert_close(packed[name], w, atol=2e-5, rtol=1e-4, msg=name)
        moved += (w - init[name]).abs().sum().item()
    assert moved > 1.0


def test_import_train_loads_neither_matplotlib_nor_triton():
    # start-up: matplotlib loads when a figure is drawn, triton when a kernel runs on CUDA; a CPU
    # run's log-probs take the references
    code = ("import sys, torch; import train, grpo_kernels\n"
            "h, W, y = torch.randn(2, 3, 8), torch.randn(11, 8), torch.zeros(2, 3).long()\n"
            "grpo_kernels.logprobs_from_hidden(h, W, y, 1.0, with_entropy=True)\n"
            "grpo_kernels.token_logprobs(h @ W.t(), y)\n"
            "print(sorted(m for m in ('matplotlib', 'triton') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


# -----------------------------------------------------------------------------
# the benchmark: the base stage three times, from the same weights on the same documents, each
# step timed in each layout and precision (in a rotating order)

VARIANTS = {"padded": (pretrain.lm_loss_padded, False), "packed": (pretrain.lm_loss, False),
            "packed bf16": (pretrain.lm_loss, True)}


def bench(argv):
    args = parse_args(argv)
    runner.flush_denormals()  # as runner.session does
    runner.cap_kernel_caches()
    tok, _ = starting_point(args)
    task = make_task(args, log=lambda s: None)
    torch.manual_seed(args.seed)
    models = {"padded": make_model(args.model, tok.vocab_size).to(args.device)}
    models.update({k: copy.deepcopy(models["padded"]) for k in VARIANTS if k != "padded"})
    opts = {k: pretrain.base_optimizer(m, args) for k, m in models.items()}
    secs, losses = {k: [] for k in models}, {k: [] for k in models}
    names = list(VARIANTS)
    for step, packs in enumerate(pretrain.curriculum(args, task)):
        for k in names[step % 3:] + names[:step % 3]:
            fn, bf16 = VARIANTS[k]
            t0 = time.perf_counter()
            with torch.autocast(torch.device(args.device).type, torch.bfloat16, enabled=bf16):
                loss = fn(models[k], tok, packs, args.device)
            pretrain.base_step(models[k], opts[k], loss, step, args)
            secs[k].append(time.perf_counter() - t0)
            losses[k].append(loss.item())
    n_template = round(args.template_frac * args.base_steps)
    start_2, start_3 = args.base_steps - n_template, args.base_steps - n_template // 2
    for name, lo, hi in [("phase 1", 0, start_2), ("phase 2", start_2, start_3),
                         ("phase 3", start_3, args.base_steps), ("all", 0, args.base_steps)]:
        if hi > lo:
            a, b, c = (sum(secs[k][lo:hi]) / (hi - lo) for k in names)
            print(f"{name:8s} steps {lo:4d}-{hi - 1:4d}: s/step padded {a:.3f}, packed {b:.3f}, "
                  f"packed bf16 {c:.3f}: packed x{a / b:.2f}, bf16 x{b / c:.2f}")
    for k in models:
        tail = losses[k][-50:]
        print(f"{k}: final loss {losses[k][-1]:.4f}, mean of the last {len(tail)} steps "
              f"{sum(tail) / len(tail):.4f}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--bench"]:
        raise SystemExit("usage: python tests/test_pretrain.py --bench [train.py flags]")
    bench(sys.argv[2:])

"""The update skips padding: Batch.trim (batch.py) and grpo_update's micro-batches of rows of alike
lengths, each trimmed, against the reference (UpdateConfig trim=False: every micro-batch as wide
as the rollout, --micro_batch 0 a whole mini-batch). The rollout's rows have very different prompt
and completion lengths, tool outputs and cut-off rows, and a sampler that is not the trainer (so
the TIS weights and the sampler gap are not trivial); every objective must give the same loss,
gradients (the weights after SGD steps) and logged statistics.

    python -m pytest -q tests/test_trim.py
"""

import copy
from dataclasses import replace

import pytest
import torch

import grpo_kernels
import grpo_update
from batch import Batch, forward_rows, pack, positions_and_mask
from grpo_update import (Policy, UpdateConfig, completion_logprobs, logprobs_in_chunks,
                         balanced_micro_batches, cheapest_partition, micro_batches,
                         partition_brute_force)
from model import ModelConfig, Transformer
from sample import Samples

V, PAD, N = 50, 0, 40  # vocabulary, padding id, max_new_tokens
# very different lengths, in no order: the row with the longest prompt rest (6) has a 1-token
# completion, so that a micro-batch of long completions drops prompt columns too
RESTS = [6, 1, 2, 3, 1, 2, 1, 3, 2, 1, 4, 2, 1, 3, 1, 2]
LENGTHS = [1, 2, 40, 3, 25, 5, 7, 38, 2, 12, 1, 30, 4, 9, 16, 6]


def rollout(seed=0, device="cpu"):
    """(model, Samples, advantages (B,)) on device: tool outputs in three rows, the 40-token rows
    cut off, the sampler's log-probs the trainer's plus noise (0 on tool output, as the tool
    engine's)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=V, n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                                    ffn_hidden=64, block_size=128))
    tokens = lambda n: torch.randint(1, V, (n,), generator=g).tolist()  # noqa: E731
    batch = pack([[1, 2, 3] + tokens(r) for r in RESTS], [tokens(n) for n in LENGTHS], PAD)
    tool = torch.zeros(batch.completions.shape, dtype=torch.bool)  # (B, C)
    tool[2, 5:12], tool[7, 30:38], tool[11, 10:15] = True, True, True
    with torch.no_grad():
        logp = completion_logprobs(model, batch)  # (B, C)
    noise = 0.05 * torch.randn(logp.shape, generator=g)
    sampler_logp = (logp + noise) * batch.completion_mask * ~tool
    A = torch.randn(len(LENGTHS), generator=g)  # (B,)
    on = Batch(*(x.to(device) for x in (batch.prefix, batch.rows, batch.valid)), batch.R)
    samples = Samples(on, sampler_logp.to(device), (torch.tensor(LENGTHS) == N).to(device),
                      tool_mask=tool.to(device))
    return model.to(device), samples, A.to(device)


def update(model, samples, A, cfg, lr=0.5):
    """-> (the model after grpo_update with SGD, its metrics); a frozen copy of model is pi_ref."""
    net = copy.deepcopy(model)
    ref = Policy(copy.deepcopy(model).requires_grad_(False)) if cfg.beta > 0 else None
    opt = torch.optim.SGD(net.parameters(), lr=lr)  # SGD: the weights move by the gradient itself
    m = grpo_update.grpo_update(Policy(net), ref, opt, samples, A, cfg,
                                torch.Generator().manual_seed(0))
    return net, m


def assert_same_update(model, samples, A, cfg, ref_cfg):
    trimmed, m = update(model, samples, A, cfg)
    plain, m_ref = update(model, samples, A, ref_cfg)
    moved = 0.0
    for p, q, p0 in zip(trimmed.parameters(), plain.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, atol=2e-6, rtol=1e-5)
        moved += (q - p0).abs().sum().item()
    assert moved > 0
    assert m.keys() == m_ref.keys()
    for k in m_ref:
        assert m[k] == pytest.approx(m_ref[k], abs=2e-6), k
    return m_ref


# --- Batch.trim ---

def test_trim_drops_only_the_columns_no_row_uses():
    model, samples, _ = rollout()
    batch, P = samples.batch, samples.batch.prefix.numel()
    rests = torch.tensor(RESTS)
    lengths = torch.tensor(LENGTHS)
    for rows in ([2, 7, 11], [0, 1], [4, 9, 14], [10], list(range(len(RESTS)))):
        idx = torch.tensor(rows)
        sub = batch.select(idx)
        t = sub.trim()
        c = int(lengths[idx].max())
        assert (t.R, t.completions.size(1)) == (int(rests[idx].max()), c)
        assert torch.equal(t.rows[t.valid], sub.rows[sub.valid])  # the same tokens, in order
        pos, t_pos = positions_and_mask(P, sub.valid)[0], positions_and_mask(P, t.valid)[0]
        assert torch.equal(t_pos[t.valid], pos[sub.valid])      # at the same positions
        with torch.no_grad():
            h, t_h = forward_rows(model, sub), forward_rows(model, t)
            lp, t_lp = completion_logprobs(model, sub), completion_logprobs(model, t)
        torch.testing.assert_close(t_h[t.valid], h[sub.valid], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(t_lp, lp[:, :c], atol=1e-6, rtol=1e-6)
        assert not lp[:, c:].any()  # what was cut is padding
    assert batch.select(torch.tensor([0])).trim().rows.size(1) < batch.rows.size(1) // 4


def test_trim_keeps_one_completion_column():
    _, samples, _ = rollout()
    b = samples.batch.select(torch.tensor([0, 1]))
    empty = type(b)(b.prefix, b.rows, b.valid.clone(), b.R)
    empty.valid[:, b.R:] = False  # rows with no completion token at all
    t = empty.trim()
    assert t.completions.size(1) == 1 and not t.completion_mask.any()


# --- the micro-batches ---

def test_micro_batches_sort_by_length_and_cover_each_row_once():
    lengths = torch.tensor(LENGTHS, dtype=torch.float)
    rows = torch.randperm(16, generator=torch.Generator().manual_seed(0))[:10]
    parts = micro_batches(rows, lengths, 3)
    assert [len(p) for p in parts] == [3, 3, 3, 1]
    assert sorted(torch.cat(parts).tolist()) == sorted(rows.tolist())
    assert lengths[torch.cat(parts)].diff().le(0).all()  # longest first
    plain = micro_batches(rows, lengths, 3, by_length=False)
    assert torch.equal(torch.cat(plain), rows)  # the reference: the mini-batch's own order


def test_cheapest_partition_is_the_brute_forces():
    # every way of cutting, on 400 random cases: the dynamic program finds as few cells, in as
    # many parts as split(size) makes, none over the budget of size rows of the widest
    g = torch.Generator().manual_seed(0)
    cells = lambda w, p: [n * int(w[sum(p[:j])]) for j, n in enumerate(p)]  # noqa: E731
    for _ in range(400):
        n, size = (int(torch.randint(1, hi, (1,), generator=g)) for hi in (12, 5))
        w = torch.randint(0, 30, (n,), generator=g).sort(descending=True).values  # 0: no tokens
        k = -(-n // size)
        fast, plain = cheapest_partition(w, k, size), partition_brute_force(w, k, size)
        assert len(fast) == k and sum(fast) == n and min(fast) >= 1
        assert sum(cells(w, fast)) == sum(cells(w, plain))
        assert max(cells(w, fast)) <= size * int(w[0])
        equal = [len(p) for p in torch.arange(n).split(size)]
        assert sum(cells(w, fast)) <= sum(cells(w, equal))
    with pytest.raises(ValueError, match="cannot be cut into 3 parts"):
        cheapest_partition(torch.tensor([5, 5, 5]), 3, 2)  # more parts than a split of 2 rows


def test_balanced_micro_batches_cover_each_row_once_longest_first():
    widths = torch.tensor([9, 3, 3, 9, 3, 3, 50, 1])
    rows = torch.tensor([5, 0, 3, 2, 4, 1])  # widths 3, 9, 9, 3, 3, 3
    parts = balanced_micro_batches(rows, widths, 3)
    assert [p.tolist() for p in parts] == [[0, 3], [5, 2, 4, 1]]  # 18 + 12 cells, not 27 + 9
    assert balanced_micro_batches(torch.tensor([6, 7]), widths, 1)[0].tolist() == [6]


def test_balanced_micro_batches_past_the_programs_bound_split_in_fixed_sizes(monkeypatch):
    widths = torch.tensor([9, 3, 3, 9, 3, 3, 50, 1])
    monkeypatch.setattr(grpo_update, "PARTITION_ROWS", 5)
    parts = balanced_micro_batches(torch.tensor([5, 0, 3, 2, 4, 1]), widths, 3)
    assert [p.tolist() for p in parts] == [[0, 3, 5], [2, 4, 1]]


def test_logprobs_in_chunks_trimmed_are_the_whole_batchs():
    model, samples, _ = rollout()
    B = len(LENGTHS)
    parts = micro_batches(torch.arange(B), samples.batch.completion_mask.sum(1), 5)
    trimmed = logprobs_in_chunks(Policy(model), samples.batch, parts, 0.7)
    whole = logprobs_in_chunks(Policy(model), samples.batch, [torch.arange(B)], 0.7, trim=False)
    assert trimmed.shape == whole.shape == samples.batch.completions.shape
    torch.testing.assert_close(trimmed, whole, atol=1e-6, rtol=1e-6)


# --- the update: every objective, trimmed against the reference ---

POLICIES = {
    "clip": {},
    "gspo": dict(ratio_level="sequence", gspo_eps=0.01, gspo_eps_high=0.02),
    "cispo": dict(policy_loss="cispo", cispo_eps_high=0.05),
    "dual_clip": dict(dual_clip=1.01),
    "gspo_dual_clip": dict(ratio_level="sequence", gspo_eps=0.01, gspo_eps_high=0.02,
                           dual_clip=1.01),
}


@pytest.mark.parametrize("loss_type", ["grpo", "token", "dr_grpo"])
@pytest.mark.parametrize("objective", list(POLICIES))
def test_trimmed_update_is_the_untrimmed_one(loss_type, objective):
    # two mini-batches (the second sees a moved policy: ratios, clipping, pi_theta_old), the KL,
    # TIS weights (token or sequence level, as the ratio), tool masks, cut-off rows masked
    model, samples, A = rollout()
    cfg = UpdateConfig(loss_type=loss_type, max_new_tokens=N, beta=0.1, minibatches=2,
                       micro_batch=3, tis=True, tis_cap=1.05, grad_clip=0.0, clip_eps=0.05,
                       mask_truncated=loss_type == "token", **POLICIES[objective])
    m = assert_same_update(model, samples, A, cfg, replace(cfg, micro_batch=0, trim=False))
    assert m["clip_frac"] > 0 and m["kl"] > 0 and m["tis_min"] < 1  # none of them is idle


@pytest.mark.parametrize("micro_batch", [0, 4])
def test_default_micro_batches_and_epochs(micro_batch, monkeypatch):
    # --micro_batch 0 is ceil(16 / MICRO_ROWS) balanced micro-batches (MICRO_ROWS 4 here: several);
    # two epochs of one mini-batch: one pass of pi_theta_old, and the gap over the first step only
    monkeypatch.setattr(grpo_update, "MICRO_ROWS", 4)
    model, samples, A = rollout(seed=1)
    cfg = UpdateConfig(beta=0.1, ppo_epochs=2, micro_batch=micro_batch, grad_clip=1.0)
    m = assert_same_update(model, samples, A, cfg, replace(cfg, micro_batch=0, trim=False))
    assert m["sampler_logp_diff"] > 1e-3 and m["grad_norm"] > 0


@pytest.mark.parametrize("objective", ["clip", "gspo"])
def test_kernel_path_gets_the_trimmed_batch(objective, monkeypatch):
    # what CUDA runs (the fused loss for the paper's clip; the kernels' log-probs, then
    # grpo.grpo_loss, for GSPO), trimmed, against the reference path untrimmed; on a CPU under
    # Triton's interpreter
    device, use = ("cuda", "cuda") if torch.cuda.is_available() else ("cpu", "always")
    model, samples, A = rollout(device=device)
    cfg = UpdateConfig(beta=0.1, minibatches=2, micro_batch=5, tis=True, tis_cap=1.05,
                       **POLICIES[objective])
    monkeypatch.setattr(grpo_kernels, "USE", "never")
    plain = update(model, samples, A, replace(cfg, micro_batch=0, trim=False))
    monkeypatch.setattr(grpo_kernels, "USE", use)
    fast = update(model, samples, A, cfg)
    for p, q in zip(fast[0].parameters(), plain[0].parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)
    for k in ("loss", "kl", "ratio", "clip_frac", "entropy", "grad_norm", "tis_mean"):
        assert fast[1][k] == pytest.approx(plain[1][k], abs=1e-5), k

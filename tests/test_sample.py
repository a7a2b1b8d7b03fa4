import pytest
import torch
import torch.nn.functional as F

import grpo_kernels
import sample

from bench_generate import generate_before
from grpo_kernels.logprob import token_logprobs_reference
from model import KVCache, PrefixedCache, Transformer, ModelConfig, prefix_attention
from batch import pack, positions_and_mask
from grpo_update import completion_logprobs
from sample import generate, generate_naive, inverse_cdf, sample_next, top_p_cut, top_p_cut_sort

PAD, STOP = 49, [47, 48]


def tiny():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=64, block_size=96)).eval()


# prompts of different lengths with a common prefix of 6 tokens, as templated prompts have
PROMPTS = [[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 9], [1, 2, 3, 4, 5, 6, 10, 11, 12, 13]]


def test_cached_generate_matches_naive_decoding():
    model = tiny()
    out = generate(model, PROMPTS, G=2, max_new_tokens=20, stop_ids=STOP, pad=PAD, temperature=0)
    assert out.batch.prefix.tolist() == [1, 2, 3, 4, 5, 6]
    for i, prompt in enumerate(PROMPTS):
        ref = generate_naive(model, prompt, 20, STOP)
        for g in range(2):
            row = out.batch.completions[2 * i + g]
            n = int(out.batch.completion_mask[2 * i + g].sum())
            assert row[:n].tolist() == ref  # exactly the same tokens
            assert (row[n:] == PAD).all()


def test_stop_texts_match_naive_decoding():
    # a toy tokenizer whose tokens are 1-3 characters: the stop text spans parts of three tokens,
    # so the sampler's check of the decoded tail must find it exactly where the oracle's check of
    # the whole decoded completion does
    model = tiny()
    decode = lambda ids: "".join(chr(97 + i % 26) * (1 + i % 3) for i in ids)
    free = generate_naive(model, PROMPTS[0], 20, [])
    stop = decode(free[3:6])[1:-1]
    out = generate(model, PROMPTS, G=2, max_new_tokens=20, stop_ids=STOP, pad=PAD, temperature=0,
                   stop_texts=(stop, "zzzz"), decode=decode)
    for i, prompt in enumerate(PROMPTS):
        ref = generate_naive(model, prompt, 20, STOP, stop_texts=(stop, "zzzz"), decode=decode)
        for g in range(2):
            n = int(out.batch.completion_mask[2 * i + g].sum())
            assert out.batch.completions[2 * i + g, :n].tolist() == ref
            stopped = ref[-1] in STOP or any(s in decode(ref) for s in (stop, "zzzz"))
            assert bool(out.truncated[2 * i + g]) == (not stopped)
    first = generate_naive(model, PROMPTS[0], 20, STOP, stop_texts=(stop,), decode=decode)
    assert len(first) <= 6 and stop in decode(first)  # stopped where the text appeared, not later


# the kernel path, the sampler on the log-prob kernel and the trainer on the fused linear one: on
# CUDA as train.py runs it, on a CPU under Triton's interpreter (grpo_kernels.USE = "always")
KERNEL_PATH = ("cuda", "cuda") if torch.cuda.is_available() else ("cpu", "always")


@pytest.mark.parametrize("device, use", [("cpu", "never"), KERNEL_PATH])
def test_sampler_logprobs_equal_trainer_logprobs(device, use, monkeypatch):
    # oracle: each row alone, unpadded, no shared prefix, no cache, the reference log-probs
    monkeypatch.setattr(grpo_kernels, "USE", use)
    model = tiny().to(device)
    out = generate(model, PROMPTS, G=4, max_new_tokens=15, stop_ids=STOP, pad=PAD,
                   temperature=0.7, generator=torch.Generator(device).manual_seed(0))
    mask = out.batch.completion_mask
    trainer = completion_logprobs(model, out.batch, temperature=0.7)
    torch.testing.assert_close(trainer, out.sampler_logp, atol=1e-5, rtol=0)
    for r in range(mask.size(0)):
        n = int(mask[r].sum())
        prompt = PROMPTS[r // 4]
        seq = torch.tensor(prompt + out.batch.completions[r, :n].tolist(), device=device)
        logits = model.lm_head(model(seq[None])[0])[0, len(prompt) - 1:-1]
        ref = token_logprobs_reference(logits, seq[len(prompt):], 0.7)
        torch.testing.assert_close(trainer[r, :n], ref, atol=1e-5, rtol=0)


def test_stop_tokens_in_mask_padding_not_and_truncation():
    model = tiny()
    out = generate(model, PROMPTS, G=8, max_new_tokens=12, stop_ids=STOP, pad=PAD,
                   generator=torch.Generator().manual_seed(1))
    comp, mask = out.batch.completions, out.batch.completion_mask.bool()
    for r in range(comp.size(0)):
        toks = comp[r][mask[r]].tolist()
        stopped = any(t in STOP for t in toks)
        assert stopped != bool(out.truncated[r])
        if stopped:
            assert toks[-1] in STOP and not any(t in STOP for t in toks[:-1])  # stop token is the last one kept
        assert (comp[r][~mask[r]] == PAD).all() and (out.sampler_logp[r][~mask[r]] == 0).all()
    assert out.truncated.any() and (~out.truncated).any()  # both cases exercised


def test_seeded_sampling_is_reproducible():
    model = tiny()
    a, b = (generate(model, PROMPTS, 3, 10, STOP, PAD, generator=torch.Generator().manual_seed(5)).batch.rows for _ in range(2))
    assert torch.equal(a, b)


def test_top_k_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert (sample_next(logits, 1.0, top_k=1, generator=g)[0] == 1).all()
    tok = sample_next(logits, 1.0, top_k=2, generator=g)[0]
    assert set(tok.tolist()) == {1, 3}
    # probabilities ~ [.03, .64, .09, .24]: top_p=0.8 keeps tokens 1 and 3 only
    tok = sample_next(logits, 1.0, top_p=0.8, generator=g)[0]
    assert set(tok.tolist()) == {1, 3}
    # the returned log-prob is under the full temperature-scaled distribution
    _, logp = sample_next(logits[:1], 1.0, top_k=1, generator=g)
    torch.testing.assert_close(logp, torch.log_softmax(logits[:1], -1)[:, 1])


def test_logprobs_reference_against_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(7, 1000) * 5
    logits[0, :] = 1e4  # extreme, uniform
    logits[1, 3] = -1e4
    y = torch.randint(0, 1000, (7,))
    got = token_logprobs_reference(logits, y, 0.8)
    ref = torch.log_softmax(logits.double() / 0.8, -1).gather(-1, y[:, None]).squeeze(-1)
    torch.testing.assert_close(got.double(), ref, atol=1e-4, rtol=1e-5)
    assert (got <= 0).all()


def test_pack_layout():
    b = pack([[1, 2, 3], [1, 2, 4, 5]], [[7], [8, 9]], pad=0)
    assert b.prefix.tolist() == [1, 2] and b.R == 2
    assert b.rows.tolist() == [[0, 3, 7, 0], [4, 5, 8, 9]]
    assert b.completion_mask.tolist() == [[1, 0], [1, 1]]


def test_prompt_longer_than_context_is_a_clear_error():
    with pytest.raises(ValueError, match="longer than the model's context"):
        generate(tiny(), [list(range(1, 40)) * 2], 2, 30, STOP, PAD)


# -----------------------------------------------------------------------------
# the sampler against its old layout (tests/bench_generate.py's generate_before: every row decoded
# until the last stops, the prefix's keys copied into every row's cache), and its parts against
# their references

def varied():
    """tiny() with untied, 10x larger weights: greedy paths that wander (tiny()'s repeat their last
    token), with wide logit gaps, so that rounding never flips an argmax between attention paths."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=64,
                                    block_size=96, tie_embeddings=False)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" not in n:
                p.mul_(10)
    return model


# at varied(), greedy with stop id 8: lengths 1, 30 (cut off), 30, 9, 4, 22
SPREAD = PROMPTS + [[1, 2, 3, 4, 5, 6, 20], [1, 2, 3, 4, 5, 6, 30, 31], [1, 2, 3, 4, 5, 6, 40]]
NO_PREFIX = [[7, 8], [9], [10, 11, 12, 13]]  # no common first token: P = 0
DECODE = lambda ids: "".join(chr(97 + i % 26) * (1 + i % 3) for i in ids)  # 1-3 characters a token


@pytest.mark.parametrize("compact", [1.0, 0.75, 0.0])  # every stop compacts ... never compacts
@pytest.mark.parametrize("case", ["spread", "stop_texts", "no_prefix", "one_token_prompt"])
def test_generate_equals_the_old_layout(case, compact, monkeypatch):
    monkeypatch.setattr(sample, "COMPACT_BELOW", compact)
    model = varied()
    # a stop text over 4 tokens of 2, 1, 1, 1 characters, from its second character on: the last
    # 4 tokens, all that the sampler decodes, just hold it
    text = DECODE(generate_naive(model, SPREAD[3], 4, []))[1:]
    prompts, G, kw = {"spread": (SPREAD, 3, {}), "no_prefix": (NO_PREFIX, 2, {}), "one_token_prompt": ([[5]], 2, {}),
                      "stop_texts": (SPREAD, 2, dict(stop_texts=(text, "zzzz"), decode=DECODE))}[case]
    args = (model, prompts, G, 30, [8], PAD)
    new, old = generate(*args, temperature=0, **kw), generate_before(*args, temperature=0, **kw)
    assert new.batch.prefix.tolist() == old.batch.prefix.tolist() and new.batch.R == old.batch.R
    assert torch.equal(new.batch.rows, old.batch.rows) and torch.equal(new.batch.valid, old.batch.valid)
    assert torch.equal(new.truncated, old.truncated)
    torch.testing.assert_close(new.sampler_logp, old.sampler_logp, atol=1e-5, rtol=1e-5)
    lengths = new.batch.completion_mask.sum(1)
    if case == "spread":  # the case it names: rows of very different lengths
        assert lengths.min() == 1 and new.truncated.any() and len(set(lengths.tolist())) >= 4
    if case == "stop_texts":  # prompt 3's rows stopped on the text, at its 4th token, not on the id
        assert len(text) == 4 and lengths[6:8].tolist() == [4, 4] and (new.batch.completions[6:8] != 8).all()
    if case == "no_prefix":
        assert new.batch.prefix.numel() == 0


def test_all_done_keeps_every_rank_stepping():
    # dist.all_done under FSDP: a rank whose rows have all stopped keeps calling the model (each
    # forward is a collective) with at least one row until every rank is done; here the other
    # rank stands as an all_done that says "done" at the 12th step
    model, shapes = varied(), []
    model.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    steps = []
    lockstep = lambda done: steps.append(bool(done.all())) or len(steps) == 12
    out = generate(model, SPREAD[:1], 2, 30, [8], PAD, temperature=0, all_done=lockstep)
    assert steps[0] and len(steps) == 12  # done at the first step, stepping on all the same
    assert shapes[2:] == [(1, 1)] * 11  # two prefills, then one dummy row a step
    alone = generate(model, SPREAD[:1], 2, 30, [8], PAD, temperature=0)
    assert out.batch.completions.size(1) == 12 and torch.equal(out.batch.rows[:, :alone.batch.rows.size(1)], alone.batch.rows)
    assert (out.batch.completions[:, 1:] == PAD).all() and not out.truncated.any()


@pytest.mark.parametrize("n_kv_head, T, P", [(2, 1, 7), (2, 5, 7), (4, 3, 7), (2, 4, 0)])
def test_prefix_attention_equals_concatenated_keys(n_kv_head, T, P):
    # oracle: F.scaled_dot_product_attention over each row's copy of the prefix, then its own keys
    g = torch.Generator().manual_seed(0)
    B, H, S, hd = 3, 4, 6, 8
    q = torch.randn(B, H, T, hd, generator=g)
    k, v = (torch.randn(B, n_kv_head, S, hd, generator=g) for _ in range(2))
    pk, pv = (torch.randn(1, n_kv_head, P, hd, generator=g) for _ in range(2))
    mask = torch.rand(B, 1, T, S, generator=g) > 0.4
    mask[..., -1] = True  # without a prefix, a query must see one key at least
    got = prefix_attention(q, k, v, pk, pv, mask)
    ref = F.scaled_dot_product_attention(q, torch.cat([pk.expand(B, -1, -1, -1), k], 2),
                                         torch.cat([pv.expand(B, -1, -1, -1), v], 2),
                                         attn_mask=torch.cat([mask.new_ones(B, 1, T, P), mask], -1),
                                         enable_gqa=n_kv_head != H)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(prefix_attention(q, k, v, pk, pv, None),
                               prefix_attention(q, k, v, pk, pv, torch.ones_like(mask)))


def test_prefixed_cache_decoding_equals_the_copied_cache():
    # the model's two decoding paths, prompt prefill included: the prefix held once (PrefixedCache,
    # the sampler's) against its keys copied into every row's KVCache (the old layout)
    model, B, steps = tiny(), 4, 6
    batch = pack(PROMPTS + [[1, 2, 3, 4, 5, 6, 20]], [[]] * 4, PAD)
    P, R = batch.prefix.numel(), batch.R
    prefix = model(batch.prefix[None])[1]
    pos, mask = positions_and_mask(P, batch.valid)
    h_old, copied = model(batch.rows, pos, mask, prefix)
    h_new, own = model(batch.rows, pos, mask[..., P:], [PrefixedCache(k, v) for k, v in prefix])
    torch.testing.assert_close(h_new, h_old, atol=1e-6, rtol=1e-5)
    old = [KVCache(k, v, P + R + steps) for k, v in copied]
    new = [PrefixedCache(pk, pv, KVCache(k, v, R + steps)) for (pk, pv), (k, v) in zip(prefix, own)]
    valid, next_pos = batch.valid, pos[:, -1] + 1
    toks = torch.randint(0, 50, (B, steps), generator=torch.Generator().manual_seed(0))
    for t in range(steps):
        valid = torch.cat([valid, torch.rand(B, 1) > 0.3], 1)  # some decode columns are padding
        full = torch.cat([valid.new_ones(B, P), valid], 1)[:, None, None]  # (B, 1, 1, P + R + t + 1)
        h_old, old = model(toks[:, t:t + 1], next_pos[:, None], full, old)
        h_new, new = model(toks[:, t:t + 1], next_pos[:, None], valid[:, None, None], new)
        torch.testing.assert_close(h_new, h_old, atol=1e-6, rtol=1e-5)
        next_pos = next_pos + 1


def chi2(tok, p):
    """Pearson's statistic of the draws tok against the probabilities p (V,), over the p > 0."""
    n = torch.bincount(tok, minlength=p.numel()).double()
    e = p.double() * tok.numel()
    assert (n[p == 0] == 0).all(), "drew a token of probability 0"
    return float(((n - e)[p > 0] ** 2 / e[p > 0]).sum())


# 200000 draws over k = 7 tokens of probability > 0: chi2 with 6 degrees of freedom exceeds 30
# with probability 4e-5; one token drawn 1% too often (of 200000) already gives ~100
BOUND, N_DRAWS = 30.0, 200_000


def test_inverse_cdf_draws_the_distribution():
    p = torch.tensor([0.3, 0.0, 0.2, 0.25, 0.0, 0.01, 0.14, 0.1, 0.0])  # zeros inside and at the end
    g = torch.Generator().manual_seed(0)
    for w in (p, p * 7.5):  # weights need not sum to 1
        assert chi2(inverse_cdf(w.expand(N_DRAWS, -1), g), p) < BOUND
    # the bound has power: the same draws one token off fail it
    shifted = (inverse_cdf(p.expand(N_DRAWS, -1), g) + 1) % p.numel()
    with pytest.raises(AssertionError):
        assert chi2(shifted, p) < BOUND


def test_inverse_cdf_never_draws_a_token_of_weight_zero():
    # the uniforms at their ends: 0 (the right side of searchsorted skips leading zero weights),
    # the largest float below 1, and 1 itself (CUDA's uniform has been known to return its upper
    # bound): never a trailing zero weight, never index V
    w = torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.7, 0.0, 0.0], [0.0, 0.5, 0.0, 3.0, 0.0, 0.25, 0.0]])
    below_1 = torch.tensor(1.0).nextafter(torch.tensor(0.0))
    assert inverse_cdf(w, u=torch.zeros(2)).tolist() == [2, 1]
    for u in (below_1, 1.0):
        assert inverse_cdf(w, u=torch.full((2,), u)).tolist() == [4, 5]


@pytest.mark.parametrize("kw", [dict(temperature=1.0), dict(temperature=0.6), dict(temperature=1.0, top_k=3),
                                dict(temperature=1.0, top_p=0.8), dict(temperature=0.7, top_k=5, top_p=0.9)])
def test_sample_next_draws_the_truncated_distribution(kw):
    logits = torch.tensor([3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0, -3.0])[[3, 0, 6, 2, 7, 1, 5, 4]]
    # the reference: sort, truncate, renormalise (8 tokens; no ties)
    z = logits / kw["temperature"]
    order = z.argsort(descending=True)
    keep = torch.zeros(8, dtype=torch.bool)
    keep[order[:kw.get("top_k") or 8]] = True
    p = z.masked_fill(~keep, float("-inf")).softmax(-1)
    head = p[order].cumsum(0) - p[order] <= kw.get("top_p", 1.0)  # kept: the mass before it <= top_p
    p = p * torch.zeros(8).index_fill(0, order[head], 1.0)
    tok, logp = sample_next(logits.expand(N_DRAWS, -1), generator=torch.Generator().manual_seed(1), **kw)
    assert chi2(tok, p / p.sum()) < BOUND
    # the log-probs: of the whole temperature-scaled distribution, whatever was truncated
    torch.testing.assert_close(logp, token_logprobs_reference(logits.expand(N_DRAWS, -1), tok, kw["temperature"]))


def test_top_p_cut_equals_the_sort():
    # rows from flat to peaked, so that the topk head (64), the longer one (512), the next (4096)
    # and the whole sort each decide some; and rows of many ties (integer logits)
    g = torch.Generator().manual_seed(0)
    V = 5000
    scale = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0]).repeat_interleave(4)[:, None]
    rand = (torch.randn(32, V, generator=g) * scale).softmax(-1)
    ties = torch.randint(0, 4, (32, V), generator=g).float().softmax(-1)
    for probs in (rand, ties):
        for top_p in (0.5, 0.9, 0.95, 0.999):
            got, ref = top_p_cut(probs, top_p), top_p_cut_sort(probs, top_p)
            assert torch.equal(got, ref)
            # the kept set: the head up to the token that passes top_p, and whatever ties that
            # token (to the rounding of a sum in another order than the cumulative one)
            assert ((probs * (probs >= got)).sum(-1) >= top_p * (1 - 1e-5)).all()
            assert ((probs * (probs > got)).sum(-1) < top_p * (1 + 1e-5)).all()
    # every level decided some row: the 64-head reaches 0.9 on peaked rows, not on flat ones
    head = rand.topk(64, -1).values.sum(-1)
    assert (head >= 0.9).any() and (rand.topk(512, -1).values.sum(-1) < 0.9).any()
    # exact binary fractions: a token is kept while the mass before it is <= top_p (exercise 7's
    # rule), so at top_p 0.5 the mass 0.5 before the second token keeps it
    p = torch.tensor([[0.0625, 0.5, 0.1875, 0.25]])
    assert [top_p_cut(p, x).item() for x in (0.49, 0.5, 0.75, 0.9375, 1.0)] == [0.5, 0.25, 0.1875, 0.0625, 0.0625]
    # a permutation of the columns permutes the kept set: ties are kept or dropped together
    perm = torch.randperm(V, generator=g)
    assert torch.equal(ties >= top_p_cut(ties, 0.9), (ties[:, perm] >= top_p_cut(ties[:, perm], 0.9))[:, perm.argsort()])

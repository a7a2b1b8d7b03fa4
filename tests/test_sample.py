import pytest
import torch

import grpo_kernels

from grpo_kernels.logprob import token_logprobs_reference
from model import Transformer, ModelConfig
from batch import pack
from grpo_update import completion_logprobs
from sample import generate, generate_naive, sample_next

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

"""
Batched sampling with a KV cache: the "sample G outputs from pi_theta_old" of eq. 1.

`generate` runs the template shared by the whole batch once and holds its keys once
(model.PrefixedCache; batch.py's layout), prefills each prompt once and copies its own keys to its
G samples, decodes, stops a row at <|endoftext|> or </answer> (the stop token is part of the
completion and of the loss; padding is not), and returns the sampler's log-probs of the chosen
tokens under the temperature-scaled distribution, the quantity the trainer computes
(grpo_update.completion_logprobs). Stopped rows leave the decode batch (compacted when enough have
stopped), so a step costs the rows still going. A token is drawn by inverse CDF, one uniform per
row: torch.multinomial's distribution, other tokens under a seed. top-k / top-p change what is
drawn but not that log-prob (top-p from a topk head, sorting only rows where it falls short); with
them on, the sampling distribution is not the trained one, so RL leaves them off.

A real tokenizer (tokenizer.HFTokenizer) spells </answer> as several tokens: `generate` then also
stops a row when the decoded tail of its completion contains one of `stop_texts`.

`generate_naive` is the reference: one row at a time, no padding, no cache, the whole sequence
re-run for every new token; tests/test_sample.py checks the two give the same tokens, and the
decoding against the old layout (tests/bench_generate.py's generate_before, which also times both).
Left out: continuous batching (a stopped row's place is not given to a new prompt), paged caches.

    python sample.py --ckpt out/<run>/ckpt.pt --prompt "Compute 82 + 97"
    python sample.py --ckpt hf:/models/Qwen2.5-0.5B-Instruct --prompt "Compute 82 + 97"
"""

from dataclasses import dataclass

import torch

from batch import Batch, pack, positions_and_mask
from checkpoint import load_model
from grpo_kernels import token_logprobs
from model import KVCache, PrefixedCache
from runner import Parser
from template import CHAT_FLAGS, chat_format, render_prompt


@dataclass
class Samples:
    """What a sampler returns (generate here, engines/vllm_engine.py and engines/tools.py keep the
    same contract): B rows in batch.py's layout, rows i*G .. i*G+G-1 answering prompt i. What a
    rollout returns, rollout.Rollout, is these samples with their texts and scores."""
    batch: Batch                # prefix (P,), rows (B, R + C): the prompts and their completions
    sampler_logp: torch.Tensor  # (B, C) the sampler's log-prob of each chosen token, 0 on padding
    truncated: torch.Tensor     # (B,) bool: hit max_new_tokens without a stop token
    # (B, C) True on tool-output tokens (not sampled); None: no tools
    tool_mask: torch.Tensor | None = None
    # engines/tools.py: calls (B,), errors (B,), seconds of the calls
    tool_stats: dict | None = None

    @property
    def sampled_mask(self):
        """(B, C) float: 1 on the tokens the policy chose (completion, not padding, not tool
        output): the only ones with a loss, a KL and a ratio."""
        mask = self.batch.completion_mask
        return mask if self.tool_mask is None else mask * ~self.tool_mask


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """Draw one token per row of logits (B, V); return it and its temperature-scaled log-prob
    (under the whole distribution, whatever top-k / top-p keep: the trainer's quantity)."""
    if temperature == 0:  # greedy
        tok = logits.argmax(-1)
        return tok, token_logprobs(logits, tok)
    z = logits.float() / temperature
    probs = z.softmax(-1)  # (B, V)
    w = probs  # what is drawn from, up to its sum
    if top_k:
        kth = z.topk(min(top_k, z.size(-1)), dim=-1).values[:, -1:]
        w = w.masked_fill(z < kth, 0.0)
    if top_p < 1.0:  # on the distribution top-k left
        w = w / w.sum(-1, keepdim=True)
        w = w.masked_fill(w < top_p_cut(w, top_p), 0.0)
    tok = inverse_cdf(w, generator)
    # a drawn token has a probability > 0: its log is the log-softmax to fp32 rounding, one pass
    # over V cheaper than grpo_kernels.token_logprobs
    return tok, probs.gather(-1, tok[:, None]).squeeze(-1).log()


def inverse_cdf(w, generator=None, u=None):
    """One token per row of the weights w (B, V) (>= 0, not necessarily summing to 1), token i with
    probability w_i / sum(w): one uniform u per row (B,) in [0, 1) (drawn when None), and the first
    i whose cumulative weight exceeds u * sum(w) (searchsorted, right side: a token of weight 0
    adds nothing to the sum, so no u falls on it, u = 0 included). torch.multinomial draws one
    random number per entry of the row."""
    cdf = w.cumsum(-1)  # (B, V)
    total = cdf[:, -1:]  # (B, 1)
    if u is None:
        u = torch.rand(w.size(0), device=w.device, generator=generator)
    u = u[:, None] * total  # (B, 1)
    # below the sum: at u = 1 (or u * sum rounded up to it) searchsorted would give V
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)  # (B,)


def top_p_cut(probs, top_p, head=64):
    """(B, 1): the least probability top-p keeps. Likeliest first, a token is kept while the mass
    before it is <= top_p (the one that crosses top_p is kept); every token at least as likely as
    the last kept is kept, ties at the cut included (the order a sort gives equal probabilities is
    arbitrary). A few likeliest tokens (topk) mostly pass top_p: only rows whose head does not try
    one 8x longer, and last the whole row sorted (top_p_cut_sort), whose cut this is: the same
    values summed in the same order."""
    B, V = probs.shape
    cut = probs.new_empty(B, 1)
    rows = torch.arange(B, device=probs.device)  # the rows without a cut yet
    while rows.numel():
        sub = probs if rows.numel() == B else probs[rows]  # (b, V)
        vals = (sub.sort(dim=-1, descending=True) if head >= V else sub.topk(head, dim=-1)).values
        c, reached = head_cut(vals, top_p)  # (b, 1), (b,)
        reached |= head >= V  # the whole row: if rounding keeps its sum <= top_p, keep all
        cut[rows[reached]] = c[reached]
        rows, head = rows[~reached], head * 8
    return cut


def top_p_cut_sort(probs, top_p):
    """top_p_cut's reference: the whole row sorted."""
    return head_cut(probs.sort(dim=-1, descending=True).values, top_p)[0]


def head_cut(vals, top_p):
    """vals (B, k) sorted descending -> the value at the first position where their cumulative sum
    passes top_p (B, 1) (the last value where it never does), and whether it does (B,)."""
    cum = vals.cumsum(-1)  # (B, k)
    j = (cum <= top_p).sum(-1, keepdim=True).clamp(max=vals.size(-1) - 1)  # (B, 1)
    return vals.gather(-1, j), cum[:, -1] > top_p


def check_length(model, prompt_len: int, max_new_tokens: int):
    limit = model.config.block_size
    if prompt_len + max_new_tokens > limit:
        raise ValueError(f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} is "
                         f"longer than the model's context of {limit}: shorten the prompt or lower "
                         f"max_new_tokens")


def prefill(model, batch: Batch, G: int, size: int):
    """Each prompt through the model once: the shared prefix with batch 1 (P may be 0), then the
    Q prompt rests against it. -> per-layer PrefixedCaches of the B = Q * G rows (the prefix held
    once; each prompt's own keys copied to its G rows, room for `size` own positions) and each
    row's first logits (B, V)."""
    P = batch.prefix.numel()
    prefix = model(batch.prefix[None])[1]  # per layer (k, v), each (1, Hkv, P, hd)
    pos, mask = positions_and_mask(P, batch.valid)  # (Q, R), (Q, 1, R, P + R)
    h, own = model(batch.rows, pos, mask[..., P:], [PrefixedCache(k, v) for k, v in prefix])
    cache = [PrefixedCache(pk, pv, KVCache(k.repeat_interleave(G, 0), v.repeat_interleave(G, 0),
                                           size))  # (Q, ...) -> (Q * G, ...)
             for (pk, pv), (k, v) in zip(prefix, own)]
    return cache, model.lm_head(h[:, -1]).repeat_interleave(G, 0)


def compact(cache, keep):
    """The decode batch's caches reduced to its rows keep (index_select on the batch dimension):
    one copy of what they hold, paid back by the steps that then skip the stopped rows."""
    return [PrefixedCache(c.k, c.v, KVCache(c.rows.k[keep, :, :c.rows.n],
                                            c.rows.v[keep, :, :c.rows.n], c.rows.k.size(2)))
            for c in cache]


def stopped_by_text(tokens, rows, t, tail, stop_texts, decode):
    """(len(rows),) bool: the rows whose completion's last `tail` tokens up to column t decode to
    a text containing one of stop_texts."""
    recent = tokens[rows, max(0, t + 1 - tail):t + 1].tolist()  # (rows, <= tail)
    return torch.tensor([any(s in decode(ids) for s in stop_texts) for ids in recent],
                        dtype=torch.bool, device=tokens.device)


# the decode batch is compacted when fewer than this share of its rows are still going
# (tests/bench_generate.py measures the choice)
COMPACT_BELOW = 0.75


@torch.no_grad()
def generate(model, prompts, G, max_new_tokens, stop_ids, pad, temperature=1.0, top_k=0, top_p=1.0,
             generator=None, all_done=None, stop_texts=(), decode=None) -> Samples:
    """G samples for each prompt (rows i*G .. i*G+G-1 belong to prompts[i]). all_done(done) decides
    when decoding stops (default: when every row has stopped; dist.all_done: on every rank). A row
    stops at a token of stop_ids, or when decode(its completion's tail) contains one of stop_texts
    (a real tokenizer writes </answer> as several tokens)."""
    device = model.lm_head.weight.device
    check_length(model, max(map(len, prompts)), max_new_tokens)
    batch = pack(prompts, [[] for _ in prompts], pad, device)
    P, R, N, B = batch.prefix.numel(), batch.R, max_new_tokens, len(prompts) * G
    cache, logits = prefill(model, batch, G, R + N)
    prompt_valid = batch.valid.repeat_interleave(G, 0)  # (B, R)
    # the rows' own keys: the prompt's, then each completion column, valid once written
    own_valid = torch.cat([prompt_valid, prompt_valid.new_ones(B, N)], 1)  # (B, R + N)
    next_pos = P + prompt_valid.sum(1)  # (B,) positions count valid tokens
    tokens = torch.full((B, N), pad, device=device)  # (B, N)
    logps = torch.zeros(B, N, device=device)         # (B, N)
    length = torch.zeros(B, dtype=torch.long, device=device)  # (B,) completion tokens so far
    done = torch.zeros(B, dtype=torch.bool, device=device)    # (B,)
    stop = torch.tensor(stop_ids, device=device)
    # a stop text ends in the newest token and starts at most len-1 bytes before it; every token
    # decodes to at least one byte, so the last `tail` tokens hold it
    tail = max((len(s.encode()) for s in stop_texts), default=0)
    # the decode batch: rows idx (b,) of the B; live (b,): not stopped. Stopped rows stay in it
    # (their steps wasted) until compacting pays; at least one stays, which under all_done keeps
    # a finished rank calling the model (a collective under FSDP) while others decode
    idx, live = torch.arange(B, device=device), torch.ones(B, dtype=torch.bool, device=device)
    for t in range(N):
        tok, logp = sample_next(logits, temperature, top_k, top_p, generator)  # (b,), (b,)
        going = idx[live]  # (n_live,) which of the B rows
        tokens[going, t], logps[going, t], length[going] = tok[live], logp[live], t + 1
        hit = live & torch.isin(tok, stop)  # (b,)
        if tail:
            hit[live] = hit[live] | stopped_by_text(tokens, going, t, tail, stop_texts, decode)
        live &= ~hit
        done[idx[hit]] = True
        if t == N - 1 or (done.all() if all_done is None else all_done(done)):
            break
        n_live = int(live.sum())
        if n_live < COMPACT_BELOW * live.numel():
            keep = live.nonzero().squeeze(1) if n_live else live.new_zeros(1, dtype=torch.long)
            cache = compact(cache, keep)
            idx, live, tok, own_valid, next_pos = (x[keep] for x in (idx, live, tok, own_valid,
                                                                      next_pos))
        mask = own_valid[:, None, None, :R + t + 1]  # (b, 1, 1, R + t + 1): the own keys
        h, cache = model(tok[:, None], next_pos[:, None], mask, cache)
        logits, next_pos = model.lm_head(h[:, -1]), next_pos + 1  # (b, V), (b,)
    C = t + 1
    completion_valid = torch.arange(C, device=device) < length[:, None]  # (B, C)
    rows = torch.cat([batch.rows.repeat_interleave(G, 0), tokens[:, :C]], dim=1)  # (B, R + C)
    valid = torch.cat([prompt_valid, completion_valid], dim=1)  # (B, R + C)
    return Samples(Batch(batch.prefix, rows, valid, R), logps[:, :C], truncated=~done)


@torch.no_grad()
def generate_naive(model, prompt, max_new_tokens, stop_ids, temperature=0.0, generator=None,
                   stop_texts=(), decode=None) -> list[int]:
    """Reference for `generate`: one prompt, the whole sequence re-run for each new token."""
    device = model.lm_head.weight.device
    check_length(model, len(prompt), max_new_tokens)
    out = []
    for _ in range(max_new_tokens):
        h, _ = model(torch.tensor([prompt + out], device=device))
        tok, _ = sample_next(model.lm_head(h[:, -1]), temperature, generator=generator)
        out.append(tok.item())
        if out[-1] in stop_ids or any(s in decode(out) for s in stop_texts):
            break
    return out


def main(argv=None):
    parser = Parser(description="Sample completions from a checkpoint.")
    parser.add_argument("--ckpt", required=True,
                        help="checkpoint written by train.py, e.g. out/<run>/ckpt.pt, hf:DIR, a "
                             "Hugging Face model directory, or gguf:FILE, a llama.cpp GGUF file")
    parser.add_argument("--prompt", required=True,
                        help="the question; wrapped in the prompt format unless --raw")
    parser.add_argument("--chat", default="auto", choices=CHAT_FLAGS,
                        help="prompt format: the R1-Zero template (none), a chat format, or auto: "
                             "the tokenizer's")
    parser.add_argument("--raw", action="store_true",
                        help="use the prompt as given, without the template")
    parser.add_argument("--num_samples", type=int, default=4, help="completions to draw")
    parser.add_argument("--max_new_tokens", type=int, default=200,
                        help="length limit of a completion")
    parser.add_argument("--temperature", type=float, default=0.6,
                        help="0 for greedy (R1's evaluation: 0.6)")
    parser.add_argument("--top_k", type=int, default=0, help="keep the k likeliest tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=0.95,
                        help="nucleus sampling mass (1.0: off)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                        help="the weights' dtype")
    args = parser.parse_args(argv)
    parser.check([(args.num_samples >= 1, "--num_samples must be at least 1"),
                  (args.max_new_tokens >= 1, "--max_new_tokens must be at least 1"),
                  (args.temperature >= 0, "--temperature must be >= 0 (0: greedy)"),
                  (args.top_k >= 0, "--top_k cannot be negative (0: off)"),
                  (0 < args.top_p <= 1, "--top_p must be in (0, 1] (1: off)")])
    with parser.errors():
        model, tok, _ = load_model(args.ckpt, args.device,
                                   torch.bfloat16 if args.dtype == "bf16" else None)
    try:
        prompt = tok.encode(args.prompt if args.raw else
                            render_prompt(args.prompt, chat_format(args.chat, tok.chat)))
        out = generate(model, [prompt], args.num_samples, args.max_new_tokens, tok.stop_ids,
                       tok.pad, args.temperature, args.top_k, args.top_p,
                       torch.Generator(args.device).manual_seed(args.seed),
                       stop_texts=tok.stop_texts, decode=tok.decode)
    except ValueError as e:  # a prompt too long for the model's context
        parser.error(str(e))
    for i, ids in enumerate(out.batch.completions.tolist()):
        print(f"--- sample {i}{' (truncated)' if out.truncated[i] else ''}\n{tok.decode(ids)}")


if __name__ == "__main__":
    main()

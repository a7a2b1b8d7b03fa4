"""
Batched sampling with a KV cache: the "sample G outputs from pi_theta_old" of eq. 1.

`generate` prefills each prompt once and copies its cache to its G samples (the template shared
by the whole batch is run once: batch.py's layout), decodes with the cache, stops a row at
<|endoftext|> or </answer> (the stop token is part of the completion and of the loss; padding is
not), and returns the sampler's log-probs of the chosen tokens under the temperature-scaled
distribution, the quantity the trainer computes (grpo_update.completion_logprobs). top-k / top-p
change what is drawn but not that log-prob; with them on, the sampling distribution is not the
trained one, so RL leaves them off.

A real tokenizer (tokenizer.HFTokenizer) spells </answer> as several tokens: `generate` then also
stops a row when the decoded tail of its completion contains one of `stop_texts`.

`generate_naive` is the reference: one row at a time, no padding, no cache, the whole sequence
re-run for every new token. tests/test_sample.py checks the two give the same tokens. Left out:
continuous batching (a static batch decodes until its last row stops) and paged caches.

    python sample.py --ckpt out/<run>/ckpt.pt --prompt "Compute 82 + 97"
    python sample.py --ckpt hf:/models/Qwen2.5-0.5B-Instruct --prompt "Compute 82 + 97"
"""

from dataclasses import dataclass

import torch

from batch import Batch, pack, positions_and_mask
from checkpoint import load_model
from grpo_kernels import token_logprobs
from model import KVCache
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
    """Draw one token per row of logits (B, V); return it and its temperature-scaled log-prob."""
    if temperature == 0:  # greedy
        tok = logits.argmax(-1)
        return tok, token_logprobs(logits, tok)
    z = logits.float() / temperature
    if top_k:
        kth = z.topk(min(top_k, z.size(-1)), dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        zs, order = z.sort(dim=-1, descending=True)
        probs = zs.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest head whose mass reaches top_p
        z = z.scatter(-1, order, zs.masked_fill(drop, float("-inf")))
    tok = torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(-1)
    return tok, token_logprobs(logits, tok, temperature)


def check_length(model, prompt_len: int, max_new_tokens: int):
    limit = model.config.block_size
    if prompt_len + max_new_tokens > limit:
        raise ValueError(f"prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} is "
                         f"longer than the model's context of {limit}: shorten the prompt or lower "
                         f"max_new_tokens")


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
    P = batch.prefix.numel()
    past = model(batch.prefix[None])[1] if P else None
    pos, mask = positions_and_mask(P, batch.valid)
    h, cache = model(batch.rows, pos, mask, past)  # each prompt is prefilled once ...
    # ... and its G samples start from copies of its cache: (n, ...) -> (n*G, ...)
    size = cache[0][0].size(2) + max_new_tokens
    cache = [KVCache(k.repeat_interleave(G, 0), v.repeat_interleave(G, 0), size) for k, v in cache]
    logits = model.lm_head(h[:, -1]).repeat_interleave(G, 0)  # (B, V)
    valid = batch.valid.repeat_interleave(G, 0)                 # (B, R), grows by one column a step
    next_pos = pos[:, -1].repeat_interleave(G, 0) + 1           # (B,)
    B, stop = valid.size(0), torch.tensor(stop_ids, device=device)
    # a stop text ends in the newest token and starts at most len-1 bytes before it; every token
    # decodes to at least one byte, so the last `tail` tokens hold it
    tail = max((len(s.encode()) for s in stop_texts), default=0)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, logps = [], []
    for _ in range(max_new_tokens):
        tok, logp = sample_next(logits, temperature, top_k, top_p, generator)
        alive = ~done
        tokens.append(torch.where(alive, tok, pad))
        logps.append(torch.where(alive, logp, 0.0))
        valid = torch.cat([valid, alive[:, None]], dim=1)
        done = done | torch.isin(tok, stop)
        if tail:
            live = (~done).nonzero().squeeze(1).tolist()
            recent = torch.stack(tokens[-tail:], 1)[live].tolist()  # (live rows, <= tail)
            hit = [i for i, ids in zip(live, recent) if any(s in decode(ids) for s in stop_texts)]
            done[hit] = True
        if done.all() if all_done is None else all_done(done):
            break
        # (B, 1, 1, P+R+t+1)
        mask = torch.cat([valid.new_ones(B, P), valid], dim=1)[:, None, None, :]
        h, cache = model(tokens[-1][:, None], next_pos[:, None], mask, cache)
        logits, next_pos = model.lm_head(h[:, -1]), next_pos + 1
    # (B, R + C)
    rows = torch.cat([batch.rows.repeat_interleave(G, 0), torch.stack(tokens, 1)], dim=1)
    return Samples(Batch(batch.prefix, rows, valid, batch.R), torch.stack(logps, 1),
                   truncated=~done)


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

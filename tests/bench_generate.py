"""
Sampler throughput, side by side on the same weights in one process: (a) `before`, the sampler as
it was (copied below: every row decoded until the longest stops, the prefix's keys copied into
each row's cache, torch.multinomial, a full sort for top-p), (b) `sample.generate` now (stopped
rows leave the decode batch, the prefix held once, inverse-CDF draws, top-p from a topk head),
(c) `transformers`' generate on the model exported to a Hugging Face directory (save_hf).

Two shapes, 16 prompts x G 8 = 128 rows x up to 128 new tokens, at temperature 1:
  toy    the default run's: the `tiny` preset, the aha tokenizer (V 487), the R1-Zero template
         (shared prefix P 81); a fresh model whose <|endoftext|> embedding is scaled up (x13) so
         that rows stop at different lengths, as a rollout's do (~4.4K tokens of 16K row-steps)
  wide   V 4096, D 256, 4 layers, 4 heads / 2 kv heads, the same prompts, rows that never stop
The samplers take turns within each repeat (the same seed for each), so a load that drifts weighs
on all alike; the time is the median over the repeats; tokens/s counts the tokens sampled. Before
timing, each shape checks that the three give the same greedy tokens (16 rows). --compact runs
(b) at several sample.COMPACT_BELOW (the live share under which the decode batch is compacted).
Not collected by pytest; read the ratios.

    OMP_NUM_THREADS=1 python tests/bench_generate.py --threads 1
    python tests/bench_generate.py --threads 2 --shapes toy --compact 1,0.9,0.75,0.5,0
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sample  # noqa: E402
from batch import Batch, pack, positions_and_mask  # noqa: E402
from grpo_kernels import token_logprobs  # noqa: E402
from interop.hf import save_hf  # noqa: E402
from model import KVCache, ModelConfig, Transformer, make_model  # noqa: E402
from template import render_prompt  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402

SHAPES = {"toy": dict(preset="tiny", vocab=None, eot_scale=13.0, stops=True),
          "wide": dict(config=dict(vocab_size=4096, n_embd=256, n_layer=4, n_head=4, n_kv_head=2,
                                   ffn_hidden=768, block_size=640), stops=False)}


# -----------------------------------------------------------------------------
# (a) before: sample.py's sample_next and generate as they were, unchanged

def sample_next_before(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
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


@torch.no_grad()
def generate_before(model, prompts, G, max_new_tokens, stop_ids, pad, temperature=1.0, top_k=0,
                    top_p=1.0, generator=None, all_done=None, stop_texts=(), decode=None):
    device = model.lm_head.weight.device
    sample.check_length(model, max(map(len, prompts)), max_new_tokens)
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
    tail = max((len(s.encode()) for s in stop_texts), default=0)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, logps = [], []
    for _ in range(max_new_tokens):
        tok, logp = sample_next_before(logits, temperature, top_k, top_p, generator)
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
    rows = torch.cat([batch.rows.repeat_interleave(G, 0), torch.stack(tokens, 1)], dim=1)
    return sample.Samples(Batch(batch.prefix, rows, valid, batch.R), torch.stack(logps, 1),
                          truncated=~done)


# -----------------------------------------------------------------------------
# the shapes, the three samplers, the timing

def build(name, tok, device):
    """(our model, transformers' model of the same weights, stop ids) of a shape."""
    import transformers  # heavy: tests/test_sample.py imports this file for generate_before alone
    transformers.utils.logging.disable_progress_bar()
    spec = SHAPES[name]
    torch.manual_seed(0)
    if "preset" in spec:
        model = make_model(spec["preset"], tok.vocab_size)
    else:
        model = Transformer(ModelConfig(**spec["config"]))
    with torch.no_grad():  # tied: <|endoftext|>'s logit grows with it, so rows stop early
        model.embed.weight[tok.eot] *= spec.get("eot_scale", 1.0)
    model = model.eval()
    with tempfile.TemporaryDirectory() as d:
        save_hf(model, tok, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return model.to(device), hf.to(device), tok.stop_ids if spec["stops"] else []


def samplers(model, hf, prompts, G, N, stop_ids, pad, device):
    """name -> fn(seed, temperature) -> (B, C) completion tokens, and the tokens sampled."""
    P = max(map(len, prompts))
    ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts], device=device)  # left-padded
    attn = (torch.arange(P, device=device) >= P - torch.tensor([len(p) for p in prompts],
                                                                device=device)[:, None]).long()

    def ours(gen):
        def run(seed, temperature):
            out = gen(model, prompts, G, N, stop_ids, pad, temperature,
                      generator=torch.Generator(device).manual_seed(seed))
            return out.batch.completions, int(out.batch.completion_mask.sum())
        return run

    def theirs(seed, temperature):
        torch.manual_seed(seed)
        out = hf.generate(ids, attention_mask=attn, max_new_tokens=N, do_sample=temperature > 0,
                          temperature=temperature or None, top_k=0 if temperature else None,
                          top_p=1.0 if temperature else None, num_return_sequences=G,
                          eos_token_id=stop_ids or None, pad_token_id=pad,
                          min_new_tokens=0 if stop_ids else N)[:, P:]
        ends = torch.isin(out, torch.tensor(stop_ids or [-1], device=device))
        # tokens up to and with the first stop id
        n = (ends.long().cumsum(1) - ends.long() == 0).sum() if stop_ids else out.numel()
        return out, int(n)
    return {"before": ours(generate_before), "new": ours(sample.generate), "transformers": theirs}


def timed(fns, repeats, temperature, device):
    """name -> (median seconds, mean tokens sampled); the fns take turns in each repeat."""
    times, counts = {k: [] for k in fns}, {k: [] for k in fns}
    for f in fns.values():
        f(0, temperature)  # warm-up: lazy imports, allocator, kernels
    for r in range(repeats):
        for k, f in fns.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            counts[k].append(f(r + 1, temperature)[1])
            if device == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(times[k]), statistics.mean(counts[k])) for k in fns}


def bench_shape(name, args, tok, prompts):
    model, hf, stop_ids = build(name, tok, args.device)
    fns = samplers(model, hf, prompts, args.G, args.new_tokens, stop_ids, tok.pad, args.device)
    greedy = {k: f(0, 0.0)[0] for k, f in samplers(model, hf, prompts, 1, args.new_tokens,
                                                   stop_ids, tok.pad, args.device).items()}
    same = all(g.tolist() == greedy["before"].tolist() for g in greedy.values())
    compact = [float(c) for c in args.compact.split(",")] if args.compact else []
    for c in compact:  # (b) at another compaction threshold

        def run(seed, temperature, c=c, new=fns["new"]):
            saved, sample.COMPACT_BELOW = sample.COMPACT_BELOW, c
            try:
                return new(seed, temperature)
            finally:
                sample.COMPACT_BELOW = saved
        fns[f"new@{c:g}"] = run
    res = timed(fns, args.repeats, 1.0, args.device)
    c = model.config
    print(f"\n{name}: V {c.vocab_size}, D {c.n_embd}, {c.n_layer} layers, {c.n_head} heads / "
          f"{c.n_kv_head} kv, {len(prompts)} prompts x G {args.G} x up to {args.new_tokens} new "
          f"tokens, T 1; same greedy tokens (16 rows): {same}")
    t_hf = res["transformers"][0]
    for k, (t, n) in res.items():
        print(f"  {k:14s} {t * 1e3:8.0f} ms  {n:7.0f} tokens  {n / t:8.0f} tokens/s  "
              f"time vs transformers {t_hf / t:5.2f}x  vs before {res['before'][0] / t:5.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="toy,wide", help="comma-separated: toy, wide")
    p.add_argument("--G", type=int, default=8, help="samples per prompt")
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compact", default="", help="also time sample.generate at these "
                   "COMPACT_BELOW values, comma-separated (0: never compact)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    import transformers  # heavy: tests/test_sample.py imports this file for generate_before alone
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = get_tokenizer("aha")
    rnd = random.Random(0)
    prompts = [tok.encode(render_prompt(f"Compute {rnd.randint(10, 99)} + {rnd.randint(10, 99)}"))
               for _ in range(16)]
    print(f"{args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}, load {os.getloadavg()[0]:.2f}")
    for name in args.shapes.split(","):
        bench_shape(name, args, tok, prompts)


if __name__ == "__main__":
    main()

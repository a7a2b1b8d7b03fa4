"""Checks of exercise 8 against model.KVCache: the buffers, in-place writes, and decoding with
the student's cache in sample.generate against sample.generate_naive (no cache)."""

import torch

import model
import sample
from exercises import Mismatch
from exercises.checks import same

TITLE = "a KV-cached decoding step"
EQUATION = "-"
PROJECT = "model.py: KVCache"
REFERENCE = "from model import KVCache"
PLUG = [("model", "KVCache"), ("sample", "KVCache")]


def check(m):
    g = torch.Generator().manual_seed(8)
    k0, v0, k1, v1 = (torch.randn(2, 3, n, 4, generator=g) for n in (5, 5, 1, 1))
    c = m.KVCache(k0, v0, 8)
    if c.n != 5:
        raise Mismatch(f"after KVCache(k, v, size=8) with 5 positions your n is {c.n}; expected 5")
    if tuple(c.k.shape) != (2, 3, 8, 4):
        raise Mismatch(f"your cache's keys have shape {tuple(c.k.shape)}; expected (2, 3, 8, 4): "
                       f"allocated once, at size")
    ptr = c.k.data_ptr()
    k, v = c.extend(k1, v1)
    same(k, torch.cat([k0, k1], 2),
         "the keys extend returns after one new position (all positions so far)")
    same(v, torch.cat([v0, v1], 2), "the values extend returns after one new position")
    if c.n != 6 or c.k.data_ptr() != ptr:
        raise Mismatch(f"after extend, n is {c.n} (expected 6) and the buffer "
                       f"{'moved' if c.k.data_ptr() != ptr else 'stayed'}: "
                       f"write into the buffer allocated in __init__, in place")
    # decoding: the student's cache inside the project's sampler against no cache at all
    torch.manual_seed(0)
    net = model.Transformer(model.ModelConfig(vocab_size=40, n_layer=2, n_head=2, n_kv_head=1,
                                              n_embd=32, ffn_hidden=64, block_size=64)).eval()
    # a shared prefix, then ragged rests
    prompts = [[1, 2, 3, 4, 5], [1, 2, 9], [1, 2, 3, 7, 7, 7, 8]]
    saved = model.KVCache, sample.KVCache
    model.KVCache = sample.KVCache = m.KVCache
    try:
        out = sample.generate(net, prompts, 2, 12, stop_ids=[0], pad=0, temperature=0.0)
    finally:
        model.KVCache, sample.KVCache = saved
    C = out.batch.completions
    for i, p in enumerate(prompts):
        naive = sample.generate_naive(net, p, 12, stop_ids=[0])
        got = [t for t, ok in zip(C[2 * i].tolist(), out.batch.completion_mask[2 * i].tolist())
               if ok]
        if got != naive:
            j = next((j for j, (a, b) in enumerate(zip(got, naive)) if a != b),
                     min(len(got), len(naive)))
            raise Mismatch(f"decoding prompt {p} greedily with your cache gives {got}, without a "
                           f"cache {naive}: they differ from new token {j} on")

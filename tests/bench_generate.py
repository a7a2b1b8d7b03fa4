"""
Sampler throughput: our KV-cached `sample.generate` against `transformers`' `generate` on the same
weights (a random Qwen2ForCausalLM saved by transformers and read by hf.load_hf), greedy, every row
forced to the full length (no stop ids), so both decode exactly batch * new_tokens tokens. Reports
the median of --repeats timed runs after one warm-up run each. Not collected by pytest.

    python tests/bench_generate.py --threads 1             # the tests' tiny shapes, on this CPU
    python tests/bench_generate.py --hidden 896 --layers 24 --heads 14 --kv_heads 2 --device cuda
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from interop.hf import load_hf  # noqa: E402
from interop.hf_tokenizer import tokenizer_json  # noqa: E402
from sample import generate  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402


def timed(fn, repeats, device):
    fn()  # warm-up: lazy imports, allocator, kernels
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("model shape")
    g.add_argument("--hidden", type=int, default=64)
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv_heads", type=int, default=2)
    g.add_argument("--vocab", type=int, default=400)
    g = p.add_argument_group("workload")
    g.add_argument("--batch", type=int, default=8, help="rows decoded together")
    g.add_argument("--prompt_len", type=int, default=64)
    g.add_argument("--new_tokens", type=int, default=64)
    g.add_argument("--repeats", type=int, default=5)
    g.add_argument("--device", default="cpu")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default); at the tiny "
                   "shapes each op is too small to split, and on a shared CPU extra threads mostly wait")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                      num_key_value_heads=args.kv_heads, max_position_embeddings=4096)
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        # load_hf needs a tokenizer.json; the benchmark uses none of it, so write our byte tokenizer's
        json.dump(tokenizer_json(get_tokenizer("byte").enc), open(os.path.join(d, "tokenizer.json"), "w"))
        json.dump({"eos_token": "<|endoftext|>"}, open(os.path.join(d, "tokenizer_config.json"), "w"))
        model, _ = load_hf(d, args.device)
    hf = hf.to(args.device)
    prompts = torch.randint(0, args.vocab, (args.batch, args.prompt_len), generator=torch.Generator().manual_seed(0))
    B, N = args.batch, args.new_tokens

    def ours():
        with torch.no_grad():
            return generate(model, prompts.tolist(), 1, N, [], 0, temperature=0.0)

    def theirs():
        x = prompts.to(args.device)
        return hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N, min_new_tokens=N, do_sample=False,
                           pad_token_id=0, eos_token_id=None)

    same = ours().batch.completions.tolist() == theirs()[:, args.prompt_len:].tolist()
    t_ours, t_hf = timed(ours, args.repeats, args.device), timed(theirs, args.repeats, args.device)
    print(f"{B} rows x {N} new tokens after {args.prompt_len}, hidden {args.hidden}, {args.layers} layers, "
          f"{args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"ours          {B * N / t_ours:9.0f} tokens/s  ({t_ours * 1e3:.1f} ms)")
    print(f"transformers  {B * N / t_hf:9.0f} tokens/s  ({t_hf * 1e3:.1f} ms)")
    print(f"ratio ours / transformers: {t_hf / t_ours:.2f}x; same greedy tokens: {same}")


if __name__ == "__main__":
    main()

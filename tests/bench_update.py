"""
Benchmark of one GRPO update (grpo_update.grpo_update) at the default toy settings: the reference,
every micro-batch as wide as the rollout (UpdateConfig trim=False: --micro_batch 0 is one forward
over the whole mini-batch), against micro-batches of rows sorted by length, each trimmed to its
own longest row (Batch.trim; --micro_batch 0 cuts B / grpo_update.MICRO_ROWS of them where the
fewest cells are run, grpo_update.balanced_micro_batches; N > 0 is N rows each).

The rollout is the default run's shape: 16 questions x G 8 in the R1-Zero template (P 81, R 8),
completions of 20-128 random tokens (128 = --max_new_tokens: some are cut off), the `tiny` model
(the base model of `python train.py`: out/cache's or the shipped one, else a fresh one), a
reference model (--beta 0.01), AdamW at the run's settings. Every variant starts from the same
weights and optimiser state, the variants interleaved within each repeat (ABBA order), so that a
load that drifts weighs on all alike; train_s is the median over the repeats, the speed-up the
median of each repeat's untrimmed / trimmed. Printed first, the bound: how many fewer (row,
column) cells the trimmed micro-batches run (the linear layers' share of the work). The weights
after each variant are compared with the reference's (max |diff|): a fast number is never a
wrong one.
--in_run times the default run's own rollouts instead: at every step of `python train.py`, from
the run's weights, optimiser and shuffler states, the untrimmed update, then the trimmed one (the
other way round every other step), then the run's own update; printed: the sums over the run,
and the cells bound over the run's rollouts (they set it: a run whose answers are alike in length
leaves little padding to cut).
Nothing here is a test: read the ratios.

    OMP_NUM_THREADS=1 python tests/bench_update.py --threads 1
    python tests/bench_update.py --threads 2 --micro 0,8,16,32,64    # the trimmed path per size
    python tests/bench_update.py --threads 2 --in_run                # the default run's rollouts
"""

import argparse
import copy
import os
import statistics
import sys
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import grpo  # noqa: E402
import grpo_update  # noqa: E402
import train  # noqa: E402
from batch import pack  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from grpo_update import Policy, UpdateConfig, completion_logprobs, reference  # noqa: E402
from model import make_model  # noqa: E402
from pretrain import saved_base  # noqa: E402
from sample import Samples  # noqa: E402
from template import render_prompt  # noqa: E402
from tokenizer import get_tokenizer  # noqa: E402
from train_args import parse_args  # noqa: E402


def default_rollout(args, seed=0):
    """(model, Samples, advantages (B,)) shaped like a step of the default run."""
    tok, g = get_tokenizer(args.tokenizer), torch.Generator().manual_seed(seed)
    path = saved_base(args)
    if path:
        model = load_checkpoint(path)[0]
    else:
        torch.manual_seed(seed)
        model = make_model(args.model, tok.vocab_size)
    Q, G, N = args.questions, args.group_size, args.max_new_tokens
    ab = torch.randint(10, 100, (Q, 2), generator=g).tolist()
    prompts = [tok.encode(render_prompt(f"Compute {a} + {b}")) for a, b in ab for _ in range(G)]
    lengths = torch.randint(20, N + 1, (Q * G,), generator=g)  # (B,) spread 20..N
    lengths[0] = N                                             # one cut off: C = N
    comps = [torch.randint(0, tok.vocab_size, (n,), generator=g).tolist() for n in lengths]
    batch = pack(prompts, comps, tok.pad)
    with torch.no_grad():
        sampler_logp = completion_logprobs(model, batch, args.temperature)  # (B, C)
    rewards = torch.randint(0, 3, (Q * G,), generator=g).float()          # (B,) 0, 1 or 2
    samples = Samples(batch, sampler_logp, lengths == N)
    return model, samples, grpo.group_advantages(rewards, G)


def one_update(model, samples, A, cfg, args):
    """-> (seconds of grpo_update, the model after) from a copy of model and a fresh optimiser."""
    net = copy.deepcopy(model).train()
    ref = reference(model, torch.float32, False) if cfg.beta > 0 else None
    opt = train.policy_optimizer(net.parameters(), args)
    t = time.perf_counter()
    grpo_update.grpo_update(Policy(net), ref, opt, samples, A, cfg, torch.Generator().manual_seed(0))
    return time.perf_counter() - t, net


def cells(cfg, batch):
    """(row, column) cells of an update of batch: untrimmed (every row as wide as the batch) and in
    the micro-batches cfg cuts (grpo_update.row_split), each trimmed to its longest; and their
    number. The linear layers' work: the bound of the speed-up."""
    lengths, R, B = batch.completion_mask.sum(1).long().cpu(), batch.R, batch.rows.size(0)
    parts = grpo_update.row_split(cfg, batch)(torch.arange(B))
    return B * batch.rows.size(1), sum(len(p) * (R + int(lengths[p].max())) for p in parts), len(parts)


def in_run(train_argv):
    """The default run (train.py with train_argv; its cached or shipped base model),
    each step's update timed untrimmed and trimmed from the run's own states first."""
    times, run_update = {"untrimmed": [], "trimmed": []}, train.GRPORun.update
    diffs = []  # each step's max |weight difference| between the two: a fast number is a right one
    run_cells = [0, 0]  # summed over the steps: untrimmed, trimmed

    def update(run, step, samples, A):
        nets = {}
        for i, n in enumerate(cells(run.update_cfg, samples.batch)[:2]):  # the run's own split
            run_cells[i] += n
        for name in (list(times) if step % 2 else list(times)[::-1]):
            net = copy.deepcopy(run.model).train()
            # the run's optimiser: load_state_dict brings its hyperparameters and its moments
            opt = type(run.opt)(net.parameters())
            opt.load_state_dict(copy.deepcopy(run.opt.state_dict()))
            shuffle = torch.Generator().set_state(run.shuffle.get_state())
            cfg = replace(run.update_cfg, trim=name == "trimmed")
            t = time.perf_counter()
            grpo_update.grpo_update(Policy(net), run.ref, opt, samples, A, cfg, shuffle)
            times[name].append(time.perf_counter() - t)
            nets[name] = net
        diffs.append(max((p - q).abs().max().item() for p, q in
                         zip(nets["trimmed"].parameters(), nets["untrimmed"].parameters())))
        return run_update(run, step, samples, A)

    train.GRPORun.update = update  # a benchmark's hook: the run itself goes on unchanged
    train.main(["--run_name", f"bench-update-{int(time.time())}", "--no_plot", *train_argv])
    u, t = times["untrimmed"], times["trimmed"]
    print(f"{len(u)} steps of the run | untrimmed train_s {sum(u):.1f} s | trimmed {sum(t):.1f} s "
          f"| {sum(u) / sum(t):.2f}x (median step {statistics.median(a / b for a, b in zip(u, t)):.2f}x)"
          f" | weights max |diff| {max(diffs):.1e} | (row, column) cells {run_cells[0]} -> "
          f"{run_cells[1]}: {run_cells[0] / run_cells[1]:.2f}x fewer")


def main():
    p = argparse.ArgumentParser(description="one GRPO update: untrimmed against trimmed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--micro", default="0", help="comma-separated --micro_batch values, trimmed")
    p.add_argument("--in_run", action="store_true",
                   help="time the default run's own rollouts; other flags are train.py's")
    a, train_argv = p.parse_known_args()
    torch.set_num_threads(a.threads)
    if a.in_run:
        return in_run(train_argv)
    if train_argv:
        p.error(f"unrecognized arguments: {' '.join(train_argv)} (train.py's flags need --in_run)")
    args = parse_args([])
    model, samples, A = default_rollout(args)
    C = samples.batch.completions.size(1)
    lengths = samples.batch.completion_mask.sum(1)
    print(f"threads {a.threads} | B {lengths.numel()} | C {C} | completion lengths "
          f"{int(lengths.min())}-{int(lengths.max())}, mean {lengths.mean():.1f} | "
          f"{'base model ' + saved_base(args) if saved_base(args) else 'fresh tiny model'}")
    base = UpdateConfig.from_args(args)
    for m in a.micro.split(","):  # the bound: how many fewer (row, column) cells are run
        whole, trimmed, k = cells(replace(base, micro_batch=int(m)), samples.batch)
        print(f"micro {m}: (row, column) cells {whole} untrimmed, {trimmed} trimmed in "
              f"{k} micro-batches: {whole / trimmed:.2f}x fewer")
    variants = {"untrimmed": replace(base, trim=False)}
    for m in a.micro.split(","):
        variants[f"trimmed, micro {m}"] = replace(base, micro_batch=int(m))
    one_update(model, samples, A, base, args)  # warm-up
    times, nets = {k: [] for k in variants}, {}
    for r in range(a.repeats):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):  # ABBA
            s, nets[name] = one_update(model, samples, A, variants[name], args)
            times[name].append(s)
    for name, ts in times.items():
        diff = max((p - q).abs().max().item() for p, q in
                   zip(nets[name].parameters(), nets["untrimmed"].parameters()))
        # speed-up: the median over repeats of untrimmed / this, both timed in the same repeat
        ratio = statistics.median(u / t for u, t in zip(times["untrimmed"], ts))
        print(f"{name:22s} train_s {statistics.median(ts):6.3f} (min {min(ts):.3f}) | "
              f"{ratio:4.2f}x | weights max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()

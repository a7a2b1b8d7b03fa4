"""
Rollouts: G completions sampled from the policy for each question (sample.generate), decoded, and
scored by the reward functions (rewards.py's convention) -> a Rollout. A training step's rollout,
an evaluation and rejection sampling are all this one call; what differs is the questions, the
temperature and which rewards are asked for.

Every rollout is also scored by the task's own check (`correct`, logged as accuracy) and by
format_reward, whatever the reward, so that accuracy and format are always there to watch. A
reward function may decline an output (None): its score is NaN, and grpo.group_advantages leaves
that output out. The sampler is sample.generate, or with --engine vllm engines/vllm_engine.py's,
which keeps its contract; with --max_tool_calls the rollout is multi-turn over either, the policy
calling a Python interpreter inside its thought (engines/tools.py). Left out: scoring while
decoding goes on (the rewards run when the whole batch has stopped). `select` and `concat` cut
rollouts into groups and join them into one (train.py's dynamic sampling).

    python -m pytest tests/test_evaluate.py
"""

import math
import random
from dataclasses import dataclass
from functools import partial

import torch

from batch import pack
from engines import tools
from rewards import accuracy_reward, format_reward
from sample import Samples, generate
from template import render_prompt


@dataclass
class Rollout:
    """G completions for each question, sampled and scored: what one GRPO step trains on."""
    samples: Samples                   # the tokens: B = questions x G rows (sample.Samples)
    texts: list[str]                   # (B,) the completions, decoded
    scores: dict[str, torch.Tensor]    # reward name -> (B,), NaN where a function declined


def rollout(model, tok, problems, G, args, generator, temperature, top_p=1.0, reward_fns=(),
            all_done=None, correct=accuracy_reward, engine=None) -> Rollout:
    """Sample G completions per problem and score them with reward_fns, and with `correct` (logged
    as accuracy) and format_reward -> a Rollout; rows i*G..i*G+G-1 answer problems[i]. engine: an
    engines.vllm_engine.VLLMEngine holding model's weights, or None for sample.generate on model."""
    prompts = [render_prompt(p["prompt"], tok.chat, p.get("shots", ())) for p in problems]
    sample = partial(generate, model) if engine is None else engine.generate  # the same contract
    # multi-turn: the interpreter inside the thought (CLIs without tools lack the flag)
    if getattr(args, "max_tool_calls", 0):
        sample = tools.engine(sample, tok, args)
    # a completion ends on a stop id or, for a real BPE whose vocabulary lacks </answer>, its text
    prompt_ids = [tok.encode(p) for p in prompts]
    samples = sample(prompt_ids, G, args.max_new_tokens, tok.stop_ids, tok.pad,
                     temperature=temperature, top_p=top_p, generator=generator, all_done=all_done,
                     stop_texts=tok.stop_texts, decode=tok.decode)
    eos = set(tok.stop_ids) - {tok.end_answer}  # end-of-sequence ids are no text; </answer> is
    completions = samples.batch.completions.tolist()  # (B, C) token ids
    texts = [tok.decode([t for t in ids if t not in eos]) for ids in completions]
    prompts = [p for p in prompts for _ in range(G)]
    fields = {k: [p.get(k) for p in problems for _ in range(G)] for k in problems[0]}
    # each completion's length in tokens (a tool's output included): rewards.overlong_reward's
    fields["completion_tokens"] = samples.batch.completion_mask.sum(1).long().tolist()
    scores = {}
    always = [("accuracy", correct), ("format", format_reward)]  # logged whatever the reward
    for name, fn in [(n, f) for n, f, _ in reward_fns] + always:
        if name not in scores:
            r = list(fn(prompts, texts, **fields))
            if len(r) != len(texts):
                raise ValueError(f"reward {name} returned {len(r)} values for {len(texts)} "
                                 f"completions")
            scores[name] = torch.tensor([math.nan if x is None else float(x) for x in r])
    return Rollout(samples, texts, scores)


def select(ro: Rollout, rows) -> Rollout:
    """The rows `rows` of a rollout (whole groups: train.py's dynamic sampling), in the same
    layout. A tool's seconds stay the whole rollout's: the time was spent."""
    s, idx = ro.samples, torch.as_tensor(rows, dtype=torch.long)
    stats = s.tool_stats and {**s.tool_stats, "calls": s.tool_stats["calls"][idx],
                              "errors": s.tool_stats["errors"][idx]}
    dev = idx.to(s.batch.rows.device)
    samples = Samples(s.batch.select(dev), s.sampler_logp[dev], s.truncated[dev],
                      None if s.tool_mask is None else s.tool_mask[dev], stats)
    return Rollout(samples, [ro.texts[i] for i in idx.tolist()],
                   {k: v[idx] for k, v in ro.scores.items()})


def concat(parts: list[Rollout], pad: int) -> Rollout:
    """Several rollouts as one (train.py's dynamic sampling): their rows laid out afresh together
    (batch.pack: the prefix common to all), the per-token tensors right-padded to the new width.
    Positions count valid tokens, so every token keeps its position and what it attends to."""
    if len(parts) == 1:
        return parts[0]
    prompts, completions = [], []
    for ro in parts:
        b = ro.samples.batch
        for ids, valid in zip(b.rows.tolist(), b.valid.tolist()):
            kept = [t for t, v in zip(ids, valid) if v]
            n_prompt = sum(valid[:b.R])
            prompts.append(b.prefix.tolist() + kept[:n_prompt])
            completions.append(kept[n_prompt:])
    batch = pack(prompts, completions, pad, parts[0].samples.batch.rows.device)
    C = batch.rows.size(1) - batch.R

    def cat(name, fill):  # a (b, C_part) tensor of each part -> (B, C); past C: padding only
        xs = [getattr(ro.samples, name)[:, :C] for ro in parts]
        return torch.cat([torch.cat([x, x.new_full((x.size(0), C - x.size(1)), fill)], 1)
                          for x in xs])

    stats = None
    if parts[0].samples.tool_stats is not None:
        stats = {k: torch.cat([ro.samples.tool_stats[k] for ro in parts]) for k in ("calls",
                                                                                   "errors")}
        stats["seconds"] = sum(ro.samples.tool_stats["seconds"] for ro in parts)
    samples = Samples(batch, cat("sampler_logp", 0.0),
                      torch.cat([ro.samples.truncated for ro in parts]),
                      None if stats is None else cat("tool_mask", False), stats)
    return Rollout(samples, [t for ro in parts for t in ro.texts],
                   {k: torch.cat([ro.scores[k] for ro in parts]) for k in parts[0].scores})


def rollouts(model, tok, problems, G, args, generator, temperature, top_p, reward_fns=(),
             all_done=None, correct=accuracy_reward, chunk=25, engine=None):
    """rollout over many problems, `chunk` of them (chunk x G rows) at a time, which bounds the
    sampler's memory: yields (those problems, their Rollout) for each chunk (evaluation and
    rejection sampling)."""
    for i in range(0, len(problems), chunk):
        part = problems[i:i + chunk]
        yield part, rollout(model, tok, part, G, args, generator, temperature, top_p, reward_fns,
                            all_done, correct, engine)


def longest_prompt(task, tok):
    """The most tokens a prompt takes: over the held-out set and a sample of training problems."""
    problems = task.test_set + task.train_problems(random.Random(0), 256)
    return max(len(tok.encode(render_prompt(p["prompt"], tok.chat))) for p in problems)

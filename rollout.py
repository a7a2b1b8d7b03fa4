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
decoding goes on (the rewards run when the whole batch has stopped).

    python -m pytest tests/test_evaluate.py
"""

import math
import random
from dataclasses import dataclass
from functools import partial

import torch

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
    prompts = [render_prompt(p["prompt"], tok.chat) for p in problems]
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

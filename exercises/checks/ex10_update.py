"""Checks of exercise 10 against grpo_update.grpo_update: the same tiny model and rollout updated
by the student's function and by the project's, under several settings (a
grpo_update.UpdateConfig each); the weights after, the loss, the grad norm and the skipped steps
must agree."""

import copy
import math

import torch

import grpo_update
import sample
from exercises import Mismatch
from exercises.checks import same
from grpo_update import Policy, UpdateConfig
from model import ModelConfig, Transformer

TITLE = "GRPO update: mini-batches, micro-batches"
EQUATION = "eq. 1"
PROJECT = "grpo_update.py: grpo_update"
REFERENCE = "from grpo_update import grpo_update"
PLUG = [("grpo_update", "grpo_update")]
DEFAULTS = dict(temperature=1.0, ppo_epochs=1, minibatches=1, micro_batch=0, beta=0.0,
                clip_eps=0.2, clip_eps_high=None, loss_type="grpo", max_new_tokens=10,
                grad_clip=1.0, mask_truncated=False,
                tis=False)  # sampled by the own sampler: no importance weights
SETTINGS = [dict(micro_batch=3, beta=0.1, loss_type="token"),
            dict(minibatches=2, micro_batch=2, ppo_epochs=2, mask_truncated=True),
            dict(minibatches=4, beta=0.1, grad_clip=0.0, loss_type="dr_grpo"),
            dict(minibatches=2, nan=True)]
METRICS = ("kl", "ratio", "clip_low", "clip_high", "entropy", "clip_frac", "sampler_logp_diff")


def plugged(m, attr):
    """The student returns loss, grad_norm and skipped_steps: train.py's log also prints the
    project's other metrics, which are NaN here."""
    return lambda *a, **kw: {**dict.fromkeys(METRICS, math.nan), **m.grpo_update(*a, **kw)}


def rollout():
    torch.manual_seed(10)
    net = Transformer(ModelConfig(vocab_size=40, n_layer=1, n_head=2, n_kv_head=1, n_embd=32,
                                  ffn_hidden=64, block_size=64))
    prompts = [[1, 2, 3, 4], [1, 2, 5], [1, 2, 6, 7]]
    out = sample.generate(net, prompts, 4, 10, stop_ids=[0], pad=0,
                          generator=torch.Generator().manual_seed(0))
    return net, out, torch.randn(12, generator=torch.Generator().manual_seed(1))


def check(m):
    net, out, A = rollout()
    ref = Policy(copy.deepcopy(net).requires_grad_(False))
    for setting in SETTINGS:
        setting = dict(setting)
        nan = setting.pop("nan", False)
        cfg = UpdateConfig(**{**DEFAULTS, **setting})
        adv = A.clone()
        if nan:
            adv[0] = math.nan
        results, models = [], []
        for fn in (m.grpo_update, grpo_update.grpo_update):
            model = copy.deepcopy(net).train()
            # SGD: the update is the gradient itself
            opt = torch.optim.SGD(model.parameters(), lr=0.5)
            r = fn(Policy(model), ref if cfg.beta > 0 else None, opt, out, adv.clone(), cfg,
                   torch.Generator().manual_seed(3))
            results.append(r), models.append(model)
        what = f"with {setting or 'the defaults'}" + (" and a NaN advantage" if nan else "")
        if not isinstance(results[0], dict):
            raise Mismatch(f"your update returns a {type(results[0]).__name__}; expected a dict of "
                           f"loss, grad_norm, skipped_steps")
        if results[0].get("skipped_steps") != results[1]["skipped_steps"]:
            raise Mismatch(f"{what} your update skipped {results[0].get('skipped_steps')} steps; "
                           f"expected {results[1]['skipped_steps']}")
        for (name, p), q in zip(models[0].named_parameters(), models[1].parameters()):
            same(p, q, f"{what}, the weights {name} after your update", atol=1e-5)
        for k in ("loss", "grad_norm"):
            same(torch.tensor(float(results[0].get(k, math.nan))), torch.tensor(results[1][k]),
                 f"{what}, your update's {k}", atol=1e-5)

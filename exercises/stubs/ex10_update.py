"""
Exercise 10: the GRPO update over mini-batches with micro-batch gradient accumulation (the
project's version: grpo_update.py, grpo_update, which also sums over processes and logs more).

One rollout (G outputs for each question, sampled by pi_theta_old) is trained on for
cfg.ppo_epochs passes, each cut at random into cfg.minibatches mini-batches, with one optimiser
step per mini-batch; a mini-batch too big for memory is run as micro-batches of cfg.micro_batch
rows whose gradients add up. Fill in the body, then: python -m exercises check 10 (it runs your
update and the project's from the same model and compares the weights after).
"""

import math

import torch

from grpo import loss_normalizer  # exercise 4
from grpo_update import LossTerms, policy_logprobs, policy_loss  # noqa: F401


def grpo_update(policy, ref, opt, samples, advantages, cfg, generator):
    """
    policy: a module whose forward gives the log-probs or the GRPO loss of some rows, called
            through two functions of grpo_update.py:
              policy_logprobs(policy, b, T) -> (rows, C) log-probs of the completion tokens of b,
                a batch.Batch of some rows;
              policy_loss(policy, b, T, LossTerms(old_logp=, ref_logp=, advantages=, mask=,
                normalizer=, eps_low=, eps_high=, beta=, loss_type=)).loss -> the GRPO loss of
                those rows (grpo.grpo_loss, exercises 1-5); old_logp=None means on-policy
                (pi_theta_old = pi_theta, the log-probs detached).
    ref:    the same kind of module over the frozen reference model, or None when cfg.beta == 0.
    opt:    the optimiser of the policy's parameters.
    samples: a sample.Samples: samples.batch (B rows; samples.batch.select(idx) takes rows idx),
            samples.batch.completion_mask (B, C) 0/1, samples.truncated (B,) bool.
    advantages: (B,). generator: the torch.Generator that shuffles.
    cfg:    a grpo_update.UpdateConfig: temperature, ppo_epochs, minibatches, micro_batch (0: a
            whole mini-batch), beta, clip_eps, clip_eps_high, loss_type, max_new_tokens, grad_clip
            (0: off), mask_truncated (tis is False here: ignore it).

    1. mask = the completion mask, times ~samples.truncated[:, None] if cfg.mask_truncated.
       micro = cfg.micro_batch or B // cfg.minibatches.
    2. Without gradients: old_logp = policy's log-probs of all B rows, unless there is a single
       update in all (ppo_epochs * minibatches == 1: then pass old_logp=None); ref_logp = ref's
       log-probs of all rows when cfg.beta > 0, else None. (Compute them micro rows at a time.)
    3. For each epoch: for each mb in torch.randperm(B, generator=generator).chunk(cfg.minibatches):
       normalizer = loss_normalizer(cfg.loss_type, mask[mb], cfg.max_new_tokens), the WHOLE
       mini-batch's; for each idx in mb.split(micro): the policy's GRPO loss of rows idx (eps_low =
       cfg.clip_eps, eps_high = cfg.clip_eps_high, the normalizer above), backward.
       Then grad_norm = torch.nn.utils.clip_grad_norm_(parameters, cfg.grad_clip or inf); if the
       mini-batch's summed loss and the grad norm are finite, opt.step(), else count a skipped step;
       then opt.zero_grad().
    Return {"loss": mean over the steps taken of the mini-batch's summed loss, "grad_norm": their
    mean grad norm (both NaN if no step was taken), "skipped_steps": the number skipped}.
    """
    raise NotImplementedError  # TODO

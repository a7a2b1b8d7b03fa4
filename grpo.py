"""
GRPO, the RL algorithm of DeepSeek-R1-Zero (DeepSeekMath; R1 paper eq. 1-3), as pure functions.

For each question, G outputs o_1..o_G are sampled from the old policy and scored r_1..r_G.

    eq. 3  A_i = (r_i - mean(r)) / std(r)                      within the group; no value model
    eq. 2  D_KL = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1    per token (the k3 estimator)
    eq. 1  J = 1/G sum_i 1/|o_i| sum_t [ min(rho A_i, clip(rho, 1-eps, 1+eps) A_i) - beta D_KL ]
           rho = pi_theta(o_i,t | q, o_i,<t) / pi_theta_old(o_i,t | q, o_i,<t)

eq. 1 is written per output in the paper; like DeepSeekMath we apply it per token and average over
each output's tokens, then over outputs; the loss is -J. Later knobs, each off by default so that
the defaults are the paper's: scale "none" (Dr. GRPO) or "batch" in eq. 3; eps_high (DAPO's
clip-higher); loss_type "token" (DAPO: every token of the batch weighs the same) or "dr_grpo" (a
constant divisor), since the per-output mean gives a token of a long output less weight.

"The loss is 0": at a rollout's first update pi_theta_old = pi_theta, so rho = 1, and a group's
advantages sum to zero, so J is ~0 by construction; its gradient is the policy gradient. Watch
reward, KL, clip fraction and grad norm instead. These functions act on (B, T) log-probs and cost
nothing next to them; on CUDA the update takes the log-probs and this loss fused from the hidden
states (grpo_kernels/), tested against the functions here. docs/grpo.md goes knob by knob.

    python -m pytest tests/test_grpo.py
"""

import math

import torch

SCALES = ("std", "none", "batch")
LOSS_TYPES = ("grpo", "token", "dr_grpo")


def group_advantages(rewards, group_size, scale="std", eps=1e-4):
    """
    eq. 3. rewards (B,), the G = group_size outputs of a question adjacent, -> advantages (B,).
    scale: "std" divides by the group's std (the paper), "none" only subtracts the group mean
    (Dr. GRPO), "batch" divides by the std of all rewards in the batch.
    A reward may be None or NaN (a reward function declined to score that output): the output gets
    advantage 0 and is left out of its group's mean and std. A group whose rewards are all equal
    gets 0 (no signal), never NaN. Standard deviations are unbiased, as torch.std.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not torch.is_tensor(rewards):
        rewards = torch.tensor([math.nan if r is None else float(r) for r in rewards])
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)                           # (B/G, G)
    scored = ~torch.isnan(r)
    n = scored.sum(dim=1, keepdim=True)                                # scored outputs per group
    mean = torch.where(scored, r, 0.0).sum(dim=1, keepdim=True) / n.clamp(min=1)
    centred = torch.where(scored, r - mean, 0.0)                       # r_i - mean; 0 if unscored
    if scale == "std":
        std = (centred.pow(2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
    elif scale == "batch":
        std = r[scored].std() if scored.sum() > 1 else r.new_zeros(())
        std = torch.nan_to_num(std)
    else:
        std = r.new_ones(())
        eps = 0.0
    return (centred / (std + eps)).view(-1)                            # (B,)


def kl_k3(logp, ref_logp):
    """eq. 2, per token: pi_ref/pi - log(pi_ref/pi) - 1, an unbiased, always >= 0 estimate of
    KL(pi || pi_ref) from tokens sampled from pi."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def loss_normalizer(loss_type, mask, max_len=None):
    """
    What the summed per-token objective of one optimisation step is divided by, in the units of
    grpo_loss. Compute it over everything the step sees (all micro-batches and, summed across
    ranks, all processes) and pass it to each grpo_loss call: then the loss and its gradient do not
    depend on how the batch is split.
      grpo     number of outputs (each output's own token mean is summed)
      token    number of completion tokens (DAPO)
      dr_grpo  number of outputs x max_len, a constant: the generation budget (Dr. GRPO)
    """
    if loss_type == "grpo":
        return float(mask.size(0))
    if loss_type == "token":
        return float(mask.sum())
    if loss_type == "dr_grpo":
        return float(mask.size(0) * (max_len or mask.size(1)))
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def token_weights(mask, loss_type="grpo", normalizer=None):
    """
    The weight of each token in eq. 1's sums, (B, T): mask / normalizer, and for "grpo" also the
    1/|o_i| of each output's token mean. normalizer: see loss_normalizer; by default this batch's
    own. A step of nothing but masked tokens gets weights 0, not NaN.
    """
    if normalizer is None:
        normalizer = loss_normalizer(loss_type, mask)
    weights = mask / max(float(normalizer), 1.0)
    if loss_type == "grpo":                           # 1/|o_i| sum over t, then 1/G sum over i
        weights = weights / mask.sum(dim=1, keepdim=True).clamp(min=1)
    return weights


def clipped_surrogate(logp, old_logp, advantages, eps_low=0.2, eps_high=None):
    """eq. 1's clipped surrogate per token, (B, T): min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)
    with rho = exp(logp - old_logp), from (B, T) log-probs and advantages (B,). eps_high=None
    clips symmetrically."""
    eps_high = eps_low if eps_high is None else eps_high
    A = advantages[:, None].to(logp.dtype)                 # (B, 1): one advantage per output
    ratio = torch.exp(logp - old_logp)                             # rho, per token
    return torch.min(ratio * A, ratio.clamp(1 - eps_low, 1 + eps_high) * A)


def tis_weights(old_logp, sampler_logp, cap=2.0):
    """
    Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings
    you off-policy RL training"), per token (B, T): min(pi_theta_old / pi_sampler, C). eq. 1's
    expectation is over outputs of pi_theta_old, but another engine (vLLM: other kernels, bf16)
    drew them from its own pi_sampler; weighting each token's term by the ratio makes the
    expectation pi_theta_old's again, and the cap C bounds what a token the sampler found far
    less likely than the trainer can weigh. It is 1 where the two agree, and carries no gradient.
    """
    return torch.exp(old_logp - sampler_logp).clamp(max=cap).detach()


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps_low=0.2, eps_high=None, beta=0.0,
              loss_type="grpo", normalizer=None, is_weights=None):
    """
    eq. 1 as a loss to minimise. logp, old_logp, ref_logp: (B, T) log-probs of the sampled tokens
    under pi_theta (with grad), pi_theta_old and pi_ref (ref_logp may be None when beta = 0);
    advantages (B,); mask (B, T) of 0/1 on completion tokens. eps_high=None clips symmetrically.
    normalizer: see loss_normalizer; by default this batch's own. is_weights (B, T): each token's
    importance weight when another engine sampled (tis_weights), or None. Returns (loss, metrics),
    the metrics averaged over this batch's tokens, with their count in "tokens".
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    eps_high = eps_low if eps_high is None else eps_high
    mask = mask.to(logp.dtype)
    surrogate = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = surrogate - beta * kl                              # - beta * D_KL (eq. 2)
    if is_weights is not None:
        per_token = per_token * is_weights                 # sampled by pi_sampler, not pi_theta_old
    J = (per_token * token_weights(mask, loss_type, normalizer)).sum()
    loss = -J
    return loss, grpo_metrics(logp, old_logp, ref_logp, advantages, mask, eps_low, eps_high)


@torch.no_grad()
def grpo_metrics(logp, old_logp, ref_logp, advantages, mask, eps_low=0.2, eps_high=None):
    """What to watch in GRPO (see above), averaged over the batch's tokens: the k3 KL to the
    reference (0 without one), the ratio rho, the share of tokens whose gradient the clip removed
    below and above, and the token count in "tokens"."""
    eps_high = eps_low if eps_high is None else eps_high
    mask = mask.to(logp.dtype)
    A = advantages[:, None].to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    n = mask.sum().clamp(min=1)
    mean = lambda x: (x * mask).sum() / n  # noqa: E731
    return {
        "kl": mean(kl),
        "ratio": mean(ratio),
        # tokens whose gradient the clip removed: A < 0 below 1-eps_low, A > 0 above 1+eps_high
        "clip_low": mean(((ratio < 1 - eps_low) & (A < 0)).to(logp.dtype)),
        "clip_high": mean(((ratio > 1 + eps_high) & (A > 0)).to(logp.dtype)),
        "tokens": mask.sum(),
    }

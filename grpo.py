"""
GRPO, the RL algorithm of DeepSeek-R1-Zero (DeepSeekMath; R1 paper eq. 1-3), as pure functions.

For each question, G outputs o_1..o_G are sampled from the old policy and scored r_1..r_G.

    eq. 3  A_i = (r_i - mean(r)) / std(r)                      within the group; no value model
    eq. 2  D_KL = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1    per token (the k3 estimator)
    eq. 1  J = 1/G sum_i 1/|o_i| sum_t [ min(rho A_i, clip(rho, 1-eps, 1+eps) A_i) - beta D_KL ]
           rho = pi_theta(o_i,t | q, o_i,<t) / pi_theta_old(o_i,t | q, o_i,<t)

eq. 1 is written per output in the paper; like DeepSeekMath's GRPO we apply it per token and
average over each output's tokens, then over outputs. We minimise loss = -J.

"The loss is 0": with one update per rollout, pi_theta_old = pi_theta so rho = 1, and the
advantages of a group sum to zero, so J is ~0 by construction (with beta = 0, exactly 0 when all
outputs have the same length). Its gradient is not zero: it is the policy gradient. Watch reward,
KL, clip fraction and grad norm instead.

    python -m pytest tests/test_grpo.py
"""

import torch


def group_advantages(rewards, group_size, eps=1e-4):
    """eq. 3. rewards (B,) with the G outputs of a question adjacent -> advantages (B,).
    A group whose rewards are all equal gets 0 (no signal), never NaN."""
    r = rewards.view(-1, group_size)  # (B/G, G)
    A = (r - r.mean(dim=1, keepdim=True)) / (r.std(dim=1, keepdim=True) + eps)
    return A.view(-1)  # (B,)


def kl_k3(logp, ref_logp):
    """eq. 2, per token: pi_ref/pi - log(pi_ref/pi) - 1, an unbiased, always >= 0 estimate of
    KL(pi || pi_ref) from tokens sampled from pi."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps=0.2, beta=0.0):
    """
    eq. 1 as a loss to minimise. logp, old_logp, ref_logp: (B, T) log-probs of the sampled tokens
    under pi_theta (with grad), pi_theta_old and pi_ref (ref_logp may be None when beta = 0);
    advantages (B,); mask (B, T) 1.0 on completion tokens. Returns (loss, metrics).
    """
    A = advantages[:, None]                                        # (B, 1): one advantage per output
    ratio = torch.exp(logp - old_logp)                             # rho, per token
    unclipped = ratio * A
    clipped = ratio.clamp(1 - eps, 1 + eps) * A
    per_token = torch.min(unclipped, clipped)                      # the clipped surrogate of eq. 1
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = per_token - beta * kl                              # - beta * D_KL (eq. 2)
    n_tokens = mask.sum(dim=1).clamp(min=1)
    J = ((per_token * mask).sum(dim=1) / n_tokens).mean()          # 1/|o_i| sum over t, then 1/G sum over i
    loss = -J

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {
            "kl": (kl * mask).sum() / n,
            "clip_frac": ((clipped < unclipped).float() * mask).sum() / n,  # tokens where clipping acted
            "ratio": (ratio * mask).sum() / n,
        }
    return loss, metrics

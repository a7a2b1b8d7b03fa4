"""
GRPO, the RL algorithm of DeepSeek-R1-Zero (DeepSeekMath; R1 paper eq. 1-3), as pure functions.

For each question, G outputs o_1..o_G are sampled from the old policy and scored r_1..r_G.

    eq. 3  A_i = (r_i - mean(r)) / std(r)                      within the group; no value model
    eq. 2  D_KL = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1    per token (the k3 estimator)
    eq. 1  J = 1/G sum_i 1/|o_i| sum_t [ min(rho A_i, clip(rho, 1-eps, 1+eps) A_i) - beta D_KL ]
           rho = pi_theta(o_i,t | q, o_i,<t) / pi_theta_old(o_i,t | q, o_i,<t)

eq. 1 is written per output in the paper; like DeepSeekMath we apply it per token and average over
each output's tokens, then over outputs; the loss is -J. Later objectives, each written once below
beside the paper's, with its equation and source, each off by default so that the defaults are the
paper's: scale "none" (Dr. GRPO) or "batch" in eq. 3; eps_high (DAPO's clip-higher); loss_type
"token" (DAPO) or "dr_grpo" (a constant divisor); GSPO's sequence-level ratio (ratio_level
"sequence"); CISPO's clipped, detached importance weight (policy_loss "cispo"); dual-clip.

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
POLICY_LOSSES = ("clip", "cispo")
RATIO_LEVELS = ("token", "sequence")


def group_advantages(rewards, group_size, scale="std", eps=1e-4):
    """
    eq. 3. rewards (B,), the G = group_size outputs of a question adjacent, -> advantages (B,).
    scale: "std" divides by the group's std (the paper), "none" only subtracts the group mean
    (Dr. GRPO), "batch" divides by the std of all rewards in the batch.
    A reward may be None or NaN (a reward function declined to score that output): the output gets
    advantage 0 and is left out of its group's mean and std. A group whose scored rewards are all
    equal gets exactly 0 (no signal), never NaN nor the mean's rounding divided by eps. Standard
    deviations are unbiased, as torch.std. Floating rewards keep their dtype (float64 in, float64
    out); integers and Python lists give float32.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not torch.is_tensor(rewards):
        rewards = torch.tensor([math.nan if r is None else float(r) for r in rewards])
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards if rewards.is_floating_point() else rewards.float()   # float64 stays float64
    r = r.view(-1, group_size)                                         # (B/G, G)
    scored = ~torch.isnan(r)
    n = scored.sum(dim=1, keepdim=True)                                # scored outputs per group
    mean = torch.where(scored, r, 0.0).sum(dim=1, keepdim=True) / n.clamp(min=1)
    signal = scored & ~constant_groups(r)[:, None]                     # 2.1 - mean(2.1, ...) != 0
    centred = torch.where(signal, r - mean, 0.0)                       # r_i - mean; 0 if no signal
    if scale == "std":
        std = (centred.pow(2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
    elif scale == "batch":
        std = r[scored].std() if scored.sum() > 1 else r.new_zeros(())
        std = torch.nan_to_num(std)
    else:
        std = r.new_ones(())
        eps = 0.0
    A = centred / (std + eps)                                          # 0 / 0 at eps 0: masked
    return torch.where(signal, A, 0.0).view(-1)                        # (B,)


def constant_groups(r):
    """(n, G) rewards, NaN where unscored -> (n,) bool: the groups with no signal, whose scored
    rewards are all equal (or fewer than two are scored). eq. 3 gives them advantage 0, and DAPO's
    dynamic sampling drops them (train.py)."""
    scored = ~torch.isnan(r)
    high = torch.where(scored, r, -math.inf).amax(dim=1)
    low = torch.where(scored, r, math.inf).amin(dim=1)
    return (scored.sum(dim=1) < 2) | (high == low)


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


def dual_clipped(surrogate, advantages, c=3.0):
    """
    Dual-clip (Ye et al. 2020, "Mastering complex control in MOBA games with deep RL", arXiv
    1912.09729; verl's clip_ratio_c), per token (B, T): for A < 0 the clipped surrogate is bounded
    below by c A (c > 1), so a token whose ratio has grown far above 1 under a negative advantage
    gets no gradient instead of an unbounded push down:
        A < 0:  max(min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), c A);   A >= 0: unchanged
    """
    A = advantages[:, None].to(surrogate.dtype)
    return torch.where(A < 0, torch.max(surrogate, c * A), surrogate)


def sequence_ratio(logp, old_logp, mask):
    """GSPO's importance ratio of each output, (B,):
        s_i = (pi_theta(o_i) / pi_theta_old(o_i))^(1/|o_i|) = exp(1/|o_i| sum_t log rho_t)
    over o_i's sampled tokens only (mask: 0 on padding and on a tool's output)."""
    n = mask.sum(dim=1).clamp(min=1)                                  # |o_i|
    return torch.exp(((logp - old_logp) * mask).sum(dim=1) / n)


def sequence_surrogate(logp, old_logp, advantages, mask, eps_low=3e-4, eps_high=4e-4):
    """
    GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071): the
    clipped surrogate of eq. 1 with one ratio per output, s_i (sequence_ratio), clipped per output
    with GSPO's own epsilons (the paper: 3e-4 and 4e-4):
        min(s_i A_i, clip(s_i, 1-eps_low, 1+eps_high) A_i)      on each token of o_i, (B, T)
    Written on every token, as GSPO-token with A_i,t = A_i (same value, same gradient): with
    loss_type "grpo" the sum over tokens gives 1/G sum_i, GSPO's J exactly.
    """
    A = advantages.to(logp.dtype)                                     # (B,): one per output
    s = sequence_ratio(logp, old_logp, mask)                          # (B,)
    per_output = torch.min(s * A, s.clamp(1 - eps_low, 1 + eps_high) * A)
    return per_output[:, None].expand_as(logp)


def cispo_surrogate(logp, old_logp, advantages, eps_low=math.inf, eps_high=4.0):
    """
    CISPO (MiniMax-M1, arXiv 2506.13585), per token (B, T): REINFORCE on log pi_theta
    weighted by the clipped importance weight, the weight carrying no gradient:
        sg(clip(rho, 1-eps_low, 1+eps_high)) A_i log pi_theta(o_i,t)
    So every token keeps its gradient A grad log pi (times the weight), where eq. 1's min removes
    it outside the trust region. eps_low=inf: no lower bound, as the paper; the cap 1 + 4 = 5 is
    the weight bound TRL recommends (its epsilon_high=5, the cap itself). Normalised per token
    (loss_type "token") it is the paper's 1/sum_i |o_i|.
    """
    A = advantages[:, None].to(logp.dtype)
    weight = torch.exp(logp - old_logp).clamp(1 - eps_low, 1 + eps_high).detach()  # sg(r^)
    return weight * A * logp


def policy_term(logp, old_logp, advantages, mask, eps_low, eps_high, policy_loss="clip",
                ratio_level="token", dual_clip=None):
    """The policy term of eq. 1 per token (B, T) under the chosen objective: the paper's clipped
    surrogate (clipped_surrogate), GSPO's per output (sequence_surrogate) or CISPO's
    (cispo_surrogate); dual_clip: dual_clipped's c, or None."""
    if policy_loss == "cispo":
        return cispo_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    if ratio_level == "sequence":
        surrogate = sequence_surrogate(logp, old_logp, advantages, mask, eps_low, eps_high)
    else:
        surrogate = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    return surrogate if dual_clip is None else dual_clipped(surrogate, advantages, dual_clip)


def tis_weights(old_logp, sampler_logp, cap=2.0, mask=None):
    """
    Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings
    you off-policy RL training"), per token (B, T): min(pi_theta_old / pi_sampler, C). eq. 1's
    expectation is over outputs of pi_theta_old, but another engine (vLLM: other kernels, bf16)
    drew them from its own pi_sampler; weighting each token's term by the ratio makes the
    expectation pi_theta_old's again, and the cap C bounds what a token the sampler found far
    less likely than the trainer can weigh. It is 1 where the two agree, and carries no gradient.
    With mask (GSPO's sequence-level ratio), one weight per output on each of its tokens, as GSPO
    defines its ratio: min(exp(1/|o_i| sum_t log(pi_theta_old / pi_sampler)), C) over the sampled
    tokens (verl's "geometric" rollout correction).
    """
    if mask is not None:
        w = sequence_ratio(old_logp, sampler_logp, mask)[:, None].expand_as(old_logp)
        return w.clamp(max=cap).detach()
    return torch.exp(old_logp - sampler_logp).clamp(max=cap).detach()


def check_objective(loss_type="grpo", policy_loss="clip", ratio_level="token", dual_clip=None):
    """A ValueError naming what to fix, for an objective grpo_loss does not define."""
    for name, value, allowed in (("loss_type", loss_type, LOSS_TYPES),
                                 ("policy_loss", policy_loss, POLICY_LOSSES),
                                 ("ratio_level", ratio_level, RATIO_LEVELS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if policy_loss == "cispo" and (ratio_level != "token" or dual_clip is not None):
        raise ValueError("CISPO has no clipped surrogate: it takes neither the sequence-level "
                         "ratio nor dual-clip")
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps_low=0.2, eps_high=None, beta=0.0,
              loss_type="grpo", normalizer=None, is_weights=None, policy_loss="clip",
              ratio_level="token", dual_clip=None):
    """
    eq. 1 as a loss to minimise. logp, old_logp, ref_logp: (B, T) log-probs of the sampled tokens
    under pi_theta (with grad), pi_theta_old and pi_ref (ref_logp may be None when beta = 0);
    advantages (B,); mask (B, T) of 0/1 on completion tokens. eps_high=None clips symmetrically.
    normalizer: see loss_normalizer; by default this batch's own. is_weights (B, T): each token's
    importance weight when another engine sampled (tis_weights), or None. policy_loss,
    ratio_level, dual_clip: the objective (policy_term; eps_low and eps_high are its own). Returns
    (loss, metrics), the metrics averaged over this batch's tokens, with their count in "tokens".
    """
    check_objective(loss_type, policy_loss, ratio_level, dual_clip)
    eps_high = eps_low if eps_high is None else eps_high
    mask = mask.to(logp.dtype)
    surrogate = policy_term(logp, old_logp, advantages, mask, eps_low, eps_high, policy_loss,
                            ratio_level, dual_clip)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = surrogate - beta * kl                              # - beta * D_KL (eq. 2)
    if is_weights is not None:
        per_token = per_token * is_weights                 # sampled by pi_sampler, not pi_theta_old
    J = (per_token * token_weights(mask, loss_type, normalizer)).sum()
    loss = -J
    return loss, grpo_metrics(logp, old_logp, ref_logp, advantages, mask, eps_low, eps_high,
                              ratio_level)


@torch.no_grad()
def grpo_metrics(logp, old_logp, ref_logp, advantages, mask, eps_low=0.2, eps_high=None,
                 ratio_level="token"):
    """What to watch in GRPO (see above), averaged over the batch's tokens: the k3 KL to the
    reference (0 without one), the ratio rho (GSPO's s_i with ratio_level "sequence"), the share of
    tokens whose gradient the clip removed below and above (CISPO, eps_low=inf: whose weight was
    capped, above), and the token count in "tokens"."""
    eps_high = eps_low if eps_high is None else eps_high
    mask = mask.to(logp.dtype)
    A = advantages[:, None].to(logp.dtype)
    if ratio_level == "sequence":
        ratio = sequence_ratio(logp, old_logp, mask)[:, None].expand_as(logp)
    else:
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

"""
The GRPO update: the policy trained on one rollout, with grpo.py's equations applied to the
trainer's log-probs of the completions it sampled,

    loss = - sum_t w_t [ min(rho_t A_i, clip(rho_t, 1-eps_low, 1+eps_high) A_i) - beta k3_t ]     (eq. 1, 2)

with A_i the group-normalised advantage of output i (eq. 3, computed by the caller from the
rollout's rewards), rho_t = pi_theta / pi_theta_old per token and w_t each token's weight
(grpo.token_weights: the aggregation of --loss_type). Only the tokens the policy sampled are in
the sums (Rollout.sampled_mask): a tool's output (tools.py) is context, with no loss, KL or ratio.

A rollout (this rank's rows: G outputs for each of its questions, sampled by pi_theta_old) is
trained on for --ppo_epochs passes, each over --minibatches random mini-batches, one optimiser
step per mini-batch (runs.optimizer_step), its gradient accumulated over micro-batches of
--micro_batch rows. pi_theta_old is the policy that sampled: its log-probs are recomputed once
before the first step, except when there is a single step, whose own detached log-probs are
exactly pi_theta_old's (rho = 1: no extra pass). The loss divisor is that of the whole mini-batch
on every rank (grpo.loss_normalizer, summed over ranks), so micro-batching and the world size do
not change the update. The reference's log-probs (eq. 2) come from a frozen copy of the policy,
replaced by it every --ref_update_every steps (`reset_reference`); with --beta 0 there is none.

`Policy` is the module DDP and FSDP wrap: one forward is the log-probs of a batch of completions,
or their GRPO loss, which is what DDP expects (one forward per backward) though the transformer
is called twice inside (the shared prompt prefix, then the rows: batch.forward_rows). On CUDA
the loss is computed from the hidden states by kernels/fused_linear.py and the (B, C, V) logits
never exist; elsewhere by the reference path, completion_logprobs then grpo.grpo_loss.

When another engine samples (vllm_engine.py), its log-probs differ from the trainer's: --tis
weights each token's term by min(pi_theta_old / pi_sampler, --tis_cap) (grpo.tis_weights), which
needs pi_theta_old's log-probs even for a single step (one more no-grad pass). The gap is logged
either way (`sampler_logp_diff`, `_max`; with the own sampler ~1e-7), and the weights' mean, min, max.

Left out: a value model (GRPO has none), an entropy bonus.

    python -m pytest tests/test_train.py -k update
"""

import copy
import math
import warnings
from functools import partial

import torch
import torch.nn as nn

import dist
import grpo
import kernels
import runs
from batch import Batch, forward_rows


def grpo_update(policy, ref, opt, out, advantages, args, generator):
    """
    Train on one rollout `out` (sample.Rollout, this rank's rows) with its advantages (B,): policy
    and ref are Policy modules (DDP/FSDP-wrapped or not; ref None with --beta 0). A mini-batch whose
    loss or gradient norm is not finite takes no optimiser step (counted in skipped_steps). Returns
    the loss and grad norm averaged over the steps taken, and the metrics over all tokens.
    """
    batch, mask = out.batch, out.sampled_mask                        # (B, C) each, this rank's rows; 0 on tool output
    if args.mask_truncated:
        mask = mask * ~out.truncated[:, None]                         # cut-off outputs get no loss
    B = mask.size(0)
    micro = args.micro_batch or B // args.minibatches
    everything = torch.arange(B).split(micro)
    # pi_theta_old (unless a single step is its own and no importance weight needs it) and pi_ref,
    # before the first update
    tis = tis_on(args)
    single = args.ppo_epochs * args.minibatches == 1 and not tis
    old_logp = None if single else logprobs_in_chunks(policy, batch, everything, args.temperature)
    ref_logp = logprobs_in_chunks(ref, batch, everything, args.temperature) if args.beta > 0 else None
    is_w = grpo.tis_weights(old_logp, out.sampler_logp, args.tis_cap) if tis else None  # (B, C)
    stats, losses, norms, skipped = UpdateStats(mask.device), [], [], 0
    for _ in range(args.ppo_epochs):
        for mb in torch.randperm(B, generator=generator).chunk(args.minibatches):  # (B / minibatches,) rows
            norm = dist.all_sum(grpo.loss_normalizer(args.loss_type, mask[mb], args.max_new_tokens))
            loss_of = partial(micro_batch_loss, policy, out, old_logp, ref_logp, is_w, advantages, mask, norm, args,
                              stats)
            loss, grad_norm, stepped = runs.optimizer_step(policy, opt, mb.split(micro), loss_of, args.grad_clip)
            if stepped:
                losses.append(loss), norms.append(grad_norm)
            else:
                skipped += 1
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return {"loss": mean(losses), "grad_norm": mean(norms), "skipped_steps": skipped, **stats.means(),
            **({} if is_w is None else tis_stats(is_w, mask))}


def tis_on(args) -> bool:
    """--tis auto: on exactly when another engine samples."""
    return args.tis == "on" or (args.tis == "auto" and args.engine == "vllm")


def tis_stats(is_w, mask) -> dict:
    """The importance weights' mean, min and max over every rank's completion tokens."""
    w = torch.cat(dist.gather_object(is_w[mask.bool()].cpu()))  # (tokens of all ranks,)
    return {"tis_mean": w.mean().item(), "tis_min": w.min().item(), "tis_max": w.max().item()} if w.numel() else {}


def micro_batch_loss(policy, out, old_logp, ref_logp, is_w, advantages, mask, norm, args, stats, idx):
    """eq. 1-2 on the rows idx: their share of the mini-batch's loss (divided by its normaliser)."""
    pick = lambda x: None if x is None else x[idx]  # noqa: E731
    loss, m, logp, entropy = policy(out.batch.select(idx), args.temperature, grpo=dict(
        old_logp=pick(old_logp), ref_logp=pick(ref_logp), advantages=advantages[idx], mask=mask[idx],
        eps_low=args.clip_eps, eps_high=args.clip_eps_high, beta=args.beta, loss_type=args.loss_type, normalizer=norm,
        is_weights=pick(is_w)))
    stats.add(m, entropy * mask[idx], logp, out.sampler_logp[idx], out.sampled_mask[idx])
    return loss


class UpdateStats:
    """What the update logs, summed on the device over micro-batches (no host sync for each), then
    over ranks: the KL, the ratio, the clip fractions and the entropy per token, and how far the
    sampler's log-probs are from the trainer's on the first micro-batch, mean and max (the same
    model, the same temperature, the same tokens: with the own sampler they agree to ~1e-7)."""

    NAMES = ("kl", "ratio", "clip_low", "clip_high", "entropy", "tokens")

    def __init__(self, device):
        self.sums, self.diff = torch.zeros(len(self.NAMES), device=device), None

    def add(self, m, entropy, logp, sampler_logp, valid):
        n = m["tokens"]  # grpo_metrics are means over this micro-batch's tokens: back to sums
        self.sums += torch.stack([m["kl"] * n, m["ratio"] * n, m["clip_low"] * n, m["clip_high"] * n, entropy.sum(), n])
        if self.diff is None:
            gap = (logp - sampler_logp).abs() * valid
            self.diff = torch.stack([gap.sum() / valid.sum().clamp(min=1), gap.max()])  # mean, max

    def means(self) -> dict:
        sums = dist.all_sum(torch.cat([self.sums, self.diff[:1] / dist.world()])).tolist()
        m = {k: v / max(sums[-2], 1) for k, v in zip(self.NAMES[:-1], sums)}
        gap_max = max(x.item() for x in dist.gather_object(self.diff[1].cpu()))
        return {"clip_frac": m["clip_low"] + m["clip_high"], **m, "sampler_logp_diff": sums[-1],
                "sampler_logp_diff_max": gap_max}


@torch.no_grad()
def logprobs_in_chunks(policy, batch, rows, temperature):
    """The log-probs (B, C) of the batch's completions, computed rows at a time (no gradient)."""
    return torch.cat([policy(batch.select(idx), temperature) for idx in rows])


# -----------------------------------------------------------------------------
# the trainable module and the reference

class Policy(nn.Module):
    """The module DDP / FSDP wrap: forward = the log-probs (and entropy) of a batch's completions,
    or with grpo (completion_grpo_loss's arguments after temperature) their GRPO loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, temperature=1.0, entropy=False, grpo=None):
        if grpo is not None:
            return completion_grpo_loss(self.model, batch, temperature, **grpo)
        return completion_logprobs(self.model, batch, temperature, entropy)


def wrap_policy(model, fsdp: bool):
    """The trainable Policy over model: FSDP2-sharded (model is sharded in place: each block, then
    the root), DDP-replicated, or as is in a single process."""
    if fsdp:
        return Policy(shard_model(model))
    return dist.replicate(Policy(model))


def reference(model, dtype, fsdp: bool, state=None):
    """pi_ref: a frozen copy of the policy in dtype (bf16 under --dtype bf16: half the bytes, no
    gradients), with a checkpoint's reference weights if given, sharded as the policy is."""
    ref = copy.deepcopy(model).to(dtype).eval().requires_grad_(False)
    if state is not None:
        ref.load_state_dict(state)
    return Policy(shard_model(ref) if fsdp else ref)


def reset_reference(ref, policy):
    """--ref_update_every: the reference becomes the current policy."""
    ref.load_state_dict(policy.module.state_dict() if hasattr(policy, "module") else policy.state_dict())


def shard_model(model):
    """FSDP2 over the transformer: each block, then the root (dist.shard)."""
    # a block returns its keys and values, views of its projection; FSDP warns that an in-place op
    # on them would skip its backward hook. None happens: decoding copies them into KVCaches
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    return dist.shard(model, model.blocks)


# -----------------------------------------------------------------------------
# the trainer's log-probs and loss of a batch of completions

def completion_logprobs(model, batch: Batch, temperature=1.0, entropy=False):
    """The trainer's log pi(o_t | q, o_<t) of every completion token, (B, C), 0 on padding; with
    entropy=True also the entropy (B, C) of each next-token distribution, for logging. On CUDA the
    (B, C, V) logits are never materialised (kernels/fused_linear.py)."""
    h = forward_rows(model, batch)[:, batch.R - 1:-1]  # (B, C, d): the states that predict each token
    out = kernels.logprobs_from_hidden(h, model.lm_head.weight, batch.completions, temperature, with_entropy=entropy)
    mask = batch.completion_mask
    return (out[0] * mask, out[1] * mask) if entropy else out * mask


def completion_grpo_loss(model, batch: Batch, temperature, old_logp, ref_logp, advantages, mask, eps_low=0.2,
                         eps_high=None, beta=0.0, loss_type="grpo", normalizer=None, is_weights=None):
    """The trainer's GRPO loss (grpo.grpo_loss, eq. 1-2) of the batch's completions, old_logp=None
    meaning on-policy (pi_theta_old = pi_theta). Returns (loss, metrics, logp, entropy), the last
    two (B, C) detached. On CUDA in one pass from the hidden states (kernels.linear_grpo_loss, with
    each token's weight from grpo.token_weights): the logits are never held, nor recomputed for the
    backward; elsewhere the reference path, completion_logprobs then grpo.grpo_loss."""
    if kernels.fast(model.lm_head.weight):
        h = forward_rows(model, batch)[:, batch.R - 1:-1]  # (B, C, d): the states that predict each token
        weights = grpo.token_weights(mask, loss_type, normalizer)
        if is_weights is not None:
            weights = weights * is_weights  # grpo_loss's per-token factor, as a weight of the fused loss
        loss, logp, entropy = kernels.linear_grpo_loss(h, model.lm_head.weight, batch.completions, old_logp, ref_logp,
                                                       advantages, weights, eps_low, eps_high, beta,
                                                       temperature=temperature, with_entropy=True)
        logp, entropy = logp * batch.completion_mask, entropy * batch.completion_mask
        metrics = grpo.grpo_metrics(logp, logp if old_logp is None else old_logp, ref_logp, advantages, mask,
                                    eps_low, eps_high)
        return loss, metrics, logp, entropy
    logp, entropy = completion_logprobs(model, batch, temperature, entropy=True)
    loss, metrics = grpo.grpo_loss(logp, logp.detach() if old_logp is None else old_logp, ref_logp, advantages, mask,
                                   eps_low, eps_high, beta, loss_type, normalizer, is_weights)
    return loss, metrics, logp.detach(), entropy

"""
The GRPO update: the policy trained on one rollout, grpo.py's equations applied to the trainer's
log-probs of the tokens the policy sampled,

    loss = - sum_t w_t [ min(rho_t A_i, clip(rho_t, 1-eps_low, 1+eps_high) A_i) - beta k3_t ]

A_i the advantage of output i (eq. 3, from the caller), rho_t = pi_theta / pi_theta_old per token,
w_t each token's weight (grpo.token_weights: --loss_type's aggregation); a tool's output is context
with no loss (Samples.sampled_mask). GSPO's per-output ratio, CISPO and dual-clip replace the
bracket (grpo.policy_term: --ratio_level, --policy_loss, --dual_clip; UpdateConfig.clip_range).
The rollout is trained on for --ppo_epochs passes of --minibatches random mini-batches, one
optimiser step each (runner.optimizer_step), gradients accumulated over micro-batches of rows of
alike lengths, each trimmed to its longest (Batch.trim): --micro_batch rows each, or with 0
ceil(n / MICRO_ROWS) of them cut for the least padding (balanced_micro_batches), each divided by
the whole mini-batch's normaliser summed over ranks: neither micro-batching nor the world size
changes the update. pi_theta_old's log-probs are recomputed once before the first step, except
for a single step, whose own detached log-probs are pi_theta_old's (rho = 1); pi_ref is a frozen
copy of the policy, reset every --ref_update_every steps (none with --beta 0).

`Policy` is the module DDP / FSDP wrap: its forward is either job, log-probs (policy_logprobs) or
the loss (policy_loss); on CUDA the loss comes from the hidden states (grpo_kernels/fused_linear.py:
the (B, C, V) logits never exist). When vLLM samples, --tis weights each token by
min(pi_theta_old / pi_sampler, --tis_cap) (grpo.tis_weights); the sampler/trainer gap is logged
either way (sampler_logp_diff: ~1e-7 with the own sampler). Left out: a value model, an entropy
bonus. docs/one-step.md walks one step with its shapes.

    python -m pytest tests/test_trim.py && python -m pytest tests/test_train.py -k update
"""

import copy
import itertools
import math
import warnings
from dataclasses import dataclass, fields
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

import dist
import grpo
import grpo_kernels
import runner
from batch import Batch, forward_rows
from sample import Samples

# --micro_batch 0: a mini-batch of n rows makes ceil(n / MICRO_ROWS) micro-batches, their bounds
# chosen for the least padding (balanced_micro_batches). A count, not a token budget: every rank
# then runs as many forwards (FSDP gathers the weights in each). On the default run's own
# rollouts (128 rows, two threads of a CPU; tests/bench_update.py --in_run) 4 micro-batches were
# 1.78-1.84x the untrimmed update with an fp32 base model, 1.46-1.53x with a bf16 one (answers
# alike in length: 1.43x fewer cells), 8 of a fixed 16 rows 1.54x, 2 or 8 balanced ones less:
# fewer, larger forwards pay less per call; a GPU would take still more rows per call
MICRO_ROWS = 32
PARTITION_ROWS = 1024  # above, a mini-batch's rows split in fixed sizes (the cut: 0.1 s at 1024)


@dataclass(frozen=True)
class UpdateConfig:
    """The knobs of one GRPO update: train.py's flags of the same names (from_args)."""
    temperature: float = 1.0            # the rollout's: the log-probs are taken at it
    clip_eps: float = 0.2               # eq. 1's epsilon: the lower clip, and the upper unless...
    clip_eps_high: float | None = None  # ... this (DAPO's clip-higher)
    beta: float = 0.0                   # eq. 1's KL coefficient; 0: no reference model
    loss_type: str = "grpo"             # the aggregation over tokens (grpo.token_weights)
    max_new_tokens: int = 128           # dr_grpo's constant divisor
    ppo_epochs: int = 1                 # passes over the rollout
    minibatches: int = 1                # optimiser steps per pass
    micro_batch: int = 0                # rows per forward / backward (0: balanced_micro_batches)
    mask_truncated: bool = False        # outputs cut off at max_new_tokens get no loss
    grad_clip: float = 1.0              # max gradient norm (0: off)
    tis: bool = False                   # weight tokens by min(pi_theta_old / pi_sampler, tis_cap)
    tis_cap: float = 2.0
    policy_loss: str = "clip"           # eq. 1's clipped surrogate, or "cispo" (grpo.policy_term)
    ratio_level: str = "token"          # "sequence": GSPO's ratio, one per output
    gspo_eps: float = 3e-4              # GSPO's clip range, in place of clip_eps ...
    gspo_eps_high: float = 4e-4         # ... and clip_eps_high
    cispo_eps_high: float = 4.0         # CISPO's weight cap is 1 + this (no lower bound)
    dual_clip: float | None = None      # dual-clip's c (> 1); None: off
    # micro-batches of rows of alike lengths, each trimmed (Batch.trim); False: the reference, each
    # as wide as the rollout, in the mini-batch's order, micro_batch 0 a whole mini-batch (tests)
    trim: bool = True

    @classmethod
    def from_args(cls, args):
        """--tis auto is on exactly when another engine samples; trimming is always on."""
        tis = args.tis == "on" or (args.tis == "auto" and args.engine == "vllm")
        knobs = {f.name: getattr(args, f.name) for f in fields(cls)
                 if f.name not in ("tis", "trim")}
        return cls(**knobs, tis=tis)

    def clip_range(self):
        """(eps_low, eps_high) of the objective: eq. 1's, GSPO's own, or CISPO's cap (no lower
        bound)."""
        if self.policy_loss == "cispo":
            return math.inf, self.cispo_eps_high
        if self.ratio_level == "sequence":
            return self.gspo_eps, self.gspo_eps_high
        return self.clip_eps, self.clip_eps_high


def grpo_update(policy, ref, opt, samples: Samples, advantages, cfg: UpdateConfig, generator):
    """
    Train on one rollout's `samples` (this rank's B rows) with their advantages (B,): policy and
    ref are Policy modules (DDP/FSDP-wrapped or not; ref None with beta 0). A mini-batch whose loss
    or gradient norm is not finite takes no optimiser step (counted in skipped_steps). Returns the
    loss and grad norm averaged over the steps taken, and the metrics over all tokens.
    """
    batch, mask = samples.batch, samples.sampled_mask                # (B, C) each; 0 on tool output
    if cfg.mask_truncated:
        mask = mask * ~samples.truncated[:, None]                   # cut-off outputs get no loss
    B = mask.size(0)
    split = row_split(cfg, batch)
    everything = split(torch.arange(B))
    # pi_theta_old (unless a single step is its own and no importance weight needs it) and pi_ref,
    # before the first update
    single = cfg.ppo_epochs * cfg.minibatches == 1 and not cfg.tis
    old_logp = None if single else logprobs_in_chunks(policy, batch, everything, cfg.temperature,
                                                      cfg.trim)
    ref_logp = (logprobs_in_chunks(ref, batch, everything, cfg.temperature, cfg.trim)
                if cfg.beta > 0 else None)
    is_w = None  # GSPO: one weight per output, as its ratio (grpo.tis_weights with the mask)
    if cfg.tis:
        is_w = grpo.tis_weights(old_logp, samples.sampler_logp, cfg.tis_cap,
                                mask if cfg.ratio_level == "sequence" else None)
    rows = dict(old_logp=old_logp, ref_logp=ref_logp, advantages=advantages, mask=mask,
                is_weights=is_w)  # each (B, ...): what a micro-batch picks its rows of
    stats, losses, norms, skipped = UpdateStats(mask.device), [], [], 0
    for _ in range(cfg.ppo_epochs):
        # mb: (B / minibatches,) rows, one optimiser step
        for mb in torch.randperm(B, generator=generator).chunk(cfg.minibatches):
            norm = dist.all_sum(grpo.loss_normalizer(cfg.loss_type, mask[mb], cfg.max_new_tokens))
            loss_of = partial(micro_batch_loss, policy, samples, rows, norm, cfg, stats)
            loss, grad_norm, stepped = runner.optimizer_step(policy, opt, split(mb), loss_of,
                                                             cfg.grad_clip)
            stats.first_step = False  # the policy has moved: the sampler gap is measured no more
            if stepped:
                losses.append(loss), norms.append(grad_norm)
            else:
                skipped += 1
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return {"loss": mean(losses), "grad_norm": mean(norms), "skipped_steps": skipped,
            **stats.means(), **({} if is_w is None else tis_stats(is_w, mask))}


def tis_stats(is_w, mask) -> dict:
    """The importance weights' mean, min and max over every rank's completion tokens."""
    w = torch.cat(dist.gather_object(is_w[mask.bool()].cpu()))  # (tokens of all ranks,)
    if not w.numel():
        return {}
    return {"tis_mean": w.mean().item(), "tis_min": w.min().item(), "tis_max": w.max().item()}


def row_split(cfg, batch):
    """rows (n,) of a mini-batch -> its micro-batches, as cfg asks: --micro_batch rows each, the
    whole mini-batch untrimmed (the reference), or balanced_micro_batches."""
    B = batch.rows.size(0)
    lengths = batch.completion_mask.sum(1).cpu()  # (B,) on the CPU: what micro-batches sort by
    if cfg.micro_batch or not cfg.trim:  # a fixed size, or the reference: the mini-batch at once
        size = cfg.micro_batch or B // cfg.minibatches
        return partial(micro_batches, lengths=lengths, size=size, by_length=cfg.trim)
    return partial(balanced_micro_batches, widths=batch.R + lengths, size=MICRO_ROWS)


def micro_batches(rows, lengths, size, by_length=True):
    """A mini-batch's rows (n,) as micro-batches of `size` rows: by_length, sorted by completion
    length (lengths (B,), on the CPU), longest first, so that each micro-batch, trimmed, is as wide
    as its own longest row; else in the mini-batch's order (the reference). Every rank has as many
    rows, so as many micro-batches: FSDP gathers the weights in each forward, on all ranks."""
    if by_length:
        rows = rows[lengths[rows].argsort(descending=True, stable=True)]  # (n,)
    return rows.split(size)


def balanced_micro_batches(rows, widths, size):
    """A mini-batch's rows (n,) as k = ceil(n / size) micro-batches (as many as rows.split(size)
    makes: every rank runs as many forwards) of rows sorted by width (R + completion length,
    widths (B,) on the CPU), longest first, cut where the (row, column) cells run, sum over parts
    of rows x widest, are fewest, no part holding more cells than `size` rows of the widest (the
    memory of a fixed-size split). A dynamic program over the cut points: best[j][i], the fewest
    cells of the first i rows in j parts, O(k n^2) on the CPU (above PARTITION_ROWS rows, parts of
    `size` rows). `partition_brute_force` is its plain reference. E.g. widths 9, 9, 3, 3, 3, 3 in
    2 parts: (9, 9) (3, 3, 3, 3), 30 cells, where split(3) runs (9, 9, 3) (3, 3, 3), 36.
    Simplified: cells are the linear layers' work; attention's, which grows as width x (P +
    width), and the prompt columns Batch.trim also drops, are left out of the cost."""
    rows = rows[widths[rows].argsort(descending=True, stable=True)]  # (n,)
    if len(rows) > PARTITION_ROWS:  # the program's time grows as n^3 / size: a plain split
        return rows.split(size)
    return rows.split(cheapest_partition(widths[rows].long(), -(-len(rows) // size), size))


def cheapest_partition(w, k, size):
    """Part sizes of w (n >= 1,), sorted descending, cut into k contiguous non-empty parts of
    fewest sum(len(part) * part[0]), each part's len(part) * part[0] <= size * w[0]; k at most
    ceil(n / size), so that a split into parts of `size` rows is one such cut."""
    n, k = w.numel(), min(k, w.numel())
    if n == 0 or k > -(-n // size):
        raise ValueError(f"{n} rows cannot be cut into {k} parts of at most {size} rows' cells")
    BIG = 2 ** 40  # 'no way': more cells than any rollout has; exact in int64, unlike inf sums
    s, i = torch.arange(n + 1)[:, None], torch.arange(n + 1)[None, :]  # (n+1, 1), (1, n+1)
    cells = (i - s) * torch.cat([w, w.new_zeros(1)])[:, None]  # (n+1, n+1): rows s..i-1 as a part
    cells[(s >= i) | (cells > size * int(w[0]))] = BIG
    best, back = torch.full((n + 1,), BIG), []  # best[i]: the first i rows in j parts
    best[0] = 0
    for _ in range(k):
        total = best[:, None] + cells  # (n+1, n+1): the first s rows in j-1 parts, then s..i-1
        back.append(total.argmin(0))   # (n+1,): the best s for each i (the first, on ties)
        best = total.gather(0, back[-1][None])[0].clamp(max=BIG)
    cuts = [n]
    for arg in reversed(back):
        cuts.append(int(arg[cuts[-1]]))
    return [b - a for a, b in zip(cuts[::-1], cuts[::-1][1:])]


def partition_brute_force(w, k, size):
    """The plain reference of cheapest_partition: every way of cutting, the fewest cells (the
    first such, in itertools' order)."""
    n, k, best = len(w), min(k, len(w)), None
    for cut in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cut, n)
        parts = [(b - a) * int(w[a]) for a, b in zip(bounds, bounds[1:])]
        if max(parts) <= size * int(w[0]) and (best is None or sum(parts) < best[0]):
            best = sum(parts), [b - a for a, b in zip(bounds, bounds[1:])]
    return best[1]


def micro_batch_loss(policy, samples, rows, normalizer, cfg, stats, idx):
    """eq. 1-2 on the rows idx: their share of the mini-batch's loss (divided by its normaliser).
    rows: the per-row tensors of the whole rollout (None where a term is off), each (B, C) one cut
    to the micro-batch's trimmed width c: the columns cut are padding in every row picked."""
    batch = samples.batch.select(idx)
    batch = batch.trim() if cfg.trim else batch
    c = batch.completions.size(1)
    pick = lambda v: v[idx] if v.dim() == 1 else v[idx, :c]  # noqa: E731  (b,) or (b, c)
    picked = {k: None if v is None else pick(v) for k, v in rows.items()}
    eps_low, eps_high = cfg.clip_range()
    terms = LossTerms(**picked, normalizer=normalizer, eps_low=eps_low, eps_high=eps_high,
                      beta=cfg.beta, loss_type=cfg.loss_type, policy_loss=cfg.policy_loss,
                      ratio_level=cfg.ratio_level, dual_clip=cfg.dual_clip)
    out = policy_loss(policy, batch, cfg.temperature, terms)
    stats.add(out.metrics, out.entropy * picked["mask"], out.logp, pick(samples.sampler_logp),
              pick(samples.sampled_mask))
    return out.loss


class UpdateStats:
    """What the update logs, summed on the device over micro-batches (no host sync for each), then
    over ranks: the KL, the ratio, the clip fractions and the entropy per token, and how far the
    sampler's log-probs are from the trainer's over the first optimiser step's rows (the policy
    has not moved yet), mean and max (the same model, the same temperature, the same tokens: with
    the own sampler they agree to ~1e-7)."""

    NAMES = ("kl", "ratio", "clip_low", "clip_high", "entropy", "tokens")

    def __init__(self, device):
        self.sums = torch.zeros(len(self.NAMES), device=device)
        self.gap = torch.zeros(3, device=device)  # sum |gap|, its tokens, max |gap|
        self.first_step = True                    # grpo_update: False after the first step

    def add(self, m, entropy, logp, sampler_logp, valid):
        n = m["tokens"]  # grpo_metrics are means over this micro-batch's tokens: back to sums
        self.sums += torch.stack([m["kl"] * n, m["ratio"] * n, m["clip_low"] * n,
                                  m["clip_high"] * n, entropy.sum(), n])
        if self.first_step:
            gap = (logp - sampler_logp).abs() * valid  # (b, c)
            self.gap = torch.stack([self.gap[0] + gap.sum(), self.gap[1] + valid.sum(),
                                    torch.maximum(self.gap[2], gap.max())])

    def means(self) -> dict:
        mean_gap = self.gap[:1] / self.gap[1].clamp(min=1)  # (1,) this rank's
        sums = dist.all_sum(torch.cat([self.sums, mean_gap / dist.world()])).tolist()
        m = {k: v / max(sums[-2], 1) for k, v in zip(self.NAMES[:-1], sums)}
        gap_max = max(x.item() for x in dist.gather_object(self.gap[2].cpu()))
        return {"clip_frac": m["clip_low"] + m["clip_high"], **m, "sampler_logp_diff": sums[-1],
                "sampler_logp_diff_max": gap_max}


@torch.no_grad()
def logprobs_in_chunks(policy, batch, parts, temperature, trim=True):
    """The log-probs (B, C) of the batch's completions, 0 on padding, computed rows `parts` (a
    list of (b,) row indices) at a time, each part trimmed (Batch.trim) unless trim=False: no
    gradient."""
    C, pieces = batch.completions.size(1), []
    for idx in parts:
        part = batch.select(idx)
        lp = policy_logprobs(policy, part.trim() if trim else part, temperature)  # (b, c)
        pieces.append(F.pad(lp, (0, C - lp.size(1))))  # (b, C): the columns cut were padding
    return torch.cat(pieces)[torch.cat(parts).argsort()]  # (B, C): the rows in the batch's order


# -----------------------------------------------------------------------------
# the trainable module and the reference

@dataclass
class LossTerms:
    """What eq. 1-2 need beside the policy's own log-probs, for the b rows of one micro-batch."""
    old_logp: torch.Tensor | None    # (b, C) pi_theta_old; None: on-policy (rho = 1)
    ref_logp: torch.Tensor | None    # (b, C) pi_ref; None without the KL term
    advantages: torch.Tensor         # (b,) eq. 3
    mask: torch.Tensor               # (b, C) 1 on the sampled tokens that have a loss
    normalizer: torch.Tensor | float | None = None  # the whole mini-batch's (grpo.loss_normalizer)
    is_weights: torch.Tensor | None = None  # (b, C) importance weights (grpo.tis_weights), or None
    eps_low: float = 0.2
    eps_high: float | None = None
    beta: float = 0.0
    loss_type: str = "grpo"
    policy_loss: str = "clip"
    ratio_level: str = "token"
    dual_clip: float | None = None

    @property
    def fused(self) -> bool:
        """Does grpo_kernels.linear_grpo_loss compute this objective? The paper's per-token clip
        and its aggregations; the others take the kernels' log-probs and grpo.grpo_loss."""
        return (self.policy_loss, self.ratio_level, self.dual_clip) == ("clip", "token", None)


@dataclass
class PolicyOutput:
    logp: torch.Tensor                # (b, C) log pi_theta of each completion token, 0 on padding
    entropy: torch.Tensor | None      # (b, C) of each next-token distribution, or None
    loss: torch.Tensor | None = None  # the GRPO loss of these rows (policy_loss only)
    metrics: dict | None = None       # grpo.grpo_metrics of these rows (policy_loss only)


class Policy(nn.Module):
    """The module DDP / FSDP wrap. Their hooks run only in a forward call, so both of its jobs go
    through forward: call it as policy_logprobs(policy, ...) or policy_loss(policy, ...)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, temperature=1.0, terms: LossTerms | None = None) -> PolicyOutput:
        if terms is None:
            return PolicyOutput(completion_logprobs(self.model, batch, temperature), None)
        return completion_grpo_loss(self.model, batch, temperature, terms)


def policy_logprobs(policy, batch, temperature=1.0) -> torch.Tensor:
    """The policy's log-probs (b, C) of a batch's completions."""
    return policy(batch, temperature).logp


def policy_loss(policy, batch, temperature, terms: LossTerms) -> PolicyOutput:
    """The policy's GRPO loss of a batch's completions, with their log-probs and entropy (detached)
    and the metrics to watch."""
    return policy(batch, temperature, terms)


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
    module = policy.module if hasattr(policy, "module") else policy  # DDP's wrapper, or none
    ref.load_state_dict(module.state_dict())


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
    (B, C, V) logits are never materialised (grpo_kernels/fused_linear.py)."""
    h = forward_rows(model, batch)[:, batch.R - 1:-1]  # (B, C, d): the states predicting each token
    out = grpo_kernels.logprobs_from_hidden(h, model.lm_head.weight, batch.completions, temperature,
                                            with_entropy=entropy)
    mask = batch.completion_mask
    return (out[0] * mask, out[1] * mask) if entropy else out * mask


def completion_grpo_loss(model, batch: Batch, temperature, terms: LossTerms) -> PolicyOutput:
    """The trainer's GRPO loss (grpo.grpo_loss, eq. 1-2) of the batch's completions. On CUDA in one
    pass from the hidden states (grpo_kernels.linear_grpo_loss, with each token's weight from
    grpo.token_weights): the logits are never held, nor recomputed for the backward; elsewhere the
    reference path, completion_logprobs then grpo.grpo_loss. GSPO, CISPO and dual-clip take that
    path on CUDA too: its log-probs come from the kernels (grpo_kernels.logprobs_from_hidden)."""
    T, old_logp, ref_logp = terms, terms.old_logp, terms.ref_logp
    A, mask = terms.advantages, terms.mask  # (B,), (B, C)
    if grpo_kernels.fast(model.lm_head.weight) and T.fused:
        h = forward_rows(model, batch)[:, batch.R - 1:-1]  # (B, C, d): states predicting each token
        weights = grpo.token_weights(mask, T.loss_type, T.normalizer)
        if T.is_weights is not None:  # grpo_loss's per-token factor, as a weight of the fused loss
            weights = weights * T.is_weights
        loss, logp, entropy = grpo_kernels.linear_grpo_loss(
            h, model.lm_head.weight, batch.completions, old_logp, ref_logp, A, weights, T.eps_low,
            T.eps_high, T.beta, temperature=temperature, with_entropy=True)
        logp, entropy = logp * batch.completion_mask, entropy * batch.completion_mask
        metrics = grpo.grpo_metrics(logp, logp if old_logp is None else old_logp, ref_logp, A, mask,
                                    T.eps_low, T.eps_high)
        return PolicyOutput(logp, entropy, loss, metrics)
    logp, entropy = completion_logprobs(model, batch, temperature, entropy=True)
    old = logp.detach() if old_logp is None else old_logp
    loss, metrics = grpo.grpo_loss(logp, old, ref_logp, A, mask, T.eps_low, T.eps_high, T.beta,
                                   T.loss_type, T.normalizer, T.is_weights, T.policy_loss,
                                   T.ratio_level, T.dual_clip)
    return PolicyOutput(logp.detach(), entropy, loss, metrics)

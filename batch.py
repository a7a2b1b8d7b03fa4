"""
The layout of a batch of (prompt, completion) rows, which the sampler and the trainer share: GRPO
samples G outputs per question from the old policy (eq. 1), then the trainer recomputes the
log-probs of exactly those tokens, so both must lay them out alike (`pack`):

    prefix   (P,)          the longest token prefix common to every prompt (the R1-Zero template),
                           run once with batch 1; every row attends to its keys and values
    rows     (B, R + C)    each prompt's remaining tokens, left-padded to width R, then its
                           completion, right-padded to width C
    valid    (B, R + C)    False on padding: padding is never attended to, never in the loss

Positions count valid tokens only, so a row's tokens sit at the same positions whatever the
padding, and the sampler and the trainer see identical attention inputs. SFT, the base stage and
the reward model lay their documents out the same way. `Batch.trim` drops the columns no row of a
batch uses (the trainer's micro-batches); the base stage packs several documents to a row
(pretrain.py), each attending only to itself.

    python -m pytest tests/test_sample.py tests/test_trim.py
"""

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    prefix: torch.Tensor  # (P,) tokens shared by every row
    rows: torch.Tensor    # (B, R + C) prompt rest (left-padded), then completion (right-padded)
    valid: torch.Tensor   # (B, R + C) bool, False on padding
    R: int                # width of the prompt part; completion token j is at column R + j

    @property
    def completions(self):
        return self.rows[:, self.R:]  # (B, C)

    @property
    def completion_mask(self):
        return self.valid[:, self.R:].float()  # (B, C)

    def select(self, idx):
        """The rows idx (a mini- or micro-batch), with the same prefix and layout."""
        return Batch(self.prefix, self.rows[idx], self.valid[idx], self.R)

    def trim(self):
        """The same rows without the columns no row uses: the prompt columns before the longest
        prompt rest and the completion columns after the longest completion (one completion
        column kept at least). Positions count valid tokens and padding is never attended to, so
        each kept token sees what it saw before: the same states on fewer columns. A micro-batch
        of rows of alike lengths (grpo_update) so skips the padding the rollout's longest row
        set. One host sync."""
        R, S = self.R, self.valid.size(1)
        used = self.valid.any(0)                                     # (R + C,) some row uses it
        col = torch.arange(S, device=used.device)                    # (R + C,)
        lo = torch.where(used, col, R).min()                         # first used column, <= R
        hi = torch.where(used, col + 1, R + 1).max()                 # past the last used, > R
        lo, hi = torch.stack([lo, hi]).tolist()
        hi = min(hi, S)
        return Batch(self.prefix, self.rows[:, lo:hi], self.valid[:, lo:hi], R - lo)


def pack(prompts: list[list[int]], completions: list[list[int]], pad: int, device="cpu") -> Batch:
    """Lay out prompts and their completions (lists of token ids) as described above."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    P = shared_prefix(prompts)
    rests = [p[P:] for p in prompts]
    R, C = max(map(len, rests)), max(map(len, completions))
    rows = torch.full((len(prompts), R + C), pad, dtype=torch.long)
    valid = torch.zeros(len(prompts), R + C, dtype=torch.bool)
    for i, (rest, comp) in enumerate(zip(rests, completions)):
        rows[i, R - len(rest):R], rows[i, R:R + len(comp)] = (torch.tensor(rest),
                                                              torch.tensor(comp, dtype=torch.long))
        valid[i, R - len(rest):R + len(comp)] = True
    return Batch(torch.tensor(prompts[0][:P], dtype=torch.long, device=device),
                 rows.to(device), valid.to(device), R)


def positions_and_mask(P: int, valid: torch.Tensor):
    """Positions (B, S) and attention mask (B, 1, S, P+S) for rows after a P-token prefix."""
    B, S = valid.shape
    # (B, S): valid tokens at P, P+1, ...; padding is never read
    pos = P + valid.long().cumsum(-1) - 1
    causal = torch.ones(S, S, dtype=torch.bool, device=valid.device).tril()
    # each query sees the prefix and the valid earlier tokens of its row; also itself, so that a
    # padding query is never fully masked (its output is unused, but NaN would spread)
    keys = (causal & valid[:, None, :]) | torch.eye(S, dtype=torch.bool, device=valid.device)
    mask = torch.cat([keys.new_ones(B, S, P), keys], dim=-1)  # (B, S, P+S)
    return pos.clamp(min=0), mask[:, None]  # (B, 1, S, P+S)


def forward_rows(model, batch: Batch):
    """Hidden states (B, R + C, d) of the rows, with the shared prefix run once."""
    P = batch.prefix.numel()
    past = model(batch.prefix[None])[1] if P else None
    pos, mask = positions_and_mask(P, batch.valid)
    return model(batch.rows, pos, mask, past)[0]


def shared_prefix(prompts: list[list[int]]) -> int:
    """P, the length of `pack`'s shared prefix: the longest common to every prompt that leaves each
    at least one token of its own (pretrain.py's packed rows share it the same way)."""
    P = 0
    while P < min(map(len, prompts)) - 1 and all(p[P] == prompts[0][P] for p in prompts):
        P += 1
    return P

"""
Distributed GRPO with torchrun: the same train.py from one CPU process to many GPUs and nodes.

    torchrun --standalone --nproc_per_node=2 train.py              # 2 processes; gloo on a CPU, nccl on GPUs

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins them into
one process group (nccl on CUDA, gloo on a CPU). The data is split by whole groups: each rank
samples G outputs for its share of the step's questions, so the group advantages of eq. 3 need no
communication. What must be global is summed across ranks: the divisor of the loss (tokens or
outputs of the whole step, grpo.loss_normalizer) and every logged number, so that the update and
the logs do not depend on the world size.

Models that fit on one device are replicated with DistributedDataParallel; --fsdp shards them
with FSDP2 (`fully_shard`, each transformer block and then the root). Either way the module that
is wrapped is `Policy`: one forward computes the log-probs of a batch of completions, which is
what DDP expects (one forward per backward) even though the model itself is called twice (the
shared prompt prefix, then the rows). Both wrappers average gradients over ranks; the loss is
multiplied by the world size so that the result is the gradient of the global loss.

Checkpoints are full, unsharded state dicts (weights, reference weights, optimiser state keyed
by parameter name), written by rank 0: `--resume` continues a run at any world size, with or
without FSDP. Evaluation is split across ranks like the rollouts.
"""

import gc
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from sample import completion_grpo_loss, completion_logprobs


def setup(device: str):
    """Join the torchrun process group if there is one -> (rank, world_size, device)."""
    if "RANK" not in os.environ:
        return 0, 1, device
    if device.startswith("cuda"):
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def print0(*args, **kwargs):
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def all_sum(x):
    """Sum of a float or tensor over ranks (a float stays a float)."""
    if not active():
        return x
    t = torch.as_tensor(x, dtype=torch.float64).clone()
    dist.all_reduce(t)
    return t.item() if not torch.is_tensor(x) else t.to(x.dtype)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's rows (every rank holds the same number) in rank order."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_object(x) -> list:
    """Any picklable x from every rank, a list by rank (on every rank)."""
    if not active():
        return [x]
    out = [None] * world()
    dist.all_gather_object(out, x)
    return out


def all_done(done: torch.Tensor) -> bool:
    """True when every rank is done decoding; with FSDP each decode step is a collective, so all
    ranks must stop at the same step."""
    n = torch.tensor(float(done.all()))
    return all_sum(n).item() == world()


def barrier():
    if active():
        dist.barrier()


def cleanup():
    """Leave the process group. Call it after the models are gone: gloo work objects still held by
    them (FSDP keeps some in reference cycles, hence the collection) would otherwise be destroyed
    during interpreter shutdown, which aborts the process. The barrier keeps a rank from tearing
    gloo down while another still talks to it."""
    if active():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


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


def shard(model):
    """FSDP2: each block is sharded and gathered around its own forward; the root (embeddings,
    tied output layer, final norm) stays gathered after its forward, because the output layer is
    also called outside it (sample.py, for the next token)."""
    import warnings

    from torch.distributed.fsdp import fully_shard
    # a block returns its keys and values, views of its projection; FSDP warns that an in-place op
    # on them would skip its backward hook. None happens: decoding copies them into KVCaches.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model, reshard_after_forward=False)
    return model


def wrap(model, fsdp: bool):
    """The trainable Policy over model: DDP-replicated, FSDP-sharded (model is sharded in place),
    or as is in a single process."""
    if fsdp:
        return Policy(shard(model))
    policy = Policy(model)
    if not active():
        return policy
    device_ids = [model.lm_head.weight.device.index] if model.lm_head.weight.is_cuda else None
    return nn.parallel.DistributedDataParallel(policy, device_ids=device_ids)


def full_optim_state_dict(model, opt):
    """The optimiser state keyed by parameter name, unsharded (a collective under FSDP): it loads
    into a run at any world size, with or without FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optim_state_dict(model, opt, state):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def full_state_dict(model):
    """The unsharded state dict (a collective under FSDP), for rank 0 to save."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    if active():
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()

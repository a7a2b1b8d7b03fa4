"""
torchrun: the same training stages from one CPU process to many GPUs and nodes, and the floor
every other file may stand on (it imports nothing of the project).

    torchrun --standalone --nproc_per_node=2 train.py    # 2 processes; gloo on a CPU, nccl on GPUs

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins them into
one process group (nccl on CUDA, gloo on a CPU). What a stage must make global goes through the
helpers here: sums over ranks (`all_sum`: the divisor of a loss, every logged number), rows
gathered in rank order (`gather_rows`), one rank's value for all (`gather_object`), output from
rank 0 only (`print0`).

This file wraps whatever module it is given: `replicate` puts DistributedDataParallel around it,
`shard` applies FSDP2 (`fully_shard`) to the submodules it is told and then to the root. Both
average gradients over ranks, so a stage multiplies its loss by the world size to get the
gradient of the global loss (runner.optimizer_step). Checkpoints are full, unsharded state dicts
(weights and optimiser state keyed by parameter name), gathered here and written by rank 0, so a
run resumes at any world size, with or without FSDP. Which module the GRPO trainer wraps, and
why, is grpo_update.Policy's docstring. Left out: tensor and pipeline parallelism (a model must
fit once per GPU as FSDP shards it), FSDP for r1/sft.py (DDP only), and elastic restarts (torchrun's
--max-restarts: a crashed rank ends the job, and --resume continues it).
"""

import contextlib
import gc
import os

import torch
import torch.distributed as dist
import torch.nn as nn


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


def launched_world() -> int:
    """The number of processes torchrun started (its WORLD_SIZE; 1 without torchrun), known before
    the process group is joined: what a stage's flags are checked against."""
    return int(os.environ.get("WORLD_SIZE", 1))


def active() -> bool:
    """In torchrun's process group (a group a library made for itself, as vLLM's engine does in a
    single process, is not this run's)."""
    return "RANK" in os.environ and dist.is_available() and dist.is_initialized()


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


def no_sync(module, last: bool):
    """Around a micro-batch's backward: DDP all-reduces the gradients of the last micro-batch only
    (module.no_sync() on the others); FSDP and an unwrapped module have nothing to skip."""
    return contextlib.nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()


def replicate(module):
    """The module as DistributedDataParallel replicas in a process group, as is in one process.
    DDP expects one forward per backward: `module` should compute the whole loss in its forward."""
    if not active():
        return module
    weight = next(module.parameters())
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[weight.device.index] if weight.is_cuda else None)


def shard(module, blocks):
    """FSDP2 over module, in place: each of `blocks` sharded and gathered around its own forward,
    then the root (what is left), which stays gathered after its forward, because the caller may
    use its parameters outside it (a tied output layer called for the next token)."""
    # here, not at the top: ~1.5 s of import that only --fsdp needs
    from torch.distributed.fsdp import fully_shard
    for block in blocks:
        fully_shard(block)
    fully_shard(module, reshard_after_forward=False)
    return module


def full_state_dict(module, everywhere=False):
    """The unsharded state dict (a collective under FSDP), for rank 0 to save; everywhere=True: on
    every rank, on the device (each rank's vLLM engine loads it)."""
    if not active():
        return module.state_dict()
    # ~1.5 s of import (as shard's)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))


def full_optim_state_dict(module, opt):
    """The optimiser state keyed by parameter name, unsharded (a collective under FSDP): it loads
    into a run at any world size, with or without FSDP."""
    # ~1.5 s of import (as shard's)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(
        module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optim_state_dict(module, opt, state):
    # ~1.5 s of import (as shard's)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(module, opt, state, options=StateDictOptions(full_state_dict=True))

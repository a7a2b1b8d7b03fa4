"""
How rollouts are produced beyond the loop's own sampler (sample.py), and where model-written code
runs:

    vllm_engine.py  --engine vllm: the same sampling contract on a vLLM engine in the trainer's
                    process, its weights synced in memory after every optimiser step
    tools.py        --max_tool_calls: multi-turn rollouts in which the policy calls a Python
                    interpreter inside its thought, over either engine; the tool-output mask
    sandbox.py      the interpreter: model-generated code under bubblewrap (own uid and
                    namespaces, no network, read-only filesystem, rlimits, seccomp); the code
                    reward runs there too

The default run uses none of them: rollout.py calls sample.generate directly.
"""

"""
Ablations: runs that compare the project's options side by side on the toy, each a `python -m
train ...` job of r1/jobs.py (the base stage made once, cached and shared), measured over several
seeds, with one table and one figure for the docs.

    objectives.py   the paper's GRPO against Dr. GRPO, DAPO, GSPO and CISPO (docs/grpo.md)

    python -m ablations.objectives          # ~30 min on a 2-core CPU
"""

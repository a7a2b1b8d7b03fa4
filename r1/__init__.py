"""
The R1 pipeline after R1-Zero, in miniature: the stages that train.py's GRPO step is one part of.

    cold_start.py    the cold-start data: readable long chains of thought           (R1 stage 1)
    sft.py           supervised fine-tuning: the cold start, the SFT on rejection-   (stages 1, 3;
                     sampled data, distillation into a smaller model                  distillation)
    reject.py        rejection sampling: correct and readable samples               (stage 3)
    reward_model.py  a reward model and the `preference` reward                     (eq. 5, 6, 8)
    pipeline.py      every stage in order (stage 2 and 4 are train.py), then one table
    jobs.py          the pipeline's runner: each stage a subprocess once what it reads is done

Each stage is its own command, on the run skeleton the GRPO loop uses (runner.py):

    python -m r1                     # the whole pipeline, then its table (docs/r1.md)
    python -m r1.sft --init out/base/ckpt.pt --data cold.jsonl --run_name cold
"""

"""
The DeepSeek-R1 pipeline in miniature, one command, on the toy addition task and a CPU: each stage
is the documented CLI (train.py, r1/cold_start.py, r1/sft.py, r1/reject.py, r1/reward_model.py)
run as a subprocess, each stage's output kept under <out_dir>/r1/<stage>/. A stage whose output is
there is skipped, unless its command changed (other sizes) or a stage it reads runs again
(r1/jobs.py), so a stage re-runs with what reads it (--from STAGE, or delete its directory).

The paper's stages, in order: base, then r1zero (GRPO on the base, rules only: R1-Zero); cold_data
and cold_sft (stage 1, the cold start); reasoning_rl (stage 2, with the language reward); rs_data
and rs_sft (stage 3, rejection sampling and SFT of the base again); rm, rl2_rules and rl2 (stage 4,
RL at T 0.7, rules then the reward model's score added); then distillation (traces, student_sft)
against GRPO on the small student alone (student_base, student_grpo). --lang_mix runs it on the
bilingual toy, whose R1-Zero mixes languages, and adds the paper's ablation of the language reward.

At the end: one table row per model, measured alike (held-out pass@1 over --eval_samples samples at
T 0.6, top-p 0.95; format rate; language consistency, eq. 7; mean completion length; wall time;
completion tokens trained on), and a plot of the first RL steps of R1-Zero against reasoning RL
after the cold start. Every size is a flag (defaults: SIZES below). What each stage is, how compute
is counted and the measured tables: docs/r1.md, "The pipeline's stages".

    python -m r1                  # the whole pipeline, the table, out/r1/cold_start_vs_r1zero.png
    python -m r1 --from rs_sft    # re-run rs_sft and every stage that reads what it writes
    python -m r1 --lang_mix --out_dir out_mix   # the bilingual toy: why R1 exists (docs/r1.md)
"""

import argparse
import json
import os
import shutil
import sys
import time

from r1.jobs import Job, cores, run_jobs
from plot import plot_runs
from rewards import language_share, thought
from runner import Parser, read_json, read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository

# stage sizes (each is a flag of the same name); the target is the whole pipeline in ~15 min on 2
# CPU cores
SIZES = {  # flag: (default, help)
    "base_steps": (450, "pretraining steps of the base and of the student base "
                        "(train.py --base_steps)"),
    "rl_steps": (30, "GRPO steps of r1zero (and r1zero_lang) ..."),
    "reasoning_rl_steps": (30, "... and of reasoning_rl (and reasoning_rl_rules); the plot "
                               "compares the two"),
    "rl2_steps": (20, "GRPO steps of stage 4 at T 0.7 ..."),
    "rl2_rm_steps": (6, "... of which the last this many with the reward model's score "
                        "(0: rules only)"),
    "questions": (8, "questions per GRPO step"),
    "group_size": (8, "G, outputs sampled per question"),
    "cold_examples": (300, "cold-start chains of thought"),
    "cold_epochs": (2, "SFT epochs on the cold-start data"),
    "rs_questions": (150, "rejection sampling: training questions ..."),
    "rs_k": (4, "... samples each ..."),
    "rs_keep": (1, "... and at most this many kept per question"),
    "rs_epochs": (3, "SFT epochs on the rejection-sampled data"),
    "rm_steps": (100, "reward model training steps (r1/reward_model.py --steps)"),
    "student_rl_steps": (30, "student GRPO steps, against ..."),
    "student_sft_epochs": (4, "... SFT epochs on the teacher's traces (the table shows both one's "
                              "compute)"),
    "eval_problems": (100, "held-out problems of the table, k samples each"),
    "eval_samples": (4, "k, samples per problem (pass@1 is their mean)"),
}
# --lang_mix: the bilingual toy (tasks/bilingual.py), whose R1-Zero mixes languages, and the paper's
# ablation of the language reward: each RL run that has it (or not) run again without it (or with
# it), same steps, same seed; (name, without, with)
ABLATIONS = [("R1-Zero", "r1zero", "r1zero_lang"),
             ("reasoning RL", "reasoning_rl_rules", "reasoning_rl")]
LANG_MIX = ["r1zero_lang", "reasoning_rl_rules"]  # the stages --lang_mix adds
# the sizes --lang_mix sets, to fit in ~10 min on 2 CPU cores: reasoning RL (at its ceiling from the
# cold start) and stage 4 (rules only) shorter, a shorter student GRPO, no student SFT + GRPO row
LANG_MIX_SIZES = {"reasoning_rl_steps": 15, "rl2_steps": 10, "rl2_rm_steps": 0,
                  "student_rl_steps": 20, "student_sft_epochs": 3, "no_student_sft_grpo": True}
LANGUAGE = "accuracy:1,format:1,language:0.5"  # eq. 7's reward beside the rules, in reasoning RL
STAGES = ["base", "r1zero", "r1zero_lang", "cold_data", "cold_sft", "reasoning_rl",
          "reasoning_rl_rules", "rs_data", "rs_sft", "rm", "rl2_rules", "rl2", "traces",
          "student_base", "student_grpo", "student_sft", "student_sft_grpo"]
# table rows: (stage, label, the stages whose wall time the row adds up: its data and its own)
ROWS = [("base", "base", ["base"]),
        ("r1zero", "R1-Zero (GRPO on base)", ["r1zero"]),
        ("r1zero_lang", "R1-Zero + language reward", ["r1zero_lang"]),
        ("cold_sft", "cold-start SFT", ["cold_data", "cold_sft"]),
        ("reasoning_rl", "reasoning RL (+language reward)", ["reasoning_rl"]),
        ("reasoning_rl_rules", "reasoning RL, no language reward", ["reasoning_rl_rules"]),
        ("rs_sft", "rejection sampling + SFT", ["rs_data", "rs_sft"]),
        ("rl2", "stage-4 RL (T 0.7, rules + RM)", ["rm", "rl2_rules", "rl2"]),
        ("student_base", "student base (nano)", ["student_base"]),
        ("student_grpo", "student GRPO", ["student_grpo"]),
        ("student_sft", "student SFT on teacher traces", ["traces", "student_sft"]),
        ("student_sft_grpo", "student SFT + GRPO", ["student_sft_grpo"])]
# train.py's, r1/reject.py's, r1/cold_start.py's and the table's generation limit (their default)
MAX_NEW_TOKENS = 128
# train.py's default: every stage has the same held-out set (tasks/ draws it from the seed)
SEED = 1337


def cli(module):
    """The command that runs one of this project's CLIs (main() puts the repository on PYTHONPATH,
    so it runs from any directory)."""
    return [sys.executable, "-m", module]


def train_command(a, name, *flags):
    """A train.py stage: the base cache under <out_dir>/cache, shared with train.py's own runs; its
    own evaluations small (the table's are r1/pipeline.py's); no curves.png per run."""
    task = ["--task", "bilingual"] if a.lang_mix else []
    return cli("train") + [
        "--out_dir", a.out_dir, "--run_name", f"r1/{name}", "--eval_problems", "20",
        "--eval_samples", "1", "--eval_every", "1000", "--no_plot", "--save_every", "0", *task,
        *map(str, flags)]


def sft_command(a, name, init, data_file, epochs, *flags):
    """An r1/sft.py stage: the model init fine-tuned on data_file for `epochs` epochs."""
    return cli("r1.sft") + [
        "--init", init, "--data", data_file, "--out_dir", a.out_dir, "--run_name", f"r1/{name}",
        "--epochs", str(epochs), *map(str, flags)]


def reject_command(a, name, ckpt):
    """An r1/reject.py stage: ckpt's correct and readable samples to <stage>/data.jsonl."""
    d = os.path.join(a.out_dir, "r1")
    return cli("r1.reject") + [
        "--ckpt", ckpt, "--out", os.path.join(d, name, "data.jsonl"), "--questions",
        str(a.rs_questions), "--k", str(a.rs_k), "--keep_per_question", str(a.rs_keep),
        "--stats", os.path.join(d, name, "filters.json")]


def stage_commands(a):
    """stage -> (the command, the file it produces); (None, None) for a stage left out."""
    d = os.path.join(a.out_dir, "r1")
    ck = lambda s: os.path.join(d, s, "ckpt.pt")  # noqa: E731
    data = lambda s: os.path.join(d, s, "data.jsonl")  # noqa: E731
    # a train.py or r1/sft.py stage writes <stage>/ckpt.pt, an r1/reject.py stage <stage>/data.jsonl
    train = lambda name, *flags: (train_command(a, name, *flags), ck(name))  # noqa: E731
    sft = lambda name, *flags: (sft_command(a, name, *flags), ck(name))  # noqa: E731
    reject = lambda name, ckpt: (reject_command(a, name, ckpt), data(name))  # noqa: E731
    rl = ["--questions", a.questions, "--group_size", a.group_size]
    has_rm = a.rl2_rm_steps > 0
    rm = os.path.join(d, "rm", "rm.pt")
    rl2_last = (["--reward_model", rm, "--rewards", "accuracy:1,format:1,preference:1"]
                if has_rm else [])
    cold_data = cli("r1.cold_start") + [
        "--out", data("cold_data"), "--examples", str(a.cold_examples), "--seed", "1",
        "--max_tokens", str(MAX_NEW_TOKENS), "--task_seed", str(SEED)]
    rm_command = cli("r1.reward_model") + [
        "--init", ck("rs_sft"), "--out_dir", a.out_dir, "--run_name", "r1/rm",
        "--steps", str(a.rm_steps)]
    return {
        "base": train("base", "--rl_steps", 0, "--base_steps", a.base_steps),
        "r1zero": train("r1zero", "--init", ck("base"), "--rl_steps", a.rl_steps, *rl),
        "r1zero_lang": train("r1zero_lang", "--init", ck("base"), "--rl_steps", a.rl_steps, *rl,
                             "--rewards", LANGUAGE),
        "cold_data": (cold_data, data("cold_data")),
        "cold_sft": sft("cold_sft", ck("base"), data("cold_data"), a.cold_epochs),
        "reasoning_rl": train("reasoning_rl", "--init", ck("cold_sft"), "--rl_steps",
                              a.reasoning_rl_steps, *rl, "--rewards", LANGUAGE),
        "reasoning_rl_rules": train("reasoning_rl_rules", "--init", ck("cold_sft"), "--rl_steps",
                                    a.reasoning_rl_steps, *rl),
        "rs_data": reject("rs_data", ck("reasoning_rl")),
        "rs_sft": sft("rs_sft", ck("base"), data("rs_data"), a.rs_epochs),
        "rm": (rm_command, rm) if has_rm else (None, None),
        "rl2_rules": train("rl2_rules", "--init", ck("rs_sft"), "--rl_steps",
                           a.rl2_steps - a.rl2_rm_steps, *rl, "--temperature", 0.7),
        "rl2": train("rl2", "--init", ck("rl2_rules"), "--rl_steps", a.rl2_rm_steps, *rl,
                     "--temperature", 0.7, *rl2_last),
        "traces": reject("traces", ck("rl2")),
        "student_base": train("student_base", "--model", "nano", "--rl_steps", 0, "--base_steps",
                              a.base_steps),
        "student_grpo": train("student_grpo", "--init", ck("student_base"), "--rl_steps",
                              a.student_rl_steps, *rl),
        "student_sft": sft("student_sft", ck("student_base"), data("traces"),
                           a.student_sft_epochs),
        "student_sft_grpo": train("student_sft_grpo", "--init", ck("student_sft"), "--rl_steps",
                                  a.student_rl_steps, *rl),
    }


def eval_command(a, ckpt, out):
    """The table's numbers for one checkpoint: evaluation.py (train.py's evaluation) on the first
    --eval_problems held-out problems, k = --eval_samples at T 0.6, top-p 0.95, as JSON in out."""
    task = "bilingual" if a.lang_mix else "addition"  # the same held-out set (tasks/bilingual.py)
    return cli("evaluation") + [
        "--ckpt", ckpt, "--task", task, "--seed", str(SEED),
        "--eval_problems", str(a.eval_problems), "--eval_samples", str(a.eval_samples),
        "--eval_temperature", "0.6", "--eval_top_p", "0.95",
        "--max_new_tokens", str(MAX_NEW_TOKENS), "--json", out,
        "--log_samples", str(a.eval_problems)]


def chosen_stages(a):
    """The stages this call runs, in STAGES' order."""
    return [s for s in STAGES if not (s == "student_sft_grpo" and a.no_student_sft_grpo)
            and (a.lang_mix or s not in LANG_MIX)]


def pipeline(a, d, stages):
    """The stages as jobs (each needs the stages whose products its command reads), and one
    evaluation job per table row, which needs its stage."""
    commands = stage_commands(a)
    products = {s: commands[s][1] for s in stages if commands[s][0]}
    # a stage starts in an empty directory (train.py refuses to overwrite a run), which its
    # evaluation then shares
    jobs = [Job(s, cmd, product, needs=[t for t in products if t != s and products[t] in cmd],
                meta=os.path.join(d, s, "stage.json"), log=os.path.join(d, s, "output.txt"),
                fresh_dir=os.path.join(d, s))
            for s, (cmd, product) in commands.items() if s in products]
    # an evaluation's meta file: an eval.json that an older r1/pipeline.py wrote (another layout)
    # is measured again
    jobs += [Job(f"{s} eval", eval_command(a, products[s], os.path.join(d, s, "eval.json")),
                 os.path.join(d, s, "eval.json"), needs=[s],
                 meta=os.path.join(d, s, "eval_job.json"),
                 log=os.path.join(d, s, "eval_output.txt"))
             for s, *_ in ROWS if s in products]
    return jobs, commands


def kept_samples(job):
    """run_jobs' check: a data stage that kept no sample leaves nothing to fine-tune on."""
    if job.product.endswith(".jsonl") and os.path.getsize(job.product) == 0:
        return ("it kept no samples: train the stages before it longer (--rl_steps, --base_steps) "
                f"or sample more (--rs_k, --rs_questions), then python -m r1 --from {job.name}")
    return None


def trained_tokens(run_dir):
    """Completion tokens the run trained on, from its log.jsonl: GRPO rows x mean length, or SFT's
    tokens."""
    log = read_jsonl(os.path.join(run_dir, "log.jsonl"))[0]
    args = read_json(os.path.join(run_dir, "args.json"), "the stage's flags")
    if "group_size" in args:
        return sum(r["length"] * args["questions"] * args["group_size"]
                   for r in log if "length" in r)
    return sum(r.get("tokens", 0) for r in log)


def main():
    a = parse_args()
    # for cli()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    d = os.path.join(a.out_dir, "r1")
    stages = chosen_stages(a)
    jobs, commands = pipeline(a, d, stages)
    if a.start:  # its output goes; run_jobs re-runs it and every stage that reads it
        shutil.rmtree(os.path.join(d, a.start), ignore_errors=True)
    if not commands["rm"][0] and "rm" in stages:
        print("== rm: skipped (--rl2_rm_steps 0: stage 4 uses rules only)")
    t0 = time.time()
    run_jobs(jobs, a.jobs, check=kept_samples, say=lambda line: print(line, flush=True))
    print_table(a, d, commands, stages)
    if a.lang_mix:
        print_language(d, stages)
    print(f"\nthe pipeline: {(time.time() - t0) / 60:.1f} min this call, {a.jobs} job(s) at once "
          f"on {cores()} core(s)")
    compared = [(os.path.join(d, "r1zero"), "R1-Zero (from base)"),
                (os.path.join(d, "reasoning_rl"), "after cold-start SFT")]
    steps = max(a.rl_steps, a.reasoning_rl_steps)
    png = os.path.join(d, "cold_start_vs_r1zero.png")
    print(f"plot: {plot_runs(compared, ('reward_accuracy', 'format'), steps, png)}")


def parse_args():
    parser = Parser(prog="python -m r1",
                    description="The DeepSeek-R1 pipeline in miniature: every stage, then one "
                                "table.",
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out_dir", default="out", help="stages go to <out_dir>/r1/<stage>/")
    parser.add_argument("--from", dest="start", choices=STAGES, default=None,
                        help="re-run this stage and every stage that reads what it writes")
    parser.add_argument("--jobs", type=int, default=1,
                        help="stages (and evaluations) run at once, the cores shared among them "
                             "(r1/jobs.py: no gain on 2 cores); 1: one at a time, its output on "
                             "the terminal")
    parser.add_argument("--no_student_sft_grpo", action="store_true",
                        help="skip the optional student SFT + GRPO row")
    parser.add_argument("--lang_mix", action="store_true",
                        help="the bilingual toy (tasks/bilingual.py: R1-Zero mixes languages), the "
                             f"language reward's ablation rows, and sizes {LANG_MIX_SIZES} (flags "
                             "given win)")
    g = parser.add_argument_group("stage sizes")
    for k, (v, help) in SIZES.items():
        g.add_argument(f"--{k}", type=int, default=v, help=help)
    if parser.parse_known_args()[0].lang_mix:
        parser.set_defaults(**LANG_MIX_SIZES)
    a = parser.parse_args()
    stages = chosen_stages(a)
    parser.check([(v > 0 or k == "rl2_rm_steps", f"--{k} must be at least 1")
                  for k, v in vars(a).items() if k in SIZES]
                 + [(a.rl2_rm_steps < a.rl2_steps, "--rl2_rm_steps must be below --rl2_steps"),
                    (a.jobs >= 1, "--jobs must be at least 1"),
                    (a.start in (None, *stages), f"--from {a.start}: not a stage of this pipeline"
                     + (" (it is --lang_mix's)" if a.start in LANG_MIX else "")),
                    (a.start != "rm" or a.rl2_rm_steps,
                     "--from rm: --rl2_rm_steps 0 runs no reward model")])
    return a


def print_table(a, d, commands, stages):
    """One row per model, each measured alike (its stage's eval.json: evaluation.py's JSON)."""
    print(f"\nheld-out pass@1 over {a.eval_samples} samples (T 0.6, top-p 0.95), "
          f"{a.eval_problems} problems")
    print(f"| {'stage':<32} | pass@1 | format | language | length | wall s | trained tokens |")
    print(f"|{'-' * 34}|-------:|-------:|---------:|-------:|-------:|---------------:|")
    for stage, label, parts in ROWS:
        if stage not in stages:
            continue
        m = json.load(open(os.path.join(d, stage, "eval.json")))
        wall = sum(json.load(open(os.path.join(d, p, "stage.json")))["wall_s"] for p in parts
                   if os.path.isfile(os.path.join(d, p, "stage.json")))
        trained = [os.path.join(d, p) for p in parts
                   if p != "rm" and os.path.isfile(os.path.join(d, p, "log.jsonl"))]
        tokens = ("" if stage in ("base", "student_base")
                  else f"{sum(map(trained_tokens, trained)):,.0f}")
        if stage == "rl2" and not commands["rm"][0]:
            label = "stage-4 RL (T 0.7, rules only)"
        print(f"| {label:<32} | {m['accuracy']:6.3f} | {m['format']:6.3f} | "
              f"{m['language']:8.3f} | {m['length']:6.1f} | {wall:6.0f} | {tokens:>14} |")


def print_language(d, stages):
    """--lang_mix: the language reward's cost as the paper measures it (each ablation pair: the same
    RL with and without it), the rejection sampler's language filter, and one held-out question
    that R1-Zero answers in a mixed thought, as R1-Zero and each later stage answer it."""
    ev = {s: json.load(open(os.path.join(d, s, "eval.json"))) for s in stages
          if os.path.isfile(os.path.join(d, s, "eval.json"))}
    print("\nthe language reward's cost (the same RL, steps and seed, without it -> with it):")
    for name, without, with_ in ABLATIONS:
        off, on = ev[without], ev[with_]
        print(f"  {name:<13} pass@1 {off['accuracy']:.3f} -> {on['accuracy']:.3f} "
              f"({on['accuracy'] - off['accuracy']:+.3f}), "
              f"language {off['language']:.3f} -> {on['language']:.3f}")
    for s in ("rs_data", "traces"):
        if os.path.isfile(path := os.path.join(d, s, "filters.json")):
            f = json.load(open(path))
            print(f"rejection sampling ({s}): the language filter (eq. 7 >= 0.95) passes "
                  f"{f['language']:.3f} of {f['samples']} samples; {f['kept']} kept")
    mixed = [i for i, x in enumerate(ev["r1zero"].get("samples", []))
             if language_share(thought(x["completion"]) or "") not in (None, 1.0)]
    if not mixed:
        print("no held-out sample of R1-Zero mixes languages")
        return
    print(f"\n{len(mixed)} of R1-Zero's first {len(ev['r1zero']['samples'])} held-out samples "
          "mix; the first, at each stage:")
    for s in [s for s in ("base", "r1zero", "cold_sft", "reasoning_rl", "rs_sft", "rl2",
                          "student_sft") if s in ev]:
        x = ev[s]["samples"][mixed[0]]
        print(f"  {s:<13} {x['prompt']} | {x['completion'].strip()}  (right: {x['accuracy']:.0f})")


if __name__ == "__main__":
    main()

"""
Tool-integrated RL: the policy calls a Python interpreter in the middle of its thought (ToRL, Li
et al. 2025; ReTool; SimpleTIR), which the R1 paper names among what R1 cannot do.

A rollout becomes multi-turn. A row that closes a call in ToRL's format (template.TOOL),

    ```python                 written by the policy (sampled: loss, KL, ratio)
    print(347 * 589)
    ```
    ```output                 written by the interpreter (not sampled: tool_mask True,
    204383                    sampler_logp 0, no loss, no KL, no ratio; still context for
    ```                       every token after it)

pauses: its code runs in sandbox.run_python, the output (cut to --tool_max_chars, an error as its
last line) is encoded and appended, and decoding resumes for those rows, up to --max_tool_calls
calls per rollout; --max_new_tokens counts sampled and tool tokens together. `generate` is written
against an engine only (sample.generate's signature without the model) and returns a
sample.Samples with `tool_mask` and `tool_stats`; grpo_update trains on Samples.sampled_mask
(completion & ~tool_mask). Nothing pays for calling the tool: the reward is the task's. Left out:
stateful sessions, tools other than Python, overlapping a row's call with the other rows'
decoding; refused under --fsdp (`check`). The details, and the measured run: docs/tools.md.

    python train.py --task multiply         # the toy where the tool pays (tasks/multiply.py)
    python -m pytest tests/test_tools.py
"""

import time
from concurrent.futures import ThreadPoolExecutor

import torch

import dist
from engines import sandbox
from batch import pack
from sample import Samples
from template import TOOL


def add_tool_args(parser) -> list[str]:
    """The tool flags, one group (train.py, evaluation.py) -> their names."""
    g = parser.add_argument_group(
        "tool calls (engines/tools.py): a Python interpreter inside the thought")
    g.add_argument("--max_tool_calls", type=int, default=None,
                   help="most interpreter calls per rollout (0: no tools; default: the task's, 0 "
                        "for every task but multiply)")
    g.add_argument("--tool_max_chars", type=int, default=256,
                   help="a call's output is cut to this many characters")
    return [a.dest for a in g._group_actions]


def check(args, task) -> str | None:
    """Resolve --max_tool_calls (None: the task's) and check the tool flags and the sandbox, before
    any work -> one error line, or None."""
    if args.max_tool_calls is None:
        args.max_tool_calls = getattr(task, "max_tool_calls", 0)
    if args.max_tool_calls < 0 or args.tool_max_chars < 1:
        return ("--max_tool_calls cannot be negative (0: no tools) and --tool_max_chars must be at "
                "least 1")
    if not args.max_tool_calls:
        return None
    if getattr(args, "fsdp", False):
        return ("--max_tool_calls with --fsdp: every decode step is a collective there, and a "
                "row's tool call would leave the ranks out of step: use DDP (no --fsdp) or "
                "--max_tool_calls 0")
    try:
        sandbox.check()
    except sandbox.SandboxError as e:
        return f"--max_tool_calls needs the sandbox: {e}"
    return None


def context_error(longest_prompt, max_new_tokens, block) -> str | None:
    """A resumed batch decodes up to its rows' longest remaining budget from its longest prompt, so
    with tools the context must hold the longest prompt and twice --max_new_tokens."""
    if longest_prompt + 2 * max_new_tokens > block:
        return (f"--max_new_tokens {max_new_tokens}: with tool calls the longest prompt "
                f"({longest_prompt} tokens) plus twice it must fit the model's context of {block}: "
                f"use at most {(block - longest_prompt) // 2}")
    return None


# -----------------------------------------------------------------------------
# a call: the code a row ends on, run, and its output as text

def pending_code(text: str, fmt=TOOL):
    """The code of the call that `text` (what a row sampled since its last tool output) closes, or
    None: no close, or a close with no open before it (a fence of another kind)."""
    end = text.find(fmt["close"])  # the engine stops at the first one
    if end < 0:
        return None
    start = text.rfind(fmt["open"], 0, end + 1)
    return None if start < 0 else text[start + len(fmt["open"]):end]


def output_text(r: sandbox.Result, max_chars: int) -> tuple[str, bool]:
    """What the interpreter answers, cut to max_chars: stdout, and for a failed run its error as the
    last line (the last line of stderr, or what stopped it) -> (text, failed)."""
    if r.timed_out:
        error = "TimeoutError: the call ran past its time limit"
    elif r.returncode < 0:
        error = f"Killed: signal {-r.returncode} (a CPU, memory or process limit)"
    elif r.returncode:
        error = ([ln for ln in r.stderr.splitlines() if ln.strip()]
                 or [f"exit status {r.returncode}"])[-1]
    else:
        error = ""
    out = r.stdout.removesuffix("\n")
    if error:
        error = error[:max_chars]
        out = out[:max(0, max_chars - len(error) - 1)]
        return (out + "\n" + error if out else error), True
    return out[:max_chars], False


def run_calls(codes, max_chars, workers=4):
    """Run each program in the sandbox, in parallel, each with the sandbox's own limits -> a list of
    (output text, failed). Whatever a program does (loops, forks, floods, writes), it costs at most
    those limits; an error of the runner itself is that call's output, never the run's end."""
    def one(code):
        try:
            return output_text(sandbox.run_python(code), max_chars)
        except sandbox.SandboxError:
            # the isolation itself is gone: not the policy's doing (check() refused at start-up
            # otherwise)
            raise
        except Exception as e:  # e.g. out of file descriptors on a loaded machine
            return f"{type(e).__name__}: {e}"[:max_chars], True
    with ThreadPoolExecutor(max(1, min(workers, len(codes)))) as pool:
        return list(pool.map(one, codes))


# -----------------------------------------------------------------------------
# the multi-turn rollout

def assemble(turns):
    """One multi-turn row from its turns, in order: (ids, logps) for what the policy sampled, (ids,
    None) for a tool's output -> (ids, sampler log-probs, tool mask), three lists of one length:
    the log-prob is 0 and the mask True on every tool-output token."""
    ids, logps, tool = [], [], []
    for t, lp in turns:
        ids += t
        logps += [0.0] * len(t) if lp is None else lp
        tool += [lp is None] * len(t)
    return ids, logps, tool


def generate(gen, encode, prompts, G, max_new_tokens, stop_ids, pad, temperature=1.0, top_k=0,
             top_p=1.0, generator=None, all_done=None, stop_texts=(), decode=None, max_calls=1,
             max_chars=256, fmt=TOOL, workers=4) -> Samples:
    """gen's rollout (engine signature: sample.generate without the model), multi-turn: rows that
    close a call pause, the calls run, their outputs are appended as tool tokens and those rows
    resume, up to max_calls calls per row and max_new_tokens tokens (sampled + tool) per row.
    encode / decode: the tokenizer's. Returns Samples with tool_mask (B, C) and tool_stats."""
    if all_done is not None:
        raise ValueError("tool calls cannot run with a lockstep all_done (--fsdp): see tools.check")
    stops = tuple(stop_texts) + (fmt["close"],)
    sample = lambda ps, g, n: gen(ps, g, n, stop_ids, pad, temperature, top_k, top_p,  # noqa: E731
                                  generator, stop_texts=stops, decode=decode)
    out = sample(prompts, G, max_new_tokens)
    device = out.batch.rows.device
    rows = [p for p in prompts for _ in range(G)]  # each row's prompt
    B = len(rows)
    turns, used = [[] for _ in range(B)], [0] * B
    calls, errors, truncated, seconds = [0] * B, [0] * B, [False] * B, 0.0
    live = list(range(B))  # the rows `out` holds, in its order
    while True:
        pending, resume = [], []  # (row, code) of the calls to run; rows to resume as they are
        keep = out.batch.completion_mask.bool().cpu()
        for j, i in enumerate(live):
            ids = out.batch.completions[j][keep[j]].tolist()
            logps = out.sampler_logp[j][keep[j]].tolist()
            # a resumed batch decodes to its longest budget
            cut = len(ids) > max_new_tokens - used[i]
            ids, logps = ids[:max_new_tokens - used[i]], logps[:max_new_tokens - used[i]]
            turns[i].append((ids, logps))
            used[i] += len(ids)
            if cut or out.truncated[j]:
                truncated[i] = True
            elif not (ids and ids[-1] in stop_ids) and fmt["close"] in (text := decode(ids)):
                code = pending_code(text, fmt)
                if code is None or calls[i] >= max_calls:
                    resume.append(i)  # another fence, or past the calls allowed: ignored (ToRL)
                else:
                    pending.append((i, code))
        if not pending and not resume:
            break
        t0 = time.perf_counter()
        results = run_calls([code for _, code in pending], max_chars, workers) if pending else []
        seconds += time.perf_counter() - t0
        live = [i for i in resume if used[i] < max_new_tokens]
        for (i, _), (text, failed) in zip(pending, results):
            ids = encode(fmt["output"].format(text))
            calls[i], errors[i] = calls[i] + 1, errors[i] + failed
            if len(ids) >= max_new_tokens - used[i]:  # the output fills the length limit
                ids, truncated[i] = ids[:max_new_tokens - used[i]], True
            else:
                live.append(i)
            turns[i].append((ids, None))
            used[i] += len(ids)
        if not live:
            break
        live.sort()  # the rows in order, as the engine returns them
        out = sample([rows[i] + assemble(turns[i])[0] for i in live], 1,
                     max(max_new_tokens - used[i] for i in live))
    return rollout_of(rows, [assemble(t) for t in turns], pad, device, truncated,
                      dict(calls=torch.tensor(calls), errors=torch.tensor(errors), seconds=seconds))


def rollout_of(rows, assembled, pad, device, truncated, stats) -> Samples:
    """The Samples of multi-turn rows: batch.py's layout (the same prefix and prompt width as the
    engine's), the sampler's log-probs (0 on tool tokens and padding) and the tool mask."""
    batch = pack(rows, [ids for ids, _, _ in assembled], pad, device)
    C = batch.completions.size(1)
    logp = torch.zeros(len(rows), C, device=device)
    tool = torch.zeros(len(rows), C, dtype=torch.bool, device=device)
    for i, (ids, lp, tm) in enumerate(assembled):
        logp[i, :len(ids)] = torch.tensor(lp, dtype=torch.float)
        tool[i, :len(ids)] = torch.tensor(tm, dtype=torch.bool)
    return Samples(batch, logp, torch.tensor(truncated, device=device), tool_mask=tool,
                   tool_stats=stats)


def engine(gen, tok, args):
    """gen (an engine) with tool calls: the same signature, --max_tool_calls and --tool_max_chars
    applied."""
    def with_tools(prompts, G, max_new_tokens, stop_ids, pad, temperature=1.0, top_k=0, top_p=1.0,
                   generator=None, all_done=None, stop_texts=(), decode=None):
        return generate(gen, tok.encode, prompts, G, max_new_tokens, stop_ids, pad, temperature,
                        top_k, top_p, generator, all_done, stop_texts, decode,
                        args.max_tool_calls, args.tool_max_chars)
    return with_tools


# -----------------------------------------------------------------------------
# what is logged

def metrics(outs, accuracy, prefix="") -> dict:
    """The tool metrics of rollouts (one Samples or several, this rank's) and their accuracy (every
    rank's rows, in rank order): the share that calls, calls per rollout, failed calls (per call),
    the calls' seconds (summed over this rank's rollouts, the max over ranks), tool tokens per
    rollout, and the accuracy of rollouts that call against those that do not. {} without tools."""
    outs = [outs] if isinstance(outs, Samples) else outs
    if not outs or outs[0].tool_stats is None:
        return {}
    calls = dist.gather_rows(torch.cat([o.tool_stats["calls"] for o in outs]).float())
    errors = dist.gather_rows(torch.cat([o.tool_stats["errors"] for o in outs]).float())
    tool_tokens = dist.gather_rows(torch.cat([o.tool_mask.sum(1).cpu() for o in outs]).float())
    seconds = dist.gather_rows(torch.tensor([sum(o.tool_stats["seconds"] for o in outs)]))
    mean = lambda x: x.mean().item() if x.numel() else float("nan")  # noqa: E731
    called = calls > 0
    return {f"{prefix}tool_share": called.float().mean().item(),
            f"{prefix}tool_calls": calls.mean().item(),
            f"{prefix}tool_errors": (errors.sum() / calls.sum().clamp(min=1)).item(),
            f"{prefix}tool_s": seconds.max().item(),
            f"{prefix}tool_tokens": tool_tokens.mean().item(),
            f"{prefix}acc_tool": mean(accuracy[called]),
            f"{prefix}acc_no_tool": mean(accuracy[~called])}


def describe(m, prefix="") -> str:
    """The tool metrics as a short piece of a log line ('' without tools)."""
    if f"{prefix}tool_share" not in m:
        return ""
    return (f" | tool {m[f'{prefix}tool_share']:.2f} x{m[f'{prefix}tool_calls']:.2f} "
            f"err {m[f'{prefix}tool_errors']:.2f} "
            f"acc {m[f'{prefix}acc_tool']:.2f}/{m[f'{prefix}acc_no_tool']:.2f} "
            f"{m[f'{prefix}tool_s']:.1f}s")

"""
reasoning-gym's datasets as tasks (`--task rg:NAME`): chain_sum, basic_arithmetic, gsm_symbolic,
countdown and ~100 more procedural tasks the RLVR community trains on, each generated from a seed
and scored by its own `score_answer`. --rg_config sets the dataset's config dataclass as key=value
pairs, each value read as the field is typed (int, float, bool, str, a Literal's choice, a list
or tuple as comma-separated items); `size` is the training set's size (default TRAIN_SIZE).

The held-out set is the first --n_test distinct questions of the dataset drawn with seed S (from
--seed), training draws indices of the one drawn with seed S + 2^30 (most datasets seed entry i
with S + i, so the two streams never meet) and, as tasks/generated.py does, never a held-out
question. A problem is the dataset's question as the prompt, its `answer`, and the entry itself
(`rg_entry`) with the dataset's key (`rg_task`), so that rg_accuracy can call its score_answer on
the <answer> block (rewards.extract_answer). rg_accuracy, the dataset's score (partial credit
included: gsm_symbolic pays 0.01 for any number), is the default reward with format; accuracy
(`correct`: pass@1, pass@k, cons@k) is rg_solved, a score of 1.

reasoning-gym is optional: imported only for an rg: task. Left out: configs that are not
key=value (composite's nested `datasets`), reasoning-gym's curricula, and a time limit on a
scorer (they run in-process, as reasoning-gym runs them).

    python train.py --init hf:DIR --task rg:chain_sum --rg_config "min_terms=2,max_terms=3"
    python -m pytest tests/test_rg_tasks.py
"""

import dataclasses
import difflib
import json
import random
import re
import types
import typing

from rewards import extract_answer, plain_number

TRAIN_SIZE = 10_000  # the training set's size (--rg_config size=N): indices drawn with replacement
TRAIN_OFFSET = 2 ** 30  # the training seed is the held-out one plus this
_SCORERS: dict = {}  # rg_task key -> the dataset that scores its entries


def reasoning_gym_datasets() -> dict:
    """reasoning-gym's registry: name -> (dataset class, config dataclass)."""
    try:
        # optional, and ~2 s to import: only an rg: task needs it
        from reasoning_gym.factory import DATASETS
    except ImportError:
        raise ValueError("--task rg:NAME needs reasoning-gym: pip install reasoning-gym") from None
    return DATASETS


def dataset_config(name: str):
    """The config dataclass of reasoning-gym's dataset `name`; ValueError naming close ones."""
    datasets = reasoning_gym_datasets()
    if not name:
        raise ValueError("--task rg: give a reasoning-gym dataset's name, e.g. rg:chain_sum")
    if name not in datasets:
        close = difflib.get_close_matches(name, list(datasets), n=4, cutoff=0.6)
        hint = (f"close names: {', '.join(close)}" if close
                else f"e.g. {', '.join(sorted(datasets)[:4])}")
        raise ValueError(f"--task rg:{name}: reasoning-gym has no dataset {name!r}; {hint} "
                         f"({len(datasets)} in reasoning_gym.factory.DATASETS)")
    return datasets[name][1]


# --- --rg_config: key=value pairs, typed as the config dataclass types them ---

PAIRS = re.compile(r",\s*(?=[A-Za-z_]\w*\s*=)")  # a comma before `key=`; others are in a value


def describe(tp) -> str:
    """A config field's type in words, for an error."""
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    names = {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a str"}
    return names.get(tp) or str(tp).replace("typing.", "")


def convert(text: str, tp):
    """text as type tp; ValueError if it is not one, TypeError if tp is not settable so."""
    origin, targs = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        word = text.strip().lower()
        if word in ("true", "false", "1", "0", "yes", "no"):
            return word in ("true", "1", "yes")
        raise ValueError(text)
    if tp in (int, float):
        return tp(text.strip())
    if tp in (str, typing.Any):
        return text
    if origin is typing.Literal:
        match = [a for a in targs if str(a) == text.strip()]
        if not match:
            raise ValueError(text)
        return match[0]
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() == "none" and type(None) in targs:
            return None
        for a in targs:
            if a is not type(None):
                try:
                    return convert(text, a)
                except ValueError:
                    pass
        raise ValueError(text)
    if (origin or tp) in (list, tuple):
        item = targs[0] if targs else str
        items = [convert(x.strip(), item) for x in text.split(",")]
        return tuple(items) if (origin or tp) is tuple else items
    raise TypeError(tp)


def parse_config(name: str, text: str) -> tuple[dict, int]:
    """--rg_config's text -> (the dataset's config values, the training set's size)."""
    cls = dataset_config(name)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: the raw ones
        hints = {}
    fields = {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls)}
    takes = ", ".join(k for k in fields if k != "seed")
    config, size = {}, TRAIN_SIZE
    for pair in PAIRS.split(text.strip()) if text.strip() else []:
        key, sep, value = (s.strip() for s in pair.partition("="))
        where = f"--rg_config {pair.strip()!r}"
        if not sep or not key:
            raise ValueError(f"{where}: give key=value pairs, e.g. "
                             f"--rg_config \"min_terms=2,max_terms=3\"")
        if key == "seed":
            raise ValueError(f"{where}: the seeds come from --seed (held-out and training apart)")
        if key not in fields:
            raise ValueError(f"{where}: rg:{name} takes no {key!r}; it takes {takes}")
        try:
            parsed = convert(value, fields[key])
        except ValueError:
            raise ValueError(f"{where}: rg:{name}'s {key} is {describe(fields[key])}, "
                             f"not {value!r}") from None
        except TypeError:
            raise ValueError(f"{where}: rg:{name}'s {key} ({describe(fields[key])}) cannot be "
                             f"set from --rg_config") from None
        if key == "size":
            if not 1 <= parsed <= TRAIN_OFFSET:
                raise ValueError(f"{where}: the training set's size must be in 1..2^30")
            size = parsed
        else:
            config[key] = parsed
    return config, size


# --- the rewards: the dataset's own scorer on the <answer> block ---

def scorer(key: str):
    """The dataset of an rg_task key: the one its task made, or (a problem from elsewhere) one
    made from the key's name and config."""
    if key not in _SCORERS:
        from reasoning_gym import create_dataset  # optional: see reasoning_gym_datasets
        spec = json.loads(key)
        _SCORERS[key] = create_dataset(spec["name"], seed=0, size=1, **spec["config"])
    return _SCORERS[key]


def score(dataset, answer, entry) -> float:
    """The dataset's score_answer; a scorer's failure on untrusted output scores 0."""
    try:
        return float(dataset.score_answer(answer=answer, entry=entry))
    except Exception:
        return 0.0


def rg_accuracy(prompts, completions, rg_entry, rg_task, **fields) -> list[float]:
    """The dataset's score_answer of the final answer (rewards.extract_answer: the one <answer>
    block, its last \\boxed{} if any; None, which scores 0, for none or several)."""
    return [score(scorer(k), extract_answer(c), e)
            for c, e, k in zip(completions, rg_entry, rg_task)]


def rg_solved(prompts, completions, **fields) -> list[float]:
    """1.0 where the dataset's score is full (1): the accuracy evaluation reports, as pass@k and
    cons@k count it."""
    return [float(s >= 1.0) for s in rg_accuracy(prompts, completions, **fields)]


def normalised(answer: str):
    """Whitespace collapsed; a plain number as its value ('1,000' = '1000.0')."""
    text = " ".join(answer.split())
    value = plain_number(text)
    return text if value is None else value


class RGTask:
    """A reasoning-gym dataset by name: held-out and training sets from two seeds, the dataset's
    scorer as the accuracy reward. No toy base corpus: start from a pretrained model (--init)."""

    rewards, correct = "tasks.rg.rg_accuracy:1,format:1", staticmethod(rg_solved)
    base_flags: list[str] = []
    has_corpus = False

    def __init__(self, name: str, config_text: str = "", n_test: int = 200, seed: int = 0,
                 log=print):
        self.name = name
        config, self.train_size = parse_config(name, config_text)
        self.key = json.dumps({"name": name, "config": config}, sort_keys=True)
        test_seed = seed % TRAIN_OFFSET
        test_data = self.make(config, test_seed, max(2 * n_test, n_test + 100), config_text)
        self.train_data = self.make(config, test_seed + TRAIN_OFFSET, self.train_size,
                                    config_text)
        _SCORERS[self.key] = self.train_data
        self.test_set, self._test_prompts = [], set()
        for i in range(len(test_data)):
            if len(self.test_set) == n_test:
                break
            entry = test_data[i]
            if entry["question"] not in self._test_prompts:
                self._test_prompts.add(entry["question"])
                self.test_set.append(self.problem(entry))
        if len(self.test_set) < n_test:
            raise ValueError(f"n_test={n_test}: rg:{name} gave {len(self.test_set)} distinct "
                             f"questions in {len(test_data)} draws: lower it or widen --rg_config")
        log(f"task rg:{name}: {len(self.test_set)} held-out questions (seed {test_seed}), "
            f"training from {self.train_size} (seed {test_seed + TRAIN_OFFSET}), config {config}")

    @classmethod
    def from_args(cls, args, log=print):
        return cls(args.task.removeprefix("rg:"), args.rg_config, args.n_test, args.seed, log=log)

    def make(self, config: dict, seed: int, size: int, text: str):
        """reasoning-gym's create_dataset; the config's own checks as one line."""
        from reasoning_gym import create_dataset  # optional: see reasoning_gym_datasets
        try:
            return create_dataset(self.name, seed=seed, size=size, **config)
        except (AssertionError, ValueError) as e:
            why = (str(e).splitlines() or [type(e).__name__])[0]
            raise ValueError(f"--task rg:{self.name} --rg_config {text!r}: the dataset rejects "
                             f"it: {why}") from None

    def problem(self, entry: dict) -> dict:
        p = {"prompt": entry["question"], "rg_entry": entry, "rg_task": self.key}
        if entry.get("answer") is not None:
            p["answer"] = str(entry["answer"])
        return p

    def train_problems(self, rng: random.Random, n: int) -> list[dict]:
        """n problems drawn from the training set (with replacement), none held out."""
        out = []
        for _ in range(100 * n + 1000):
            if len(out) == n:
                return out
            entry = self.train_data[rng.randrange(self.train_size)]
            if entry["question"] not in self._test_prompts:
                out.append(self.problem(entry))
        raise ValueError(f"rg:{self.name}: nearly every training question drawn is a held-out "
                         f"one: widen --rg_config or lower n_test")

    def same(self, a: str, b: str, p: dict) -> bool:
        """One vote: the same normalised text, or both scored fully by the dataset."""
        if normalised(a) == normalised(b):
            return True
        ds = scorer(p["rg_task"])
        return score(ds, a, p["rg_entry"]) >= 1.0 and score(ds, b, p["rg_entry"]) >= 1.0

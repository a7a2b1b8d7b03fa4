"""The base model shipped in weights/: the default flags find it on any machine, a run starts from
it (read in place) and --no_cache trains it again, and it is what this code trains: its recorded
curriculum digest and first losses equal this code's, and its loss on the last step's documents
is the one recorded. When one of these fails after a change to the base stage, its model, its
tokenizer or its task's corpus, train it again (a fresh directory: one file in its cache):

    python train.py --rl_steps 0 --no_cache --base_dtype fp32 --out_dir /tmp/ship
    git rm weights/base-*.pt && cp /tmp/ship/cache/base-*.pt weights/   # then refresh the figures

    python -m pytest -q tests/test_shipped_base.py
"""

import copy
import glob
import os

import pytest
import torch

import pretrain
from checkpoint import load_checkpoint, read_header, starting_point
from tasks import make_task
from train_args import parse_args

SHIPPED_FILES = sorted(glob.glob(os.path.join(pretrain.SHIPPED, "base-*.pt")))


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    """The default flags' args (a CPU run), tokenizer and task, and the shipped model's record."""
    assert len(SHIPPED_FILES) == 1, SHIPPED_FILES
    out = tmp_path_factory.mktemp("out")
    args = parse_args(["--device", "cpu", "--out_dir", str(out)])
    tok, _ = starting_point(args)
    return args, tok, make_task(args, log=lambda s: None), read_header(SHIPPED_FILES[0])["recipe"]


def with_flags(args, **changes):
    """A copy of args with some flags changed."""
    args = copy.copy(args)
    vars(args).update(changes)
    return args


def test_the_default_flags_find_the_shipped_base(default):
    args, _, _, record = default
    assert pretrain.shipped_path(args) == SHIPPED_FILES[0]  # --base_dtype auto took its precision
    assert record["flags"] == pretrain.base_flags(args) and record["steps"] == args.base_steps
    assert pretrain.saved_base(args) == SHIPPED_FILES[0]
    # any other base flag is another base model: trained, not the shipped one
    assert pretrain.saved_base(with_flags(args, base_steps=args.base_steps - 1)) is None
    assert pretrain.saved_base(with_flags(args, seed=args.seed + 1)) is None


def test_auto_precision_is_the_shipped_models_even_where_bf16_would_pay(monkeypatch, tmp_path):
    """On a CPU that multiplies bf16 natively (its flags monkeypatched: this machine has one set),
    --base_dtype auto still picks the shipped model's fp32 for the default flags, and bf16 for a
    base model that is not shipped."""
    monkeypatch.setattr(pretrain, "native_bf16", lambda device: True)
    flags = ["--device", "cpu", "--out_dir", str(tmp_path)]
    shipped = read_header(SHIPPED_FILES[0])["recipe"]["flags"]["base_dtype"]
    assert shipped == "fp32" and parse_args(flags).base_dtype == shipped
    assert parse_args(flags + ["--seed", "1"]).base_dtype == "bf16"
    assert parse_args(flags + ["--base_dtype", "bf16"]).base_dtype == "bf16"


def test_the_shipped_base_is_what_this_code_trains(default):
    """The curriculum's documents, digested, and the first steps' losses from the seed, against
    the shipped model's record; and the shipped model's loss on the last step's documents (the
    templated ones, through the shared prefix) against the loss recorded when it was trained.
    Losses to rounding: another CPU rounds otherwise."""
    args, tok, task, record = default
    _, mine = pretrain.pretrain(args, tok, task, "cpu", log=lambda s: None,
                                steps=pretrain.FINGERPRINT)
    assert mine["documents"] == record["documents"], "the corpus changed: train the base again"
    torch.testing.assert_close(torch.tensor(mine["first_losses"]),
                               torch.tensor(record["first_losses"]), rtol=1e-4, atol=0)
    shipped = load_checkpoint(SHIPPED_FILES[0])[0]
    last = list(pretrain.curriculum(args, task))[-1]
    with torch.no_grad():
        final = pretrain.lm_loss(shipped, tok, last, "cpu").item()
    torch.testing.assert_close(final, record["final_loss"], rtol=1e-4, atol=0)
    assert final < record["first_losses"][0] / 10  # a trained model


def test_a_run_starts_from_the_shipped_base_and_no_cache_trains_it(default, tmp_path):
    args, tok, task, _ = default
    args, lines = with_flags(args, out_dir=str(tmp_path)), []
    model = pretrain.base_model(args, tok, task, "cpu", log=lines.append)
    shown = os.path.relpath(SHIPPED_FILES[0])
    assert lines[0].startswith(f"base model: the one shipped for these flags ({shown}: 450 steps")
    assert not os.path.exists(pretrain.cache_path(args))  # read in place: nothing written
    shipped = load_checkpoint(SHIPPED_FILES[0])[0].state_dict()
    assert all(torch.equal(w, shipped[k]) for k, w in model.state_dict().items())

    class Stop:  # a stop request already made: the training path stops at its first step
        name = "SIGTERM"
    with pytest.raises(SystemExit, match="stopped by SIGTERM in the base stage at step 0"):
        pretrain.base_model(with_flags(args, no_cache=True), tok, task, "cpu",
                            log=lambda s: None, stop=Stop())


def test_a_base_model_trained_into_the_cache_comes_before_the_shipped_one(default, tmp_path):
    """A base model the run's cache holds for these flags (trained there by --no_cache) is the one
    later runs reuse, not the shipped one."""
    args, tok, task, _ = default
    args = with_flags(args, out_dir=str(tmp_path))
    os.makedirs(os.path.dirname(pretrain.cache_path(args)))
    with open(SHIPPED_FILES[0], "rb") as f, open(pretrain.cache_path(args), "wb") as g:
        g.write(f.read())
    assert pretrain.saved_base(args) == pretrain.cache_path(args)
    lines = []
    pretrain.base_model(args, tok, task, "cpu", log=lines.append)
    assert lines == [f"base model: reusing {pretrain.cache_path(args)}"]

"""The base model shipped in weights/: the default flags find it on any machine, a run starts from
it (copied into its cache) and --no_cache trains it again, and it is what this code trains: its
recorded curriculum digest and first losses equal this code's. When one of these fails after a
change to the base stage, its model, its tokenizer or its task's corpus, train it again:

    python train.py --rl_steps 0 --no_cache --out_dir /tmp/ship
    cp /tmp/ship/cache/base-*.pt weights/       # (removing the old one), then refresh the figures

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

SHIPPED = sorted(glob.glob(os.path.join(pretrain.SHIPPED, "base-*.pt")))


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    """The default flags' args (a CPU run), tokenizer and task, and the shipped model's record."""
    out = tmp_path_factory.mktemp("out")
    args = parse_args(["--device", "cpu", "--out_dir", str(out)])
    tok, _ = starting_point(args)
    return args, tok, make_task(args, log=lambda s: None), read_header(SHIPPED[0])["recipe"]


def test_the_default_flags_find_the_shipped_base(default):
    args, _, _, record = default
    assert len(SHIPPED) == 1, SHIPPED
    assert pretrain.shipped_path(args) == SHIPPED[0]  # --base_dtype auto took its precision
    assert record["flags"] == pretrain.base_flags(args)
    assert pretrain.cached_base(args) == SHIPPED[0]
    assert pretrain.cached_base(with_flags(args, no_cache=True)) is None
    # any other base flag is another base model: trained, not the shipped one
    assert pretrain.cached_base(with_flags(args, base_steps=args.base_steps - 1)) is None
    assert record["steps"] == args.base_steps


def test_auto_precision_is_the_shipped_models_even_where_bf16_would_pay(monkeypatch, tmp_path):
    """On a CPU that multiplies bf16 natively (its flags monkeypatched: this machine has one set),
    --base_dtype auto still picks the shipped model's fp32 for the default flags, and bf16 for a
    base model that is not shipped."""
    monkeypatch.setattr(pretrain, "native_bf16", lambda device: True)
    flags = ["--device", "cpu", "--out_dir", str(tmp_path)]
    assert parse_args(flags).base_dtype == read_header(SHIPPED[0])["recipe"]["flags"]["base_dtype"]
    assert parse_args(flags + ["--seed", "1"]).base_dtype == "bf16"
    assert parse_args(flags + ["--base_dtype", "bf16"]).base_dtype == "bf16"


def with_flags(args, **changes):
    """A copy of args with some flags changed."""
    args = copy.copy(args)
    vars(args).update(changes)
    return args


def test_the_shipped_base_is_what_this_code_trains(default):
    """The curriculum's documents, digested, and the first steps' losses from the seed, against
    the shipped model's record (the losses to rounding: another CPU rounds otherwise)."""
    args, tok, task, record = default
    model, mine = pretrain.pretrain(args, tok, task, "cpu", log=lambda s: None,
                                    steps=pretrain.FINGERPRINT)
    assert mine["documents"] == record["documents"], "the corpus changed: train the base again"
    torch.testing.assert_close(torch.tensor(mine["first_losses"]),
                               torch.tensor(record["first_losses"]), rtol=1e-4, atol=0)
    # and a trained model: far below the first loss on the last phase's documents
    shipped = load_checkpoint(SHIPPED[0])[0]
    packs = list(pretrain.curriculum(args, task))[-1]
    with torch.no_grad():
        assert pretrain.lm_loss(shipped, tok, packs, "cpu").item() < record["first_losses"][0] / 10


def test_a_run_starts_from_the_shipped_base_and_no_cache_trains_it(default, tmp_path):
    args, tok, task, _ = default
    args = with_flags(args, out_dir=str(tmp_path))
    lines = []
    model = pretrain.base_model(args, tok, task, "cpu", log=lines.append)
    assert "the one shipped for these flags" in lines[0], lines
    path = pretrain.cache_path(args)
    with open(path, "rb") as a, open(SHIPPED[0], "rb") as b:
        assert a.read() == b.read()  # copied whole into the run's cache
    shipped = load_checkpoint(SHIPPED[0])[0].state_dict()
    assert all(torch.equal(w, shipped[k]) for k, w in model.state_dict().items())
    lines.clear()
    pretrain.base_model(args, tok, task, "cpu", log=lines.append)
    assert lines == [f"base model: reusing {path}"]

    class Stop:  # a stop request already made: the training path stops at its first step
        name = "SIGTERM"
    with pytest.raises(SystemExit, match="stopped by SIGTERM in the base stage at step 0"):
        pretrain.base_model(with_flags(args, no_cache=True), tok, task, "cpu",
                            log=lambda s: None, stop=Stop())

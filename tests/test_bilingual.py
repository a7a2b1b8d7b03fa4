"""The bilingual toy (tasks/bilingual.py): its corpus mixes languages where, and as often as, it says;
eq. 7's detector and the reflection detector read its mixed thoughts; the aha tokenizer carries them."""
import json
import random
import re

import pytest

from r1 import pipeline as r1
from tasks.bilingual import RECHECK, to_chinese
from reflection import reflects
from rewards import CJK, language_reward, language_share
from tasks import AdditionTask, BilingualTask
from tokenizer import get_tokenizer

MIXED = ("Compute 47 + 38 in columns. 7+8=15, so 5. 4+3=7, so 75. Wait, let me recheck. "
         "7+8=15, 得 5, 进 1. 4+3+1=8, 得 85. 所以 85, 不是 75.")


def numbers(text):
    return re.findall(r"\d+(?:[+=]\d+)*", text)


def test_the_recheck_is_translated_and_nothing_else():
    task = AdditionTask(min_digits=1, max_digits=4)
    assert to_chinese(task.rechecked({"a": 47, "b": 38, "answer": "85"})) == MIXED
    for p in task.train_problems(random.Random(0), 300):
        en, zh = task.rechecked(p), to_chinese(task.rechecked(p))
        first, recheck = zh.split(RECHECK)
        assert first == en.split(RECHECK)[0]
        assert not CJK.search(first) and not re.search(r"[A-Za-z]", recheck)  # English, then Chinese only
        assert numbers(zh) == numbers(en)  # every column, carry and verdict kept
        assert to_chinese(task.careful(p)) == task.careful(p)  # no recheck: nothing to translate


def test_corpus_mixes_only_the_rechecks_in_their_share():
    task = BilingualTask(seed=0, zh_share=0.8)
    docs = task.corpus(4000, seed=0)
    assert docs == task.corpus(4000, seed=0)
    recheck = [c for _, c in docs if "Wait, let me recheck." in c]
    mixed = [c for _, c in docs if CJK.search(c)]
    assert set(mixed) <= set(recheck)  # guesses and first attempts stay English
    assert abs(len(mixed) / len(recheck) - 0.8) < 0.05
    assert abs(len(recheck) / len(docs) - task.style_weights[2]) < 0.02  # the addition toy's styles
    book = task.textbook(2000, seed=0)
    assert [q for q, _ in book] == [q for q, _ in AdditionTask(seed=0).textbook(2000, seed=0)]
    assert abs(sum(bool(CJK.search(c)) for _, c in book) / len(book) - 0.8) < 0.04
    assert not any(CJK.search(c) for _, c in BilingualTask(seed=0, zh_share=0).textbook(500, seed=0))
    # the cold start's and the reward model's readable solution is the English one
    p = task.train_problems(random.Random(1), 1)[0]
    assert task.solution(p) == AdditionTask().solution(p)
    with pytest.raises(ValueError, match="zh_share"):
        BilingualTask(zh_share=1.5)


def test_eq7_and_reflection_read_a_mixed_thought():
    # by hand: 9 English words (Compute in columns so so Wait let me recheck), 7 CJK characters
    assert language_share(MIXED, "en") == pytest.approx(9 / 16)
    assert language_share(MIXED, "zh") == pytest.approx(7 / 16)
    english = AdditionTask().rechecked({"a": 47, "b": 38, "answer": "85"})
    assert language_reward(None, [f"<think> {t} </think> <answer> 85 </answer>" for t in (MIXED, english)]) == [
        pytest.approx(9 / 16), 1.0]
    assert reflects(f"<think> {MIXED} </think>") and reflects(f"<think> {english} </think>")


def test_aha_tokenizer_round_trips_the_mixed_corpus():
    # aha is byte-level: Chinese it never saw encodes byte by byte (3 tokens a character) and decodes back
    tok = get_tokenizer("aha")
    for q, c in BilingualTask(seed=0).textbook(50, seed=0):
        assert tok.decode(tok.encode(q + c)) == q + c
    ids = tok.encode(" 得")
    assert len(ids) == 1 + len("得".encode()) and tok.decode(ids) == " 得"


def test_r1_lang_mix_prints_the_ablation_the_filter_and_the_mixed_sample(tmp_path, capsys):
    en = f"<think> {AdditionTask().rechecked({'a': 47, 'b': 38, 'answer': '85'})} </think> <answer> 85 </answer>"
    mixed = f"<think> {MIXED} </think> <answer> 85 </answer>"
    evals = {"base": (0.2, 0.5, en), "r1zero": (0.9, 0.6, mixed), "r1zero_lang": (0.85, 0.99, en),
             "reasoning_rl": (0.97, 1.0, en), "reasoning_rl_rules": (0.99, 0.98, en)}
    for s, (acc, lang, text) in evals.items():
        (tmp_path / s).mkdir()
        sample = {"prompt": "Compute 47 + 38", "completion": text, "accuracy": 1.0}
        (tmp_path / s / "eval.json").write_text(json.dumps({"accuracy": acc, "language": lang, "samples": [sample]}))
    (tmp_path / "rs_data").mkdir()
    (tmp_path / "rs_data" / "filters.json").write_text(json.dumps({"language": 0.75, "samples": 600, "kept": 140}))
    r1.print_language(str(tmp_path), list(evals) + ["rs_data"])
    out = capsys.readouterr().out
    assert "R1-Zero       pass@1 0.900 -> 0.850 (-0.050), language 0.600 -> 0.990" in out  # without -> with
    assert "reasoning RL  pass@1 0.990 -> 0.970 (-0.020), language 0.980 -> 1.000" in out
    assert "passes 0.750 of 600 samples; 140 kept" in out
    assert "1 of R1-Zero's first 1 held-out samples mix" in out and f"r1zero        Compute 47 + 38 | {mixed}" in out

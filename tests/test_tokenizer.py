import base64

import pytest

from tokenizer import SPECIALS, Tokenizer, get_tokenizer, named_encoding


def test_byte_roundtrip_and_specials():
    tok = get_tokenizer("byte")
    text = "A conversation ... <think> 7+5=12, so 2 </think> <answer> 12 </answer> naïve 数学 ✓"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.vocab_size == 256 + len(SPECIALS)
    # each tag is one token; plain bytes map to themselves
    assert ids.count(tok.think) == 1 and ids.count(tok.end_answer) == 1
    assert tok.encode("A") == [65]
    assert tok.decode([65, tok.pad, 66]) == "AB"  # padding never shows in text


def write_ranks(path, tokens):
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))


def test_named_encoding_from_local_file(tmp_path):
    # a miniature cl100k_base.tiktoken: the 256 bytes plus one merge, "ab"
    write_ranks(tmp_path / "cl100k_base.tiktoken", [bytes([b]) for b in range(256)] + [b"ab"])
    # the real file is checked against tiktoken's hash; this miniature cannot pass that check
    with pytest.raises(ValueError, match="hash mismatch"):
        get_tokenizer("cl100k_base", str(tmp_path))
    tok = Tokenizer(named_encoding("cl100k_base", str(tmp_path), check_hash=False))
    ids = tok.encode("ab <think>")
    assert ids[0] == 256  # the merge applied
    assert tok.decode(ids) == "ab <think>"
    assert len({tok.eot, tok.think, tok.end_think, tok.answer, tok.end_answer, tok.pad}) == 6


def test_named_encoding_missing_file_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="o200k_base.tiktoken"):
        get_tokenizer("o200k_base", str(tmp_path))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer("nope")


def test_hf_tokenizer_name_needs_a_directory(tmp_path):
    # "hf:DIR" is a Hugging Face directory's tokenizer.json (interop/hf.py; converted and checked in tests/test_hf.py)
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found: .*nothere"):
        get_tokenizer(f"hf:{tmp_path}/nothere")


def test_train_bpe_merges_the_most_frequent_pair_each_time():
    # oracle: re-count the pairs from scratch after each merge, with the merges so far applied naively
    import re
    from collections import Counter

    from tokenizer import AHA_PATTERN, train_bpe
    texts = ["low lower lowest", "newer newest wider", "the the the 12+34=46"] * 3
    ranks = train_bpe(texts, 256 + 12)
    merges = sorted((i, t) for t, i in ranks.items() if i >= 256)
    words = Counter(p.encode() for t in texts for p in re.findall(AHA_PATTERN, t))
    seqs = {w: [bytes([b]) for b in w] for w in words}
    for _, token in merges:
        pairs = Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        top = max(pairs.values())
        assert any(a + b == token and n == top for (a, b), n in pairs.items()), token
        for s in seqs.values():  # apply it
            i = 0
            while i < len(s) - 1:
                if s[i] + s[i + 1] == token:
                    s[i:i + 2] = [token]
                i += 1
    assert all(sum(b in b"0123456789" for b in t) <= 1 for t in ranks)  # no token holds two digits


def test_aha_file_is_what_the_code_trains_and_round_trips():
    from tokenizer import AHA_VOCAB, aha_encoding, aha_texts, train_bpe
    assert aha_encoding()._mergeable_ranks == train_bpe(aha_texts(), AHA_VOCAB)  # `python tokenizer.py --train` is current
    tok = get_tokenizer("aha")
    text = "A conversation ... <think> 7+5=12, so 2. Wait, let me recheck. </think> <answer> 12 </answer> naïve 数学 ✓"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and ids.count(tok.think) == 1
    assert len(ids) < len(text.encode()) / 1.5  # words are merged
    assert [tok.decode([i]) for i in tok.encode(" 1234567890")] == [" 1", *"234567890"]  # a token a digit

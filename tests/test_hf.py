"""
interop/hf.py against the ecosystem's own implementation: tiny random Qwen2 / Llama 3 (llama3 rope scaling)
/ Qwen3 models built and saved by `transformers`, a byte-level BPE trained and saved by `tokenizers`;
both libraries are test-only oracles. Everything is built here, in tmp_path.
"""

import json
import logging
import os
import warnings

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer as HFTok, decoders, models, normalizers, pre_tokenizers, trainers

import checkpoint
import evaluation
from checkpoint import export, save_checkpoint
from interop.hf import load_hf, save_hf
from model import make_model
from sample import generate
from tasks import AdditionTask, BilingualTask
from template import render_prompt
from tokenizer import HFTokenizer, get_tokenizer

# Qwen2's split regex, as its tokenizer.json stores it
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
                 r"\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
CORPUS = ["A conversation between User and Assistant. The user asks a question, and the Assistant solves it.",
          "<think> Compute 82 + 97 in columns. 2+7=9, so 9. 8+9=17, so 79, carry 1. </think> <answer> 179 </answer>",
          "def f(x):\n    return x * 2  # doubles\n\n", "naïve café 数学 很有趣 😀 ✓ 1234567890"] * 20
VARIED = ("Hello  world!\n\n\tTabs,   runs of   spaces; naïve cafe\u0301 (NFD é) 数学很有趣 😀👍🏽 3.14159 1,000,000 "
          "x_1+=y**2 <think> 7+5=12 </think> <answer> 12 </answer><|endoftext|> it's I'LL \r\n end  "
          "The user asks a question: Compute 82 + 97 in columns. 1234567890 def f(x):\n    return x * 2\n")


def train_tokenizer(path, added=("<|endoftext|>", "<|im_start|>", "<|im_end|>"), chat=CHATML, pad=None,
                    pattern=QWEN2_PATTERN):
    """A Qwen2-style byte-level BPE (NFC, split regex, ByteLevel) trained on CORPUS, saved to path;
    pattern=None: GPT-2's (no normalizer, ByteLevel's own regex)."""
    tok = HFTok(models.BPE())
    if pattern:
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        special_tokens=list(added), show_progress=False))
    os.makedirs(path, exist_ok=True)
    tok.save(os.path.join(path, "tokenizer.json"))
    config = {"eos_token": added[0], "pad_token": pad, "tokenizer_class": "PreTrainedTokenizerFast"}
    if chat:
        config["chat_template"] = chat
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return tok


def hf_model(kind, vocab, tied=False, seed=0, heads=4):
    """A tiny random transformers model; every weight drawn (biases and norms included), so that
    a wrongly mapped or unused tensor shows in the logits. heads=2: head_dim 32, the least vLLM's
    CPU attention takes."""
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=heads,
                  num_key_value_heads=heads // 2, max_position_embeddings=256, tie_word_embeddings=tied, rms_norm_eps=1e-6)
    if kind == "qwen2":
        config = transformers.Qwen2Config(**common, rope_theta=10000.0)
    elif kind == "llama":  # llama3 rope scaling whose three frequency bands all occur at head_dim 16
        config = transformers.LlamaConfig(**common, rope_theta=10000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
    else:  # qwen3: head_dim 32 != 64 / 4
        config = transformers.Qwen3Config(**common, head_dim=32, rope_theta=10000.0)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in n else 0.15 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tok"))
    train_tokenizer(path)
    return path


def make_dir(tmp_path, tok_dir, kind, tied=False, heads=4, **save_kw):
    path = str(tmp_path / kind)
    hf = hf_model(kind, vocab=HFTok.from_file(os.path.join(tok_dir, "tokenizer.json")).get_vocab_size(), tied=tied,
                  heads=heads)
    hf.save_pretrained(path, **save_kw)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(tok_dir, name)) as src, open(os.path.join(path, name), "w") as dst:
            dst.write(src.read())
    return path, hf


def our_logits(model, ids):
    return model.lm_head(model(ids)[0])


# fp32 both sides; the two differ only in the order of floating-point operations (SDPA against an
# explicit softmax, the rotary angles as pos * inv_freq against a matmul, fused rms_norm): the
# logits, of size ~10 here, agree to ~1e-5, and 1e-4 leaves room for other BLAS builds
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind,tied,save_kw", [("qwen2", True, {}), ("qwen2", False, {"max_shard_size": "100KB"}),
                                               ("llama", False, {}), ("qwen3", False, {})])
@torch.no_grad()
def test_logits_and_greedy_generations_match_transformers(tmp_path, tok_dir, kind, tied, save_kw):
    path, hf = make_dir(tmp_path, tok_dir, kind, tied, **save_kw)
    if save_kw:
        assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))  # the sharded layout
    model, tok = load_hf(path)
    assert model.config.tie_embeddings == tied and (model.lm_head.weight is model.embed.weight) == tied
    ids = torch.tensor([tok.encode(render_prompt("Compute 82 + 97", tok.chat))])
    assert ids.size(1) > 64  # past llama3's original_max_position_embeddings: every rope band matters
    torch.testing.assert_close(our_logits(model, ids), hf(ids).logits, **TOL)
    # greedy, token for token: our batched, padded, KV-cached sampler against generate, one prompt at a time
    prompts = [tok.encode(render_prompt(q, tok.chat)) for q in ("Compute 1 + 2", "Compute 82 + 97 please")]
    out = generate(model, prompts, 1, 24, tok.stop_ids, tok.pad, temperature=0.0, stop_texts=tok.stop_texts,
                   decode=tok.decode)
    for p, row, n in zip(prompts, out.batch.completions.tolist(), out.batch.completion_mask.sum(1).int().tolist()):
        ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=24,
                          do_sample=False, eos_token_id=tok.stop_ids, pad_token_id=tok.pad)[0, len(p):].tolist()
        assert row[:n] == ref


@pytest.mark.parametrize("kind,tied", [("qwen2", True), ("llama", False), ("qwen3", False)])
@torch.no_grad()
def test_save_hf_loads_back_into_transformers_without_warnings(tmp_path, tok_dir, caplog, kind, tied):
    path, hf = make_dir(tmp_path, tok_dir, kind, tied)
    model, tok = load_hf(path)
    out = str(tmp_path / "export")
    save_hf(model, tok, out)
    transformers.logging.enable_propagation()
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
            warnings.simplefilter("always")
            back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
            hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    finally:
        transformers.logging.disable_propagation()
    assert type(back) is type(hf)
    assert not caught and not [r for r in caplog.records if r.levelno >= logging.WARNING], (caught, caplog.text)
    ids = torch.tensor([tok.encode(VARIED)])
    torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=0, rtol=0)  # the same weights, bit for bit
    assert hf_tok(VARIED, add_special_tokens=False)["input_ids"] == tok.encode(VARIED)
    # and ours again: the round trip keeps config and tokenizer
    again, tok2 = load_hf(out)
    assert again.config == model.config and tok2.chat == tok.chat and tok2.stop_ids == tok.stop_ids


@torch.no_grad()
@pytest.mark.parametrize("name", ["byte", "aha"])
def test_export_our_checkpoint_with_our_tokenizers(tmp_path, name, capsys):
    tok = get_tokenizer(name)
    model = make_model("tiny", tok.vocab_size, n_layer=2).eval()
    save_checkpoint(str(tmp_path / "ckpt.pt"), model, name, step=1)
    export(str(tmp_path / "ckpt.pt"), str(tmp_path / "out"))
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    # the toy corpora (aha's merges apply throughout; the bilingual toy's Chinese byte by byte), and text it never saw
    texts = [render_prompt("Compute 82 + 97") + " <think> 2+7=9 </think> <answer> 179 </answer><|endoftext|> 数学",
             *(p + c for p, c in AdditionTask().corpus(20, seed=5) + BilingualTask().textbook(4, seed=5)), "  Wait,\n\nlet  me recheck 12.5%\t émigré 🙂 ab12"]
    for text in texts:
        assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
        assert hf_tok.decode(tok.encode(text)) == text
    text = texts[0]
    ids = torch.tensor([tok.encode(text)])
    torch.testing.assert_close(back(ids).logits, our_logits(model, ids), **TOL)
    # a checkpoint whose tokenizer has no tokenizer.json form: one line, through the CLI
    save_checkpoint(str(tmp_path / "gpt2.pt"), model, "gpt2")
    capsys.readouterr()  # what transformers printed so far
    with pytest.raises(SystemExit) as e:
        checkpoint.main(["export", str(tmp_path / "gpt2.pt"), str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: cannot export the tokenizer 'gpt2'" in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "x")


def test_export_is_readable_by_others_and_stops_where_our_sampler_does(tmp_path):
    """A toy checkpoint that has learnt to close its answer with </answer> (one token of aha's, no
    eos) and to go on after it: through `python checkpoint.py export` its files are readable by
    other users, and transformers' generate, with nothing but the export's generation_config,
    stops at the token our sampler stops at."""
    tok = get_tokenizer("aha")
    torch.manual_seed(0)
    model = make_model("tiny", tok.vocab_size, n_layer=1, n_embd=64, ffn_hidden=128)
    prompt = tok.encode("Compute 82 + 97 <answer>")
    ids = torch.tensor([prompt + tok.encode(" 179 </answer> and then more text")])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(20):  # memorise the one sequence
        loss = torch.nn.functional.cross_entropy(our_logits(model, ids[:, :-1])[0], ids[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = generate(model, [prompt], 1, 16, tok.stop_ids, tok.pad, temperature=0.0)
    n = int(out.batch.completion_mask.sum())
    ours = out.batch.completions[0, :n].tolist()
    assert n > 1 and ours[-1] == tok.end_answer != tok.eot  # it stops at </answer>, not at the first token
    save_checkpoint(str(tmp_path / "ckpt.pt"), model, "aha", step=1)
    old = os.umask(0o022)  # a usual umask: what a plain open() makes is 0644
    try:
        checkpoint.main(["export", str(tmp_path / "ckpt.pt"), str(tmp_path / "out")])
    finally:
        os.umask(old)
    files = sorted(os.listdir(tmp_path / "out"))
    assert "model.safetensors" in files and "generation_config.json" in files and not any(f.endswith(".tmp") for f in files)
    modes = {f: os.stat(tmp_path / "out" / f).st_mode & 0o777 for f in files}
    assert all(m & 0o004 for m in modes.values()) and modes == dict.fromkeys(files, 0o644), modes
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out")).eval()
    ref = back.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                        max_new_tokens=16, do_sample=False)[0, len(prompt):].tolist()
    assert ref == ours


@pytest.mark.parametrize("pattern", [QWEN2_PATTERN, LLAMA3_PATTERN, None], ids=["qwen2", "llama3", "gpt2"])
def test_tokenizer_matches_tokenizers(tmp_path, pattern):
    path = str(tmp_path / "tok")
    ref = train_tokenizer(path, added=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"), pad="<|im_end|>",
                          pattern=pattern)
    tok = get_tokenizer(f"hf:{path}")  # what a checkpoint's tokenizer name "hf:/abs/dir" loads through
    assert isinstance(tok, HFTokenizer) and tok.name == f"hf:{os.path.abspath(path)}"
    ids = tok.encode(VARIED)
    assert ids == ref.encode(VARIED).ids and len(ids) > 50
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)
    nfc = (lambda s: s.replace("e\u0301", "é")) if pattern else (lambda s: s)
    assert tok.decode(ids) == nfc(VARIED)  # decodes back (NFC-normalised where the tokenizer normalises)
    # a vocabulary with <think> as one token (Qwen3-like); the other tags are plain text, several tokens
    assert tok.think == ref.token_to_id("<think>") and tok.answer is None and tok.end_answer is None
    assert len(tok.encode("</answer>")) > 1 and tok.stop_texts == ("</answer>",)
    assert tok.eot == ref.token_to_id("<|endoftext|>") and tok.stop_ids == [tok.eot]
    assert tok.pad == ref.token_to_id("<|im_end|>") and tok.chat == "chatml"
    # no pad token: not <|im_end|> or <|im_start|>, content of the chat format, but the last other special
    ref = train_tokenizer(path, added=("<|endoftext|>", "<think>", "<|im_start|>", "<|im_end|>"))
    assert HFTokenizer(path).pad == ref.token_to_id("<think>")


def test_tokenizer_defaults(tmp_path):
    # no pad token: a special token that is no stop (never content); a Llama 3 template -> llama3
    path = str(tmp_path / "llama")
    ref = train_tokenizer(path, added=("<|end_of_text|>", "<|begin_of_text|>", "<|eot_id|>", "<|reserved_0|>"),
                          chat="{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>' }}")
    with open(os.path.join(path, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [ref.token_to_id("<|end_of_text|>"), ref.token_to_id("<|eot_id|>")]}, f)
    tok = HFTokenizer(path)
    assert tok.chat == "llama3" and tok.pad == ref.token_to_id("<|reserved_0|>")
    assert tok.stop_ids == [ref.token_to_id("<|end_of_text|>"), ref.token_to_id("<|eot_id|>")]
    # no chat template: the R1-Zero template (a base model)
    train_tokenizer(path, chat=None)
    os.remove(os.path.join(path, "generation_config.json"))
    assert HFTokenizer(path).chat is None


def test_bf16(tmp_path, tok_dir):
    path, hf = make_dir(tmp_path, tok_dir, "qwen2")
    model, tok = load_hf(path, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16
    ids = torch.tensor([tok.encode(VARIED)])
    with torch.no_grad():
        ours, ref = our_logits(model, ids).float(), hf(ids).logits
    # bf16 keeps 8 significant bits: logits of size ~10 within a few tenths, nowhere near a wrong model
    assert (ours - ref).abs().max() < 0.5 and torch.corrcoef(torch.stack([ours.flatten(), ref.flatten()]))[0, 1] > 0.999
    out = generate(model, [ids[0, :20].tolist()], 2, 8, tok.stop_ids, tok.pad, temperature=1.0)
    assert out.sampler_logp.dtype == torch.float32 and out.batch.rows.shape == (2, 28 - out.batch.prefix.numel())


def write_weights(path, edit):
    w = load_file(os.path.join(path, "model.safetensors"))
    edit(w)
    save_file(w, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


def test_bad_input_is_one_clear_line(tmp_path, tok_dir):
    path, _ = make_dir(tmp_path, tok_dir, "llama")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_hf(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        load_hf(str(tmp_path / "nope"))
    config = json.load(open(os.path.join(path, "config.json")))
    for edit, msg in [({"architectures": ["MistralForCausalLM"]}, "unsupported architecture MistralForCausalLM"),
                      ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "unsupported rope scaling 'yarn'"),
                      ({"vocab_size": 2**24, "hidden_size": 2**15}, r"weights need \d+\.\d+ GiB of cpu memory and")]:
        json.dump({**config, **edit}, open(os.path.join(path, "config.json"), "w"))
        with pytest.raises((ValueError, MemoryError), match=msg):
            load_hf(path)
    json.dump(config, open(os.path.join(path, "config.json"), "w"))
    write_weights(path, lambda w: w.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match="weight model.layers.1.mlp.up_proj.weight is missing"):
        load_hf(path)
    write_weights(path, lambda w: w.update({"model.layers.1.mlp.up_proj.weight": torch.zeros(3, 64)}))
    with pytest.raises(ValueError, match=r"weight model.layers.1.mlp.up_proj.weight has shape \(3, 64\), the config needs \(128, 64\)"):
        load_hf(path)
    # a tokenizer.json that is not byte-level BPE: WordPiece, or BPE over characters
    for tok in (HFTok(models.WordPiece(unk_token="[UNK]")), HFTok(models.BPE())):
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(os.path.join(path, "tokenizer.json"))
        with pytest.raises(ValueError, match="not a byte-level BPE|not supported"):
            load_hf(path)


def length_reward(prompts, completions, **fields):
    """A reward a random model's completions already vary in, so that two GRPO steps move the weights."""
    return [len(c) / 100 for c in completions]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_train_from_an_hf_directory_then_export_it(tmp_path, tok_dir, dtype, capsys):
    """End to end on a CPU: train.py --init hf:DIR runs GRPO steps from a transformers-made
    checkpoint to a ckpt.pt of ours, which `python checkpoint.py export` turns back into a directory
    that transformers loads with our logits; the evaluation CLI reads both (each CLI's main(argv),
    in-process)."""
    import train
    path, _ = make_dir(tmp_path, tok_dir, "qwen2", tied=True)
    out = str(tmp_path / "out")
    train.main(["--init", f"hf:{path}", "--dtype", dtype, "--out_dir", out, "--run_name", "hf", "--rl_steps", "2",
                "--questions", "2", "--group_size", "4", "--max_new_tokens", "12", "--eval_problems", "4",
                "--eval_samples", "2", "--n_test", "8", "--lr", "1e-2", "--no_plot", "--device", "cpu",
                "--rewards", "test_hf.length_reward:1"])
    ckpt = os.path.join(out, "hf", "ckpt.pt")
    log = [json.loads(line) for line in open(os.path.join(out, "hf", "log.jsonl"))]
    assert [r["step"] for r in log] == [0, 1, 2] and all(r["skipped_steps"] == 0 for r in log[1:])
    start, _ = load_hf(path)
    trained = torch.load(ckpt, weights_only=True)
    assert trained["tokenizer"] == f"hf:{os.path.abspath(path)}" and trained["args"]["chat"] == "auto"
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in trained["model"].items())  # it trained
    assert trained["ref"]["embed.weight"].dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)

    export_dir = str(tmp_path / "exported")
    checkpoint.main(["export", ckpt, export_dir])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
    ours, tok = load_hf(export_dir)
    ids = torch.tensor([tok.encode(render_prompt("Compute 82 + 97", tok.chat))])
    with torch.no_grad():
        assert torch.allclose(our_logits(ours, ids), theirs(ids).logits, **TOL)
    for spec in (ckpt, f"hf:{export_dir}"):
        capsys.readouterr()
        evaluation.main(["--ckpt", spec, "--eval_problems", "2", "--eval_samples", "2", "--max_new_tokens", "8", "--json",
                       "--device", "cpu", "--n_test", "8"])
        assert 0 <= json.loads(capsys.readouterr().out.splitlines()[-1])["accuracy"] <= 1

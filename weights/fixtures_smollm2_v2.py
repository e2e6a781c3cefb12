"""SmolLM2-135M-Instruct "v2": the default model's GGUF exported as a Hugging
Face folder in bf16 (model.safetensors, config.json, tokenizer.json,
tokenizer_config.json with the chat template, generation_config.json).

transformers dequantizes the Q4_1 GGUF (undoing llama.cpp's Q/K row
permutation) and `save_pretrained` writes the folder. It is the same model
in another format and precision: the second version that the model
management tests and config/multi-model.toml swap to.
"""
import argparse
import os
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", required=True)
    args = ap.parse_args()
    d = os.path.join(args.root, "weights", "smollm2-135m-instruct")
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf, dtype=torch.bfloat16)
    # The GGUF-loaded model is flagged as quantized and refuses to save; its
    # tensors are already dequantized, so move them into a plain model.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"  exported in {time.time() - t0:.1f}s, {size / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()

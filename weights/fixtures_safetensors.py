"""Tiny Hugging Face folders for tests/safetensors.rs, written by the real
Python `safetensors` and transformers' `save_pretrained`, so the Rust loader is
checked against the files those tools produce rather than its own writer.

Expected values are stored as raw bit patterns (JSON integers), not floats,
so the Rust side can compare exactly without trusting any float parsing.

  dtypes/        model.safetensors with F32, F16, BF16, F64 and I32 tensors
  llama_sharded/ LlamaForCausalLM (llama3 rope) saved in several shards,
                 generation_config.json with an extra eos id
  gpt2_legacy/   GPT-2 weights stored without the `transformer.` prefix, with
                 the `attn.bias` mask buffer, as old checkpoints have them
  qwen2/, gpt2/, mistral/   config.json only (save_pretrained)
  llama_v4/      a transformers-4 style config.json (top-level rope_theta,
                 rope_scaling {"type": "linear"}), written by hand
expected.json in each weights folder: name -> {"shape", "dtype", "bits"}
(bits of the first 8 elements, flattened).
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, Qwen2Config)

BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
        torch.float64: torch.int64, torch.int32: torch.int32}


def expected(tensors: dict) -> dict:
    out = {}
    for name, t in tensors.items():
        flat = t.detach().contiguous().flatten()[:8]
        bits = flat.view(BITS[t.dtype]).tolist()
        width = torch.tensor([], dtype=BITS[t.dtype]).element_size() * 8
        bits = [b & ((1 << width) - 1) for b in bits]  # unsigned, as Rust reads them
        out[name] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "bits": bits}
    return out


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", required=False)
    out = ap.parse_args().out
    g = torch.Generator().manual_seed(7)

    # Random values exercise every bit of mantissa and exponent; specials too.
    special = torch.tensor([0.0, -0.0, 1.0, -2.5, 65504.0, 1e-7, float("inf"), float("-inf")])
    tensors = {
        "w.f32": torch.randn(3, 5, generator=g),
        "w.f16": torch.randn(2, 3, 4, generator=g).to(torch.float16),
        "w.bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "w.f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "w.special_f32": special.clone(),
        "w.special_bf16": special.to(torch.bfloat16),
        "ids.i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "w.scalar": torch.tensor(3.25),
    }
    d = os.path.join(out, "dtypes")
    os.makedirs(d)
    save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(d, "expected.json"), expected(tensors))

    # Sharded LLaMA with llama3 rope scaling, transformers 5 layout.
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 64})
    model = LlamaForCausalLM(cfg)
    d = os.path.join(out, "llama_sharded")
    model.save_pretrained(d, max_shard_size="12KB")
    write_json(os.path.join(d, "generation_config.json"),
               {"bos_token_id": 1, "eos_token_id": [2, 7], "transformers_version": "5.23.0"})
    write_json(os.path.join(d, "expected.json"), expected(model.state_dict()))

    # GPT-2 as old checkpoints store it: no `transformer.` prefix, mask buffers.
    gcfg = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=4,
                      bos_token_id=0, eos_token_id=0)
    gpt = GPT2LMHeadModel(gcfg)
    legacy = {k[len("transformer."):]: v.detach().clone().contiguous()
              for k, v in gpt.state_dict().items() if k.startswith("transformer.")}
    for i in range(2):
        legacy[f"h.{i}.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    d = os.path.join(out, "gpt2_legacy")
    os.makedirs(d)
    save_file(legacy, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    gcfg.save_pretrained(d)
    write_json(os.path.join(d, "expected.json"), expected(legacy))

    # Config-only folders.
    Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645,
                ).save_pretrained(os.path.join(out, "qwen2"))
    GPT2Config().save_pretrained(os.path.join(out, "gpt2"))
    MistralConfig(vocab_size=32768, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                  ).save_pretrained(os.path.join(out, "mistral"))
    d = os.path.join(out, "llama_v4")
    os.makedirs(d)
    write_json(os.path.join(d, "config.json"), {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152,
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "rope_scaling": {"type": "linear", "factor": 2.0},
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "head_dim": None,
        "hidden_act": "silu", "transformers_version": "4.42.3"})


if __name__ == "__main__":
    main()

"""Tiny random LLaMA / Qwen2 / GPT-2 models with transformers' reference logits.

For each architecture: `<out>/<name>/` holds what save_pretrained writes
(config.json + model.safetensors) and `reference.safetensors` with
`input_ids` [1, L] (int64) and transformers' full-sequence logits in f32
(`logits_f32`, [L, vocab]) and in bf16 (`logits_bf16`, stored as f32).
Weights are drawn with fixed seeds and scaled so the logits are far from
zero; norm weights are randomised too, so a mis-wired weight shows.
"""
import argparse
import os

import torch
from safetensors.torch import save_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

SEQ_LEN = 40
VOCAB = 256


def randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ("norm" in name or ".ln_" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.08 * noise)


def llama() -> torch.nn.Module:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
                      bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg)


def qwen2() -> torch.nn.Module:
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=512,
                      rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2)
    return Qwen2ForCausalLM(cfg)


def gpt2() -> torch.nn.Module:
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                     bos_token_id=1, eos_token_id=2)
    return GPT2LMHeadModel(cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", required=False)
    args = ap.parse_args()
    torch.manual_seed(0)
    for i, (name, make) in enumerate([("tiny-llama", llama), ("tiny-qwen2", qwen2), ("tiny-gpt2", gpt2)]):
        model = make().eval()
        randomise(model, seed=100 + i)
        d = os.path.join(args.out, name)
        model.save_pretrained(d, safe_serialization=True)
        g = torch.Generator().manual_seed(7 + i)
        ids = torch.randint(0, VOCAB, (1, SEQ_LEN), generator=g)
        with torch.no_grad():
            f32 = model.float()(ids).logits[0].float()
            bf16 = model.to(torch.bfloat16)(ids).logits[0].float()
        save_file({"input_ids": ids.contiguous(), "logits_f32": f32.contiguous(),
                   "logits_bf16": bf16.contiguous()}, os.path.join(d, "reference.safetensors"))
        print(f"  {name}: logits std {f32.std():.3f}")


if __name__ == "__main__":
    main()

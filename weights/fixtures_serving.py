"""Tiny random models that `inferd serve` can serve (config/multi-model.toml).

The tiny parity fixtures have no tokenizer; these do. Each folder
`<out>/<name>/` holds what save_pretrained writes (config.json,
model.safetensors, generation_config.json) plus a byte-level BPE
tokenizer.json (token id = byte value, no merges) with two special tokens,
`<|bos|>` (256) and `<|eos|>` (257), and a tokenizer_config.json with a
plain chat template. The text they generate is noise: they exist to show
several models of both families (GPT-2; Qwen2, LLaMA-style) served at once.
"""
import argparse
import json
import os

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

BOS, EOS = 256, 257
VOCAB = 258
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character map (byte-level BPE's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer(d: str) -> None:
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|bos|>", special=True), AddedToken("<|eos|>", special=True)])
    assert tok.token_to_id("<|bos|>") == BOS and tok.token_to_id("<|eos|>") == EOS
    tok.save(os.path.join(d, "tokenizer.json"))
    cfg = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "chat_template": CHAT_TEMPLATE,
           "model_max_length": 256}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ("norm" in name or ".ln_" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.08 * noise)


def gpt2() -> torch.nn.Module:
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                      bos_token_id=BOS, eos_token_id=EOS))


def qwen2() -> torch.nn.Module:
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                        max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                                        tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", required=False)
    args = ap.parse_args()
    torch.manual_seed(0)
    for i, (name, make) in enumerate([("tiny-gpt2", gpt2), ("tiny-qwen2", qwen2)]):
        model = make().eval()
        randomise(model, seed=200 + i)
        d = os.path.join(args.out, name)
        model.save_pretrained(d, safe_serialization=True)
        tokenizer(d)
        print(f"  {name}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()

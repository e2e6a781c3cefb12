"""A LLaMA-2-7B-shaped model with random weights, written by transformers' save_pretrained.

Shape 7b: hidden 4096, 32 layers, 32 heads (no GQA), intermediate 11008,
vocab 32000, 4096 positions; 6.74e9 parameters, 13.5 GB in bf16. The weights
are random (normal, std 0.02; norm weights 1), drawn directly on --device so
making them takes seconds on a GPU. Shape tiny (the dry run):
same vocabulary and layout, 2 layers of hidden 256.

The folder gets config.json, safetensors shards, generation_config.json and a
byte-level BPE tokenizer.json with exactly 32000 ids (built by rules, offline;
see common.py), so `inferd serve` and `inferd bench --tokenizer` can use it.

    python make_7b.py --out DIR [--shape 7b|tiny] [--device cuda:0] [--dtype bf16]
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import DTYPES, byte_bpe_tokenizer, device_sync, write_json  # noqa: E402

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4),
}
VOCAB = 32000
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--info", default=None, help="also write what was made (JSON) here")
    args = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    t0 = time.time()
    dtype = DTYPES[args.dtype]
    cfg = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      hidden_act="silu", initializer_range=0.02, **SHAPES[args.shape])
    torch.manual_seed(args.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    model = model.to(dtype).eval()
    # Draw the weights ourselves (normal, std 0.02; norms 1) so they do not depend
    # on what a transformers version's constructor initialises, or leaves empty.
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, cfg.initializer_range, generator=g)
    device_sync(args.device)
    params = sum(p.numel() for p in model.parameters())
    t_init = time.time() - t0
    model.save_pretrained(args.out, safe_serialization=True, max_shard_size="5GB")
    t_save = time.time() - t0 - t_init
    tok = byte_bpe_tokenizer(args.out, VOCAB, chat_template=CHAT_TEMPLATE)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out) if f.endswith(".safetensors"))
    info = {"shape": args.shape, "parameters": params, "dtype": args.dtype, "safetensors_bytes": size,
            "config": {k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                    "num_attention_heads", "num_key_value_heads", "vocab_size")},
            "tokenizer": tok, "init_seconds": round(t_init, 1), "save_seconds": round(t_save, 1),
            "seconds": round(time.time() - t0, 1), "path": os.path.abspath(args.out)}
    if args.info:
        write_json(args.info, info)
    print(f"make_7b: {args.shape} {params / 1e9:.2f}e9 parameters, {size / 1e9:.2f} GB {args.dtype} -> {args.out} "
          f"(init {t_init:.1f}s, save {t_save:.1f}s)")
    print(json.dumps(info["config"]))


if __name__ == "__main__":
    main()

"""transformers' generate on SmolLM2-135M (the same GGUF inferd serves), as the
baseline for benches/decode.rs in the same `make bench` run.

Batches of 1, 8 and 32 prompts of 128 tokens; decode tokens/s is measured as
(new tokens) / (time of generate(N new) - time of generate(1 new)), so the
prefill is not counted. f32 and bf16.
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "weights", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT, NEW = 128, 32


def timed_generate(model, ids, new):
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0)
    return time.perf_counter() - t


def main():
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=GGUF, dtype=dtype).eval()
        for batch in (1, 8, 32):
            ids = (torch.arange(CONTEXT)[None, :] * 7 + torch.arange(batch)[:, None]) % 1000 + 10
            timed_generate(model, ids, 2)  # warm-up
            t1 = min(timed_generate(model, ids, 1) for _ in range(2))
            tn = min(timed_generate(model, ids, NEW) for _ in range(2))
            tps = batch * (NEW - 1) / (tn - t1)
            results.append({"engine": "transformers", "dtype": str(dtype).split(".")[-1], "batch": batch,
                            "decode_tokens_per_s": round(tps, 1)})
            print(f"transformers {results[-1]['dtype']:>8} batch {batch:>2}: {tps:8.1f} tokens/s", flush=True)
    json.dump(results, sys.stdout if len(sys.argv) < 2 else open(sys.argv[1], "w"), indent=1)
    print()


if __name__ == "__main__":
    main()

"""The serving workload of benches/engine.rs through transformers, as its
baseline: SmolLM2-135M (the same GGUF) on the CPU in INFERD_BENCH_DTYPE (f32 by
default, as benches/engine.rs and config/default.toml), 128-token prompts
and 128 output tokens each (min_new_tokens, so EOS never ends one early).

One request at a time (concurrency 1), and static padded batches of 4, 16 and
64 with generate: output tokens/s counts prefill, as benches/engine.rs does.
Prompts are random ids, all 128 long, so padding costs nothing here (static
batching's real cost, ragged lengths, is not even measured). Writes
benches/results/transformers_engine-<dtype>.json.
"""
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "weights", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT, NEW = 128, 128
DTYPE = os.environ.get("INFERD_BENCH_DTYPE", "f32")
TORCH_DTYPE = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[DTYPE]
OUT = os.path.join(ROOT, "benches", "results", f"transformers_engine-{DTYPE}.json")


def prompts(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1000, 31000, (n, PROMPT), generator=g)


def generate(model, ids, new):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=0)
    return out.shape[0] * (out.shape[1] - ids.shape[1])


def main():
    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=GGUF, dtype=TORCH_DTYPE).eval()
    generate(model, prompts(2, 99), 4)  # warm-up
    levels = []
    print(f"transformers SmolLM2-135M {DTYPE} on CPU ({torch.get_num_threads()} threads), {PROMPT} prompt + {NEW} output tokens")
    print(f"{'concurrency':>11} {'mode':>18} {'wall (s)':>9} {'output tok/s':>13}")
    # Concurrency 1: requests served one after another (4 of them).
    t = time.perf_counter()
    tokens = sum(generate(model, prompts(1, i), NEW) for i in range(4))
    wall = time.perf_counter() - t
    levels.append({"concurrency": 1, "mode": "one at a time", "requests": 4, "wall_secs": wall,
                   "output_tokens_per_sec": tokens / wall})
    for batch in (4, 16, 64):
        t = time.perf_counter()
        tokens = generate(model, prompts(batch, 100 + batch), NEW)
        wall = time.perf_counter() - t
        levels.append({"concurrency": batch, "mode": "padded batch", "requests": batch, "wall_secs": wall,
                       "output_tokens_per_sec": tokens / wall})
    for l in levels:
        print(f"{l['concurrency']:>11} {l['mode']:>18} {l['wall_secs']:>9.1f} {l['output_tokens_per_sec']:>13.1f}", flush=True)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"engine": "transformers", "model": f"SmolLM2-135M-Instruct (Q4_1 GGUF, {DTYPE})", "device": "cpu",
                   "threads": torch.get_num_threads(), "prompt_tokens": PROMPT, "output_tokens": NEW,
                   "levels": levels}, f, indent=1)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

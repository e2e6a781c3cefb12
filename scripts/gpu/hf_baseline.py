"""The transformers baseline: model.generate on the same model, GPU and dtype as inferd.

Two runs, greedy, every request generating exactly --output-len tokens
(min_new_tokens = max_new_tokens, so end-of-sequence never stops it early,
like `inferd bench`'s ignore_eos):
- single: one request of --input-len random token ids; time to first token
  (a generate of one token, median of 3) and end-to-end latency;
- batch: --batch requests of random lengths in [input_len/2, input_len],
  left-padded into one batch, one generate call (static batching: every
  request waits for the whole batch).
Writes --out (JSON) and prints a line per run.
"""
import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import DTYPES, device_sync, gpu_name, load_hf, write_json  # noqa: E402


def timed_generate(model, ids, mask, new_tokens: int, device: str) -> float:
    device_sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    device_sync(device)
    secs = time.perf_counter() - t
    assert out.shape[1] == ids.shape[1] + new_tokens, (out.shape, ids.shape, new_tokens)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = args.device
    t0 = time.time()
    model = load_hf(args.model, DTYPES[args.dtype], dev)
    load_s = time.time() - t0
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)

    # Warm-up: kernels, allocator, cuBLAS handles.
    warm = torch.randint(3, vocab, (1, 64), generator=g).to(dev)
    timed_generate(model, warm, torch.ones_like(warm), 4, dev)

    runs = []
    ids = torch.randint(3, vocab, (1, args.input_len), generator=g).to(dev)
    mask = torch.ones_like(ids)
    ttft = statistics.median(timed_generate(model, ids, mask, 1, dev) for _ in range(3))
    e2e = timed_generate(model, ids, mask, args.output_len, dev)
    runs.append({"name": "single", "batch": 1, "input_len": args.input_len, "output_len": args.output_len,
                 "ttft_ms": ttft * 1e3, "e2e_ms": e2e * 1e3,
                 "tpot_ms": (e2e - ttft) / max(args.output_len - 1, 1) * 1e3,
                 "output_tok_s": args.output_len / e2e,
                 "decode_tok_s": (args.output_len - 1) / max(e2e - ttft, 1e-9)})

    if args.batch > 0:
        lens = torch.randint(args.input_len // 2, args.input_len + 1, (args.batch,), generator=g).tolist()
        width = max(lens)
        ids = torch.zeros((args.batch, width), dtype=torch.long)
        mask = torch.zeros((args.batch, width), dtype=torch.long)
        for i, n in enumerate(lens):  # left padding, as decoder-only generation needs
            ids[i, width - n:] = torch.randint(3, vocab, (n,), generator=g)
            mask[i, width - n:] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        ttft_b = timed_generate(model, ids, mask, 1, dev)
        e2e_b = timed_generate(model, ids, mask, args.output_len, dev)
        runs.append({"name": f"batch{args.batch}", "batch": args.batch, "input_len": width,
                     "input_tokens": sum(lens), "output_len": args.output_len,
                     "ttft_ms": ttft_b * 1e3, "e2e_ms": e2e_b * 1e3,
                     "tpot_ms": (e2e_b - ttft_b) / max(args.output_len - 1, 1) * 1e3,
                     "output_tok_s": args.batch * args.output_len / e2e_b,
                     "decode_tok_s": args.batch * (args.output_len - 1) / max(e2e_b - ttft_b, 1e-9)})

    peak = torch.cuda.max_memory_allocated(torch.device(dev)) if dev.startswith("cuda") else None
    doc = {"engine": "transformers.generate", "device": dev, "gpu": gpu_name(dev), "dtype": args.dtype,
           "torch": torch.__version__, "transformers": __import__("transformers").__version__,
           "attn_implementation": getattr(model.config, "_attn_implementation", None),
           "load_seconds": round(load_s, 1), "peak_memory_bytes": peak, "runs": runs}
    write_json(args.out, doc)
    for r in runs:
        print(f"  transformers {r['name']:<8} TTFT {r['ttft_ms']:8.1f} ms  E2E {r['e2e_ms']:9.1f} ms  "
              f"TPOT {r['tpot_ms']:6.2f} ms  {r['output_tok_s']:8.1f} out tok/s")


if __name__ == "__main__":
    main()

"""Logits parity: `inferd logits` against transformers, same device, same dtype.

For every model folder under --models (made by make_tiny.py: config.json,
model.safetensors, prompts.json) and every dtype, runs

    inferd logits --model M --prompts M/prompts.json --device D --dtype T

which writes each prompt's logits at every position fed three ways (all
prompts in one prefill step, each alone, and half prefilled then decoded a
token per step), and compares each way with transformers on the same device:

- f32: max |inferd - transformers f32| <= --f32-tol (1e-4, as tests/parity_tiny.rs).
- bf16/f16: against transformers' f32 logits as the truth, inferd's error must
  be at most 2x transformers' own bf16 error + 0.02 (as tests/parity_tiny.rs),
  and inferd's greedy token (argmax) must agree with transformers' in the same
  dtype at >= --argmax-min of the positions (near-ties may flip in bf16).

Writes --out/parity.json and prints a table; exits 1 if anything failed.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import DTYPES, gpu_name, load_hf, write_json  # noqa: E402


def hf_logits(model_dir: str, prompts, dtype: torch.dtype, device: str) -> np.ndarray:
    """transformers' logits for every position of every prompt, stacked like inferd's."""
    model = load_hf(model_dir, dtype, device)
    rows = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            rows.append(model(ids).logits[0].float().cpu().numpy())
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return np.concatenate(rows, axis=0)


def run_inferd(binary: str, model_dir: str, device: str, dtype: str, out: str, timeout: int):
    cmd = [binary, "logits", "--model", model_dir, "--prompts", os.path.join(model_dir, "prompts.json"),
           "--out", out, "--device", device, "--dtype", dtype]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    secs = time.time() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-4000:]}")
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    modes = {m: np.load(os.path.join(out, info["file"])) for m, info in meta["modes"].items()}
    return meta, modes, secs


def argmax_agree(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inferd", required=True, help="the inferd binary")
    ap.add_argument("--models", required=True, help="folder of model folders (make_tiny.py --out)")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--out", required=True, help="parity.json goes here")
    ap.add_argument("--work", default=None, help="inferd's logits files (default: --out/logits)")
    ap.add_argument("--f32-tol", type=float, default=1e-4)
    ap.add_argument("--argmax-min", type=float, default=0.9)
    ap.add_argument("--timeout", type=int, default=300, help="per inferd call, seconds")
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        # Full f32 matmuls on both sides: TF32 would cost ~1e-3 of accuracy.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    work = args.work or os.path.join(args.out, "logits")
    names = sorted(d for d in os.listdir(args.models) if os.path.exists(os.path.join(args.models, d, "prompts.json")))
    if not names:
        sys.exit(f"parity.py: no model folders with prompts.json under {args.models}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    results = []
    for name in names:
        mdir = os.path.join(args.models, name)
        with open(os.path.join(mdir, "prompts.json")) as f:
            prompts = json.load(f)["prompts"]
        truth = hf_logits(mdir, prompts, torch.float32, args.device)
        for dt in dtypes:
            rec = {"model": name, "dtype": dt, "device": args.device, "rows": int(truth.shape[0]),
                   "vocab": int(truth.shape[1]), "prompts": len(prompts)}
            try:
                meta, modes, secs = run_inferd(args.inferd, mdir, args.device, dt, os.path.join(work, f"{name}-{dt}"),
                                               args.timeout)
                rec["inferd_seconds"] = round(secs, 2)
                rec["inferd_modes_agreement"] = meta.get("max_abs_diff_between_modes")
                checks = {}
                if dt == "f32":
                    for m, got in modes.items():
                        d = float(np.abs(got - truth).max())
                        checks[m] = {"max_abs_diff": d, "tol": args.f32_tol, "argmax_agree": argmax_agree(got, truth),
                                     "pass": d <= args.f32_tol}
                else:
                    theirs = hf_logits(mdir, prompts, DTYPES[dt], args.device)
                    their_err = float(np.abs(theirs - truth).max())
                    bound = 2.0 * their_err + 0.02
                    rec["transformers_err_vs_f32"] = their_err
                    rec["transformers_argmax_vs_f32"] = argmax_agree(theirs, truth)
                    for m, got in modes.items():
                        ours = float(np.abs(got - truth).max())
                        agree = argmax_agree(got, theirs)
                        checks[m] = {"err_vs_f32": ours, "bound": bound,
                                     "vs_transformers_same_dtype": float(np.abs(got - theirs).max()),
                                     "argmax_agree": agree, "argmax_vs_f32": argmax_agree(got, truth),
                                     "pass": ours <= bound and agree >= args.argmax_min}
                rec["checks"] = checks
                rec["pass"] = all(c["pass"] for c in checks.values()) and len(checks) > 0
            except Exception as e:  # one model's failure must not hide the others'
                rec["error"] = str(e)
                rec["pass"] = False
            results.append(rec)
            print(line(rec), flush=True)
    doc = {"device": args.device, "gpu": gpu_name(args.device), "torch": torch.__version__,
           "transformers": __import__("transformers").__version__, "f32_tol": args.f32_tol,
           "argmax_min": args.argmax_min, "results": results, "pass": all(r["pass"] for r in results)}
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "parity.json"), doc)
    print(f"parity: {'PASS' if doc['pass'] else 'FAIL'} ({sum(r['pass'] for r in results)}/{len(results)})")
    sys.exit(0 if doc["pass"] else 1)


def line(rec) -> str:
    head = f"  {rec['model']:<11} {rec['dtype']:<5} {'ok  ' if rec['pass'] else 'FAIL'}"
    if "error" in rec:
        return f"{head} error: {rec['error'].splitlines()[0]}"
    parts = []
    for m, c in rec["checks"].items():
        if rec["dtype"] == "f32":
            parts.append(f"{m} {c['max_abs_diff']:.1e}")
        else:
            parts.append(f"{m} {c['err_vs_f32']:.3f}/{c['bound']:.3f} argmax {c['argmax_agree']:.3f}")
    return f"{head} " + "; ".join(parts)


if __name__ == "__main__":
    main()

"""Gather one gpu-check.sh results folder into summary.json + summary.md (+ sweep.png).

Reads what the stages left in the folder (any may be missing: a stage that
failed or was skipped for time shows as such):
  env.json, phases.jsonl       written by gpu-check.sh
  parity.json                  parity.py
  make_7b.json                 make_7b.py --info
  hf_baseline.json             hf_baseline.py
  bench/<run>/bench.json       inferd bench, one folder per concurrency / rate
  smi.csv                      smi.py (GPU runs only)
and checks the production targets: P99 time to first token < 100 ms, P99
end-to-end < 500 ms for 256 output tokens, GPU utilisation > 70% under load.
"""
import argparse
import csv
import json
import os
import sys

TTFT_P99_MS = 100.0
E2E_P99_MS = 500.0
UTIL_PCT = 70.0


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def phases(res):
    out = []
    try:
        with open(os.path.join(res, "phases.jsonl")) as f:
            for line in f:
                if line.strip():
                    out.append(json.loads(line))
    except OSError:
        pass
    return out


def smi_samples(res):
    try:
        with open(os.path.join(res, "smi.csv")) as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    samples = []
    for r in rows:
        try:
            samples.append((float(r["t_unix"]), float(r["util_pct"]), float(r["mem_used_mib"])))
        except (KeyError, ValueError):
            continue
    return samples


def util_in(samples, start, end):
    """GPU utilisation over [start, end], trimmed by a second each side when long enough."""
    if end - start > 4:
        start, end = start + 1, end - 1
    s = [x for x in samples if start <= x[0] <= end]
    if not s:
        return None
    utils = [x[1] for x in s]
    return {"samples": len(s), "util_mean": sum(utils) / len(utils), "util_max": max(utils),
            "mem_max_mib": max(x[2] for x in s)}


def bench_runs(res, phase_list, samples):
    rows = []
    bdir = os.path.join(res, "bench")
    by_name = {p["name"]: p for p in phase_list}
    order = [p["name"][len("bench-"):] for p in phase_list if p["name"].startswith("bench-")]
    for name in order:
        doc = load(os.path.join(bdir, name, "bench.json"))
        ph = by_name.get(f"bench-{name}", {})
        row = {"run": name, "status": ph.get("status", "missing"), "seconds": ph.get("seconds")}
        if doc and doc.get("runs"):
            s = doc["runs"][0]
            row.update({k: s.get(k) for k in ("concurrency", "request_rate", "sent", "completed", "failed",
                                              "duration_s", "request_throughput", "output_token_throughput",
                                              "input_token_throughput", "good_requests", "goodput", "errors")})
            for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
                row[m] = {k: s.get(m, {}).get(k) for k in ("mean", "median", "p90", "p99")}
            row["output_len"] = doc.get("config", {}).get("output_len")
            row["input_len"] = doc.get("config", {}).get("input_len")
        if samples and "start" in ph and "end" in ph:
            row["gpu"] = util_in(samples, ph["start"], ph["end"])
        rows.append(row)
    return rows


def fmt(v, spec=".1f", dash="-"):
    return dash if v is None else format(v, spec)


def targets(rows, gpu):
    """Which runs meet each production target."""
    out = []
    for r in rows:
        if "ttft_ms" not in r:
            continue
        t = {"run": r["run"], "ttft_p99_ok": (r["ttft_ms"]["p99"] or 1e18) < TTFT_P99_MS,
             "e2e_p99_ok": (r["e2e_ms"]["p99"] or 1e18) < E2E_P99_MS, "failed": r.get("failed")}
        if gpu and r.get("gpu"):
            t["util_ok"] = r["gpu"]["util_mean"] > UTIL_PCT
        out.append(t)
    return out


def markdown(env, phase_list, parity, made, hf, rows, tgt):
    md = []
    rate = next((r.get("request_rate") for r in rows if r["run"] == "rate" and r.get("request_rate")), None)
    dry = env.get("dry_run")
    md.append(f"# inferd GPU check{' (DRY RUN on CPU, tiny shapes: not a measurement)' if dry else ''}\n")
    md.append(f"- date: {env.get('date')}  \n- device: {env.get('device')} ({env.get('gpu', '?')})  \n"
              f"- inferd: {env.get('inferd_version', '?')} (commit {env.get('commit', '?')})  \n"
              f"- torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}  \n"
              f"- workload: {env.get('input_len')} in / {env.get('output_len')} out tokens, ignore_eos, "
              f"concurrency {env.get('levels')}, rate {rate if rate else env.get('rate', '?')} req/s (Poisson)\n")
    md.append("## Stages\n")
    md.append("| stage | status | seconds |\n| --- | --- | ---: |")
    for p in phase_list:
        md.append(f"| {p['name']} | {p.get('status')} | {fmt(p.get('seconds'))} |")
    md.append("")
    md.append("## Parity: inferd logits vs transformers (same device and dtype)\n")
    if parity:
        md.append(f"Overall: **{'PASS' if parity.get('pass') else 'FAIL'}** on {parity.get('device')} "
                  f"({parity.get('gpu')}); f32 tolerance {parity.get('f32_tol')}, bf16 bound 2x transformers' "
                  f"own bf16 error + 0.02, greedy agreement >= {parity.get('argmax_min')}.\n")
        md.append("| model | dtype | pass | batched | single | decode |\n| --- | --- | --- | --- | --- | --- |")
        for r in parity.get("results", []):
            cells = []
            for m in ("batched", "single", "decode"):
                c = r.get("checks", {}).get(m)
                if not c:
                    cells.append(r.get("error", "-")[:40] if m == "batched" else "-")
                elif r["dtype"] == "f32":
                    cells.append(f"{c['max_abs_diff']:.1e}")
                else:
                    cells.append(f"{c['err_vs_f32']:.3f} (bound {c['bound']:.3f}), argmax {c['argmax_agree']:.3f}")
            md.append(f"| {r['model']} | {r['dtype']} | {'yes' if r['pass'] else 'NO'} | " + " | ".join(cells) + " |")
        md.append("")
    else:
        md.append("no parity results\n")
    md.append("## inferd serve + inferd bench\n")
    if made:
        md.append(f"Model: LLaMA-shaped `{made.get('shape')}`, {made.get('parameters', 0) / 1e9:.2f}e9 parameters, "
                  f"{made.get('safetensors_bytes', 0) / 1e9:.2f} GB {made.get('dtype')}, random weights.\n")
    md.append("| run | ok | failed | req/s | out tok/s | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | E2E p50 | E2E p99 "
              "| GPU util mean/max % | GPU mem max MiB |")
    md.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "ttft_ms" not in r:
            md.append(f"| {r['run']} | {r['status']} |  |  |  |  |  |  |  |  |  |  |  |")
            continue
        g = r.get("gpu") or {}
        util = f"{g['util_mean']:.0f} / {g['util_max']:.0f}" if g else "-"
        md.append(f"| {r['run']} | {r['completed']} | {r['failed']} | {fmt(r['request_throughput'], '.2f')} | "
                  f"{fmt(r['output_token_throughput'])} | {fmt(r['ttft_ms']['median'])} | {fmt(r['ttft_ms']['p99'])} | "
                  f"{fmt(r['tpot_ms']['median'], '.2f')} | {fmt(r['tpot_ms']['p99'], '.2f')} | "
                  f"{fmt(r['e2e_ms']['median'], '.0f')} | {fmt(r['e2e_ms']['p99'], '.0f')} | {util} | "
                  f"{fmt(g.get('mem_max_mib'), '.0f')} |")
    md.append("\nLatencies in ms. TPOT: time per output token after the first.\n")
    md.append("## transformers baseline (model.generate, same model and device)\n")
    if hf:
        md.append(f"attention: {hf.get('attn_implementation')}, load {hf.get('load_seconds')} s\n")
        md.append("| run | batch | TTFT ms | E2E ms | TPOT ms | out tok/s |\n| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in hf.get("runs", []):
            md.append(f"| {r['name']} | {r['batch']} | {r['ttft_ms']:.1f} | {r['e2e_ms']:.0f} | {r['tpot_ms']:.2f} | "
                      f"{r['output_tok_s']:.1f} |")
        md.append("")
    else:
        md.append("no transformers baseline results\n")
    md.append(f"## Production targets (P99 TTFT < {TTFT_P99_MS:.0f} ms, P99 E2E < {E2E_P99_MS:.0f} ms for 256 tokens, "
              f"GPU util > {UTIL_PCT:.0f}% under load)\n")
    if tgt:
        md.append("| run | P99 TTFT | P99 E2E | GPU util |\n| --- | --- | --- | --- |")
        yn = {True: "met", False: "missed", None: "-"}
        for t in tgt:
            md.append(f"| {t['run']} | {yn[t['ttft_p99_ok']]} | {yn[t['e2e_p99_ok']]} | {yn[t.get('util_ok')]} |")
        md.append("")
    if dry:
        md.append("_Dry run: CPU device, a 2-layer model and short requests; the numbers only show the pipeline works._\n")
    return "\n".join(md) + "\n"


def sweep_png(res, rows, hf):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    pts = [r for r in rows if r.get("concurrency") and not r.get("request_rate") and "ttft_ms" in r]
    if len(pts) < 2:
        return None
    c = [r["concurrency"] for r in pts]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    ax[0].plot(c, [r["output_token_throughput"] for r in pts], "o-", label="inferd")
    for h in (hf or {}).get("runs", []):
        ax[0].plot([h["batch"]], [h["output_tok_s"]], "s", label=f"transformers {h['name']}")
    ax[0].set(xscale="log", xlabel="concurrency", ylabel="output tokens/s", title="throughput")
    ax[0].legend()
    ax[1].plot(c, [r["ttft_ms"]["p99"] for r in pts], "o-", label="p99 TTFT")
    ax[1].plot(c, [r["e2e_ms"]["p99"] for r in pts], "o-", label="p99 E2E")
    ax[1].axhline(TTFT_P99_MS, ls=":", color="C0")
    ax[1].axhline(E2E_P99_MS, ls=":", color="C1")
    ax[1].set(xscale="log", yscale="log", xlabel="concurrency", ylabel="ms", title="latency (targets dotted)")
    ax[1].legend()
    util = [(r["concurrency"], r["gpu"]["util_mean"]) for r in pts if r.get("gpu")]
    if util:
        ax[2].plot([u[0] for u in util], [u[1] for u in util], "o-")
        ax[2].axhline(UTIL_PCT, ls=":")
    ax[2].set(xscale="log", xlabel="concurrency", ylabel="%", ylim=(0, 100), title="GPU utilisation (mean)")
    for a in ax:
        a.set_xticks(c)
        a.set_xticklabels([str(x) for x in c])
        a.minorticks_off()
    fig.tight_layout()
    path = os.path.join(res, "sweep.png")
    fig.savefig(path, dpi=90)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    args = ap.parse_args()
    res = args.results
    env = load(os.path.join(res, "env.json")) or {}
    ph = phases(res)
    samples = smi_samples(res)
    parity = load(os.path.join(res, "parity.json"))
    made = load(os.path.join(res, "make_7b.json"))
    hf = load(os.path.join(res, "hf_baseline.json"))
    rows = bench_runs(res, ph, samples)
    for p in ph:
        if samples and "start" in p and "end" in p:
            p["gpu"] = util_in(samples, p["start"], p["end"])
    tgt = targets(rows, bool(samples))
    doc = {"env": env, "phases": ph, "parity_pass": parity.get("pass") if parity else None,
           "parity": parity, "model": made, "inferd": rows, "transformers": hf, "targets": tgt,
           "thresholds": {"ttft_p99_ms": TTFT_P99_MS, "e2e_p99_ms": E2E_P99_MS, "gpu_util_pct": UTIL_PCT}}
    with open(os.path.join(res, "summary.json"), "w") as f:
        json.dump(doc, f, indent=2)
    with open(os.path.join(res, "summary.md"), "w") as f:
        f.write(markdown(env, ph, parity, made, hf, rows, tgt))
    try:
        png = sweep_png(res, rows, hf)
    except Exception as e:  # a plot must never cost the summary
        print(f"summary: no sweep.png ({e})")
        png = None
    print(f"summary: {os.path.join(res, 'summary.md')}" + (f", {png}" if png else ""))


if __name__ == "__main__":
    sys.exit(main())

"""Machine facts for the comparison: CPU, memory bandwidth, weight bytes.

Memory bandwidth is measured on a 512 MiB array (far beyond any cache): copy
(numpy; bytes read + bytes written per second), read (numpy's max-reduce,
torch's sum) and a native vector read loop (`membw.c`, compiled here with
gcc, on huge pages; 1, 2, 4 and 8 interleaved streams per thread, and one
stream with a non-temporal prefetch ahead, the best kept), each with
1 thread and with one thread per core. numpy and torch alone can understate
what two cores stream (45 and 49 GB/s where the native loop read 86 in the
same sample), so the native loop is the figure that matters; the highest
figure of all is the one the one-stream bounds use. `--again` measures once
more into an existing machine.json (run.sh does so right before and right
after inferd's one-stream run, since this VM's bandwidth moves between two
speeds within seconds) and the bounds then use the highest figure of all
samples. `--pair-sample` adds a quick native-only sample to `pair_samples`,
for the `pairs` workload (one-stream pieces between samples seconds apart).

A decode step of one stream reads every weight once (SmolLM2's embedding is
tied to the LM head, so the whole table is read too), so
    tok/s bound = bandwidth / weight bytes
for the weights in f32, bf16 and as stored in the GGUF (Q4_1, embedding Q8_0).

Usage: python membw.py --gguf FILE --out machine.json [--set key=value ...]
Needs numpy and gguf (the torch venv has both).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

MIB = 1 << 20


def best_time(fn, repeat=5):
    fn()  # warm: fault the pages in
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def threaded(parts, fn):
    def run():
        ts = [threading.Thread(target=fn, args=(p,)) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    return run


def bandwidth(size_mib=512):
    n = size_mib * MIB // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    nbytes = src.nbytes
    cores = os.cpu_count() or 1
    idx = np.linspace(0, n, cores + 1, dtype=np.int64)
    halves = [(int(a), int(b)) for a, b in zip(idx[:-1], idx[1:])]
    out = {}
    out["copy_1t_gbs"] = 2 * nbytes / best_time(lambda: np.copyto(dst, src)) / 1e9
    out[f"copy_{cores}t_gbs"] = 2 * nbytes / best_time(
        threaded(halves, lambda p: np.copyto(dst[p[0] : p[1]], src[p[0] : p[1]]))
    ) / 1e9
    out["read_1t_gbs"] = nbytes / best_time(lambda: src.max()) / 1e9
    out[f"read_{cores}t_gbs"] = nbytes / best_time(threaded(halves, lambda p: src[p[0] : p[1]].max())) / 1e9
    try:
        import torch

        t = torch.from_numpy(src)
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            out[f"read_torch_{threads}t_gbs"] = nbytes / best_time(lambda: t.sum()) / 1e9
    except ImportError:
        pass
    out.update(native(size_mib, cores))
    out = {k: round(v, 2) for k, v in out.items()}
    out["array_mib"] = size_mib
    return out


def native(size_mib, cores, thread_counts=None):
    """`membw.c`'s read loop, with 1 thread and with one per core (or the
    given thread counts), best over its ways of reading; empty when there is
    no gcc to build it."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return {}
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "membw.c")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "membw")
        try:
            subprocess.run([cc, "-O3", "-march=native", "-pthread", src, "-o", exe], check=True, capture_output=True)
        except subprocess.CalledProcessError as e:
            print(f"membw.c did not build ({e.stderr.decode(errors='replace').strip()}); numpy and torch only")
            return {}
        out = {}
        for threads in thread_counts or sorted({1, cores}):
            best = 0.0
            # Plain loads over 1-8 interleaved streams, and one stream with a
            # non-temporal software prefetch 8 KiB ahead (what gemv_bf16's
            # one-pass tiles do): whichever this machine streams fastest.
            for streams, ahead in ((1, 0), (2, 0), (4, 0), (8, 0), (1, 8192)):
                r = subprocess.run([exe, str(threads), str(size_mib), str(streams), str(ahead)], capture_output=True, text=True)
                if r.returncode == 0:
                    best = max(best, float(r.stdout.strip()))
            if best:
                out[f"read_native_{threads}t_gbs"] = best
        return out


def pair_sample(path, size_mib, key="pair_samples"):
    """One quick sample (the native loop with one thread per core) for the
    `pairs` workload, appended to `key` (`pair_samples` for inferd's pieces,
    `pair_samples_gguf` for inferd-gguf's); it counts towards the run's
    highest figure like every other sample."""
    with open(path) as f:
        doc = json.load(f)
    cores = os.cpu_count() or 1
    bw = native(size_mib, cores, [cores])
    if not bw:
        sys.exit("pairs need membw.c's native loop (gcc)")
    sample = dict({k: round(v, 2) for k, v in bw.items()}, date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    doc.setdefault(key, []).append(sample)
    used = max([doc["bandwidth"]["used_gbs"], max(bw.values())])
    doc["bandwidth"]["used_gbs"] = used
    doc["one_stream_bound_tok_s"] = bounds(used, doc["weights"])
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(json.dumps({"pair_sample": sample}))


def weights(path):
    import gguf

    reader = gguf.GGUFReader(path)
    params = 0
    stored = 0
    types = {}
    for t in reader.tensors:
        params += int(t.n_elements)
        stored += int(t.n_bytes)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + int(t.n_elements)
    return {
        "file": os.path.basename(path),
        "params": params,
        "f32_bytes": 4 * params,
        "bf16_bytes": 2 * params,
        "gguf_bytes": stored,
        "gguf_types_params": types,
    }


def cpu():
    info = {"cpus": os.cpu_count()}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "L3 cache", "L2 cache", "Hypervisor vendor"):
                info[k.strip()] = v.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        with open("/proc/meminfo") as f:
            info["MemTotal"] = f.readline().split(":")[1].strip()
    except OSError:
        pass
    return info


def best_gbs(bw):
    return max(v for k, v in bw.items() if k.endswith("_gbs") and k != "used_gbs")


def bounds(used, w):
    return {
        "f32": round(used * 1e9 / w["f32_bytes"], 1),
        "bf16": round(used * 1e9 / w["bf16_bytes"], 1),
        "q4_1": round(used * 1e9 / w["gguf_bytes"], 1),
    }


def again(path, size_mib):
    """Measure once more; the bounds use the highest figure of every sample."""
    with open(path) as f:
        doc = json.load(f)
    bw = dict(bandwidth(size_mib), date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    doc.setdefault("bandwidth_again", []).append(bw)
    later = doc["bandwidth_again"] + doc.get("pair_samples", []) + doc.get("pair_samples_gguf", [])
    used = max([best_gbs(doc["bandwidth"])] + [best_gbs(b) for b in later])
    doc["bandwidth"]["used_gbs"] = used
    doc["one_stream_bound_tok_s"] = bounds(used, doc["weights"])
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(json.dumps({"bandwidth_again": bw, "one_stream_bound_tok_s": doc["one_stream_bound_tok_s"]}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf")
    ap.add_argument("--out", required=True)
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--again", action="store_true", help="add a bandwidth sample to an existing --out")
    ap.add_argument("--pair-sample", action="store_true", help="add a quick native sample to --out's pair_samples")
    ap.add_argument("--pair-key", default="pair_samples", help="the list --pair-sample appends to")
    ap.add_argument("--set", nargs="*", default=[], help="extra key=value facts to record")
    a = ap.parse_args()
    if a.again:
        return again(a.out, a.size_mib)
    if a.pair_sample:
        return pair_sample(a.out, a.size_mib, a.pair_key)
    if not a.gguf:
        ap.error("--gguf is required")

    bw = bandwidth(a.size_mib)
    used = best_gbs(bw)
    w = weights(a.gguf)
    doc = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu(),
        "bandwidth": dict(bw, used_gbs=used),
        "weights": w,
        "one_stream_bound_tok_s": bounds(used, w),
    }
    for kv in a.set:
        k, _, v = kv.partition("=")
        doc[k] = v
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(json.dumps({"bandwidth": doc["bandwidth"], "one_stream_bound_tok_s": doc["one_stream_bound_tok_s"]}))


if __name__ == "__main__":
    main()

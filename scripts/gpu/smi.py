"""Sample GPU utilisation and memory every --interval-ms until stopped (SIGTERM/SIGINT).

Runs `nvidia-smi --query-gpu=... --format=csv,noheader,nounits -lms N` and
writes each sample with the Unix time it was read, so summarize.py can cut
the series into the phases gpu-check.sh records:

    t_unix,gpu,util_pct,mem_used_mib,mem_total_mib,power_w
"""
import argparse
import shutil
import signal
import subprocess
import sys
import time

FIELDS = "index,utilization.gpu,memory.used,memory.total,power.draw"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval-ms", type=int, default=500)
    args = ap.parse_args()
    if not shutil.which("nvidia-smi"):
        sys.exit("smi.py: nvidia-smi not found")
    proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={FIELDS}", "--format=csv,noheader,nounits",
                             "-lms", str(args.interval_ms)], stdout=subprocess.PIPE, text=True, bufsize=1)

    def stop(*_):
        proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(args.out, "w", buffering=1) as f:
        f.write("t_unix,gpu,util_pct,mem_used_mib,mem_total_mib,power_w\n")
        for line in proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) != 5:
                continue
            f.write(f"{time.time():.3f}," + ",".join(parts) + "\n")
    proc.wait()


if __name__ == "__main__":
    main()

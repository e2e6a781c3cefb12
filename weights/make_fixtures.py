"""Build the test fixtures (called by scripts/setup.sh; idempotent).

Each `weights/fixtures_<name>.py` script writes one fixture folder,
`<out>/<name>/`. A folder is rebuilt only when its script (or the torch /
transformers versions) changed, so a second `make setup` is instant.

Scripts receive: --out <folder to fill> --root <repository root>.
"""
import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def versions() -> str:
    import torch
    import transformers
    return f"torch={torch.__version__} transformers={transformers.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default=None, help="build just this fixture")
    args = ap.parse_args()
    root = os.path.dirname(HERE)
    ver = versions()
    for script in sorted(glob.glob(os.path.join(HERE, "fixtures_*.py"))):
        name = os.path.basename(script)[len("fixtures_"):-3]
        if args.only and name != args.only:
            continue
        out = os.path.join(args.out, name)
        with open(script, "rb") as f:
            digest = hashlib.sha256(f.read() + ver.encode()).hexdigest()
        stamp = os.path.join(out, ".stamp")
        if os.path.exists(stamp) and open(stamp).read() == digest:
            continue
        print(f"[fixtures] building {name}", flush=True)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.makedirs(out)
        subprocess.run([sys.executable, script, "--out", out, "--root", root], check=True)
        with open(stamp, "w") as f:
            f.write(digest)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Build the bundle a GPU machine needs to run scripts/gpu-check.sh: the GPU
# machines have no Rust and no internet, so the release binary is built here
# and travels with the scripts.
#
#   scripts/gpu-bundle.sh [--no-build]
#   -> target/gpu-bundle/inferd-gpu/          bin/inferd (stripped), scripts/gpu-check.sh,
#                                             scripts/gpu/*, weights/fixtures_tiny.py, MANIFEST
#      target/gpu-bundle/inferd-gpu.tar.gz    the same, packed (a few MiB)
#
# libtorch is NOT in the bundle (it is ~1 GB): the binary finds it through
# LD_LIBRARY_PATH, which gpu-check.sh points at the GPU machine's venv
# (/opt/torch/.venv/.../torch/lib, torch 2.11.0+cu130, the same libtorch this
# binary was linked against: ~/.cache/inferd/venv's torch==2.11.0 wheel, CUDA
# build, so libtorch_cuda.so is a NEEDED entry and CUDA works there).
# build.rs writes a RUNPATH of `<this machine's venv>/torch/lib:$ORIGIN/lib`;
# the first entry does not exist on the GPU machine and would let the dry run
# here succeed without LD_LIBRARY_PATH, hiding a broken setup. So the bundled
# binary's RUNPATH is rewritten in place to `$ORIGIN/lib` alone (patchelf is
# not needed: the string in .dynstr is overwritten with a shorter one).
# LD_LIBRARY_PATH is searched before RUNPATH, so it always wins.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BUILD=1
[[ ${1:-} == --no-build ]] && BUILD=0
OUTDIR=target/gpu-bundle
B=$OUTDIR/inferd-gpu
if [[ $BUILD == 1 ]]; then
  cargo build --release
fi
[[ -x target/release/inferd ]] || { echo "no target/release/inferd; build first" >&2; exit 1; }

rm -rf "$B" "$OUTDIR/inferd-gpu.tar.gz"
mkdir -p "$B/bin" "$B/scripts/gpu" "$B/weights"
cp target/release/inferd "$B/bin/inferd"
strip --strip-all "$B/bin/inferd"
# tcmalloc (linked by build.rs when installed) is not on the GPU machines:
# it travels in bin/lib, which the RUNPATH below points at.
tcm=$(ldd target/release/inferd | awk '/libtcmalloc_minimal/ {print $3}')
if [[ -n $tcm ]]; then
  mkdir -p "$B/bin/lib"
  cp -L "$tcm" "$B/bin/lib/"
fi

# RUNPATH -> $ORIGIN/lib (see the header).
python3 - "$B/bin/inferd" <<'EOF'
import re, subprocess, sys
path = sys.argv[1]
dyn = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
m = re.search(r"\((RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[(.*)\]", dyn)
if not m:
    sys.exit("no RUNPATH/RPATH in the binary (was LIBTORCH set when building?)")
old = m.group(2).encode()
new = b"$ORIGIN/lib"
data = bytearray(open(path, "rb").read())
needle = old + b"\0"
if data.count(needle) != 1:
    sys.exit(f"RUNPATH string found {data.count(needle)} times; not rewriting")
i = data.index(needle)
data[i:i + len(old)] = new + b"\0" * (len(old) - len(new))
open(path, "wb").write(data)
print(f"RUNPATH: {old.decode()} -> {new.decode()}")
EOF

cp scripts/gpu-check.sh "$B/scripts/"
cp scripts/gpu/*.py scripts/gpu/README.md "$B/scripts/gpu/"
cp weights/fixtures_tiny.py "$B/weights/"
TORCH_LIB=$("${INFERD_CACHE:-$HOME/.cache/inferd}/venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src actors Cargo.toml Cargo.lock build.rs || echo "-dirty")
echo "$COMMIT" > "$B/MANIFEST.commit"
{
  echo "inferd GPU bundle"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version | head -1)"
  echo "commit: $COMMIT"
  echo "version: $(LD_LIBRARY_PATH=$TORCH_LIB "$B/bin/inferd" --version 2>/dev/null || echo '?')"
  echo "libtorch linked against: torch==2.11.0 (CUDA build), from ~/.cache/inferd/venv"
  echo "needs glibc >= $(objdump -T "$B/bin/inferd" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 | cut -d_ -f2)," \
       "libstdc++ $(objdump -T "$B/bin/inferd" | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -1)"
  echo "sha256: $(sha256sum "$B/bin/inferd" | cut -d' ' -f1)  bin/inferd"
  echo "run: LD_LIBRARY_PATH is set by scripts/gpu-check.sh from its venv (default /opt/torch/.venv)"
} > "$B/MANIFEST"

echo "== dynamic section of the bundled binary"
readelf -d "$B/bin/inferd" | grep -E "NEEDED|RUNPATH|RPATH"
echo "== without LD_LIBRARY_PATH (expected: libtorch not found; gpu-check.sh sets it)"
env -u LD_LIBRARY_PATH ldd "$B/bin/inferd" | grep -E "torch|c10" || true
echo "== with LD_LIBRARY_PATH=$TORCH_LIB (what gpu-check.sh does with the GPU machine's venv)"
LD_LIBRARY_PATH=$TORCH_LIB ldd "$B/bin/inferd" | grep -E "torch|c10|not found"
if LD_LIBRARY_PATH=$TORCH_LIB ldd "$B/bin/inferd" | grep -q "not found"; then
  echo "!! libraries missing even with LD_LIBRARY_PATH" >&2; exit 1
fi
LD_LIBRARY_PATH=$TORCH_LIB "$B/bin/inferd" --version

tar czf "$OUTDIR/inferd-gpu.tar.gz" -C "$OUTDIR" inferd-gpu
cat "$B/MANIFEST"
echo "bundle: $OUTDIR/inferd-gpu.tar.gz ($(du -h "$OUTDIR/inferd-gpu.tar.gz" | cut -f1); binary $(du -h "$B/bin/inferd" | cut -f1))"

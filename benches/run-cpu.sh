#!/usr/bin/env bash
# Every CPU benchmark, back to back on a quiet machine, with the transformers
# baselines in the same run. Results land in benches/results/.
#   decode step (criterion) + transformers generate  -> decode.txt, transformers_decode.json
#   in-process engine + transformers (f32; INFERD_BENCH_DTYPE) -> engine-<dtype>.json, transformers_engine-<dtype>.json
#   HTTP streaming at 16 clients (inferd bench)        -> http16/bench.json
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${INFERD_CACHE:-$HOME/.cache/inferd}"
PY="$CACHE/venv/bin/python"
OUT=benches/results
mkdir -p "$OUT"
GGUF=weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
{ lscpu | grep -E "Model name|^CPU\(s\)"; date -u; } > "$OUT/machine.txt"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ " $* " == *" decode "* || $# -eq 0 ]]; then
  step "decode step: inferd (criterion)"
  cargo bench --bench decode 2>&1 | grep -E "smollm2_decode_step|thrpt" | tee "$OUT/decode.txt"
  step "decode step: transformers"
  "$PY" benches/transformers_decode.py "$OUT/transformers_decode.json"
fi
if [[ " $* " == *" engine "* || $# -eq 0 ]]; then
  step "engine in-process"
  cargo bench --bench engine 2>&1 | tail -12
  step "engine: transformers"
  "$PY" benches/transformers_engine.py
fi
if [[ " $* " == *" http "* || $# -eq 0 ]]; then
  step "HTTP streaming, 16 clients"
  cargo build --release -q
  dir=$(mktemp -d)
  sed -e "s#\.\./weights#$PWD/weights#" -e "s#^port = 8080#port = 0#" -e "s#^data_dir = .*#data_dir = \"$dir/data\"#" config/default.toml > "$dir/inferd.toml"
  coproc SRV { ./target/release/inferd serve --config "$dir/inferd.toml" --exit-on-stdin-eof; }
  read -r line <&"${SRV[0]}"; base=${line#listening on }
  until curl -sf "$base/health/ready" >/dev/null; do sleep 0.5; done
  ./target/release/inferd bench --base-url "$base" --api completions --concurrency 16 --num-requests 32 \
    --input-len 128 --output-len 128 --tokenizer "$GGUF" --output-dir "$OUT/http16" --no-progress
  kill "$SRV_PID" 2>/dev/null || true
fi

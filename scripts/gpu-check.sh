#!/usr/bin/env bash
# The GPU check (issue 6) in one script, for a GPU machine with no internet and
# no Rust: the release binary comes prebuilt (scripts/gpu-bundle.sh), torch and
# transformers from a venv (default /opt/torch/.venv). Stages:
#   (a) CUDA parity: tiny LLaMA / Qwen2 / GPT-2 made by transformers, `inferd
#       logits` vs transformers on the same device, f32 and bf16;
#   (b) a LLaMA-2-7B-shaped model with random bf16 weights (save_pretrained),
#       served by `inferd serve` on the GPU and measured by `inferd bench` at
#       concurrency 1, 8, 32, 128 (512 in / 256 out, ignore_eos) and at one
#       request rate, with nvidia-smi sampling utilisation and memory;
#   (c) transformers' generate on the same model: one request and a padded batch.
# Everything lands in one folder: JSON per stage, summary.md / summary.json,
# the bench PNGs, the log. A time budget (default 510 s on a GPU) skips bench levels
# rather than overrun; the summary is written whatever happens.
#
#   scripts/gpu-check.sh [--dry-run] [--out DIR] [--bin PATH] [--venv DIR]
#                        [--device cuda:0] [--budget SECONDS] [--work DIR] [--keep-work]
#
# --dry-run: CPU, a 2-layer model of the same vocabulary, 32 in / 16 out,
# concurrency 1,4, no nvidia-smi; proves the pipeline on a CPU machine.
# Output: --out DIR; else when $OUT is set (the device tool, which brings back
# at most 8 files) the folder is written in the work dir and $OUT gets
# gpu-results.tar.gz + summary.md + summary.json + gpu-check.log + sweep.png;
# else benches/results/gpu/<UTC date> (gpu-dryrun/ for --dry-run).
# Environment overrides: INFERD_GPU_VENV, INFERD_BIN, LEVELS (1,8,32,128),
# RATE (req/s; default: half the request throughput measured at c=32),
# KV_MB (49152), INPUT_LEN, OUTPUT_LEN, HF_BATCH (32), SHAPE (7b; tiny for a quick smoke run).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GPU_DIR=$ROOT/scripts/gpu
DRY=0; OUTDIR=""; BIN=${INFERD_BIN:-}; VENV=${INFERD_GPU_VENV:-}; DEVICE=""; BUDGET=""; WORK=""; KEEP=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUTDIR=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --venv) VENV=$2; shift ;;
    --device) DEVICE=$2; shift ;;
    --budget) BUDGET=$2; shift ;;
    --work) WORK=$2; shift ;;
    --keep-work) KEEP=1 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

T0=$(date +%s)
STAMP=$(date -u +%Y-%m-%dT%H%MZ)
if [[ $DRY == 1 ]]; then
  VENV=${VENV:-${INFERD_CACHE:-$HOME/.cache/inferd}/venv}
  DEVICE=${DEVICE:-cpu}; BUDGET=${BUDGET:-1500}
  SHAPE=${SHAPE:-tiny}; DTYPE=bf16; KV_MB=${KV_MB:-256}
  INPUT_LEN=${INPUT_LEN:-32}; OUTPUT_LEN=${OUTPUT_LEN:-16}; LEVELS=${LEVELS:-1,4}; HF_BATCH=${HF_BATCH:-4}
  HF_RESERVE=60
else
  VENV=${VENV:-/opt/torch/.venv}
  DEVICE=${DEVICE:-cuda:0}; BUDGET=${BUDGET:-510}
  SHAPE=${SHAPE:-7b}; DTYPE=bf16
  # 48 GiB of KV = 98304 token slots = 128 sequences of 768 (512 + 256), next
  # to 12.6 GiB of weights on an 80 GB card, with ~15 GiB left for activations.
  KV_MB=${KV_MB:-49152}
  INPUT_LEN=${INPUT_LEN:-512}; OUTPUT_LEN=${OUTPUT_LEN:-256}; LEVELS=${LEVELS:-1,8,32,128}; HF_BATCH=${HF_BATCH:-32}
  HF_RESERVE=100   # seconds kept back from the bench for the transformers baseline + summary
fi
DEADLINE=$((T0 + BUDGET))
PY=$VENV/bin/python3
[[ -x $PY ]] || PY=$VENV/bin/python
[[ -x $PY ]] || { echo "gpu-check.sh: no python in $VENV (set --venv or INFERD_GPU_VENV)" >&2; exit 2; }

# The binary: --bin / INFERD_BIN, the bundle's bin/, a local bundle, the release build.
if [[ -z $BIN ]]; then
  for b in "$ROOT/bin/inferd" "$ROOT/target/gpu-bundle/inferd-gpu/bin/inferd" "$ROOT/target/release/inferd"; do
    [[ -x $b ]] && { BIN=$b; break; }
  done
fi
[[ -n $BIN && -x $BIN ]] || { echo "gpu-check.sh: no inferd binary (build it, or --bin PATH)" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

# libtorch comes from the venv's torch: the binary is built elsewhere, its
# RUNPATH names only $ORIGIN/lib (gpu-bundle.sh drops the build machine's path).
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
  || { echo "gpu-check.sh: $PY cannot import torch" >&2; exit 2; }
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error

# The work dir holds the models (13.5 GB for 7B): the first candidate with room.
if [[ -z $WORK ]]; then
  need_kb=$((DRY == 1 ? 1000000 : 20000000))
  for d in "${TMPDIR:-/tmp}" /var/tmp "$(dirname "$ROOT")" "$ROOT"; do
    avail=$(df -Pk "$d" 2>/dev/null | awk 'NR==2{print $4}')
    if [[ -n $avail && $avail -ge $need_kb && -w $d ]]; then WORK=$(mktemp -d "$d/inferd-gpu.XXXXXX"); break; fi
  done
  [[ -n $WORK ]] || { echo "gpu-check.sh: no folder with $((need_kb / 1000000)) GB free for the models (--work DIR)" >&2; exit 2; }
fi
mkdir -p "$WORK"
PACK=""
if [[ -n $OUTDIR ]]; then RES=$OUTDIR
elif [[ -n ${OUT:-} ]]; then RES=$WORK/$STAMP; PACK=$OUT
elif [[ $DRY == 1 ]]; then RES=$ROOT/benches/results/gpu-dryrun/$STAMP
else RES=$ROOT/benches/results/gpu/$STAMP
fi
mkdir -p "$RES/bench"
RES=$(cd "$RES" && pwd)
exec > >(tee -a "$RES/gpu-check.log") 2>&1

FAILED=0; SRV_PID=""; SMI_PID=""
now() { date +%s.%N | cut -c1-14; }
left() { echo $((DEADLINE - $(date +%s))); }
step() { printf '\n== [%4ds] %s\n' $(($(date +%s) - T0)) "$*"; }
# record NAME STATUS RC START END
record() {
  printf '{"name":"%s","status":"%s","rc":%d,"start":%s,"end":%s,"seconds":%s}\n' "$1" "$2" "$3" "$4" "$5" \
    "$(awk -v a="$4" -v b="$5" 'BEGIN{printf "%.1f", b-a}')" >> "$RES/phases.jsonl"
}
# phase NAME LIMIT_S CMD... : run CMD under a time limit and record it.
phase() {
  local name=$1 limit=$2; shift 2
  if ((limit < ${MIN_S:-5})); then step "$name: skipped (out of time)"; record "$name" skipped 0 "$(now)" "$(now)"; return 1; fi
  step "$name (limit ${limit}s)"
  local start rc status
  start=$(now)
  timeout --kill-after=10 "$limit" "$@"; rc=$?
  status=ok; ((rc == 124 || rc == 137)) && status=timeout; ((rc != 0 && rc != 124 && rc != 137)) && status=failed
  record "$name" "$status" "$rc" "$start" "$(now)"
  [[ $status == ok ]] || { FAILED=1; echo "!! $name: $status (rc $rc)"; }
  return $rc
}
cap() { local l; l=$(($(left) - ${2:-0})); ((l < $1)) && echo $l || echo "$1"; }

stop_server() {
  [[ -n $SRV_PID ]] || return 0
  exec 7>&- 2>/dev/null   # closing its stdin ends it (--exit-on-stdin-eof)
  for _ in $(seq 1 40); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.5; done
  kill "$SRV_PID" 2>/dev/null; wait "$SRV_PID" 2>/dev/null
  SRV_PID=""
  { echo "--- serve stdout (tail)"; tail -n 50 "$WORK/serve.out"; echo "--- serve stderr (tail)"; tail -n 200 "$WORK/serve.err"; } \
    > "$RES/serve.log" 2>/dev/null
}
finish() {
  stop_server
  if [[ -n $SMI_PID ]]; then kill "$SMI_PID" 2>/dev/null; wait "$SMI_PID" 2>/dev/null; fi
  step "summary"
  "$PY" "$GPU_DIR/summarize.py" "$RES" || FAILED=1
  [[ -f $RES/summary.md ]] && cat "$RES/summary.md"
  if [[ -n $PACK ]]; then
    mkdir -p "$PACK"
    tar czf "$PACK/gpu-results.tar.gz" -C "$(dirname "$RES")" "$(basename "$RES")"
    for f in summary.md summary.json sweep.png; do [[ -f $RES/$f ]] && cp "$RES/$f" "$PACK/"; done
    echo "packed $RES into $PACK ($(du -sh "$PACK" | cut -f1))"
  fi
  [[ $KEEP == 1 ]] && echo "work dir kept: $WORK" || rm -rf "$WORK/model" "$WORK/tiny" "$WORK/logits"
  local total=$(($(date +%s) - T0))
  echo "gpu-check: $([[ $FAILED == 0 ]] && echo PASS || echo FAIL) in ${total}s -> $RES"
  [[ -n $PACK ]] && cp "$RES/gpu-check.log" "$PACK/" 2>/dev/null
  exit $FAILED
}
trap finish EXIT
trap 'echo "interrupted"; FAILED=1; exit 1' INT TERM

# ---------------------------------------------------------------- environment
step "environment ($([[ $DRY == 1 ]] && echo DRY RUN || echo GPU), budget ${BUDGET}s)"
echo "binary: $BIN"; echo "python: $PY"; echo "LD_LIBRARY_PATH: $LD_LIBRARY_PATH"; echo "work: $WORK"; echo "results: $RES"
if ldd "$BIN" | grep "not found"; then echo "!! the binary misses libraries (above)"; FAILED=1; exit 1; fi
ldd "$BIN" | grep -E "libtorch|libc10"
df -h "$WORK" | tail -1
[[ $DRY == 1 ]] || nvidia-smi || { echo "!! nvidia-smi failed"; FAILED=1; exit 1; }
COMMIT=$(cat "$ROOT/MANIFEST.commit" 2>/dev/null || git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
"$PY" - "$RES/env.json" "$DEVICE" <<EOF || { FAILED=1; exit 1; }
import json, sys, torch, transformers, platform
out, device = sys.argv[1], sys.argv[2]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device")
gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
doc = {"date": "$STAMP", "dry_run": $DRY == 1, "device": device, "gpu": gpu, "torch": torch.__version__,
       "cuda": torch.version.cuda, "transformers": transformers.__version__, "python": platform.python_version(),
       "inferd_version": "$("$BIN" --version 2>/dev/null)", "commit": "$COMMIT", "budget_s": $BUDGET,
       "shape": "$SHAPE", "dtype": "$DTYPE", "kv_mb": $KV_MB, "input_len": $INPUT_LEN, "output_len": $OUTPUT_LEN,
       "levels": "$LEVELS", "rate": "${RATE:-auto}", "hf_batch": $HF_BATCH, "host": platform.node()}
if device.startswith("cuda"):
    free, total = torch.cuda.mem_get_info(0)
    doc.update(gpu_memory_total_bytes=total, gpu_memory_free_bytes=free)
json.dump(doc, open(out, "w"), indent=2)
print(json.dumps(doc))
EOF
if [[ $DRY == 0 ]]; then
  "$PY" "$GPU_DIR/smi.py" --out "$RES/smi.csv" --interval-ms 500 &
  SMI_PID=$!
fi

# ---------------------------------------------------------------- (a) parity
phase parity-models "$(cap 120)" "$PY" "$GPU_DIR/make_tiny.py" --out "$WORK/tiny" \
  && phase parity "$(cap 300)" "$PY" "$GPU_DIR/parity.py" --inferd "$BIN" --models "$WORK/tiny" \
       --device "$DEVICE" --dtypes f32,bf16 --out "$RES" --work "$WORK/logits"

# ---------------------------------------------------------------- (b) 7B model, serve, bench
MODEL=$WORK/model
if phase make-model "$(cap 240)" "$PY" "$GPU_DIR/make_7b.py" --out "$MODEL" --shape "$SHAPE" \
     --device "$DEVICE" --dtype "$DTYPE" --info "$RES/make_7b.json"; then
  cat > "$WORK/serve.toml" <<EOF
# written by scripts/gpu-check.sh
[server]
host = "127.0.0.1"
port = 0
data_dir = "$WORK/data"

[models.llama]
active = "v1"

[models.llama.versions.v1]
source = "$MODEL"
dtype = "$DTYPE"
devices = ["$DEVICE"]
kv_cache_mb = $KV_MB
block_size = 16
max_num_seqs = 128
max_batched_tokens = 8192
max_context = 2048
max_queue_requests = 4096
max_queue_tokens = 4194304
prefix_caching = true
EOF
  cp "$WORK/serve.toml" "$RES/serve.toml"
  start=$(now)
  if (($(cap 300 "$HF_RESERVE") < 20)); then
    step "serve: skipped (out of time)"; record serve-load skipped 0 "$start" "$(now)"
  else
    step "serve: starting inferd on $DEVICE"
    rm -f "$WORK/srv.in"; mkfifo "$WORK/srv.in"
    "$BIN" serve --config "$WORK/serve.toml" --exit-on-stdin-eof < "$WORK/srv.in" > "$WORK/serve.out" 2> "$WORK/serve.err" &
    SRV_PID=$!
    exec 7> "$WORK/srv.in"
    BASE=""; limit=$(cap 300 "$HF_RESERVE")
    for _ in $(seq 1 $((limit * 2))); do
      kill -0 "$SRV_PID" 2>/dev/null || break
      [[ -z $BASE ]] && BASE=$(sed -n 's/^listening on //p' "$WORK/serve.out" | head -1)
      if [[ -n $BASE ]] && "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" "$BASE/health/ready" 2>/dev/null; then
        READY=1; break
      fi
      sleep 0.5
    done
    if [[ ${READY:-0} == 1 ]]; then
      record serve-load ok 0 "$start" "$(now)"
      echo "ready at $BASE in $(awk -v a="$start" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')s"; grep -iE "ready|loaded" "$WORK/serve.err" | tail -3
      BENCH=("$BIN" bench --base-url "$BASE" --model llama --api completions --tokenizer "$MODEL"
             --input-len "$INPUT_LEN" --no-progress --timeout 150s)
      phase warmup "$(cap 120 "$HF_RESERVE")" "${BENCH[@]}" --concurrency 4 --num-requests 4 --output-len 8 \
        --seed 99 --no-plots --output-dir "$WORK/warmup"
      IFS=, read -ra LV <<< "$LEVELS"
      i=0
      for c in "${LV[@]}"; do
        i=$((i + 1))
        # Requests and send window per level; every level's prompts differ (seed) so
        # no level reuses another's prefix cache.
        if [[ $DRY == 1 ]]; then n=$((c * 2 + 1)); d=8s
        else case $c in 1) n=3; d=20s ;; 8) n=16; d=15s ;; 32) n=48; d=15s ;; *) n=$c; d=5s ;; esac
        fi
        # A level that cannot get 40 s is skipped (a killed run writes no bench.json).
        MIN_S=40 phase "bench-c$c" "$(cap 200 "$HF_RESERVE")" "${BENCH[@]}" --concurrency "$c" --num-requests "$n" \
          --output-len "$OUTPUT_LEN" --duration "$d" --seed "$i" --slo ttft=100ms,e2e=500ms --label "c=$c" --output-dir "$RES/bench/c$c"
      done
      if [[ -z ${RATE:-} ]]; then
        RATE=$("$PY" - "$RES/bench" <<'EOF'
import json, os, sys
best = None
for name in ("c32", "c8", "c4", "c1"):
    try:
        s = json.load(open(os.path.join(sys.argv[1], name, "bench.json")))["runs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        continue
    if s.get("completed"):
        best = s["request_throughput"]
        break
print(f"{max(0.25, round((best or 1.0) * 0.5 * 4) / 4):g}")
EOF
  )
      fi
      if [[ $DRY == 1 ]]; then n=10; d=5s; else n=400; d=15s; fi
      MIN_S=40 phase bench-rate "$(cap 200 "$HF_RESERVE")" "${BENCH[@]}" --request-rate "$RATE" --arrival poisson \
        --num-requests "$n" --output-len "$OUTPUT_LEN" --duration "$d" --seed 50 --slo ttft=100ms,e2e=500ms --label "rate=$RATE" \
        --output-dir "$RES/bench/rate"
    else
      record serve-load failed 1 "$start" "$(now)"; FAILED=1
      echo "!! inferd serve did not become ready"; tail -n 30 "$WORK/serve.err"
    fi
    stop_server
  fi
fi

# ---------------------------------------------------------------- (c) transformers baseline
if [[ -d $MODEL ]]; then
  phase hf-baseline "$(cap 240)" "$PY" "$GPU_DIR/hf_baseline.py" --model "$MODEL" --device "$DEVICE" \
    --dtype "$DTYPE" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --batch "$HF_BATCH" \
    --out "$RES/hf_baseline.json"
fi
# finish() (the EXIT trap) writes the summary and sets the exit status.

#!/usr/bin/env bash
# inferd side by side with its peers, on the same CPU, in the same run, with
# the same load generator (`inferd bench`) and the same SmolLM2 GGUF.
#
#   benches/compare/run.sh [--smoke] [--install-only] [--no-build] [--levels 1,4,16,64]
#                          [--workloads sweep,prefix,pairs] [--num-requests N] [--out DIR]
#                          [--serial-max-level N] [peer...]
# --serial-max-level N: tf-serve and llama-cpp-python (one request at a time)
#          skip levels above N; at 64 they take 10-35 minutes and the result
#          is the same tok/s as at 1.
#
# peers (default: all of them):
#   inferd            inferd serve, prefix caching on (dtype $INFERD_DTYPE)
#   inferd-nocache    the same with prefix_caching = false (shared-prefix workload only)
#   inferd-gguf       inferd serve, dtype bf16, quantization = "gguf": the file's
#                     Q4_1/Q8_0 blocks multiplied as they are (sweep and pairs; AVX512_BF16)
#   inferd-amx        inferd serve with ONEDNN_MAX_CPU_ISA=ALL: on a CPU with AMX,
#                     oneDNN's AMX kernels (greedy outputs no longer batch-invariant;
#                     see README) instead of inferd's own (sweep only)
#   inferd-avx512     inferd serve with INFERD_AMX=off: on a CPU with AMX, the
#                     AVX-512 row kernels and oneDNN capped below AMX, as before
#                     inferd had its own AMX kernel (sweep only)
#   llama-server      llama.cpp's server, -np <concurrency> -cb, one server per level
#   llama-cpp-python  python -m llama_cpp.server (one request at a time)
#   tf-serve          transformers serve
#   tf-serve-cb       transformers serve --continuous-batching
# workloads:
#   sweep    concurrency 1,4,16,64; 128 in / 128 out, ignore_eos;
#            num-requests = max(2*concurrency, 8) per level
#   prefix   4 groups x 512-token shared system prompt + 128 in / 128 out,
#            64 requests at concurrency 16 (inferd, inferd-nocache, llama-server)
#   pairs    inferd alone (and inferd-gguf alone, where it is asked for), one
#            stream against the memory bandwidth of the same
#            seconds: a native bandwidth sample, then $PAIRS pieces of 2
#            requests (128 in / 128 out) each followed by another sample;
#            summarize.py judges each piece against the higher sample on
#            either side (this VM's bandwidth switches between two speeds
#            within seconds, so one sample per run cannot match the run),
#            with the host's steal time over the piece from /proc/stat
# --smoke: levels 1,2, 4 requests of 16 in / 16 out; prefix: 2 groups x 64
#          tokens, 8 requests at concurrency 2; results under
#          benches/results/tmp/compare-smoke (git-ignored).
#
# Every server is started fresh for every level (and killed, with its whole
# process group, on exit), gets a 2-request warm-up, and each level uses its
# own --seed so no server can reuse a previous level's prompts from a cache.
# Results: $OUT/<peer>/c<N>/bench.json (+ PNGs), $OUT/<peer>/prefix/,
# $OUT/machine.json (CPU, memory bandwidth, weight bytes, versions) and
# $OUT/summary.md from benches/compare/summarize.py. Server logs go to
# $INFERD_CACHE/peers/logs/<run>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
source benches/compare/install.sh   # CACHE, PEERS, install_peer, LLAMA_SERVER, LCP_VENV, TF_VENV

GGUF="$ROOT/weights/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
INFERD="${INFERD_BIN:-$ROOT/target/release/inferd}"
INFERD_DTYPE="${INFERD_DTYPE:-f32}"            # set bf16 where the CPU has native bf16 (avx512_bf16/AMX), see README
INFERD_MAX_NUM_SEQS="${INFERD_MAX_NUM_SEQS:-64}"
INFERD_KV_MB="${INFERD_KV_MB:-1024}"
TF_DTYPE="${TF_DTYPE:-float32}"
THREADS="${THREADS:-2}"
READY_TIMEOUT="${READY_TIMEOUT:-600}"           # seconds for a server to load
ALL_PEERS=(inferd inferd-gguf inferd-amx inferd-avx512 inferd-nocache llama-server llama-cpp-python tf-serve tf-serve-cb)

smoke=0 install_only=0 build=1 levels="" workloads="sweep,prefix,pairs" out="" peers=() num_requests="" serial_max=""
PAIRS="${PAIRS:-8}"
while (( $# )); do
  case "$1" in
    --smoke) smoke=1 ;;
    --install-only) install_only=1 ;;
    --no-build) build=0 ;;
    --levels) levels=$2; shift ;;
    --workloads) workloads=$2; shift ;;
    --out) out=$2; shift ;;
    --num-requests) num_requests=$2; shift ;;   # per sweep level, instead of the default
    --serial-max-level) serial_max=$2; shift ;; # skip levels above N for the one-at-a-time peers
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) [[ " ${ALL_PEERS[*]} " == *" $1 "* ]] || { echo "unknown peer $1 (${ALL_PEERS[*]})" >&2; exit 2; }
       peers+=("$1") ;;
  esac
  shift
done
(( ${#peers[@]} )) || peers=("${ALL_PEERS[@]}")

if (( smoke )); then
  levels=${levels:-1,2}; IN=16 OUTLEN=16
  PFX_GROUPS=2 PFX_LEN=64 PFX_N=8 PFX_C=2
  out=${out:-benches/results/tmp/compare-smoke}
else
  levels=${levels:-1,4,16,64}; IN=128 OUTLEN=128
  PFX_GROUPS=4 PFX_LEN=512 PFX_N=64 PFX_C=16
  out=${out:-benches/results/compare}
fi
nreq() { if [[ -n $num_requests ]]; then echo "$num_requests"; elif (( smoke )); then echo 4; else local n=$(( 2 * $1 )); (( n < 8 )) && n=8; echo $n; fi; }
IFS=, read -r -a LEVELS <<< "$levels"
has() { local x; for x in "${@:2}"; do [[ $x == "$1" ]] && return 0; done; return 1; }
log() { printf '\n\033[1m[compare]\033[0m %s\n' "$*" >&2; }

# --- install -----------------------------------------------------------------
[[ -f "$GGUF" ]] || { echo "missing $GGUF: run scripts/setup.sh (make setup)" >&2; exit 1; }
for p in "${peers[@]}"; do install_peer "$p"; done
(( install_only )) && { log "installed: ${peers[*]}"; exit 0; }
# inferd's binary is also the load generator, so it is needed for every peer.
if (( build )) && [[ -z "${INFERD_BIN:-}" ]]; then log "cargo build --release"; cargo build --release -q; fi
[[ -x "$INFERD" ]] || { echo "no $INFERD (cargo build --release)" >&2; exit 1; }

mkdir -p "$out"
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
LOGS="$PEERS/logs/$RUN_ID"; mkdir -p "$LOGS"
TMP=$(mktemp -d)
SRV_PID=""
stop_server() {
  if [[ -n "$SRV_PID" ]]; then
    kill -TERM -- "-$SRV_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=""
  fi
}
trap 'stop_server; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# start_server LOG CMD...: start CMD in its own process group (so the trap can
# kill it and its children), output to LOG.
start_server() {
  local logf=$1; shift
  : > "$logf"   # exists before anyone greps it
  setsid "$@" > "$logf" 2>&1 < /dev/null &
  SRV_PID=$!
}

# wait_ready URL LOG: poll URL until it answers 200; fail if the server dies.
wait_ready() {
  local url=$1 logf=$2 t0=$SECONDS
  until curl -sf -o /dev/null "$url"; do
    if ! kill -0 "$SRV_PID" 2>/dev/null; then
      echo "server exited before it was ready; last lines of $logf:" >&2; tail -30 "$logf" >&2; exit 1
    fi
    if (( SECONDS - t0 > READY_TIMEOUT )); then
      echo "server not ready after ${READY_TIMEOUT}s: $logf" >&2; tail -30 "$logf" >&2; exit 1
    fi
    sleep 0.5
  done
  log "ready in $((SECONDS - t0)) s ($url)"
}

# ggml's AMX matmul (llama.cpp's extra buffer type on CPUs with AMX)
# segfaulted on this GGUF on a 2-vCPU AMX Xeon (2026-12-01, gdb: in
# ggml_backend_amx_mul_mat, at the first batch), in llama-server and in
# llama-cpp-python alike; without extra buffer types both serve it.
LLAMA_NO_AMX=()
grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && LLAMA_NO_AMX=(--no-repack)

# Per-peer start: sets BASE, MODEL and BENCH_EXTRA. $1 = peer, $2 = parallel
# requests the server must hold (slots), $3 = tokens per request (prompt + output).
start_peer() {
  local peer=$1 slots=$2 per_req=$3 logf="$LOGS/$1-$4.log" port
  BENCH_EXTRA=()
  case "$peer" in
    inferd|inferd-nocache|inferd-gguf|inferd-amx|inferd-avx512)
      local cfg="$TMP/inferd-$peer.toml" pc=true dtype=$INFERD_DTYPE quant=none
      [[ $peer == inferd-nocache ]] && pc=false
      [[ $peer == inferd-gguf ]] && dtype=bf16 quant=gguf
      rm -rf "$TMP/data"
      sed -e "s#\.\./weights#$ROOT/weights#" -e "s#^port = .*#port = 0#" \
          -e "s#^data_dir = .*#data_dir = \"$TMP/data\"#" \
          -e "s#^dtype = .*#dtype = \"$dtype\"#" \
          -e "s#^quantization = .*#quantization = \"$quant\"#" \
          -e "s#^max_num_seqs = .*#max_num_seqs = $INFERD_MAX_NUM_SEQS#" \
          -e "s#^kv_cache_mb = .*#kv_cache_mb = $INFERD_KV_MB#" \
          -e "s#^prefix_caching = .*#prefix_caching = $pc#" config/default.toml > "$cfg"
      local want
      for want in "port = 0" "dtype = \"$dtype\"" "quantization = \"$quant\"" "max_num_seqs = $INFERD_MAX_NUM_SEQS" \
                  "kv_cache_mb = $INFERD_KV_MB" "prefix_caching = $pc"; do
        grep -q "^$want" "$cfg" || { echo "config/default.toml changed shape: no '$want' after the edits" >&2; exit 1; }
      done
      if [[ $peer == inferd-amx ]]; then
        ONEDNN_MAX_CPU_ISA=ALL start_server "$logf" "$INFERD" serve --config "$cfg"
      elif [[ $peer == inferd-avx512 ]]; then
        INFERD_AMX=off start_server "$logf" "$INFERD" serve --config "$cfg"
      else
        start_server "$logf" "$INFERD" serve --config "$cfg"
      fi
      local t0=$SECONDS
      until grep -q "listening on " "$logf"; do
        kill -0 "$SRV_PID" 2>/dev/null || { tail -30 "$logf" >&2; exit 1; }
        (( SECONDS - t0 < READY_TIMEOUT )) || { echo "inferd did not listen" >&2; exit 1; }
        sleep 0.2
      done
      BASE=$(grep -m1 -o "listening on http://[^ ]*" "$logf"); BASE=${BASE#listening on }
      MODEL=smollm2
      wait_ready "$BASE/health/ready" "$logf" ;;
    llama-server)
      port=$(free_port)
      # -c is shared by the slots: each gets -c / -np positions.
      local ctx=$(( slots * (per_req + 64) ))
      start_server "$logf" "$LLAMA_SERVER" -m "$GGUF" -c "$ctx" -np "$slots" -cb \
        -t "$THREADS" -tb "$THREADS" --host 127.0.0.1 --port "$port" "${LLAMA_NO_AMX[@]}"
      BASE="http://127.0.0.1:$port"; MODEL=smollm2
      # it drops reused keep-alive connections under load
      BENCH_EXTRA=(--one-connection-per-request)
      wait_ready "$BASE/health" "$logf" ;;
    llama-cpp-python)
      port=$(free_port)
      # lcp_serve.py = llama_cpp.server with EOS ignored (it has no ignore_eos field)
      LCP_NO_EXTRA_BUFTS=$(( ${#LLAMA_NO_AMX[@]} > 0 )) \
      start_server "$logf" "$LCP_VENV/bin/python" "$ROOT/benches/compare/lcp_serve.py" --model "$GGUF" \
        --model_alias smollm2 --n_threads "$THREADS" --n_threads_batch "$THREADS" \
        --n_ctx $(( per_req + 64 > 2048 ? per_req + 64 : 2048 )) \
        --interrupt_requests False --host 127.0.0.1 --port "$port"
      BASE="http://127.0.0.1:$port"; MODEL=smollm2
      wait_ready "$BASE/v1/models" "$logf" ;;
    tf-serve|tf-serve-cb)
      port=$(free_port)
      local cb=--no-continuous-batching
      [[ $peer == tf-serve-cb ]] && cb=--continuous-batching
      MODEL="$(dirname "$GGUF"):$(basename "$GGUF")"   # <folder>:<file>.gguf
      mkdir -p "$PEERS/hf-hub"
      start_server "$logf" env HF_HUB_OFFLINE=1 HF_HUB_CACHE="$PEERS/hf-hub" TRANSFORMERS_NO_ADVISORY_WARNINGS=1 \
        "$TF_VENV/bin/python" "$ROOT/benches/compare/tf_serve.py" serve "$cb" \
        --device cpu --dtype "$TF_DTYPE" --host 127.0.0.1 --port "$port" --log-level warning "$MODEL"
      BASE="http://127.0.0.1:$port"
      wait_ready "$BASE/health" "$logf" ;;   # the forced model is loaded before the server listens
  esac
}

FAILED=()
# bench DIR LABEL SEED ARGS...: one `inferd bench` run into DIR.
bench() {
  local dir=$1 label=$2 seed=$3; shift 3
  rm -rf "$dir"; mkdir -p "$dir"
  "$INFERD" bench --base-url "$BASE" --api completions --model "$MODEL" --tokenizer "$GGUF" \
    --seed "$seed" --timeout 3600s --output-dir "$dir" --label "$label" --no-progress \
    "${BENCH_EXTRA[@]}" "$@" | tee "$dir/table.txt"
  python3 - "$dir/bench.json" <<'PY' || FAILED+=("$label")
import json, sys
d = json.load(open(sys.argv[1]))
bad = [(r["name"], r["completed"], r["sent"], r["failed"], r["errors"][:3]) for r in d["runs"] if r["failed"] or r["completed"] != r["sent"]]
if bad:
    sys.exit(f"FAILED requests: {bad}")
PY
}
warmup() {
  "$INFERD" bench --base-url "$BASE" --api completions --model "$MODEL" --tokenizer "$GGUF" \
    --seed 9999 --concurrency 1 --num-requests 2 --input-len 16 --output-len 4 \
    --output-dir "$TMP/warmup" --no-plots --no-progress "${BENCH_EXTRA[@]}" > "$TMP/warmup.log" 2>&1 \
    || { echo "warm-up failed:" >&2; cat "$TMP/warmup.log" >&2; exit 1; }
}

# --- machine: CPU, memory bandwidth, weight bytes, versions -------------------
log "machine + memory bandwidth"
"$CACHE/venv/bin/python" benches/compare/membw.py --gguf "$GGUF" --out "$out/machine.json" \
  --set "inferd_dtype=$INFERD_DTYPE" "tf_dtype=$TF_DTYPE" "inferd_commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src actors Cargo.toml Cargo.lock 2>/dev/null || echo -dirty)" \
  "llama_cpp_python=$LLAMA_CPP_PYTHON_VERSION" "threads=$THREADS" "llama_cpp_extra_args=${LLAMA_NO_AMX[*]:-none}" "smoke=$smoke" "run_id=$RUN_ID" \
  "llama_server_version=$( [[ -x $LLAMA_SERVER ]] && "$LLAMA_SERVER" --version 2>&1 | grep -m1 -i '^version' | sed 's/^version: //' || echo -)" \
  "transformers=$("$CACHE/venv/bin/python" -c 'import transformers;print(transformers.__version__)')" \
  "torch=$("$CACHE/venv/bin/python" -c 'import torch;print(torch.__version__)' 2>/dev/null)"

# --- workloads -----------------------------------------------------------------
if [[ ",$workloads," == *",sweep,"* ]]; then
  # Level outside, peer inside: a level's peers run back to back, so drift in
  # a noisy machine's speed moves their ratio as little as it can.
  for c in "${LEVELS[@]}"; do
    for peer in "${peers[@]}"; do
      [[ $peer == inferd-nocache ]] && continue
      if [[ -n $serial_max && ( $peer == tf-serve || $peer == llama-cpp-python ) ]] && (( c > serial_max )); then
        log "$peer: concurrency $c skipped (--serial-max-level $serial_max)"
        continue
      fi
      n=$(nreq "$c")
      log "$peer: concurrency $c, $n requests, $IN in / $OUTLEN out"
      if [[ $peer == inferd && $c == 1 ]]; then
        log "memory bandwidth again, right before inferd's one-stream run"
        "$CACHE/venv/bin/python" benches/compare/membw.py --again --out "$out/machine.json"
      fi
      start_peer "$peer" "$c" $(( IN + OUTLEN )) "c$c"
      warmup
      bench "$out/$peer/c$c" "$peer c=$c" "$c" --concurrency "$c" --num-requests "$n" \
        --input-len "$IN" --output-len "$OUTLEN"
      stop_server
      if [[ $peer == inferd && $c == 1 ]]; then
        # The one-stream bound wants the bandwidth of the same minutes.
        log "memory bandwidth again, right after inferd's one-stream run"
        "$CACHE/venv/bin/python" benches/compare/membw.py --again --out "$out/machine.json"
      fi
    done
  done
fi
if [[ ",$workloads," == *",prefix,"* ]]; then
  for peer in inferd inferd-nocache llama-server; do
    has "$peer" "${peers[@]}" || continue
    log "$peer: shared prefix, $PFX_GROUPS groups x $PFX_LEN tokens, $PFX_N requests at concurrency $PFX_C"
    start_peer "$peer" "$PFX_C" $(( PFX_LEN + IN + OUTLEN )) prefix
    warmup
    bench "$out/$peer/prefix" "$peer shared-prefix" 7 --concurrency "$PFX_C" --num-requests "$PFX_N" \
      --input-len "$IN" --output-len "$OUTLEN" \
      --shared-prefix-groups "$PFX_GROUPS" --shared-prefix-len "$PFX_LEN"
    stop_server
  done
fi

# inferd's pieces (its dtype) and, where asked for, inferd-gguf's (the
# file's blocks), each with its own list of bandwidth samples.
for peer in inferd inferd-gguf; do
  [[ ",$workloads," == *",pairs,"* ]] && has "$peer" "${peers[@]}" || continue
  key=pair_samples; [[ $peer == inferd-gguf ]] && key=pair_samples_gguf
  log "$peer: one stream in $PAIRS pieces, each between two bandwidth samples"
  start_peer "$peer" 1 $(( IN + OUTLEN )) pairs
  warmup
  rm -rf "$out/$peer/pairs"
  "$CACHE/venv/bin/python" benches/compare/membw.py --pair-sample --pair-key "$key" --out "$out/machine.json"
  for k in $(seq 1 "$PAIRS"); do
    # /proc/stat's all-CPU line before and after: summarize.py reports the
    # share of the piece's CPU time the hypervisor gave to other guests
    # (steal), which the bandwidth samples' best-of-seven passes avoid.
    stat_before=$(grep '^cpu ' /proc/stat)
    bench "$out/$peer/pairs/p$k" "$peer one stream, piece $k" $(( 100 + k )) --concurrency 1 --num-requests 2 \
      --input-len "$IN" --output-len "$OUTLEN" --no-plots > /dev/null
    { echo "$stat_before"; grep '^cpu ' /proc/stat; } > "$out/$peer/pairs/p$k/proc_stat.txt"
    "$CACHE/venv/bin/python" benches/compare/membw.py --pair-sample --pair-key "$key" --out "$out/machine.json"
  done
  stop_server
done

python3 benches/compare/summarize.py "$out"
log "summary: $out/summary.md   server logs: $LOGS"
if (( ${#FAILED[@]} )); then
  echo "runs with failed requests: ${FAILED[*]}" >&2
  exit 1
fi

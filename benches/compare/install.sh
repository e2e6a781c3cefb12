#!/usr/bin/env bash
# Idempotent install of the comparison peers, all under $INFERD_CACHE/peers
# (outside the checkout). Sourced by run.sh; can also be run alone:
#   benches/compare/install.sh [llama-server] [llama-cpp-python] [tf-serve]
# Each step leaves a stamp (or the finished binary) and is skipped next time.
#
#   peers/dl/                      sdists fetched with `pip download`
#   peers/tools-venv/              cmake from PyPI (the machine has none)
#   peers/src/llama-cpp-python-V/  the unpacked sdist; vendor/llama.cpp is built
#   peers/bin/llama-server         llama.cpp's server (static, native CPU)
#   peers/llama-cpp-python-venv/   llama-cpp-python[server], built from the same sdist
#   peers/tf-serve-venv/           transformers[serving] extras layered on the torch venv
set -euo pipefail

CACHE="${INFERD_CACHE:-$HOME/.cache/inferd}"
PEERS="$CACHE/peers"
TORCH_VENV="$CACHE/venv"
LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CMAKE_VERSION="${CMAKE_VERSION:-3.31.10}"
BUILD_JOBS="${BUILD_JOBS:-2}"
LLAMA_SERVER="$PEERS/bin/llama-server"
LCP_VENV="$PEERS/llama-cpp-python-venv"
TF_VENV="$PEERS/tf-serve-venv"

ilog() { printf '\033[1m[compare:install]\033[0m %s\n' "$*" >&2; }
# took WHAT T0: log how long an install step took, also into peers/install-times.tsv.
took() {
  ilog "$1 took $((SECONDS - $2)) s"
  printf '%s\t%s s\t%s\n' "$1" "$((SECONDS - $2))" "$(date -u +%FT%TZ)" >> "$PEERS/install-times.tsv"
}

mkdir -p "$PEERS"

ensure_cmake() {
  if [[ -x "$PEERS/tools-venv/bin/cmake" ]] && "$PEERS/tools-venv/bin/cmake" --version | grep -q "$CMAKE_VERSION"; then
    return
  fi
  ilog "installing cmake $CMAKE_VERSION into $PEERS/tools-venv"
  python3 -m venv "$PEERS/tools-venv"
  "$PEERS/tools-venv/bin/pip" install --quiet --upgrade pip
  "$PEERS/tools-venv/bin/pip" install --quiet "cmake==$CMAKE_VERSION"
}

# The llama-cpp-python sdist (it vendors llama.cpp), unpacked once.
LCP_SRC="$PEERS/src/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
ensure_sdist() {
  local sdist="$PEERS/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  if [[ ! -f "$sdist" ]]; then
    ilog "pip download llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION (sdist)"
    mkdir -p "$PEERS/dl"
    # --no-binary for this package only: with `--no-binary :all:` pip also
    # builds the sdist's build backend deps (cmake!) from source just to read
    # its metadata, which takes longer than building llama.cpp itself.
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$PEERS/dl"
  fi
  if [[ ! -f "$LCP_SRC/.unpacked" ]]; then
    rm -rf "$LCP_SRC"; mkdir -p "$PEERS/src"
    tar -xzf "$sdist" -C "$PEERS/src"
    touch "$LCP_SRC/.unpacked"
  fi
}

install_llama_server() {
  local stamp="$PEERS/bin/.llama-server-$LLAMA_CPP_PYTHON_VERSION"
  if [[ -x "$LLAMA_SERVER" && -f "$stamp" ]]; then ilog "llama-server up to date"; return; fi
  local t0=$SECONDS
  ensure_cmake
  ensure_sdist
  local cmake="$PEERS/tools-venv/bin/cmake" build="$PEERS/build/llama-server-$LLAMA_CPP_PYTHON_VERSION"
  ilog "building llama-server from $LCP_SRC/vendor/llama.cpp (-j$BUILD_JOBS)"
  "$cmake" -S "$LCP_SRC/vendor/llama.cpp" -B "$build" \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF >/dev/null
  "$cmake" --build "$build" --config Release --target llama-server -j "$BUILD_JOBS"
  mkdir -p "$PEERS/bin"
  cp "$build/bin/llama-server" "$LLAMA_SERVER.part" && mv "$LLAMA_SERVER.part" "$LLAMA_SERVER"
  rm -f "$PEERS"/bin/.llama-server-*; touch "$stamp"
  took "install llama-server" "$t0"
}

install_llama_cpp_python() {
  local stamp="$LCP_VENV/.llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"
  if [[ -f "$stamp" ]]; then ilog "llama-cpp-python[server] up to date"; return; fi
  local t0=$SECONDS
  ensure_cmake
  ensure_sdist
  ilog "building llama-cpp-python[server] $LLAMA_CPP_PYTHON_VERSION into $LCP_VENV"
  python3 -m venv "$LCP_VENV"
  "$LCP_VENV/bin/pip" install --quiet --upgrade pip
  # Same sdist as llama-server; native CPU, no multimodal (mtmd) library.
  PATH="$PEERS/tools-venv/bin:$PATH" CMAKE_BUILD_PARALLEL_LEVEL="$BUILD_JOBS" \
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF" \
    "$LCP_VENV/bin/pip" install --quiet \
    "llama-cpp-python[server] @ file://$PEERS/dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
  rm -f "$LCP_VENV"/.llama-cpp-python-*; touch "$stamp"
  took "install llama-cpp-python[server]" "$t0"
}

# transformers serve: the torch venv already has torch + transformers; the
# serving extras (fastapi, uvicorn, openai, ...) go into a venv of their own
# that sees the torch venv's packages through a .pth file, so the shared torch
# venv is not touched and torch is not downloaded twice.
install_tf_serve() {
  local tfver site_torch
  tfver=$("$TORCH_VENV/bin/python" -c 'import transformers;print(transformers.__version__)')
  local stamp="$TF_VENV/.transformers-serving-$tfver"
  if [[ -f "$stamp" ]]; then ilog "transformers[serving] up to date"; return; fi
  local t0=$SECONDS
  ilog "installing transformers[serving]==$tfver into $TF_VENV (layered on $TORCH_VENV)"
  site_torch=$("$TORCH_VENV/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
  "$TORCH_VENV/bin/python" -m venv "$TF_VENV"
  local site_tf
  site_tf=$("$TF_VENV/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
  echo "$site_torch" > "$site_tf/inferd-torch-venv.pth"
  "$TF_VENV/bin/pip" install --quiet --upgrade pip
  "$TF_VENV/bin/pip" install --quiet "transformers[serving]==$tfver"
  rm -f "$TF_VENV"/.transformers-serving-*; touch "$stamp"
  took "install transformers[serving]" "$t0"
}

install_peer() {
  case "$1" in
    llama-server) install_llama_server ;;
    llama-cpp-python) install_llama_cpp_python ;;
    tf-serve|tf-serve-cb) install_tf_serve ;;
    inferd|inferd-nocache|inferd-gguf|inferd-amx|inferd-avx512) ;;
    *) echo "unknown peer: $1" >&2; return 2 ;;
  esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  (( $# )) || set -- llama-server llama-cpp-python tf-serve
  for p in "$@"; do install_peer "$p"; done
fi

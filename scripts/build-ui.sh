#!/usr/bin/env bash
# Build the web console (web/ -> web/dist, embedded into the binary by src/ui.rs).
# Idempotent: skips when web/.dist-hash matches the sources (web/dist is
# committed, so a fresh clone needs neither npm nor the network for this).
# `--force` rebuilds anyway; `--check` exits 1 when web/dist is stale.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEB="$ROOT/web"
log() { printf '\033[1m[build-ui]\033[0m %s\n' "$*"; }

src_hash() {
  cd "$WEB"
  find src index.html package.json package-lock.json tsconfig.json vite.config.ts -type f -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
}

want="$(src_hash)"
have="$(cat "$WEB/.dist-hash" 2>/dev/null || true)"
if [[ "${1:-}" == "--check" ]]; then
  [[ "$want" == "$have" && -f "$WEB/dist/index.html" ]] && { log "web/dist is up to date"; exit 0; }
  log "web/dist is stale: run scripts/build-ui.sh"; exit 1
fi
if [[ "${1:-}" != "--force" && "$want" == "$have" && -f "$WEB/dist/index.html" ]]; then
  log "web/dist up to date ($want)"
  exit 0
fi

cd "$WEB"
stamp="node_modules/.inferd-lock-$(sha256sum package-lock.json | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  log "npm ci in web/"
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
fi
log "vite build"
npm run --silent build
echo "$want" > "$WEB/.dist-hash"
log "built web/dist ($want)"

#!/usr/bin/env bash
# Idempotent set-up for the browser test of the web console (tests/ui.rs):
#   - Debian's chromium at /usr/bin/chromium (apt; `apt-get update` only when needed)
#   - playwright-core in tests/ui/node_modules (npm ci from the lock file)
# No browser download: playwright-core drives the system chromium.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '\033[1m[setup-ui-test]\033[0m %s\n' "$*"; }

if [[ ! -x /usr/bin/chromium ]]; then
  SUDO=""; [[ "$(id -u)" != 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show chromium >/dev/null 2>&1; then
    log "apt-get update (chromium not in the package lists)"
    $SUDO apt-get update -qq
  fi
  log "installing Debian's chromium"
  $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
  log "chromium present ($(/usr/bin/chromium --version 2>/dev/null | head -1))"
fi

cd "$ROOT/tests/ui"
stamp="node_modules/.inferd-lock-$(sha256sum package-lock.json | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  log "npm ci in tests/ui (playwright-core)"
  npm ci --no-audit --no-fund --loglevel=error
  touch "$stamp"
else
  log "tests/ui node_modules up to date"
fi

#!/usr/bin/env bash
# System packages: tcmalloc, which build.rs links so that it serves
# libtorch's allocations (a CPU decode step makes hundreds), and what the
# deployment tests need (tests/deploy_live.rs runs the very nginx.conf and
# prometheus.yml of deploy/ in front of two inferd processes). Idempotent:
# apt-get runs only when a package is missing.
# The services are never started through systemd: the tests run them as
# plain child processes on loopback ports.
set -euo pipefail
PKGS=(libtcmalloc-minimal4 nginx prometheus)
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  printf '\033[1m[setup-system]\033[0m %s present\n' "${PKGS[*]}"
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
printf '\033[1m[setup-system]\033[0m installing %s\n' "${missing[*]}"
# Keep the package's maintainer scripts from starting the daemons.
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created_policy=1
fi
trap '[[ $created_policy == 1 ]] && $SUDO rm -f "$policy"' EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

#!/usr/bin/env bash
# Install what the end-to-end tests need on a fresh Debian machine (idempotent):
#   - Debian's chromium for tests/test_browser.py (marker "browser"); Playwright's own browser
#     downloads are not used;
#   - Node.js + npm and panva's oidc-provider (tests/interop/package-lock.json) for
#     tests/test_oidc_interop.py (marker "node").
# Run as root (or with sudo available) from anywhere: bash scripts/ci-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ci-deps: installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates fonts-liberation
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "ci-deps: Node.js >= 18 is required for oidc-provider 8.x (found $(node --version))" >&2
  exit 1
fi

# oidc-provider at the exact version pinned in the lock file; skipped when already installed.
lock=tests/interop/package-lock.json
stamp=tests/interop/node_modules/.ci-deps-stamp
if [ ! -f "$stamp" ] || ! cmp -s "$lock" "$stamp"; then
  echo "ci-deps: npm ci in tests/interop"
  (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
  cp "$lock" "$stamp"
fi

echo "ci-deps: chromium $(chromium --version 2>/dev/null | head -1 | awk '{print $2}'), node $(node --version), oidc-provider $(node -p 'require("./tests/interop/node_modules/oidc-provider/package.json").version')"

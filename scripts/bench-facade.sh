#!/usr/bin/env bash
# ARI facade benchmark: direct to a node vs through the facade vs through nginx (the seed's
# gateway, a plain reverse proxy). Installs nginx and wrk (Debian) when missing, then runs the bench.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: nginx (the proxy compared against) and wrk (the load generator).
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
  else
    echo "missing ${missing[*]} and not root: nginx row skipped / in-process load generator used" >&2
  fi
fi
exec cargo bench -p stasis-e2e --bench facade "$@"

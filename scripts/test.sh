#!/usr/bin/env bash
# Runs the whole test suite: builds the wasm32-wasip2 guest plugins, then `cargo test`
# for the native workspace (unit tests, runtime tests, simulator conformance, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash plugins/build.sh
cargo test "$@"

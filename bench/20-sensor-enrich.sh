#!/usr/bin/env bash
# Sandboxed vs native enrichment (issue: foundation). Prints a table; compare the ratio column.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p zerostep --example enrich_bench -- target/sensors/gunicorn.wasm "${BENCH_SECONDS:-3}"

#!/usr/bin/env bash
# OTLP export throughput (encode + gzip + HTTP POST, one connection) to a local receiver that
# discards: spans/s with and without gzip, and bytes per span. Prints numbers; no pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p zerostep --example otlp_bench -- "${OTLP_BENCH_SPANS:-300000}"

#!/usr/bin/env bash
# Embedded store (issue 5): insert throughput through the sink, size per million spans, query
# latency over a synthetic day (20 services × 10 endpoints), retention delete rate. Prints numbers.
# BENCH_STORE_SPANS sets the day's size (default 6 million spans, a couple of minutes to build).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p zerostep --example store_bench -- "${BENCH_STORE_SPANS:-6000000}"

#!/usr/bin/env bash
# Embedded store (issue 5): insert throughput through the sink, size per million spans, query
# latency over a synthetic day (20 services × 10 endpoints), retention delete rate. Prints numbers.
# BENCH_STORE_SPANS sets the day's size (default 6 million spans, a couple of minutes to build);
# BENCH_STORE_LIVE_SPANS the live-ingest run's (default 1 million). Writer CPU is what to compare:
# the machine is shared, wall time mostly measures the neighbours.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p zerostep --example store_bench -- "${BENCH_STORE_SPANS:-6000000}"

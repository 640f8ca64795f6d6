#!/usr/bin/env bash
# OTLP export throughput (encode + gzip + send, one connection) to a local receiver that discards,
# over OTLP/HTTP and OTLP/gRPC, clear text and TLS: spans/s, the exporter thread's CPU per 10k
# spans, bytes per span; then the idle agent's RSS/CPU without and with export configured (needs
# root and `make sensors`). Prints numbers; no pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p zerostep --example otlp_bench -- "${OTLP_BENCH_SPANS:-150000}"
[ -x target/release/zerostep ] || cargo build --release -p zerostep
python3 bench/otlp_idle.py

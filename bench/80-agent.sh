#!/usr/bin/env bash
# The agent end to end: RSS/CPU idle and at ~5,000 spans/s, spans/s on one core (intake → enrich →
# store), exec → traced. Needs the release agent and sensors (`make build sensors`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/zerostep ] || cargo build --release -p zerostep
python3 bench/agent_bench.py

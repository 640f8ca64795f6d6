#!/usr/bin/env bash
# Discovery's cost on a host with many idle processes (300 `sleep`s + 20 idle Pythons): CPU of the
# discovery thread, rescan time and maps reads per rescan on a steady host, with the proc connector
# and in rescan-only mode (1 s rescans, 20 s each). Needs root. Prints numbers; nothing is pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
$CARGO test --release -p zerostep --test discover bench_discovery_cost -- --ignored --nocapture 2>&1 \
  | grep -E 'connector\+rescan:|rescan-only:|test result|panicked' || exit 1

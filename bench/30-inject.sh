#!/usr/bin/env bash
# Injector benchmark: thread stop time per mode and per Python version, side by side with
# `gdb -batch --readnever` doing the same injection into the same kind of process; then the full-size
# stress (200 injections under ~1000 req/s) and kill test (100 SIGKILLs of the injector mid-injection).
# Prints its numbers; nothing here is a pass/fail on timing.
set -euo pipefail
cd "$(dirname "$0")/.."
export ZEROSTEP_TEST_CACHE=${ZEROSTEP_TEST_CACHE:-/var/cache/zerostep-test}
CARGO=${CARGO:-cargo}
run() { $CARGO test --release -p zerostep --test inject -- --ignored --nocapture --test-threads=1 "$@"; }
run bench_stop_times 2>&1 | grep -vE '^\s*(Compiling|Finished|Running|running)' || exit 1
run stress_full 2>&1 | grep -E 'stress:|test result|panicked' || exit 1
run kill_injector_full 2>&1 | grep -E 'kill test:|test result|panicked' || exit 1
bash bench/pep768_reference.sh

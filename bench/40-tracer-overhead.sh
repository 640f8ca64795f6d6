#!/usr/bin/env bash
# The in-process tracer's added cost per WSGI request against the OpenTelemetry SDK, ddtrace and
# instana, same app, same run (bench/tracer_overhead.py), the same per ASGI request against
# OpenTelemetry and ddtrace (bench/asgi_overhead.py); then Flask's and requests' own test suites
# with and without the tracer (bench/tracer_suites.py). Prints numbers; no timing is a pass/fail.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${ZEROSTEP_TEST_CACHE:-/var/cache/zerostep-test}
bash tests/setup/20-venvs.sh bench/venvs.txt
"$cache/venvs/tracer-bench/bin/python" bench/tracer_overhead.py
"$cache/venvs/asgi-bench/bin/python" bench/asgi_overhead.py
"$cache/venvs/tracer-suites/bin/python" bench/tracer_suites.py "$cache"
CARGO=${CARGO:-cargo}
$CARGO test -p zerostep --test tracer bench_gunicorn_throughput -- --ignored --nocapture 2>&1 \
  | grep -vE '^\s*(Compiling|Finished|Running|running|Blocking)' || exit 1
bash bench/tracer_suites_sid.sh

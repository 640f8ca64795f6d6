#!/usr/bin/env bash
# Intake decode: thread CPU per span to turn the tracer's span frames into spans, for this tree and
# a base revision side by side in one run (BENCH_INTAKE_BASE, default where this branch left main;
# its tree is exported with `git archive` and built in the same target dir, so only the zerostep
# crate itself compiles again). Frames come from the real tracer (bench/intake_frames.py). Prints
# numbers; asserts nothing. BENCH_SECONDS per run (default 3), runs alternate base/this twice.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
base=${BENCH_INTAKE_BASE:-$(git merge-base main HEAD 2>/dev/null || echo HEAD)}
secs=${BENCH_SECONDS:-3}
tmp=$(mktemp -d /tmp/zs-intake-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

python3 bench/intake_frames.py "$tmp/frames.bin"

mkdir "$tmp/base"
git archive "$base" | tar -x -C "$tmp/base"
mkdir -p "$tmp/base/host/examples"
cp host/examples/intake_bench.rs "$tmp/base/host/examples/"
# Another version makes the base's crates distinct artifacts in the shared target dir: with the same
# package ids, cargo would take one tree's fresh build for the other's.
sed -i 's/^version = "\(.*\)"$/version = "\1-bench-base"/' "$tmp/base/Cargo.toml"
# The executable cargo reports: target/release/examples/ holds whichever was built last.
example() {
    cargo build -q --release -p zerostep --example intake_bench --message-format=json "$@" |
        python3 -c 'import json, sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])'
}
cp "$(CARGO_TARGET_DIR="$root/target" example --manifest-path "$tmp/base/Cargo.toml")" "$tmp/bench-base"
cp "$(example)" "$tmp/bench-this"

echo "base $(git rev-parse --short "$base") vs this tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- host || echo +changes)):"
for _ in 1 2; do
    "$tmp/bench-base" "$tmp/frames.bin" "$secs" base
    "$tmp/bench-this" "$tmp/frames.bin" "$secs" this
done

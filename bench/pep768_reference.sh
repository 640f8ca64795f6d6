#!/usr/bin/env bash
# The alternative to the native injector on 3.14+, measured with CPython's own client: how long from
# `sys.remote_exec(pid, script)` until the script runs in the target, for a busy target and an idle
# one (blocked in select with a 5 s timeout, as an idle worker is). No stop, but the target opens a
# script file and runs it only at its next eval-breaker check. Both processes run in a private
# mount namespace with /proc mounted in the sid root: CPython's client reads the target's maps and
# opens the binaries they name, which fails for a chroot'ed target seen from outside its root.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${ZEROSTEP_TEST_CACHE:-/var/cache/zerostep-test}
root="$cache/sid-root"
[ -f "$root/.zerostep-stamp" ] || bash tests/setup/30-sid-root.sh
work=$(mktemp -d "$root/tmp/zs-test-pep768-XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 777 "$work"
in=${work#"$root"}
printf 'import time\nopen("%s/stamp", "a").write("%%f\\n" %% time.time())\n' "$in" >"$work/remote.py"
printf 'n = 0\nwhile True:\n    n += 1\n' >"$work/busy.py"
printf 'import os, select\nr, w = os.pipe()\nwhile True:\n    select.select([r], [], [], 5)\n' >"$work/idle.py"
N=${PEP768_N:-10}
unshare --mount --propagation private bash -s "$root" "$work" "$in" "$N" <<'INNER'
set -euo pipefail
root=$1 work=$2 in=$3 n=$4
mount -t proc proc "$root/proc"
echo "| PEP 768 sys.remote_exec (3.14), target | n | script ran (ms after the call): p50 / max |"
echo "|---|---|---|"
for scen in busy idle; do
  chroot --userspec=nobody:nogroup "$root" python3.14 "$in/$scen.py" &
  pid=$!
  sleep 0.7
  lat=()
  for _ in $(seq "$n"); do
    rm -f "$work/stamp"
    t0=$(chroot "$root" python3.14 -c "import sys, time; t = time.time(); sys.remote_exec($pid, '$in/remote.py'); print('%f' % t)")
    for _ in $(seq 800); do [ -s "$work/stamp" ] && break; sleep 0.01; done
    t1=$(head -1 "$work/stamp" 2>/dev/null || echo "")
    [ -n "$t1" ] && lat+=("$(python3 -c "print('%.1f' % ((float('$t1') - float('$t0')) * 1e3))")")
  done
  kill "$pid"
  sorted=$(printf '%s\n' "${lat[@]}" | sort -n)
  echo "| $scen | $n | $(echo "$sorted" | sed -n "$(( (${#lat[@]} + 1) / 2 ))p") / $(echo "$sorted" | tail -1) (${#lat[@]} ran within 8 s) |"
done
INNER

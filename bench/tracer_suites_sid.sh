#!/usr/bin/env bash
# bench/tracer_suites.py under CPython 3.14 as Debian sid ships it: Flask's and requests' own test
# suites with and without the tracer, run chroot'ed in the sid root of tests/setup/30-sid-root.sh
# (its interpreter needs the root's libc). A copy of the tracer and the script go into the root's
# /tmp for the run and are removed after it. Prints the same table as the 3.12 run.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${ZEROSTEP_TEST_CACHE:-/var/cache/zerostep-test}
bash tests/setup/30-sid-root.sh
root="$cache/sid-root"
venv=/opt/zerostep/venv-suites-314
reqs=$(awk '$1 == "tracer-suites" {$1 = ""; $2 = ""; print}' bench/venvs.txt)
if [ "$(cat "$root$venv/.zerostep-stamp" 2>/dev/null)" != "$reqs" ]; then
  rm -rf "$root$venv"
  chroot "$root" python3.14 -m venv "$venv"
  # shellcheck disable=SC2086
  chroot "$root" env -u PIP_FIND_LINKS "$venv/bin/pip" install -q $reqs
  echo "$reqs" >"$root$venv/.zerostep-stamp"
fi
work=$(mktemp -d "$root/tmp/zs-test-suites-XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bench" "$work/host" "$work/cache"
cp bench/tracer_suites.py "$work/bench/"
cp -r host/python "$work/host/"
inside=${work#"$root"}
echo "== CPython 3.14 (Debian sid), $venv"
chroot "$root" env -u PIP_FIND_LINKS TMPDIR="$inside" "$venv/bin/python" \
  "$inside/bench/tracer_suites.py" "$inside/cache"

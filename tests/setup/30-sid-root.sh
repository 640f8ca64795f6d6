#!/usr/bin/env bash
# CPython 3.14 and 3.15 as a distribution ships them: a Debian sid root made by debootstrap, with the
# distribution's gunicorn and uWSGI python3 plugin, and one venv per interpreter (inside the root, at
# /opt/zerostep/venv-314 and venv-315) for the tracer's tests. Cached under
# $ZEROSTEP_TEST_CACHE/sid-root; rebuilt only when tests/sid-root.txt changes. The tests run its
# services with `chroot` (maps show host paths) and inside containers made from it.
# A machine where the root cannot be made fails here, with the reason: no test is skipped silently.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${ZEROSTEP_TEST_CACHE:-/var/cache/zerostep-test}
root="$cache/sid-root"
list="$here/sid-root.txt"
want=$(sha256sum "$list" | cut -d' ' -f1)
if [ -f "$root/.zerostep-stamp" ] && [ "$(cat "$root/.zerostep-stamp")" = "$want" ]; then
  exit 0
fi

fail() {
  echo "tests/setup/30-sid-root.sh: cannot make the CPython 3.14/3.15 test root: $*" >&2
  echo "  (make test needs it: the 3.14/3.15 tests do not skip themselves)" >&2
  exit 1
}

if ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
    fail "debootstrap could not be installed"
fi

# The Debian archive this host already uses (no address written here): the first `URIs:` of a
# deb822 source, or the first `deb` line of sources.list.
mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
  grep -v -- '-security' | head -1 || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || fail "no Debian archive found in /etc/apt sources"

read_list() { grep -vE '^\s*(#|$)' "$list" | sed -n "s/^$1 //p" | tr '\n' ' '; }
debs=$(read_list deb | xargs | tr ' ' ',')
pips=$(read_list pip)

build="$cache/sid-root.build"
rm -rf "$build"
echo "making the sid root for CPython 3.14/3.15 (debootstrap, a few minutes): $debs"
debootstrap --variant=minbase --include="$debs" sid "$build" "$mirror" >"$cache/sid-root.log" 2>&1 ||
  { tail -20 "$cache/sid-root.log" >&2; fail "debootstrap failed (log: $cache/sid-root.log)"; }

# pip inside the root verifies TLS against the root's own store: give it the host's extra CAs.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$build/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$build/usr/local/share/ca-certificates/"
  chroot "$build" update-ca-certificates >/dev/null 2>&1 || true
fi
for v in 3.14 3.15; do
  venv="/opt/zerostep/venv-${v/./}"
  chroot "$build" "python$v" -m venv "$venv" || fail "python$v -m venv"
  # shellcheck disable=SC2086
  chroot "$build" env -u PIP_FIND_LINKS PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$venv/bin/pip" install -q $pips >>"$cache/sid-root.log" 2>&1 ||
    { tail -20 "$cache/sid-root.log" >&2; fail "pip install into $venv"; }
done
# Services run in it as `nobody`: /tmp must be writable (sticky), as on any host.
chmod 1777 "$build/tmp"
echo "$want" >"$build/.zerostep-stamp"
rm -rf "$root"
mv "$build" "$root"
echo "sid root ready: $root"

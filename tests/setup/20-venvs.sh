#!/usr/bin/env bash
# Creates the virtualenvs listed in the given list files (default: tests/venvs.txt, what `make test`
# needs; bench/venvs.txt and tests/fixtures/venvs.txt are for `make bench` and for re-collecting
# fixtures), idempotently: a venv is rebuilt only when its line changes. Uses the real
# interpreters, not pyenv's shims.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${ZEROSTEP_TEST_CACHE:-/var/cache/zerostep-test}
mkdir -p "$cache/venvs"
pyroot=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")

python_for() {
  case "$1" in
    debian) echo /usr/bin/python3.11 ;;
    *) local minor=${1%.*}; echo "$pyroot/versions/$1/bin/python$minor" ;;
  esac
}

build_one() {
  local name=$1 py=$2; shift 2
  local dir="$cache/venvs/$name" want="$py $*"
  if [ -f "$dir/.zerostep-stamp" ] && [ "$(cat "$dir/.zerostep-stamp")" = "$want" ]; then
    return 0
  fi
  local interp; interp=$(python_for "$py")
  [ -x "$interp" ] || { echo "no interpreter $interp for venv $name" >&2; return 1; }
  echo "creating venv $name ($interp): $*"
  rm -rf "$dir"
  if [ "$py" = debian ]; then
    # Debian's python3.11 has no ensurepip without python3.11-venv; bootstrap pip from the pyenv one.
    "$interp" -m venv --without-pip "$dir"
    "$pyroot/versions/3.11.7/bin/python3.11" -m pip --python "$dir/bin/python" install -q "$@"
  else
    "$interp" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@"
  fi
  echo "$want" > "$dir/.zerostep-stamp"
}

pids=()
while read -r name py reqs; do
  case "$name" in ''|'#'*) continue ;; esac
  # shellcheck disable=SC2086
  build_one "$name" "$py" $reqs > "$cache/venvs/$name.log" 2>&1 &
  pids+=("$!:$name")
  # Two at a time: uWSGI compiles C.
  if [ ${#pids[@]} -ge 2 ]; then
    for p in "${pids[@]}"; do
      wait "${p%%:*}" || { echo "venv ${p#*:} failed:"; cat "$cache/venvs/${p#*:}.log"; exit 1; }
    done
    pids=()
  fi
done < <(if [ $# -gt 0 ]; then cat "$@"; else cat "$here/venvs.txt"; fi)
for p in "${pids[@]}"; do
  wait "${p%%:*}" || { echo "venv ${p#*:} failed:"; cat "$cache/venvs/${p#*:}.log"; exit 1; }
done

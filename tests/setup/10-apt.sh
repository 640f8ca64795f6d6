#!/usr/bin/env bash
# Debian packages the tests need. Add a package to PACKAGES; the script installs only what is missing.
set -euo pipefail
PACKAGES=(
  python3.11 python3.11-dev python3.11-venv libpython3.11-dev gcc make
  gdb  # the injector benchmark compares against gdb-based injection
  redis-server postgresql
  iproute2 curl util-linux  # containers (unshare, nsenter, ip), services as another user (setpriv)
  chromium fonts-dejavu-core  # headless: the API's browser defences (tests/api_browser.rs), the UI (tests/ui_browser.rs)
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

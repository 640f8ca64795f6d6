#!/usr/bin/env bash
# `make demo`: two small services (a Flask frontend on gunicorn calling a uWSGI inventory service
# that queries SQLite), a little traffic, and the agent — which finds and traces them by itself.
# The agent is scoped to this script's processes so the demo touches nothing else on the host.
# Ctrl-C stops exactly what this script started.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${ZEROSTEP_TEST_CACHE:-/var/cache/zerostep-test}
work=$(mktemp -d /tmp/zerostep-demo.XXXXXX)
chmod 755 "$work"
venv="$cache/venvs/demo"
want="gunicorn==23.0.0 flask==3.1.1 requests==2.32.4 pyuwsgi==2.0.30.post1"
if [ "$(cat "$venv/.zerostep-stamp" 2>/dev/null)" != "$want" ]; then
  echo "demo: creating $venv (Debian python3.11): $want"
  rm -rf "$venv"
  /usr/bin/python3.11 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check $want
  echo "$want" > "$venv/.zerostep-stamp"
fi

pids=()
cleanup() {
  trap - EXIT INT TERM
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  echo "demo: stopped; files in $work"
}
trap cleanup EXIT INT TERM

for app in frontend inventory; do
  mkdir -p "$work/$app"
  cp "$here/tests/e2e_apps/$app/app.py" "$work/$app/"
done
/usr/bin/python3.11 - "$work/inventory/inventory.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("create table if not exists items(id integer primary key, name text, qty integer)")
c.executemany("insert or replace into items values(?,?,?)", [(i, "item%d" % i, i * 3) for i in range(1, 50)])
c.commit()
PY

# The services start first, knowing nothing of zerostep.
(cd "$work/inventory" && exec setsid "$venv/bin/uwsgi" --http-socket 127.0.0.1:18081 --master \
  --processes 2 --wsgi-file app.py --die-on-term >"$work/inventory.log" 2>&1) &
pids+=($!)
(cd "$work/frontend" && INVENTORY_URL=http://127.0.0.1:18081 exec setsid "$venv/bin/gunicorn" \
  -w 2 -b 127.0.0.1:18080 app:app >"$work/frontend.log" 2>&1) &
pids+=($!)
sleep 2

cat >"$work/zerostep.toml" <<TOML
listen = "127.0.0.1:7787"
state_dir = "$work/state"
sensors_dir = "$here/target/sensors"
[scope]
descendants_of = [$$]
TOML
(exec setsid "$here/target/release/zerostep" agent --config "$work/zerostep.toml" >"$work/agent.log" 2>&1) &
pids+=($!)

(exec setsid /usr/bin/python3.11 - <<'PY'
import random, time, urllib.request
while True:
    try:
        urllib.request.urlopen("http://127.0.0.1:18080/orders/%d" % random.randint(1, 60), timeout=5).read()
    except Exception:
        pass
    time.sleep(0.3)
PY
) &
pids+=($!)

echo "demo: frontend http://127.0.0.1:18080/orders/1 → inventory (uWSGI) → SQLite; some orders 502 on purpose"
# The CLI finds the agent's address and API token (state_dir/api-token, root only) through its config.
zs() { "$here/target/release/zerostep" "$@" --config "$work/zerostep.toml"; }
for i in $(seq 1 30); do
  sleep 2
  if zs traces --limit 5 2>/dev/null | tail -n +2 | grep -q .; then
    zs ps | grep -v "no sensor matched"
    echo
    zs traces --limit 5
    break
  fi
done
echo "demo: agent UI (this link logs you in): $(zs ui 2>/dev/null || echo 'http://127.0.0.1:7787/login')"
echo "demo: logs in $work"
echo "demo: running; Ctrl-C to stop"
wait

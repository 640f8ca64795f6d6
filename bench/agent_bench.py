"""The agent's own costs (issue: the agent end to end), measured against the release binary:

1. idle: RSS and CPU of an agent with nothing to trace (20 s);
2. steady: RSS and CPU at ~5,000 spans/s (a gunicorn span source the agent injects itself);
3. throughput: spans/s end to end (intake → enrich in the sandbox → SQLite store) with the agent
   pinned to one core and span sources flat out on the other;
4. exec → traced: from starting a new gunicorn to its first traced request.

The agent is scoped to this script's descendants. Run by bench/80-agent.sh; prints a table.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("ZEROSTEP_TEST_CACHE", "/var/cache/zerostep-test")
GUNICORN = os.path.join(CACHE, "venvs", "tracer-311", "bin", "gunicorn")
# ZEROSTEP_BIN: another build of the agent, to compare two side by side.
AGENT = os.environ.get("ZEROSTEP_BIN") or os.path.join(ROOT, "target", "release", "zerostep")
TICKS = os.sysconf("SC_CLK_TCK")
started = []


def spawn(cmd, log, **kw):
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    started.append(p)
    return p


def stop_all():
    for p in started:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in started:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    started.clear()


TOKENS = {}  # port -> the agent's API token (read from its state directory once it is up)


def get(port, path):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path))
    if port in TOKENS:
        req.add_header("Authorization", "Bearer " + TOKENS[port])
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def metric(port, name, labels=""):
    text = get(port, "/metrics")
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else 0.0


def usage(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    with open("/proc/%d/status" % pid) as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
    return cpu, rss


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def start_agent(work, port, pin=None):
    cfg = os.path.join(work, "zerostep.toml")
    with open(cfg, "w") as f:
        f.write('listen = "127.0.0.1:%d"\nstate_dir = "%s"\nsensors_dir = "%s"\n'
                "[scope]\ndescendants_of = [%d]\n"
                % (port, os.path.join(work, "state"), os.path.join(ROOT, "target", "sensors"), os.getpid()))
    cmd = [AGENT, "agent", "--config", cfg]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin)] + cmd
    p = spawn(cmd, open(os.path.join(work, "agent.log"), "a"))
    assert wait_for(lambda: get(port, "/api/v1/health"), 30), "agent did not start"
    with open(os.path.join(work, "state", "api-token")) as f:
        TOKENS[port] = f.read().strip()
    return p


def span_source(work, rate, workers=1, pin=None):
    app_dir = os.path.join(work, "source")
    os.makedirs(app_dir, exist_ok=True)
    shutil.copy(os.path.join(ROOT, "bench", "agent_bench_app.py"), os.path.join(app_dir, "spanapp.py"))
    port = free_port()
    cmd = [GUNICORN, "-w", str(workers), "-b", "127.0.0.1:%d" % port, "spanapp:application"]
    if pin is not None:
        cmd = ["taskset", "-c", str(pin)] + cmd
    env = dict(os.environ, SPAN_RATE=str(rate))
    return spawn(cmd, open(os.path.join(work, "source.log"), "a"), cwd=app_dir, env=env)


def window(agent_pid, port, secs):
    c0, _ = usage(agent_pid)
    s0 = metric(port, "zerostep_spans_delivered_total", '{sink="store"}')
    r0 = metric(port, "zerostep_spans_received_total")
    t0 = time.time()
    rss_max = 0.0
    while time.time() - t0 < secs:
        time.sleep(0.5)
        rss_max = max(rss_max, usage(agent_pid)[1])
    c1, rss = usage(agent_pid)
    dt = time.time() - t0
    stored = (metric(port, "zerostep_spans_delivered_total", '{sink="store"}') - s0) / dt
    received = (metric(port, "zerostep_spans_received_total") - r0) / dt
    return {"cpu_pct": 100 * (c1 - c0) / dt, "rss_mb": rss, "rss_max_mb": rss_max,
            "received_per_s": received, "stored_per_s": stored}


def flat_out(secs):
    work = tempfile.mkdtemp(prefix="zs-agent-bench-")
    port = free_port()
    agent = start_agent(work, port, pin=0)
    span_source(work, 0, workers=int(os.environ.get("BENCH_SOURCES", "3")), pin=1)
    assert wait_for(lambda: metric(port, "zerostep_spans_received_total") > 0, 30), "no spans"
    time.sleep(3)
    perf = None
    if os.environ.get("BENCH_PERF"):
        perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "--call-graph", "dwarf,16384",
                                 "-o", os.environ["BENCH_PERF"], "-p", str(agent.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = window(agent.pid, port, secs)
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait()
    result["drops"] = [l for l in get(port, "/metrics").splitlines()
                       if l.startswith("zerostep_spans_dropped_total")]
    stop_all()
    if os.environ.get("BENCH_ONLY") == "flat":
        print(json.dumps(result, indent=2))
    return {"flat_out_one_core": result}


def main():
    secs = float(os.environ.get("BENCH_SECS", "20"))
    # BENCH_ONLY=flat runs only the one-core throughput part; BENCH_PERF=FILE records a perf
    # profile of the agent during it (for finding where the time goes, not for the table).
    only_flat = os.environ.get("BENCH_ONLY") == "flat"
    results = {}
    work = tempfile.mkdtemp(prefix="zs-agent-bench-")
    try:
        if only_flat:
            return flat_out(secs)
        port = free_port()
        agent = start_agent(work, port)
        time.sleep(3)
        results["idle"] = window(agent.pid, port, secs)
        span_source(work, 5000)
        assert wait_for(lambda: metric(port, "zerostep_spans_received_total") > 0, 30), "no spans"
        time.sleep(3)
        results["5k_spans_per_s"] = window(agent.pid, port, secs)
        stop_all()

        results.update(flat_out(secs))
        work3 = tempfile.mkdtemp(prefix="zs-agent-bench-")
        port = free_port()
        agent = start_agent(work3, port)
        times = []
        for i in range(int(os.environ.get("BENCH_EXEC_RUNS", "5"))):
            app_dir = os.path.join(work3, "hello%d" % i)
            os.makedirs(app_dir)
            # A module name of its own, so the sensor names this service hello<i>.
            with open(os.path.join(app_dir, "hello%d.py" % i), "w") as f:
                f.write("def application(e, s):\n    s('200 OK', [])\n    return [b'hi']\n")
            gport = free_port()
            t0 = time.time()
            g = spawn([GUNICORN, "-w", "2", "-b", "127.0.0.1:%d" % gport, "hello%d:application" % i],
                      open(os.path.join(work3, "hello.log"), "a"), cwd=app_dir)
            svc = "hello%d" % i
            first = None
            while time.time() - t0 < 30:
                try:
                    get(gport, "/x%d" % i)
                except Exception:
                    time.sleep(0.01)
                    continue
                traces = json.loads(get(port, "/api/v1/traces?service=%s&limit=1" % svc) or "[]")
                if isinstance(traces, dict):
                    traces = traces.get("traces", [])
                if traces:
                    first = min(t["start_ms"] for t in traces) / 1000.0
                    break
                time.sleep(0.02)
            times.append((first - t0) if first else None)
            os.killpg(g.pid, signal.SIGTERM)
            g.wait()
        results["exec_to_traced_s"] = times
    finally:
        stop_all()
    print(json.dumps(results, indent=2))
    idle, steady, flat = results["idle"], results["5k_spans_per_s"], results["flat_out_one_core"]
    print("\n| agent | RSS MB | CPU % | spans/s received | spans/s stored |")
    print("|---|---:|---:|---:|---:|")
    for name, r in (("idle", idle), ("~5,000 spans/s", steady), ("flat out, agent on 1 core", flat)):
        print("| %s | %.1f | %.1f | %.0f | %.0f |" % (name, r["rss_max_mb"], r["cpu_pct"],
                                                    r["received_per_s"], r["stored_per_s"]))
    ok = [t for t in results["exec_to_traced_s"] if t is not None]
    print("\nexec → first traced request (s): %s" % ", ".join("%.2f" % t for t in ok))


if __name__ == "__main__":
    main()

"""Added cost per WSGI request, in-process: bare vs zerostep vs OpenTelemetry SDK vs ddtrace vs
instana, same app, same run. Run by bench/40-tracer-overhead.sh in the tracer-bench venv.

  python tracer_overhead.py            # the whole table
  python tracer_overhead.py one VARIANT SCENARIO N   # one measurement (a fresh process each)

Scenarios: `server` (hello world: the server span alone) and `full` (server span + one outgoing
HTTP call through requests, keep-alive to a local server, + one sqlite3 query). Each measurement is
the best of several rounds in a fresh interpreter, so one variant's patches never leak into another.
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ["bare", "zerostep", "otel", "ddtrace", "instana"]
ROUNDS = 5
PASSES = int(os.environ.get("BENCH_PASSES", "3"))

ENVIRON = {
    "REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "QUERY_STRING": "a=1", "RAW_URI": "/hello?a=1",
    "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "bench/1.0", "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "50000", "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
    "wsgi.multithread": False, "wsgi.multiprocess": True, "wsgi.run_once": False,
}


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class _LoopbackSocket(object):
    """A socketpair standing in for the TCP connection to the downstream: requests, urllib3 and
    http.client run in full, only the kernel's TCP path and the other process's scheduling (which
    on a loaded 2-core machine dominate and blur everything) are left out."""

    def __init__(self):
        import socket
        self._a, self._b = socket.socketpair()

    def sendall(self, data, *a):
        # Each request gets the canned response; the bytes sent are dropped.
        if data.startswith(b"GET "):
            self._b.sendall(RESPONSE)

    def __getattr__(self, name):
        return getattr(self._a, name)


def make_app(scenario):
    state = {}

    def app(environ, start_response):
        if scenario == "full":
            if not state:
                import sqlite3
                import requests
                import urllib3.connection
                urllib3.connection.HTTPConnection._new_conn = lambda self: _LoopbackSocket()
                state["db"] = sqlite3.connect(":memory:")
                state["http"] = requests.Session()
            state["http"].get("http://downstream.invalid:8080/down").content
            state["db"].execute("select 1").fetchall()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]

    return app


def wrap(variant, app):
    if variant == "bare":
        return app
    if variant == "zerostep":
        sys.path.insert(0, os.path.join(ROOT, "host", "python", "tests"))
        import test_tracer
        sys.path.pop(0)
        exec(test_tracer.bootstrap_code(os.environ["BENCH_INTAKE"]), {})
        zs = sys.modules["_zerostep"]
        gun = [i for i in zs._state.insts if i.name == "gunicorn"][0]
        # The gunicorn bundle's module (sensors/gunicorn/python/server.py), as the tracer loaded it.
        server = sys.modules["_zerostep.bundles.gunicorn.server"]
        return server._TracedApp(app, gun.server)
    if variant == "otel":
        from opentelemetry import trace
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)
        RequestsInstrumentor().instrument()
        SQLite3Instrumentor().instrument()
        return OpenTelemetryMiddleware(app)
    if variant == "ddtrace":
        import ddtrace
        ddtrace.patch(requests=True, sqlite3=True)
        from ddtrace.contrib.wsgi import DDWSGIMiddleware
        return DDWSGIMiddleware(app)
    if variant == "instana":
        import instana  # noqa: F401  (auto-instruments requests, sqlite3 where it supports them)
        from instana.middleware import InstanaWSGIMiddleware
        return InstanaWSGIMiddleware(app)
    raise SystemExit("unknown variant " + variant)


def one(variant, scenario, n):
    app = wrap(variant, make_app(scenario))
    out = {}

    def sr(status, headers, exc_info=None):
        out["s"] = status

    def request():
        body = app(dict(ENVIRON), sr)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    for _ in range(min(n, 500)):
        request()
    best = None
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(n):
            request()
        dt = (time.perf_counter() - t0) / n * 1e6
        best = dt if best is None else min(best, dt)
    assert out.get("s") == "200 OK", out
    print(json.dumps({"variant": variant, "scenario": scenario, "us": best}))


def downstream():
    """A keep-alive HTTP/1.1 server in its own process (unused: see _LoopbackSocket)."""
    code = (
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    protocol_version = 'HTTP/1.1'\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()\n"
        "        self.wfile.write(b'ok')\n"
        "    def log_message(self, *a): pass\n"
        "s = http.server.HTTPServer(('127.0.0.1', 0), H)\n"
        "print(s.server_address[1], flush=True)\n"
        "s.serve_forever()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    port = int(p.stdout.readline())
    return p, "http://127.0.0.1:%d/down" % port


def intake():
    """The fake agent from the tracer's unit tests, in its own process so it costs the app nothing."""
    code = (
        "import sys, time\n"
        "sys.path.insert(0, %r)\n"
        "import test_tracer\n"
        "i = test_tracer.FakeIntake()\n"
        "i.frames = type('Sink', (), {'append': lambda self, f: None})()\n"
        "print(i.path, flush=True)\n"
        "time.sleep(3600)\n" % os.path.join(ROOT, "host", "python", "tests"))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    return p, p.stdout.readline().decode().strip()


def main():
    procs = []
    try:
        url = "unused"
        i, path = intake()
        procs.append(i)
        env = dict(os.environ, BENCH_DOWNSTREAM=url, BENCH_INTAKE=path,
                   DD_TRACE_AGENT_URL="http://127.0.0.1:9", DD_INSTRUMENTATION_TELEMETRY_ENABLED="false",
                   DD_REMOTE_CONFIGURATION_ENABLED="false", DD_TRACE_STARTUP_LOGS="false",
                   INSTANA_AGENT_HOST="127.0.0.1", INSTANA_AGENT_PORT="9", INSTANA_LOG_LEVEL="error",
                   OTEL_SDK_DISABLED="false")
        results = {}
        # Variants interleaved, PASSES times, best kept: a load spike hits all of them alike.
        for _ in range(PASSES):
            for scenario, n in (("server", 5000), ("full", 300)):
                for v in VARIANTS:
                    r = subprocess.run([sys.executable, __file__, "one", v, scenario, str(n)],
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       timeout=600)
                    line = r.stdout.decode().strip().splitlines()
                    us = json.loads(line[-1])["us"] if line else float("nan")
                    results[(scenario, v)] = min(results.get((scenario, v), us), us)
        print("Python %s, in-process cost per WSGI request (best of %d passes x %d rounds), "
              "microseconds; load average %.1f" % (sys.version.split()[0], PASSES, ROUNDS,
                                                   os.getloadavg()[0]))
        print("%-34s %9s %9s %9s %9s %9s" % ("scenario", *VARIANTS))
        for scenario, label in (("server", "server span: total"), ("full", "server+client+db: total")):
            print("%-34s" % label + "".join(" %9.1f" % results[(scenario, v)] for v in VARIANTS))
            base = results[(scenario, "bare")]
            print("%-34s" % "  added over bare" + "".join(
                " %9.1f" % (results[(scenario, v)] - base) for v in VARIANTS))
        added = {v: results[("server", v)] - results[("server", "bare")] for v in VARIANTS[1:]}
        best_peer = min(added[v] for v in ("otel", "ddtrace", "instana"))
        print("zerostep server-span cost: %.1f us = %.2f of the best peer's (%.1f us)"
              % (added["zerostep"], added["zerostep"] / best_peer, best_peer))
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        one(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()

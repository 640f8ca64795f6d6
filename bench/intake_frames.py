"""Span frames exactly as the in-process tracer writes them, for bench/90-intake.sh: the tracer's own
trace.py and report.py (loaded from host/python, stdlib only) make requests shaped like
bench/agent_bench_app.py's (a server span, a DB child, an HTTP client child) and frame them in
batches of 256 spans as the reporter does. Written as they go on the wire: length prefix, body.

Usage: intake_frames.py OUT [REQUESTS (default 3000)]
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 256


def load(name):
    path = os.path.join(ROOT, "host", "python", "zerostep", name + ".py")
    spec = importlib.util.spec_from_file_location("zs_" + name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def requests(trace, n):
    made = []
    tracer = trace.Tracer(made.append)
    for i in range(n):
        s = tracer.start_server("GET", {"http.request.method": "GET", "url.path": "/items/%d" % (i % 500),
                                        "http.route": "/items/<int:id>", "server.address": "127.0.0.1",
                                        "user_agent.original": "bench/1.0"}, None, None)
        d = tracer.start_child("SELECT items", trace.CLIENT,
                               {"db.system": "sqlite", "db.statement": "SELECT * FROM items WHERE id = ?"})
        d.finish()
        h = tracer.start_child("GET", trace.CLIENT, {"http.request.method": "GET",
                                                      "url.full": "http://127.0.0.1:9/stock/%d?token=abc" % i,
                                                      "server.address": "127.0.0.1", "server.port": 9})
        h.attrs["http.response.status_code"] = 200
        h.finish()
        s.attrs["http.response.status_code"] = 200
        if i % 50 == 0:
            s.set_error(ValueError("no such item %d" % i))
        tracer.end_server(s)
    return made


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    trace, report = load("trace"), load("report")
    spans = requests(trace, n)
    pid, dropped = os.getpid(), 0
    with open(out, "wb") as f:
        for i in range(0, len(spans), BATCH):
            # As Reporter._flush_locked: wire() at flush time, one frame per batch.
            f.write(report.spans_frame(pid, dropped, [s.wire() for s in spans[i:i + BATCH]]))
    print("%d spans, %d bytes, Python %s" % (len(spans), os.path.getsize(out), sys.version.split()[0]),
          file=sys.stderr)


if __name__ == "__main__":
    main()

# The span source for bench/agent_bench.py: a gunicorn app that knows nothing of zerostep. Once the
# agent has injected the tracer into its worker, a thread makes spans through the tracer itself
# (server span + DB child + HTTP child, like a real request) at SPAN_RATE spans/s. SPAN_RATE=0 is
# flat out, for the agent's throughput: spans made once, then handed to the reporter over and over
# with fresh trace ids, so the source's own Python cost stays small next to the agent's.
import os
import sys
import threading
import time

RATE = float(os.environ.get("SPAN_RATE", "5000"))


def _generate():
    while True:
        z = sys.modules.get("_zerostep")
        st = getattr(z, "_state", None) if z is not None else None
        if st is not None:
            break
        time.sleep(0.02)
    tracer = st.tracer
    client = sys.modules["_zerostep.trace"].CLIENT
    if RATE <= 0:
        _flat_out(st, tracer, client)
        return
    per_round = 3
    interval = per_round / RATE if RATE > 0 else 0.0
    next_at = time.monotonic()
    n = 0
    while getattr(z, "_state", None) is st:
        s = tracer.start_server("GET", {"http.request.method": "GET", "url.path": "/items/%d" % (n % 500),
                                        "http.route": "/items/<int:id>", "server.address": "127.0.0.1",
                                        "user_agent.original": "bench/1.0"}, None, None)
        d = tracer.start_child("SELECT items", client, {"db.system": "sqlite",
                                                          "db.statement": "SELECT * FROM items WHERE id = ?"})
        d.finish()
        h = tracer.start_child("GET", client, {"http.request.method": "GET",
                                                "url.full": "http://127.0.0.1:9/stock/%d?token=abc" % n,
                                                "server.address": "127.0.0.1", "server.port": 9})
        h.attrs["http.response.status_code"] = 200
        h.finish()
        s.attrs["http.response.status_code"] = 200
        tracer.end_server(s)
        n += 1
        if interval:
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                next_at = time.monotonic()


def _one_request(tracer, client, n):
    """Three spans the way a request makes them; returns them finished, not yet reported."""
    made = []
    keep = tracer.sink
    tracer.sink = made.append
    try:
        s = tracer.start_server("GET", {"http.request.method": "GET", "url.path": "/items/%d" % (n % 500),
                                        "http.route": "/items/<int:id>", "server.address": "127.0.0.1",
                                        "user_agent.original": "bench/1.0"}, None, None)
        for name, attrs in (("SELECT items", {"db.system": "sqlite",
                                              "db.statement": "SELECT * FROM items WHERE id = ?"}),
                            ("GET", {"http.request.method": "GET", "server.port": 9,
                                     "url.full": "http://127.0.0.1:9/stock/%d?token=abc" % n,
                                     "http.response.status_code": 200})):
            c = tracer.start_child(name, client, attrs)
            c.sink = made.append
            c.finish()
        s.attrs["http.response.status_code"] = 200
        s.sink = made.append
        tracer.end_server(s)
    finally:
        tracer.sink = keep
    return made


def _flat_out(st, tracer, client):
    spans = []
    for n in range(2000):
        spans.extend(_one_request(tracer, client, n))
    rep = st.reporter
    add = rep.add
    cycle = 0
    z = sys.modules["_zerostep"]
    while getattr(z, "_state", None) is st:
        cycle += 1
        for s in spans:
            s.trace_id += cycle
            add(s)
            if len(rep.spans) >= rep.batch:
                rep.flush()
        time.sleep(0)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


threading.Thread(target=_generate, name="span-source", daemon=True).start()

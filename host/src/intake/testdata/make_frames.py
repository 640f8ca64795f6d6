"""Span frames made by the real tracer (host/python/zerostep: trace.py builds the spans, report.py
frames them), for wire.rs's tests: `tracer_<py>.bin` is the marshal frame body and `.json` the JSON
body the reporter falls back to, of the same spans. Re-run after changing the tracer's wire format:

    for v in 3.8.18 3.13.0; do ~/.pyenv/versions/$v/bin/python3 host/src/intake/testdata/make_frames.py; done
"""
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TRACER = os.path.join(HERE, "..", "..", "..", "python", "zerostep")


def load(name):
    spec = importlib.util.spec_from_file_location("zs_" + name, os.path.join(TRACER, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def spans(trace):
    made = []
    tracer = trace.Tracer(made.append)
    trace._rng.seed(7)
    shared_text = "SELECT * FROM items WHERE id = ? AND owner = ?"  # one object: marshal refs it
    shared_list = ["a", "b"]
    for i in range(3):
        # Continues a trace whose id uses the top bit: all 128 bits must survive.
        s = tracer.start_server("GET", {"http.request.method": "GET", "url.path": "/items/%d" % i,
                                        "server.port": 8000, "big": 2 ** 70, "neg": -5,
                                        "ratio": 0.25, "flag": True, "tags": shared_list,
                                        "mixed": [1, 1.5, True, None, "x"], "none": None},
                                "00-ffffffffffffffffffffffffffff%04x-00f067aa0ba902b7-01" % (i + 1), None)
        d = tracer.start_child("SELECT items", trace.CLIENT, {"db.system": "sqlite",
                                                               "db.query.text": shared_text})
        d.finish()
        s.attrs["http.response.status_code"] = 500 if i == 1 else 200
        if i == 1:
            s.set_error(ValueError("no such item"))
        tracer.end_server(s)
    return made


def main():
    trace, report = load("trace"), load("report")
    items = [s.wire() for s in spans(trace)]
    tag = "%d%d" % sys.version_info[:2]
    body = report.spans_frame(1234, 5, items)[4:]
    assert body[:1] == b"\x01"
    with open(os.path.join(HERE, "tracer_%s.bin" % tag), "wb") as f:
        f.write(body)
    js = report._dumps({"v": report.SCHEMA, "t": "spans", "pid": 1234, "dropped": 5,
                        "spans": items}).encode()
    with open(os.path.join(HERE, "tracer_%s.json" % tag), "wb") as f:
        f.write(js)


if __name__ == "__main__":
    main()

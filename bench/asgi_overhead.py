"""Added cost per ASGI request, in-process: bare vs zerostep (the asgi sensor's bundle) vs
OpenTelemetry's ASGI middleware (SDK, batch processor, dropping exporter) vs ddtrace's ASGI
middleware, same hello-world app, same run, on one asyncio loop. Run by bench/40-tracer-overhead.sh
in the asgi-bench venv.

  python asgi_overhead.py                        # the table
  python asgi_overhead.py one VARIANT N          # one measurement (a fresh process each)
"""
import asyncio
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
VARIANTS = ["bare", "zerostep", "otel", "ddtrace"]
ROUNDS = 5
PASSES = int(os.environ.get("BENCH_PASSES", "3"))

SCOPE = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
    "scheme": "http", "path": "/hello", "raw_path": b"/hello", "query_string": b"a=1",
    "root_path": "", "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench/1.0")],
    "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
}
START = {"type": "http.response.start", "status": 200,
         "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")]}
BODY = {"type": "http.response.body", "body": b"hello"}


async def app(scope, receive, send):
    await send(START)
    await send(BODY)


def wrap(variant):
    if variant == "bare":
        return app
    if variant == "zerostep":
        sys.path.insert(0, os.path.join(ROOT, "host", "python", "tests"))
        import test_tracer
        exec(test_tracer.bootstrap_code(os.environ["BENCH_INTAKE"]), {})
        zs = sys.modules["_zerostep"]
        srv = [i for i in zs._state.insts if i.name == "uvicorn.h11"][0].server
        return srv.wrap(app)  # what uvicorn's patched run_asgi hands the app
    if variant == "otel":
        from opentelemetry import trace
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Drop(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop()))
        trace.set_tracer_provider(provider)
        return OpenTelemetryMiddleware(app)
    if variant == "ddtrace":
        from ddtrace.contrib.asgi import TraceMiddleware
        return TraceMiddleware(app)
    raise SystemExit("unknown variant " + variant)


def one(variant, n):
    wrapped = wrap(variant)
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message["type"])

    async def run(k):
        for _ in range(k):
            await wrapped(dict(SCOPE), receive, send)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(run(min(n, 500)))
    best = None
    for _ in range(ROUNDS):
        del sent[:]
        t0 = time.perf_counter()
        loop.run_until_complete(run(n))
        dt = (time.perf_counter() - t0) / n * 1e6
        best = dt if best is None else min(best, dt)
    assert sent[:2] == ["http.response.start", "http.response.body"], sent[:4]
    print(json.dumps({"variant": variant, "us": best}))


def main():
    from tracer_overhead import intake
    i, path = intake()
    try:
        env = dict(os.environ, BENCH_INTAKE=path, DD_TRACE_AGENT_URL="http://127.0.0.1:9",
                   DD_INSTRUMENTATION_TELEMETRY_ENABLED="false",
                   DD_REMOTE_CONFIGURATION_ENABLED="false", DD_TRACE_STARTUP_LOGS="false")
        results = {}
        for _ in range(PASSES):
            for v in VARIANTS:
                r = subprocess.run([sys.executable, __file__, "one", v, "5000"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=600)
                line = r.stdout.decode().strip().splitlines()
                us = json.loads(line[-1])["us"] if line else float("nan")
                results[v] = min(results.get(v, us), us)
        print("Python %s, in-process cost per ASGI request (best of %d passes x %d rounds), "
              "microseconds; load average %.1f" % (sys.version.split()[0], PASSES, ROUNDS,
                                                   os.getloadavg()[0]))
        print("%-22s" % "" + "".join(" %9s" % v for v in VARIANTS))
        print("%-22s" % "server span: total" + "".join(" %9.1f" % results[v] for v in VARIANTS))
        print("%-22s" % "  added over bare" + "".join(
            " %9.1f" % (results[v] - results["bare"]) for v in VARIANTS))
        added = {v: results[v] - results["bare"] for v in VARIANTS[1:]}
        best_peer = min(added["otel"], added["ddtrace"])
        print("zerostep ASGI server-span cost: %.1f us = %.2f of the best peer's (%.1f us)"
              % (added["zerostep"], added["zerostep"] / best_peer, best_peer))
    finally:
        i.kill()
        i.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        one(sys.argv[2], int(sys.argv[3]))
    else:
        main()

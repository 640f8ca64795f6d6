"""Hello world for the HTTP overhead benchmark; ZS_BENCH_VARIANT wraps it in a peer's middleware
(zerostep needs nothing here: it is injected)."""
import os


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


variant = os.environ.get("ZS_BENCH_VARIANT", "bare")
application = hello
if variant == "otel":
    from opentelemetry import trace
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    application = OpenTelemetryMiddleware(hello)
elif variant == "ddtrace":
    from ddtrace.contrib.wsgi import DDWSGIMiddleware
    application = DDWSGIMiddleware(hello)
elif variant == "instana":
    import instana  # noqa: F401
    from instana.middleware import InstanaWSGIMiddleware
    application = InstanaWSGIMiddleware(hello)

"""The ASGI bundle (sensor `asgi`, contract 0.2): server spans for ASGI apps (FastAPI, Starlette,
Django's ASGI handler, any ASGI 3 app) under uvicorn (standalone, its spawned workers, gunicorn's
uvicorn worker classes) and hypercorn.

Patched at the server's per-request entry (uvicorn's `RequestResponseCycle.run_asgi`, hypercorn's
`ASGIWrapper.__call__`), so a running server's next request is traced: the app object itself is
never replaced. Each request runs in its own asyncio task with its own copy of the context, so the
span set in the context variable is that request's alone.
"""
from _zerostep import patch, trace

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                      "PATCH", "QUERY"))
_NAMED = frozenset(("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"))
# The response message that carries the last byte (the `more_body` of a body message aside).
_FINAL = frozenset(("http.response.pathsend", "http.response.zerocopysend"))


def _start(tracer, scope):
    """(span, attrs) for an HTTP scope; the W3C headers are read in the same pass as the rest."""
    method = scope.get("method") or "GET"
    path = scope.get("path") or "/"
    a = {
        "http.request.method": method if method in _METHODS else "_OTHER",
        "url.path": (scope.get("root_path") or "") + path,
        "url.scheme": scope.get("scheme") or "http",
    }
    qs = scope.get("query_string")
    if qs:
        a["url.query"] = qs.decode("latin-1")
    tp = ts = None
    for k, v in scope.get("headers") or ():
        n = len(k)
        if n == 11 and k == b"traceparent":
            tp = v.decode("latin-1")
        elif n == 10 and k == b"tracestate":
            # Several tracestate headers are one list (RFC 9110 field combination).
            ts = v.decode("latin-1") if ts is None else ts + "," + v.decode("latin-1")
        elif n == 4 and k == b"host":
            host = v.decode("latin-1")
            h, sep, p = host.rpartition(":")
            if sep and p.isdigit():
                a["server.address"] = h
                a["server.port"] = int(p)
            else:
                a["server.address"] = host
        elif n == 10 and k == b"user-agent":
            a["user_agent.original"] = v[:512].decode("latin-1")
        elif n == 14 and k == b"content-length" and v.isdigit():
            a["http.request.body.size"] = int(v)
    client = scope.get("client")
    if client:
        a["client.address"] = client[0]
    if "server.address" not in a:
        server = scope.get("server")
        if server and server[0] is not None:
            a["server.address"] = server[0]
            if server[1] is not None:
                a["server.port"] = server[1]
    version = scope.get("http_version")
    if version:
        a["network.protocol.version"] = version
    if method not in _METHODS:
        a["http.request.method_original"] = method
        method = "HTTP"
    return tracer.start_server(method, a, tp, ts), a


def _route(scope):
    """The route template Starlette (and FastAPI) matched: `scope["route"]`, under the mounts it
    went through (their part of `root_path`, beyond the app's own)."""
    r = scope.get("route")
    path = getattr(r, "path", None) if r is not None else None
    if not isinstance(path, str):
        return None
    if hasattr(r, "routes"):  # a Mount that answered by itself (static files, a sub-app)
        return path + "/{path}" if path else "/{path}"
    root = scope.get("root_path") or ""
    app_root = scope.get("app_root_path") or ""
    prefix = root[len(app_root):] if root.startswith(app_root) else ""
    return prefix + path


class AsgiServer(object):
    """Wraps ASGI apps so each HTTP request is a server span; `inst` is the instrumentation whose
    breaker counts our own failures. The app's exceptions go through unchanged."""

    def __init__(self, inst, tracer, reporter):
        self.inst = inst
        self.tracer = tracer
        self.reporter = reporter
        self._last = (None, None)  # (app, its wrapper): servers pass the same app every request

    def wrap(self, app):
        last_app, last_wrapper = self._last
        if app is last_app:
            return last_wrapper
        srv = self

        async def traced(scope, receive, send):
            if scope.get("type") != "http" or srv.inst.tripped:
                return await app(scope, receive, send)
            return await srv.call(app, scope, receive, send)

        try:
            traced.__zerostep_app__ = app
        except Exception:
            pass
        self._last = (app, traced)
        return traced

    async def call(self, app, scope, receive, send):
        inst = self.inst
        try:
            span, attrs = _start(self.tracer, scope)
        except Exception as e:
            inst.fail(e)
            return await app(scope, receive, send)
        srv = self

        async def traced_send(message):
            t = message.get("type")
            if t == "http.response.start":
                try:
                    code = int(message.get("status") or 0)
                    attrs["http.response.status_code"] = code
                    if code >= 500:
                        span.status = trace.ERROR
                    for k, v in message.get("headers") or ():
                        if len(k) == 14 and k.lower() == b"content-length" and v.isdigit():
                            attrs["http.response.body.size"] = int(v)
                            break
                except Exception as e:
                    inst.fail(e)
                return await send(message)
            await send(message)
            # Ends at the last byte handed to the server: a streamed response is timed whole.
            if (t == "http.response.body" and not message.get("more_body")) or t in _FINAL:
                srv.finish(span, scope)

        try:
            await app(scope, receive, traced_send)
        except BaseException as e:
            try:
                if "http.response.status_code" not in attrs:
                    # The server answers 500 for an exception before the response started.
                    attrs["http.response.status_code"] = 500
                if not isinstance(e, _CANCELLED):
                    span.set_error(e)
            except Exception:
                pass
            raise
        finally:
            self.end(span, scope)

    def finish(self, span, scope):
        try:
            if not span.end:
                route = _route(scope)
                if route:
                    span.attrs["http.route"] = route
                route = span.attrs.get("http.route")
                if route and span.name in _NAMED:
                    span.name = span.name + " " + route
                span.finish()
        except Exception as e:
            self.inst.fail(e)

    def end(self, span, scope):
        self.finish(span, scope)
        try:
            trace.Tracer.end_server(span)
            self.reporter.request_end()
        except Exception as e:
            self.inst.fail(e)


try:
    from asyncio import CancelledError as _CANCELLED  # a client that went away: not an app error
except Exception:  # pragma: no cover
    _CANCELLED = ()


class _Server(patch.Instrumentation):
    """A server's per-request entry point, patched so the app it passes is wrapped."""

    owner_path = ("", "")  # (module, class)
    method = ""

    def __init__(self, tracer, config, reporter):
        patch.Instrumentation.__init__(self, tracer, config)
        self.server = AsgiServer(self, tracer, reporter)

    def apply(self, modules):
        mod, cls = self.owner_path
        self.patch(getattr(modules[mod], cls), self.method, self.make_wrapper)

    def status(self):
        s = patch.Instrumentation.status(self)
        s["serves"] = self.applied and not self.tripped
        return s


class UvicornH11(_Server):
    name = "uvicorn.h11"
    modules = ("uvicorn.protocols.http.h11_impl",)
    owner_path = (modules[0], "RequestResponseCycle")
    method = "run_asgi"

    def make_wrapper(self, original):
        inst = self
        wrap = self.server.wrap

        def run_asgi(cycle, app):
            if not inst.tripped:
                try:
                    app = wrap(app)
                except Exception as e:
                    inst.fail(e)
            return original(cycle, app)

        return run_asgi


class UvicornHttptools(UvicornH11):
    name = "uvicorn.httptools"
    modules = ("uvicorn.protocols.http.httptools_impl",)
    owner_path = (modules[0], "RequestResponseCycle")


class Hypercorn(_Server):
    name = "hypercorn"
    modules = ("hypercorn.app_wrappers",)
    owner_path = (modules[0], "ASGIWrapper")
    method = "__call__"

    def make_wrapper(self, original):
        inst = self
        call = self.server.call

        def __call__(wrapper, scope, receive, send, *rest, **kw):
            if inst.tripped or scope.get("type") != "http":
                return original(wrapper, scope, receive, send, *rest, **kw)
            return call(wrapper.app, scope, receive, send)

        return __call__


def instrumentations(api, settings):
    """The entry point: what this bundle instruments in this process."""
    return [cls(api.tracer, api.config, api.reporter)
            for cls in (UvicornH11, UvicornHttptools, Hypercorn)]

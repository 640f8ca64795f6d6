"""Server spans around a WSGI application call, shared by the gunicorn and uWSGI instrumentations."""
from _zerostep import trace

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                      "PATCH", "QUERY"))


def _attrs(environ):
    method = environ.get("REQUEST_METHOD", "GET")
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        path, _, query = raw.partition("?")
        if "://" in path:  # absolute-form request target
            path = "/" + path.split("/", 3)[-1] if path.count("/") >= 3 else "/"
    else:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        query = environ.get("QUERY_STRING", "")
    a = {
        "http.request.method": method if method in _METHODS else "_OTHER",
        "url.path": path or "/",
        "url.scheme": environ.get("wsgi.url_scheme", "http"),
    }
    if query:
        a["url.query"] = query
    host = environ.get("HTTP_HOST")
    if host:
        h, sep, p = host.rpartition(":")
        if sep and p.isdigit():
            a["server.address"] = h
            a["server.port"] = int(p)
        else:
            a["server.address"] = host
    ra = environ.get("REMOTE_ADDR")
    if ra:
        a["client.address"] = ra
    ua = environ.get("HTTP_USER_AGENT")
    if ua:
        a["user_agent.original"] = ua[:512]
    proto = environ.get("SERVER_PROTOCOL")
    if proto and proto.startswith("HTTP/"):
        a["network.protocol.version"] = proto[5:]
    cl = environ.get("CONTENT_LENGTH")
    if cl and cl.isdigit():
        a["http.request.body.size"] = int(cl)
    if method not in _METHODS:
        a["http.request.method_original"] = method
        return "HTTP", a
    return method, a


class WsgiServer(object):
    """Wraps one WSGI call in a server span; `inst` is the Instrumentation whose breaker counts our
    own failures. The app's exceptions pass through unchanged."""

    def __init__(self, inst, tracer, reporter):
        self.inst = inst
        self.tracer = tracer
        self.reporter = reporter

    def call(self, app, environ, start_response):
        inst = self.inst
        if inst.tripped:
            return app(environ, start_response)
        try:
            name, attrs = _attrs(environ)
            span = self.tracer.start_server(name, attrs, environ.get("HTTP_TRACEPARENT"),
                                            environ.get("HTTP_TRACESTATE"))
        except Exception as e:
            inst.fail(e)
            return app(environ, start_response)

        def sr(status, headers, exc_info=None):
            try:
                code = int(status[:3])
                attrs["http.response.status_code"] = code
                if code >= 500:
                    span.status = trace.ERROR
                for k, v in headers:
                    if len(k) == 14 and k.lower() == "content-length":
                        attrs["http.response.body.size"] = int(v)
                        break
            except Exception:
                pass
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        try:
            result = app(environ, sr)
        except BaseException as e:
            span.set_error(e)
            self.end(span)
            raise
        try:
            fw = environ.get("wsgi.file_wrapper")
            if fw is not None and isinstance(fw, type) and isinstance(result, fw):
                # Keep the server's sendfile path: the span ends before the file is sent.
                self.end(span)
                return result
            return _Body(result, span, self)
        except Exception as e:
            inst.fail(e)
            self.end(span)
            return result

    def end(self, span):
        try:
            if span.name in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
                route = span.attrs.get("http.route")
                if route:
                    span.name = span.name + " " + route
            trace.Tracer.end_server(span)
            self.reporter.request_end()
        except Exception as e:
            self.inst.fail(e)


class _Body(object):
    """The response iterable, ending the span when the server closes it (PEP 3333)."""

    __slots__ = ("_result", "_span", "_srv")

    def __init__(self, result, span, srv):
        self._result = result
        self._span = span
        self._srv = srv

    def __iter__(self):
        span = self._span
        try:
            for chunk in self._result:
                yield chunk
        except BaseException as e:
            if not isinstance(e, GeneratorExit):
                span.set_error(e)
            raise

    def close(self):
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        except BaseException as e:
            self._span.set_error(e)
            raise
        finally:
            self._srv.end(self._span)


def set_route(route):
    """Called by framework instrumentations once routing picked a rule."""
    s = trace.current.get()
    if s is not None and s.kind == trace.SERVER and route:
        s.attrs["http.route"] = route

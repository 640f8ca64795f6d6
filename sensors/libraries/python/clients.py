"""Client spans for `http.client` (so urllib.request, requests and urllib3 too), with the W3C context
injected into the outgoing request."""
from _zerostep import patch, trace

_SPAN_ATTR = "_zerostep_span"


class HttpClient(patch.Instrumentation):
    name = "http.client"
    modules = ("http.client",)

    def apply(self, modules):
        conn_cls = modules["http.client"].HTTPConnection
        inst = self
        tracer = self.tracer

        def wrap_putrequest(original):
            def putrequest(conn, method, url, *a, **kw):
                result = original(conn, method, url, *a, **kw)
                if inst.tripped:
                    return result
                try:
                    span = _start(tracer, conn, method, url)
                    if span is not None:
                        conn.__dict__[_SPAN_ATTR] = span
                        # Straight into the header buffer: values we made are valid, so the
                        # validation in putheader (and urllib3's override of it) is skipped.
                        out = conn._output
                        out(b"traceparent: " + span.traceparent().encode())
                        if span.tracestate:
                            out(b"tracestate: " + span.tracestate.encode("latin-1"))
                except Exception as e:
                    inst.fail(e)
                return result
            return putrequest

        def wrap_getresponse(original):
            def getresponse(conn, *a, **kw):
                span = conn.__dict__.pop(_SPAN_ATTR, None)
                if span is None:
                    return original(conn, *a, **kw)
                try:
                    resp = original(conn, *a, **kw)
                except BaseException as e:
                    span.set_error(e)
                    span.finish()
                    raise
                try:
                    code = resp.status
                    span.attrs["http.response.status_code"] = code
                    if code >= 400:
                        span.status = trace.ERROR
                    span.finish()
                except Exception as e:
                    inst.fail(e)
                return resp
            return getresponse

        self.patch(conn_cls, "putrequest", wrap_putrequest)
        self.patch(conn_cls, "getresponse", wrap_getresponse)


_current_get = trace.current.get
_origins = {}  # (host, port, default port) -> "scheme://netloc", bounded below


def _origin(host, port, default):
    key = (host, port, default)
    o = _origins.get(key)
    if o is None:
        netloc = ("[%s]" % host if ":" in host else host) + ("" if port == default else ":%d" % port)
        o = ("https://" if default == 443 else "http://") + netloc
        if len(_origins) < 1024:
            _origins[key] = o
    return o


def _start(tracer, conn, method, url):
    if _current_get() is None:
        return None
    host = conn.host
    port = conn.port
    full = url if "://" in url else _origin(host, port, conn.default_port) + url
    if method not in _METHODS:
        m = method.upper()
        method = m if m in _METHODS else None
    return tracer.start_child(method or "HTTP", trace.CLIENT, {
        "http.request.method": method or "_OTHER",
        "url.full": _redact(full) if "@" in full else full,
        "server.address": host,
        "server.port": port,
    })


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                      "PATCH", "QUERY"))


def _redact(url):
    """No credentials in spans (semantic conventions: user:password replaced)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = "REDACTED:REDACTED@" + rest.split("@", 1)[1]
        return scheme + sep + rest
    return url


def _client_span(tracer, method, full, host, port):
    """A client span for `method full`, or None outside a trace."""
    if _current_get() is None:
        return None
    m = method.upper() if isinstance(method, str) else "GET"
    known = m in _METHODS
    return tracer.start_child(m if known else "HTTP", trace.CLIENT, {
        "http.request.method": m if known else "_OTHER",
        "url.full": _redact(full) if "@" in full else full,
        "server.address": host or "",
        "server.port": port,
    })


def _ended(span, code):
    span.attrs["http.response.status_code"] = code
    if code >= 400:
        span.status = trace.ERROR
    span.finish()


class Httpx(patch.Instrumentation):
    """httpx's `Client.send` and `AsyncClient.send`: every request of both goes through them
    (httpx speaks HTTP through httpcore, not http.client)."""

    name = "httpx"
    modules = ("httpx",)

    def apply(self, modules):
        httpx = modules["httpx"]
        inst, tracer = self, self.tracer

        def start(request):
            if inst.tripped:
                return None
            try:
                url = request.url
                port = url.port or (443 if url.scheme == "https" else 80)
                span = _client_span(tracer, request.method, str(url), url.host, port)
                if span is not None:
                    request.headers["traceparent"] = span.traceparent()
                    if span.tracestate:
                        request.headers["tracestate"] = span.tracestate
                return span
            except Exception as e:
                inst.fail(e)
                return None

        def wrap_send(original):
            def send(client, request, *a, **kw):
                span = start(request)
                if span is None:
                    return original(client, request, *a, **kw)
                try:
                    resp = original(client, request, *a, **kw)
                except BaseException as e:
                    span.set_error(e)
                    span.finish()
                    raise
                _ended(span, resp.status_code)
                return resp
            return send

        def wrap_asend(original):
            async def send(client, request, *a, **kw):
                span = start(request)
                if span is None:
                    return await original(client, request, *a, **kw)
                try:
                    resp = await original(client, request, *a, **kw)
                except BaseException as e:
                    span.set_error(e)
                    span.finish()
                    raise
                _ended(span, resp.status_code)
                return resp
            return send

        self.patch(httpx.Client, "send", wrap_send)
        self.patch(httpx.AsyncClient, "send", wrap_asend)


class Aiohttp(patch.Instrumentation):
    """aiohttp's client: `ClientSession._request`, which every verb method and `request` call."""

    name = "aiohttp.client"
    modules = ("aiohttp.client",)

    def apply(self, modules):
        from urllib.parse import urlsplit

        inst, tracer = self, self.tracer

        def wrap(original):
            async def _request(session, method, str_or_url, *a, **kw):
                span = None
                if not inst.tripped:
                    try:
                        full = str(str_or_url)
                        u = urlsplit(full)
                        port = u.port or (443 if u.scheme == "https" else 80)
                        span = _client_span(tracer, method, full, u.hostname, port)
                        if span is not None:
                            given = kw.get("headers")
                            headers = list(given.items()) if hasattr(given, "items") \
                                else list(given or ())
                            headers.append(("traceparent", span.traceparent()))
                            if span.tracestate:
                                headers.append(("tracestate", span.tracestate))
                            kw["headers"] = headers
                    except Exception as e:
                        inst.fail(e)
                        span = None
                if span is None:
                    return await original(session, method, str_or_url, *a, **kw)
                try:
                    resp = await original(session, method, str_or_url, *a, **kw)
                except BaseException as e:
                    span.set_error(e)
                    span.finish()
                    raise
                _ended(span, resp.status)
                return resp
            return _request

        self.patch(modules["aiohttp.client"].ClientSession, "_request", wrap)

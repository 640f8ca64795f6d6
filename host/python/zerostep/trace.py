"""Core: ids, spans, the current-span context and W3C Trace Context (traceparent/tracestate).

Hot path: every function here runs once or twice per request, so it avoids allocations it can skip
and never raises into the caller's code.
"""
import contextvars
import os
import random
import re
import sys
import time
import traceback

# Span kinds and status codes as the wire carries them (host/src/intake/wire.rs).
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 0, 1, 2, 3, 4
UNSET, OK, ERROR = 0, 1, 2

_time_ns = time.time_ns
_getpid = os.getpid

# A private generator, reseeded on fork: uWSGI forks from C, where random's own at-fork reseed never
# runs, and two workers must not produce the same ids.
_rng = random.Random()
_rand64 = _rng.getrandbits
_rng_pid = [_getpid()]


def reseed():
    _rng.seed(os.urandom(32))
    _rng_pid[0] = _getpid()


reseed()


def new_trace_id():
    while True:
        v = _rand64(128)
        if v:
            return v


def new_span_id():
    while True:
        v = _rand64(64)
        if v:
            return v


current = contextvars.ContextVar("zerostep_current_span", default=None)
_current_get = current.get


def _stacktrace(t, exc):
    """The traceback Python would print if the exception went on up from where the tracer saw it:
    the callers of the instrumented function (outermost first), then the frames the exception came
    through. The tracer's own frames are left out; the innermost are kept (a value keeps 4 KiB)."""
    try:
        try:
            # 0: here, 1: set_error, 2: the tracer's wrapper that caught it, 3: its caller.
            outer = traceback.extract_stack(sys._getframe(3), limit=30)
        except ValueError:
            outer = []
        frames = [f for f in list(outer) + list(traceback.extract_tb(exc.__traceback__, limit=30))
                  if not f.filename.startswith("<zerostep")]
        text = "".join(["Traceback (most recent call last):\n"] + traceback.format_list(frames)
                       + traceback.format_exception_only(t, exc))
    except Exception:
        return ""
    return text if len(text) <= 4000 else "...\n" + text[-3990:]


class Span(object):
    """A recording span. `parent_id` 0 means root. `sampled` False spans only carry context."""

    __slots__ = (
        "trace_id", "span_id", "parent_id", "name", "kind", "start", "end", "status",
        "status_msg", "attrs", "events", "sampled", "tracestate", "sink", "token",
    )

    def __init__(self, name, kind, trace_id, span_id, parent_id, sampled, tracestate, attrs, sink):
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.attrs = attrs
        self.sink = sink
        self.events = None
        self.status = UNSET
        self.status_msg = ""
        self.end = 0
        self.token = None
        self.start = _time_ns()

    def set_error(self, exc):
        """Error status plus an OpenTelemetry `exception` event."""
        self.status = ERROR
        try:
            t = type(exc)
            self.status_msg = str(exc)[:1024]
            ev = ("exception", _time_ns(), {
                "exception.type": t.__module__ + "." + t.__qualname__
                if t.__module__ not in ("builtins", "__main__") else t.__qualname__,
                "exception.message": self.status_msg,
                "exception.stacktrace": _stacktrace(t, exc),
            })
        except Exception:
            ev = ("exception", _time_ns(), {})
        if self.events is None:
            self.events = [ev]
        elif len(self.events) < 32:
            self.events.append(ev)

    def finish(self):
        if self.end:
            return
        self.end = _time_ns()
        if self.sampled and self.sink is not None:
            self.sink(self)

    def wire(self):
        ev = self.events
        return [
            self.trace_id, self.span_id, self.parent_id, self.name, self.kind, self.start,
            self.end, self.status, self.status_msg, self.attrs,
            [[e[0], e[1], e[2]] for e in ev] if ev else [],
        ]

    def traceparent(self):
        return "00-%032x-%016x-%s" % (self.trace_id, self.span_id, "01" if self.sampled else "00")


class Tracer(object):
    """Creates spans; `sink` receives every finished sampled span (the reporter's `add`)."""

    def __init__(self, sink, sample_rate=1.0):
        self.sink = sink
        self.sample_rate = sample_rate

    def _sampled(self):
        r = self.sample_rate
        return r >= 1.0 or (r > 0.0 and _rng.random() < r)

    def start_server(self, name, attrs, traceparent, tracestate):
        """A server span, continuing the incoming W3C context when it is valid."""
        if _rng_pid[0] != _getpid():
            reseed()
        parent = parse_traceparent(traceparent) if traceparent else None
        if parent is not None:
            trace_id, parent_id, sampled = parent
            ts = parse_tracestate(tracestate) if tracestate else None
        else:
            trace_id, parent_id, sampled, ts = new_trace_id(), 0, self._sampled(), None
        s = Span(name, SERVER, trace_id, new_span_id(), parent_id, sampled, ts, attrs, self.sink)
        s.token = current.set(s)
        return s

    def start_child(self, name, kind, attrs):
        """A child of the current span, or None outside a trace (no orphan client spans)."""
        p = _current_get()
        if p is None:
            return None
        s = Span(name, kind, p.trace_id, new_span_id(), p.span_id, p.sampled, p.tracestate, attrs,
                 self.sink)
        return s

    @staticmethod
    def end_server(span):
        span.finish()
        tok = span.token
        if tok is not None:
            span.token = None
            try:
                current.reset(tok)
            except ValueError:
                # Ended in another context (a WSGI body closed elsewhere): nothing to restore there.
                pass


# --- W3C Trace Context (https://www.w3.org/TR/trace-context/) ------------------------------------

_TP00 = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def parse_traceparent(value):
    """(trace_id, parent_id, sampled) or None when the header must be ignored (restart the trace).

    Version 00 must be exactly 55 characters. A higher version is parsed by its version-00 prefix and
    must be followed by the end or a '-'. Version ff, uppercase hex and all-zero ids are invalid.
    """
    try:
        value = value.strip(" \t")
        m = _TP00.match(value)
        if m is None:
            return None
        version, tid, pid, flags = m.groups()
        if version == "ff":
            return None
        if version == "00":
            if len(value) != 55:
                return None
        elif len(value) > 55 and value[55] != "-":
            return None
        if tid == _ZERO_TRACE or pid == _ZERO_SPAN:
            return None
        return int(tid, 16), int(pid, 16), bool(int(flags, 16) & 1)
    except Exception:
        return None


_TS_KEY = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})\Z")
_TS_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\Z")
TRACESTATE_MAX_MEMBERS = 32
TRACESTATE_MAX_LEN = 512


def parse_tracestate(value):
    """The tracestate to propagate as a string, or None if it is invalid (then it is dropped).

    A member with a bad key or value, a duplicate key or more than 32 members invalidates the whole
    header. Empty members are allowed and removed. Past 512 characters, members longer than 128
    characters go first, then members from the end, as the recommendation suggests.
    """
    try:
        members = []
        keys = set()
        for raw in value.split(","):
            m = raw.strip(" \t")
            if not m:
                continue
            k, sep, v = m.partition("=")
            if not sep or _TS_KEY.match(k) is None or _TS_VALUE.match(v) is None or k in keys:
                return None
            keys.add(k)
            members.append(m)
        if len(members) > TRACESTATE_MAX_MEMBERS:
            return None
        if not members:
            return None
        out = ",".join(members)
        if len(out) > TRACESTATE_MAX_LEN:
            members = [m for m in members if len(m) <= 128]
            while members and len(",".join(members)) > TRACESTATE_MAX_LEN:
                members.pop()
            out = ",".join(members) or None
        return out
    except Exception:
        return None

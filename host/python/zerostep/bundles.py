"""Instrumentation bundles: Python that sensors carry (contract zerostep:sensor@0.2.0) and the agent
hands to this tracer. A bundle is a few modules, the modules whose import triggers it, an entry point
`module:function` and the tracer-API range it needs. Its modules run as
`_zerostep.bundles.<bundle>.<module>`; the entry point gets the API (`Api`) and the bundle's
settings and returns `patch.Instrumentation` objects, which the core applies, hooks and breaks like
any other. A bundle that cannot run here (API out of range, raises at import) is refused with the
reason in the status; it never reaches the app.
"""
import sys
import types

from _zerostep import patch, trace, wsgi

# The API bundles program against: `Api` below plus the modules trace, patch and wsgi. The minor
# grows with additions; the major changes when something bundles use changes or goes.
API_VERSION = (1, 0)
PREFIX = "_zerostep.bundles"


class Api(object):
    """What an entry point gets: the tracer, the reporter, the tracer config and the toolkits."""

    version = API_VERSION
    patch = patch
    trace = trace
    wsgi = wsgi
    Instrumentation = patch.Instrumentation

    def __init__(self, tracer, reporter, config):
        self.tracer = tracer
        self.reporter = reporter
        self.config = config


def api_satisfies(spec, version=API_VERSION):
    """Whether `version` (major, minor) meets `spec`: comparisons (>=, >, <=, <, ==, !=) with a
    major[.minor] version, separated by commas. An empty spec accepts any; a malformed one none."""
    spec = (spec or "").strip()
    if not spec:
        return True
    for part in spec.split(","):
        part = part.strip()
        for op in (">=", "<=", "==", "!=", ">", "<"):
            if part.startswith(op):
                break
        else:
            return False
        try:
            nums = tuple(int(x) for x in part[len(op):].strip().split("."))
        except ValueError:
            return False
        if not 1 <= len(nums) <= 2:
            return False
        want = nums + (0,) * (2 - len(nums))
        ok = {">=": version >= want, "<=": version <= want, "==": version == want,
              "!=": version != want, ">": version > want, "<": version < want}[op]
        if not ok:
            return False
    return True


def module_prefix(name):
    return "%s.%s" % (PREFIX, name.replace("-", "_"))


class Bundle(object):
    """One bundle as the agent sent it, and what became of it here."""

    def __init__(self, spec):
        self.name = str(spec.get("name", "?"))
        self.version = str(spec.get("version", ""))
        self.triggers = tuple(spec.get("triggers") or ())
        self.modules = [(str(n), str(s)) for n, s in (spec.get("modules") or ())]
        self.entry = str(spec.get("entry", ""))
        self.tracer_api = str(spec.get("tracer_api", ""))
        self.settings = dict(spec.get("settings") or {})
        self.state = "waiting"  # waiting for a trigger | active | refused
        self.reason = ""
        self.insts = []

    def status(self):
        return {"version": self.version, "state": self.state, "reason": self.reason,
                "instrumentations": [i.name for i in self.insts]}

    def triggered(self):
        return not self.triggers or any(t in sys.modules for t in self.triggers)

    def refuse(self, reason):
        self.state = "refused"
        self.reason = reason[:300]
        self.insts = []

    def activate(self, api):
        """Runs the modules and the entry point; returns the instrumentations, or [] (refused)."""
        if not api_satisfies(self.tracer_api):
            self.refuse("needs tracer API %s, this process has %d.%d"
                        % (self.tracer_api, API_VERSION[0], API_VERSION[1]))
            return []
        prefix = module_prefix(self.name)
        mod_name, _, fn_name = self.entry.partition(":")
        loaded = {}
        try:
            _ensure_package(PREFIX)
            pkg = _ensure_package(prefix)
            for name, src in self.modules:
                full = "%s.%s" % (prefix, name)
                mod = types.ModuleType(full)
                mod.__package__ = prefix
                sys.modules[full] = mod
                loaded[name] = mod
                exec(compile(src, "<zerostep:%s>" % full, "exec"), mod.__dict__)
                setattr(pkg, name, mod)
            entry = getattr(loaded[mod_name], fn_name)
            insts = list(entry(api, dict(self.settings)))
            for i in insts:
                if not isinstance(i, patch.Instrumentation):
                    raise TypeError("entry point returned %r, not an Instrumentation" % (i,))
        except BaseException as e:  # a bundle's bug must not reach the app, whatever it raised
            self.forget()
            self.refuse("%s: %s" % (type(e).__name__, _short(e)))
            return []
        self.state = "active"
        self.reason = ""
        self.insts = insts
        return insts

    def forget(self):
        prefix = module_prefix(self.name)
        for k in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
            sys.modules.pop(k, None)


def _short(e):
    try:
        return str(e)[:200]
    except Exception:
        return "?"


def _ensure_package(name):
    pkg = sys.modules.get(name)
    if pkg is None:
        pkg = types.ModuleType(name)
        pkg.__path__ = []
        pkg.__package__ = name
        sys.modules[name] = pkg
        parent, _, leaf = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], leaf, pkg)
    return pkg

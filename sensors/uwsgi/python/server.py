"""The uWSGI bundle (sensor `uwsgi`, contract 0.2): server spans for uWSGI apps, which uWSGI calls
from C. Loaded by the tracer core once the `uwsgi` module exists (inside uWSGI, always)."""
import functools
import sys
import types
import warnings

from _zerostep import patch, wsgi


def _uwsgi_worker_id(u):
    try:
        return int(u.worker_id())
    except Exception:
        return 0


class Uwsgi(patch.Instrumentation):
    """uWSGI calls the app from C, so there is no Python frame to patch above it: a plain function
    app gets its `__code__` swapped for a trampoline (restored on uninstall); an app object gets its
    class's `__call__` patched."""

    name = "uwsgi"
    modules = ("uwsgi",)

    def __init__(self, tracer, config, reporter):
        patch.Instrumentation.__init__(self, tracer, config)
        self.server = wsgi.WsgiServer(self, tracer, reporter)
        self.reporter = reporter
        self.swapped = []  # (function, original code, trampoline code)
        self.classes = set()
        self.prev_post_fork = None
        self.hooked = False

    def status(self):
        s = patch.Instrumentation.status(self)
        s["serves"] = self.applied and not self.tripped  # every uWSGI app is WSGI to us
        return s

    @staticmethod
    def _opt(uwsgi, key):
        v = getattr(uwsgi, "opt", {}).get(key)
        if isinstance(v, list):
            v = v[-1] if v else None
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        return v

    def app_locations(self):
        """(module name, callable name) pairs uWSGI loads the app from."""
        u = sys.modules.get("uwsgi")
        if u is None:
            return []
        callable_name = self._opt(u, "callable") or "application"
        out = []
        for key in ("module", "wsgi", "w"):
            m = self._opt(u, key)
            if m:
                mod, _, cal = m.partition(":")
                out.append((mod.replace("/", ".").rstrip("."), cal or callable_name))
        f = self._opt(u, "wsgi-file") or self._opt(u, "file")
        if f:
            name = f.replace(".", "_").replace("/", "_")
            if name.endswith("_py"):
                name = name[:-3]
            out.append(("uwsgi_file_" + name, callable_name))
        return out

    def watched_modules(self):
        return [m for m, _ in self.app_locations()]

    def on_watched_import(self, name):
        # --lazy-apps: the app module is imported in the worker, after the fork.
        self.wrap_apps()

    def apply(self, modules):
        u = modules["uwsgi"]
        if not self.hooked:
            self.hooked = True
            if not (self._opt(u, "enable-threads") or self._opt(u, "threads")):
                # uWSGI ≤ 2.0.26 without threads starves background threads: flush per request.
                self.reporter.threads_ok = False
            if _uwsgi_worker_id(u) == 0:
                # The master forks workers from C after releasing the GIL, with no Python fork
                # hook: had our thread the GIL at that instant, the worker would block forever
                # in uWSGI's post-fork GIL acquire. Workers start their own after the fork.
                self.reporter.forbid_thread()
            prev = getattr(u, "post_fork_hook", None)
            # An earlier version's hook (a bundle upgraded in place) is replaced, not chained.
            self.prev_post_fork = getattr(prev, "__zerostep_prev__", prev)
            inst = self

            def post_fork_hook():
                try:
                    inst.on_fork()
                except Exception:
                    pass
                prev = inst.prev_post_fork
                if prev is not None:
                    prev()

            post_fork_hook.__zerostep_prev__ = self.prev_post_fork
            u.post_fork_hook = post_fork_hook
            self.post_fork_hook = post_fork_hook
        self.wrap_apps()

    def on_fork(self):
        from _zerostep import trace
        trace.reseed()
        self.reporter.flush()  # sees the new pid: reconnects as this worker, starts its thread
        self.wrap_apps()

    def wrap_apps(self):
        for modname, cal in self.app_locations():
            mod = sys.modules.get(modname)
            app = getattr(mod, cal, None) if mod is not None else None
            if app is None:
                continue
            try:
                if isinstance(app, types.FunctionType):
                    self._swap_code(app)
                elif type(app) not in self.classes and "__call__" in type(app).__dict__:
                    self.classes.add(type(app))
                    server = self.server

                    def make(original):
                        def __call__(obj, environ, start_response):
                            return server.call(lambda e, s: original(obj, e, s), environ,
                                               start_response)
                        return __call__

                    self.patch(type(app), "__call__", make)
            except Exception as e:
                self.fail(e)

    def _swap_code(self, fn):
        if any(f is fn for f, _, _ in self.swapped):
            return
        # An earlier version's trampoline (a bundle upgraded in place): swap from the app's code.
        code = getattr(fn, "__zerostep_code__", None) or fn.__code__
        if code.co_argcount != 2 or code.co_freevars:
            return
        original = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__)
        # The trampoline calls a constant: its code object holds the tracer's callable, so it
        # needs nothing from the app's globals or from sys.modules (which an upgrade swaps).
        call = functools.partial(self.server.call, original)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "'str' object is not callable": on purpose
            ns = {}
            exec(compile("def f(a, b):\n    return '__zerostep_call__'(a, b)\n",
                         code.co_filename, "exec"), ns)
        tcode = ns["f"].__code__
        consts = tuple(call if c == "__zerostep_call__" else c for c in tcode.co_consts)
        tcode = tcode.replace(co_consts=consts, co_name=code.co_name,
                              co_varnames=code.co_varnames[:2], co_firstlineno=code.co_firstlineno)
        fn.__zerostep_code__ = code
        fn.__code__ = tcode
        self.swapped.append((fn, code, tcode))

    def undo(self):
        for fn, code, tcode in self.swapped:
            try:
                if fn.__code__ is tcode:  # else a newer version swapped it: not ours to undo
                    fn.__code__ = code
                    del fn.__zerostep_code__
            except Exception:
                pass
        self.swapped = []
        self.classes = set()
        u = sys.modules.get("uwsgi")
        if u is not None and self.hooked:
            try:
                if getattr(u, "post_fork_hook", None) is self.post_fork_hook:
                    if self.prev_post_fork is None:
                        del u.post_fork_hook
                    else:
                        u.post_fork_hook = self.prev_post_fork
            except Exception:
                pass
        self.hooked = False


def instrumentations(api, settings):
    """The entry point: what this bundle instruments in this process."""
    return [Uwsgi(api.tracer, api.config, api.reporter)]

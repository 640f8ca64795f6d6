"""The gunicorn bundle (sensor `gunicorn`, contract 0.2): server spans for every gunicorn worker.
Loaded by the tracer core once `gunicorn.workers.base` is imported."""
import sys
import weakref

from _zerostep import patch, wsgi


class _TracedApp(object):
    """Stands in for a gunicorn worker's `wsgi` attribute; unwrapped again on uninstall."""

    __slots__ = ("app", "server", "__weakref__")
    # Marks every version's class: an upgraded bundle unwraps an earlier version's stand-in.
    __zerostep_traced_app__ = True

    def __init__(self, app, server):
        self.app = app
        self.server = server

    def __call__(self, environ, start_response):
        return self.server.call(self.app, environ, start_response)

    def __getattr__(self, name):
        return getattr(self.app, name)


class Gunicorn(patch.Instrumentation):
    """Patches the worker classes' `handle_request`, so every worker — including ones forked later
    from an injected master — wraps its app on its first request."""

    name = "gunicorn"
    modules = ("gunicorn.workers.base",)
    # Each worker module is optional: only what the app imported is patched, the rest via the hook.
    worker_classes = (
        ("gunicorn.workers.sync", "SyncWorker"),
        ("gunicorn.workers.gthread", "ThreadWorker"),
        ("gunicorn.workers.base_async", "AsyncWorker"),
    )
    extra_modules = tuple(m for m, _ in worker_classes) + ("gunicorn.arbiter",)

    def __init__(self, tracer, config, reporter):
        patch.Instrumentation.__init__(self, tracer, config)
        self.server = wsgi.WsgiServer(self, tracer, reporter)
        self.workers = weakref.WeakSet()
        self.done = set()

    def apply(self, modules):
        arbiter = sys.modules.get("gunicorn.arbiter")
        if arbiter is not None and "gunicorn.arbiter" not in self.done:
            self.done.add("gunicorn.arbiter")
            # Called once per turn of the master's loop (about a second) in gunicorn 19 to 27.
            if "murder_workers" in arbiter.Arbiter.__dict__:
                self.patch(arbiter.Arbiter, "murder_workers", self._wrap_master_loop)
        for modname, clsname in self.worker_classes:
            if modname in self.done:
                continue
            mod = sys.modules.get(modname)
            cls = getattr(mod, clsname, None) if mod is not None else None
            if cls is None or "handle_request" not in cls.__dict__:
                continue
            self.done.add(modname)
            self.patch(cls, "handle_request", self._wrap)

    def _wrap_master_loop(self, original):
        """The master's loop: our thread, paused around each fork, comes back here — on 3.13 it
        cannot from the after-fork hook without the fork warning."""
        reporter = self.server.reporter

        def murder_workers(arbiter, *args, **kwargs):
            try:
                return original(arbiter, *args, **kwargs)
            finally:
                try:
                    reporter.request_end()
                except Exception:
                    pass

        return murder_workers

    def _wrap(self, original):
        inst = self
        server = self.server

        def handle_request(worker, *args, **kwargs):
            try:
                app = worker.__dict__.get("wsgi")
                if app is not None and type(app) is not _TracedApp and not inst.tripped:
                    if getattr(type(app), "__zerostep_traced_app__", False):
                        app = app.app  # the previous version's, replaced in place
                    worker.wsgi = _TracedApp(app, server)
                    inst.workers.add(worker)
            except Exception as e:
                inst.fail(e)
            return original(worker, *args, **kwargs)

        return handle_request

    def status(self):
        s = patch.Instrumentation.status(self)
        # Only sync, gthread and the async (gevent, eventlet) workers call handle_request; a
        # process running another worker class (uvicorn's) gets no server span from us.
        s["serves"] = bool(self.done - {"gunicorn.arbiter"}) and not self.tripped
        return s

    def undo(self):
        for w in list(self.workers):
            try:
                app = w.__dict__.get("wsgi")
                if type(app) is _TracedApp:
                    w.wsgi = app.app
            except Exception:
                pass
        self.workers = weakref.WeakSet()
        self.done = set()


def instrumentations(api, settings):
    """The entry point: what this bundle instruments in this process."""
    return [Gunicorn(api.tracer, api.config, api.reporter)]

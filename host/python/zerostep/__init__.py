"""zerostep's in-process tracer. Loaded from memory by the bootstrap (host/python/bootstrap.py) under
the private package name `_zerostep`; never on sys.path, never importing the app's packages.

install() is idempotent; uninstall() restores every patch; upgrade arrives as a command carrying
the new modules and swaps them in place, keeping the agent connection.
"""
import os
import sys
import threading

from _zerostep import clients, db, frameworks, patch, report, servers, trace

VERSION = "0.1.0"
NAME = "_zerostep"

_state = None
_lock = threading.RLock()


class _State(object):
    def __init__(self, address, sock, config):
        self.config = config
        self.reporter = report.Reporter(address, sock, config, _on_command)
        self.tracer = trace.Tracer(self.reporter.add, float(config.get("sample_rate", 1.0)))
        r, t, c = self.reporter, self.tracer, config
        self.insts = [
            servers.Gunicorn(t, c, r), servers.Uwsgi(t, c, r), frameworks.Flask(t, c),
            frameworks.Django(t, c), clients.HttpClient(t, c), db.Sqlite3(t, c),
            db.Psycopg2(t, c), db.PyMySQL(t, c), db.Redis(t, c), db.SQLAlchemy(t, c),
        ]
        disabled = set(config.get("disable", ()))
        self.insts = [i for i in self.insts if i.name not in disabled]
        self.reporter.status_fn = self.status
        for i in self.insts:
            i.on_trip = self._tripped
        watched = set()
        for i in self.insts:
            watched.update(i.modules)
            watched.update(getattr(i, "extra_modules", ()))
        self.hook = patch.ImportHook(watched, self.on_import)

    def status(self):
        return {"version": VERSION, "python": sys.version.split()[0],
                "instrumentations": {i.name: i.status() for i in self.insts},
                "sent": self.reporter.sent}

    def _tripped(self, inst):
        self.reporter.pending_status = True  # the agent learns of it with the next flush

    def on_import(self, name):
        for i in self.insts:
            if name in i.modules or name in getattr(i, "extra_modules", ()):
                self.try_apply(i)
            elif isinstance(i, servers.Uwsgi) and i.applied and name in i.watched_modules():
                # uWSGI --lazy-apps: the app module is imported in the worker, after the fork.
                i.wrap_apps()

    def try_apply(self, inst):
        if inst.tripped:
            return
        mods = {}
        for m in inst.modules:
            mod = sys.modules.get(m)
            if mod is None:
                return
            mods[m] = mod
        try:
            inst.apply(mods)
            inst.applied = True
        except Exception as e:
            inst.restore()
            inst.fail(e)
        if isinstance(inst, servers.Uwsgi):
            self.hook.watched.update(inst.watched_modules())
        self.reporter.pending_status = True

    def start(self):
        sys.meta_path.insert(0, self.hook)
        for i in self.insts:
            self.try_apply(i)
        # Injected while the process was importing a watched module (a master still loading
        # gunicorn, say), the module is in sys.modules half-executed and the import hook never
        # sees an import already under way; `settle` finishes the job once it has completed.
        self.unsettled = set(m for m in self.hook.watched if _initializing(sys.modules.get(m)))
        self.reporter.start_thread()
        self.reporter.flush()  # the status now: a process without our thread may not flush again
        try:
            os.register_at_fork(before=_before_fork_hook, after_in_parent=_after_fork_parent_hook,
                                after_in_child=_after_fork_hook)
        except Exception:
            pass

    def settle(self):
        """Instruments the modules that were mid-import at install and have finished since. Run
        in a forked child (the parent's imports are done by then, and only one thread runs)."""
        for name in list(self.unsettled):
            mod = sys.modules.get(name)
            if mod is None:
                self.unsettled.discard(name)  # the import failed; a retry goes through the hook
            elif not _initializing(mod):
                self.unsettled.discard(name)
                self.on_import(name)

    def stop(self, keep_socket=False):
        try:
            sys.meta_path.remove(self.hook)
        except ValueError:
            pass
        for i in self.insts:
            try:
                i.restore()
            except Exception:
                pass
        r = self.reporter
        if keep_socket:
            r.flush()
            r.stopping = True
            sock, r.sock = r.sock, None
            return sock
        r.stop(final_flush=True)
        return None


def _initializing(mod):
    """Whether `mod` is a module whose import is still executing (CPython marks its spec)."""
    spec = getattr(mod, "__spec__", None) if mod is not None else None
    return bool(getattr(spec, "_initializing", False))


def _before_fork_hook():
    st = getattr(sys.modules.get(NAME), "_state", None)
    if st is not None:
        try:
            st.reporter.pause_for_fork()
        except Exception:
            pass


def _after_fork_parent_hook():
    st = getattr(sys.modules.get(NAME), "_state", None)
    if st is not None:
        try:
            st.reporter.resume_after_fork()
        except Exception:
            pass


def _after_fork_hook():
    # Registered with os.register_at_fork, which has no unregister: a no-op once uninstalled.
    m = sys.modules.get(NAME)
    if m is not None:
        m.after_fork()


def after_fork():
    st = _state
    if st is None:
        return
    try:
        trace.reseed()
        st.reporter.after_fork()
    except Exception:
        pass
    try:
        st.settle()
    except Exception:
        pass


def install(address, sock, config):
    """Installs once per process; returns False when already installed."""
    global _state
    with _lock:
        if _state is not None:
            return False
        st = _State(address, sock, dict(config or {}))
        _state = st
        st.start()
        return True


def uninstall():
    """Restores every patch, stops the reporter and forgets the modules."""
    global _state
    with _lock:
        st, _state = _state, None
        if st is not None:
            st.stop()
        _forget_modules()


def _forget_modules():
    for k in [k for k in sys.modules if k == NAME or k.startswith(NAME + ".")]:
        sys.modules.pop(k, None)


def load(modules):
    """Executes [name, source] pairs (package first) as in-memory modules; returns the package.
    The same routine as the bootstrap's, so an upgrade loads exactly like a fresh injection."""
    import types
    loaded = {}
    saved = {k: v for k, v in sys.modules.items() if k == NAME or k.startswith(NAME + ".")}
    _forget_modules()
    try:
        pkg_name, pkg_src = modules[0]
        order = [(n, s) for n, s in modules[1:]]
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = []
        pkg.__package__ = pkg_name
        sys.modules[pkg_name] = pkg
        for name, src in order:
            mod = types.ModuleType(name)
            mod.__package__ = pkg_name
            sys.modules[name] = mod
            exec(compile(src, "<zerostep:%s>" % name, "exec"), mod.__dict__)
            setattr(pkg, name.rpartition(".")[2], mod)
            loaded[name] = mod
        exec(compile(pkg_src, "<zerostep:%s>" % pkg_name, "exec"), pkg.__dict__)
        return pkg
    except BaseException:
        _forget_modules()
        sys.modules.update(saved)
        raise


def _on_command(cmd):
    t = cmd.get("t")
    if t == "detach":
        uninstall()
    elif t == "config":
        st = _state
        if st is not None:
            cfg = cmd.get("config") or {}
            if "sample_rate" in cfg:
                st.tracer.sample_rate = float(cfg["sample_rate"])
            st.config.update(cfg)
    elif t == "upgrade":
        upgrade(cmd.get("modules") or [], cmd.get("config"))
    elif t == "status":
        st = _state
        if st is not None:
            st.reporter.pending_status = True


def upgrade(modules, config=None):
    """Swaps in a new version, keeping the agent connection. On any failure the old one stays."""
    global _state
    with _lock:
        st = _state
        if st is None:
            return False
        old_pkg = sys.modules.get(NAME)
        old_mods = {k: v for k, v in sys.modules.items() if k == NAME or k.startswith(NAME + ".")}
        try:
            new = load(modules)
        except BaseException:
            return False
        # load() replaced the modules; put the old ones back until the swap is decided.
        new_mods = {k: v for k, v in sys.modules.items() if k == NAME or k.startswith(NAME + ".")}
        _forget_modules()
        sys.modules.update(old_mods)
        sock = st.stop(keep_socket=True)
        _state = None
        _forget_modules()
        sys.modules.update(new_mods)
        cfg = dict(config if config is not None else st.config)
        # The agent's credentials came with the bootstrap, not with the agent's config: kept.
        auth = getattr(st.reporter, "auth", None) or st.config.get("auth")
        if auth and "auth" not in cfg:
            cfg["auth"] = auth
        try:
            new.install(st.reporter.address, sock, cfg)
            return True
        except BaseException:
            _forget_modules()
            sys.modules.update(old_mods)
            _state = None
            old_pkg.install(st.reporter.address, None, st.config)
            return False

"""zerostep's in-process tracer. Loaded from memory by the bootstrap (host/python/bootstrap.py) under
the private package name `_zerostep`; never on sys.path, never importing the app's packages.

This is the generic core: span and context API (trace), reporter (report), patch and import-hook
toolkit with the breaker (patch), WSGI server spans (wsgi) and fork handling (here). What makes a
technology traceable comes from sensors as bundles (bundles.py), in the config the agent sends
(`config["bundles"]`), replaced live by a `bundles` command.

install() is idempotent; uninstall() restores every patch; upgrade arrives as a command carrying
the new modules and swaps them in place, keeping the agent connection.
"""
import os
import sys
import threading

from _zerostep import bundles, patch, report, trace

VERSION = "0.2.0"
NAME = "_zerostep"

_state = None
_lock = threading.RLock()


class _State(object):
    def __init__(self, address, sock, config):
        self.config = config
        self.reporter = report.Reporter(address, sock, config, _on_command)
        self.tracer = trace.Tracer(self.reporter.add, float(config.get("sample_rate", 1.0)))
        self.api = bundles.Api(self.tracer, self.reporter, config)
        self.insts = []
        self.bundles = [bundles.Bundle(b) for b in config.get("bundles") or ()]
        self.reporter.status_fn = self.status
        watched = set(t for b in self.bundles for t in b.triggers)
        self.hook = patch.ImportHook(watched, self.on_import)
        self.unsettled = set()

    def activate(self, bundle):
        """Runs a triggered bundle and applies what it returned."""
        disabled = set(self.config.get("disable", ()))
        insts = [i for i in bundle.activate(self.api) if i.name not in disabled]
        bundle.insts = insts
        for i in insts:
            i.on_trip = self._tripped
            mods = tuple(i.modules) + tuple(getattr(i, "extra_modules", ()))
            self.hook.watched.update(mods)
            # Activated from inside an import (the trigger imported by a module still executing,
            # e.g. gunicorn.workers.sync importing .base): the hook never sees the outer import
            # finish, so it is settled later (after the next fork) like a mid-import install.
            self.unsettled.update(m for m in mods if _initializing(sys.modules.get(m)))
        self.insts.extend(insts)
        for i in insts:
            self.try_apply(i)
        self.reporter.pending_status = True

    def set_bundles(self, specs):
        """The agent's current bundles for this process. Unchanged ones stay; a changed one's new
        version is applied first (taking over its patch points in place: see patch.patch), then
        the old one is retired (whatever it patched that the new one does not is restored);
        removed ones are restored. The context variable, reporter and fork hooks are the core's,
        so in-flight requests keep their spans and parents across versions."""
        new = [bundles.Bundle(b) for b in specs or ()]
        keep = {(b.name, b.version) for b in new}
        kept, retired = {}, []
        for b in self.bundles:
            if (b.name, b.version) in keep:
                kept[b.name] = b
            else:
                retired.append(b)
                b.forget()  # sys.modules only: the new version's modules take these names
        self.bundles = [kept.get(b.name) or b for b in new]
        self.config["bundles"] = list(specs or ())
        for b in self.bundles:
            if b.name in kept:
                continue
            self.hook.watched.update(b.triggers)
            if b.triggered():
                self.activate(b)
        # A new version this process refused leaves the previous one serving, with the reason.
        for old in list(retired):
            if old.state != "active":
                continue
            for n, b in enumerate(self.bundles):
                if b.name == old.name and b.state == "refused":
                    old.reason = "version %s refused: %s" % (b.version, b.reason)
                    self.bundles[n] = old
                    retired.remove(old)
                    break
        for b in retired:
            for i in b.insts:
                try:
                    i.restore()
                except Exception:
                    pass
                if i in self.insts:
                    self.insts.remove(i)
        self.reporter.pending_status = True

    def status(self):
        return {"version": VERSION, "python": sys.version.split()[0],
                "instrumentations": {i.name: i.status() for i in self.insts},
                "bundles": {b.name: b.status() for b in self.bundles},
                "sent": self.reporter.sent}

    def _tripped(self, inst):
        self.reporter.pending_status = True  # the agent learns of it with the next flush

    def on_import(self, name):
        # A bundle this import triggers applies its own instrumentations as it activates.
        insts = list(self.insts)
        for b in self.bundles:
            if b.state == "waiting" and name in b.triggers:
                self.activate(b)
        for i in insts:
            if name in i.modules or name in getattr(i, "extra_modules", ()):
                self.try_apply(i)
            elif i.applied and hasattr(i, "on_watched_import") and name in i.watched_modules():
                # e.g. uWSGI --lazy-apps: the app module is imported in the worker, after the fork.
                i.on_watched_import(name)

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
        watched_modules = getattr(inst, "watched_modules", None)
        if watched_modules is not None:
            self.hook.watched.update(watched_modules())
        self.reporter.pending_status = True

    def start(self):
        sys.meta_path.insert(0, self.hook)
        for b in self.bundles:
            if b.triggered():
                self.activate(b)
        # Injected while the process was importing a watched module (a master still loading
        # gunicorn, say), the module is in sys.modules half-executed and the import hook never
        # sees an import already under way; `settle` finishes the job once it has completed.
        self.unsettled.update(m for m in self.hook.watched if _initializing(sys.modules.get(m)))
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
    elif t == "bundles":
        with _lock:
            st = _state
            if st is not None:
                st.set_bundles(cmd.get("bundles") or [])
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

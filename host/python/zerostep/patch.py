"""Patching classes reversibly, the circuit breaker, and the import hook for modules imported later.

Every instrumentation is an `Instrumentation`: it names the modules it needs, patches class
attributes through `patch()` (so objects created before injection are covered) and can be turned off
by its breaker, which restores every original.
"""
import sys
import threading

BREAKER_LIMIT = 20


class Instrumentation(object):
    """Subclasses set `name` and `modules` and implement `apply(modules)`; `modules` maps each name in
    `modules` to the module object once all are imported."""

    name = "?"
    modules = ()
    on_trip = None  # called with the instrumentation once its breaker trips

    def __init__(self, tracer, config):
        self.tracer = tracer
        self.config = config
        self._patches = []
        self.applied = False
        self.errors = 0
        self.tripped = False
        self.last_error = ""

    def patch(self, owner, attr, make_wrapper):
        """Replaces `owner.attr` (a class attribute) by `make_wrapper(original)`; undone by `restore`.

        A patch point is installed once: when `owner.attr` is already the wrapper of an
        instrumentation of the same name (its previous version, a bundle being upgraded in place),
        the new wrapper wraps what that one wrapped and replaces it in one attribute store, so no
        call runs untraced or traced twice; the old version's `restore` then leaves it alone."""
        had_own = attr in owner.__dict__
        current = owner.__dict__[attr] if had_own else getattr(owner, attr)
        prior = getattr(current, "__zerostep_patch__", None) if had_own else None
        if type(prior) is tuple and len(prior) == 3 and prior[0] == self.name:
            _, original, had_own = prior
        else:
            original = current
        wrapper = make_wrapper(original)
        try:
            wrapper.__zerostep_original__ = original
            wrapper.__zerostep_patch__ = (self.name, original, had_own)
        except Exception:
            pass
        setattr(owner, attr, wrapper)
        self._patches.append((owner, attr, original, had_own, wrapper))
        return wrapper

    def restore(self):
        while self._patches:
            owner, attr, original, had_own, wrapper = self._patches.pop()
            try:
                if owner.__dict__.get(attr) is not wrapper:
                    continue  # taken over by a newer version (or replaced by the app): not ours
                if had_own:
                    setattr(owner, attr, original)
                else:
                    delattr(owner, attr)
            except Exception:
                pass
        self.undo()
        self.applied = False

    def undo(self):
        """Extra clean-up beyond class attributes (instances wrapped, code objects swapped)."""

    def fail(self, exc=None):
        """An internal error: counted; past the limit the instrumentation removes itself."""
        self.errors += 1
        try:
            self.last_error = repr(exc)[:200] if exc is not None else ""
        except Exception:
            pass
        if self.errors >= BREAKER_LIMIT and not self.tripped:
            self.tripped = True
            try:
                self.restore()
                if self.on_trip is not None:
                    self.on_trip(self)
            except Exception:
                pass

    def status(self):
        return {"applied": self.applied, "errors": self.errors, "tripped": self.tripped,
                "last_error": self.last_error}


class ImportHook(object):
    """A meta-path finder that lets the real finders load a watched module, then calls `on_import`
    with the module once it has executed. Leaves the module's spec and loader as they were."""

    def __init__(self, watched, on_import):
        self.watched = set(watched)
        self.on_import = on_import
        self._local = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.watched or getattr(self._local, "busy", False):
            return None
        self._local.busy = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
        except Exception:
            return None
        finally:
            self._local.busy = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec if spec is not None else None
        spec.loader = _NotifyingLoader(spec.loader, self.on_import)
        return spec

    # Python 3.8-3.11 call this on finders without find_spec only; kept harmless.
    def invalidate_caches(self):
        pass


class _NotifyingLoader(object):
    def __init__(self, loader, on_import):
        self._loader = loader
        self._on_import = on_import

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        loader = self._loader
        # Put the real loader back before the module's own code runs, so the module never sees us.
        try:
            module.__loader__ = loader
            if module.__spec__ is not None:
                module.__spec__.loader = loader
        except Exception:
            pass
        loader.exec_module(module)
        try:
            self._on_import(module.__name__)
        except Exception:
            pass

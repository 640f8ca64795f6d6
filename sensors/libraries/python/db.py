"""Database client spans: DB-API drivers (sqlite3, psycopg2, pymysql) and redis-py.

sqlite3's and psycopg2's connection and cursor types are C types whose attributes cannot be set, so
those two are covered from the next `connect()` on, through a subclass passed as the connection
factory; pure-Python drivers (pymysql, redis-py) are patched on their classes.
"""
import contextvars
import re
import weakref

from _zerostep import patch, trace

MAX_QUERY = 2048

# The SQLAlchemy span of the statement being executed: the DB-API driver's span underneath it is
# suppressed, so one query is one span.
_orm_span = contextvars.ContextVar("zerostep_orm_span", default=None)
_orm_span_get = _orm_span.get


_current_get = trace.current.get


def _query_span(tracer, system, sql, server=None):
    if _current_get() is None or _orm_span_get() is not None:
        return None
    if type(sql) is str:
        text = sql
    else:
        try:
            text = sql if isinstance(sql, str) else bytes(sql).decode("utf-8", "replace")
        except Exception:
            text = "?"
    op = _operation(text)
    attrs = {"db.system": system, "db.query.text": text[:MAX_QUERY]}
    if op:
        attrs["db.operation.name"] = op
    if server:
        attrs["server.address"] = server[0]
        if server[1]:
            attrs["server.port"] = server[1]
    return tracer.start_child(op or system, trace.CLIENT, attrs)


def _run(span, fn, *args, **kwargs):
    if span is None:
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except BaseException as e:
        span.set_error(e)
        raise
    finally:
        span.finish()


class Sqlite3(patch.Instrumentation):
    name = "sqlite3"
    modules = ("sqlite3.dbapi2",)

    def apply(self, modules):
        dbapi2 = modules["sqlite3.dbapi2"]
        tracer = self.tracer
        inst = self
        base_conn, base_cur = dbapi2.Connection, dbapi2.Cursor

        base_execute = base_cur.execute

        class Cursor(base_cur):
            def execute(self, sql, *a):
                if _current_get() is None:  # outside a trace: nothing to record
                    return base_execute(self, sql, *a)
                return _run(_safe(inst, tracer, "sqlite", sql), base_execute, self, sql, *a)

            def executemany(self, sql, *a):
                return _run(_safe(inst, tracer, "sqlite", sql), base_cur.executemany, self, sql, *a)

        class Connection(base_conn):
            def cursor(self, factory=Cursor):
                return base_conn.cursor(self, factory)

            def execute(self, sql, *a):
                return Cursor(self).execute(sql, *a)

            def executemany(self, sql, *a):
                return self.cursor().executemany(sql, *a)

        _disguise(Cursor, base_cur)
        _disguise(Connection, base_conn)

        def wrap(original):
            def connect(*args, **kwargs):
                if inst.tripped or "factory" in kwargs or len(args) > 5:
                    return original(*args, **kwargs)
                kwargs["factory"] = Connection
                return original(*args, **kwargs)
            return connect

        # connect() is the only reachable seam for a C type; `sqlite3` re-exports dbapi2's.
        import sys
        original = dbapi2.connect
        self.patch(dbapi2, "connect", wrap)
        pkg = sys.modules.get("sqlite3")
        if pkg is not None and pkg.__dict__.get("connect") is original:
            self.patch(pkg, "connect", wrap)


def _disguise(sub, base):
    """Our subclasses print as the driver's own class (reprs, ResourceWarnings, error messages)."""
    sub.__module__ = base.__module__
    sub.__name__ = base.__name__
    sub.__qualname__ = base.__qualname__


def _safe(inst, tracer, system, sql, server=None):
    try:
        return _query_span(tracer, system, sql, server)
    except Exception as e:
        inst.fail(e)
        return None


class Psycopg2(patch.Instrumentation):
    name = "psycopg2"
    modules = ("psycopg2", "psycopg2.extensions")

    def apply(self, modules):
        ext = modules["psycopg2.extensions"]
        tracer = self.tracer
        inst = self
        base_conn, base_cur = ext.connection, ext.cursor
        cursor_classes = {}

        def traced_cursor_class(cls):
            c = cursor_classes.get(cls)
            if c is None:
                def execute(self, query, vars=None):
                    return _run(_safe(inst, tracer, "postgresql", query, _pg_server(self)),
                                cls.execute, self, query, vars)

                def executemany(self, query, vars_list):
                    return _run(_safe(inst, tracer, "postgresql", query, _pg_server(self)),
                                cls.executemany, self, query, vars_list)

                c = type(cls.__name__, (cls,), {"execute": execute, "executemany": executemany})
                _disguise(c, cls)
                cursor_classes[cls] = c
            return c

        class Connection(base_conn):
            def cursor(self, *args, **kwargs):
                factory = kwargs.get("cursor_factory") or self.cursor_factory or base_cur
                try:
                    if isinstance(factory, type) and issubclass(factory, base_cur):
                        kwargs["cursor_factory"] = traced_cursor_class(factory)
                except Exception as e:
                    inst.fail(e)
                return base_conn.cursor(self, *args, **kwargs)

        _disguise(Connection, base_conn)

        def wrap(original):
            def connect(dsn=None, connection_factory=None, cursor_factory=None, **kwargs):
                if connection_factory is None and not inst.tripped:
                    connection_factory = Connection
                return original(dsn, connection_factory=connection_factory,
                                cursor_factory=cursor_factory, **kwargs)
            return connect

        self.patch(modules["psycopg2"], "connect", wrap)


def _pg_server(cur):
    try:
        p = cur.connection.info
        return p.host, p.port
    except Exception:
        return None


class PyMySQL(patch.Instrumentation):
    name = "pymysql"
    modules = ("pymysql.cursors",)

    def apply(self, modules):
        tracer = self.tracer
        inst = self

        def wrap(original):
            def execute(cur, query, args=None):
                server = None
                try:
                    c = cur.connection
                    server = (c.host, c.port)
                except Exception:
                    pass
                return _run(_safe(inst, tracer, "mysql", query, server), original, cur, query, args)
            return execute

        self.patch(modules["pymysql.cursors"].Cursor, "execute", wrap)


class Redis(patch.Instrumentation):
    name = "redis"
    modules = ("redis.client",)

    def apply(self, modules):
        tracer = self.tracer
        inst = self
        client = modules["redis.client"]

        def server_of(r):
            try:
                kw = r.connection_pool.connection_kwargs
                return kw.get("host"), kw.get("port")
            except Exception:
                return None

        def wrap(original):
            def execute_command(r, *args, **options):
                span = None
                if not inst.tripped and trace.current.get() is not None:
                    try:
                        cmd = str(args[0]) if args else "?"
                        span = _redis_span(tracer, cmd, " ".join([cmd] + ["?"] * (len(args) - 1)),
                                           server_of(r))
                    except Exception as e:
                        inst.fail(e)
                return _run(span, original, r, *args, **options)
            return execute_command

        def wrap_pipeline(original):
            def execute(p, *args, **kwargs):
                span = None
                if not inst.tripped and trace.current.get() is not None:
                    try:
                        cmds = [str(c[0][0]) for c in getattr(p, "command_stack", [])][:32]
                        span = _redis_span(tracer, "PIPELINE", "\n".join(cmds), server_of(p))
                    except Exception as e:
                        inst.fail(e)
                return _run(span, original, p, *args, **kwargs)
            return execute

        self.patch(client.Redis, "execute_command", wrap)
        pipeline = getattr(client, "Pipeline", None)
        if pipeline is not None and "execute" in pipeline.__dict__:
            self.patch(pipeline, "execute", wrap_pipeline)


def _redis_span(tracer, op, text, server):
    attrs = {"db.system": "redis", "db.operation.name": op.upper(), "db.query.text": text}
    if server and server[0]:
        attrs["server.address"] = server[0]
        if server[1]:
            attrs["server.port"] = int(server[1])
    return tracer.start_child(op.upper(), trace.CLIENT, attrs)


class SQLAlchemy(patch.Instrumentation):
    """Engine-level spans from SQLAlchemy's own cursor events, listened on the `Engine` class, so
    engines created before injection are covered (1.4, 2.0, 2.1). Watching the package itself: its
    events and engine modules are complete only once `sqlalchemy/__init__` has run."""

    name = "sqlalchemy"
    modules = ("sqlalchemy",)
    _events = ("before_cursor_execute", "after_cursor_execute", "handle_error")

    def __init__(self, tracer, config):
        patch.Instrumentation.__init__(self, tracer, config)
        self._listening = []
        self._engines = weakref.WeakKeyDictionary()

    def apply(self, modules):
        sa = modules["sqlalchemy"]
        engine_cls = sa.engine.Engine
        listen = sa.event.listen
        fns = self._listeners()
        for name in self._events:
            listen(engine_cls, name, fns[name])
            self._listening.append((sa.event, engine_cls, name, fns[name]))

    def undo(self):
        while self._listening:
            event, cls, name, fn = self._listening.pop()
            try:
                event.remove(cls, name, fn)
            except Exception:
                pass
        self._engines = weakref.WeakKeyDictionary()

    def _base_attrs(self, engine):
        """The attributes every statement of `engine` shares, computed once per engine."""
        try:
            base = self._engines.get(engine)
        except TypeError:
            base = None
        if base is None:
            url = engine.url
            base = {"db.system": engine.dialect.name}
            if url.database:
                base["db.namespace"] = url.database
            if url.host:
                base["server.address"] = url.host
                if url.port:
                    base["server.port"] = int(url.port)
            try:
                self._engines[engine] = base
            except TypeError:
                pass
        return base

    def _listeners(self):
        inst = self
        tracer = self.tracer
        current_get = trace.current.get
        set_orm = _orm_span.set

        def before_cursor_execute(conn, cursor, statement, parameters, context, executemany):
            if inst.tripped or current_get() is None:
                return
            try:
                attrs = dict(inst._base_attrs(conn.engine))
                op = _operation(statement)
                attrs["db.query.text"] = statement[:MAX_QUERY]
                if op:
                    attrs["db.operation.name"] = op
                set_orm(tracer.start_child(op or attrs["db.system"], trace.CLIENT, attrs))
            except Exception as e:
                inst.fail(e)

        def after_cursor_execute(conn, cursor, statement, parameters, context, executemany):
            span = _orm_span_get()
            if span is not None:
                set_orm(None)
                span.finish()

        def handle_error(ctx):
            span = _orm_span_get()
            if span is not None:
                set_orm(None)
                try:
                    span.set_error(ctx.original_exception)
                except Exception as e:
                    inst.fail(e)
                span.finish()

        return {"before_cursor_execute": before_cursor_execute,
                "after_cursor_execute": after_cursor_execute, "handle_error": handle_error}


_first_word = re.compile(r"\s*([A-Za-z]+)").match


def _operation(sql):
    """The statement's first keyword, upper-cased, without copying a long statement."""
    m = _first_word(sql, 0, 64)
    return m.group(1).upper() if m is not None else ""

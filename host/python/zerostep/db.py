"""Database client spans: DB-API drivers (sqlite3, psycopg2, pymysql) and redis-py.

sqlite3's and psycopg2's connection and cursor types are C types whose attributes cannot be set, so
those two are covered from the next `connect()` on, through a subclass passed as the connection
factory; pure-Python drivers (pymysql, redis-py) are patched on their classes.
"""
from _zerostep import patch, trace

MAX_QUERY = 2048


def _query_span(tracer, system, sql, server=None):
    if trace.current.get() is None:
        return None
    try:
        text = sql if isinstance(sql, str) else bytes(sql).decode("utf-8", "replace")
    except Exception:
        text = "?"
    op = text.lstrip().split(None, 1)
    op = op[0].upper() if op else ""
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

        class Cursor(base_cur):
            def execute(self, sql, *a):
                return _run(_safe(inst, tracer, "sqlite", sql), base_cur.execute, self, sql, *a)

            def executemany(self, sql, *a):
                return _run(_safe(inst, tracer, "sqlite", sql), base_cur.executemany, self, sql, *a)

        class Connection(base_conn):
            def cursor(self, factory=Cursor):
                return base_conn.cursor(self, factory)

            def execute(self, sql, *a):
                return self.cursor().execute(sql, *a)

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

"""Unit tests of the in-process tracer, stdlib only, for every CPython 3.8-3.13:
`python -m unittest discover -s host/python/tests`. A fake intake (a Unix socket in a temp dir)
plays the agent: it answers the bootstrap's hello with the modules, then collects frames."""
import http.server
import json
import marshal
import os
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import types
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join(os.path.dirname(HERE), "zerostep")
SENSORS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "sensors")
# Same order as host/src/intake/tracer_source.rs: the package first, then its modules by dependency.
MODULE_ORDER = ["trace", "patch", "report", "wsgi", "bundles"]
# The bundles the sensors carry, as their crates declare them (sensors/*/src/lib.rs), but without
# the servers' triggers: these tests drive the server instrumentations' span code directly, in a
# process that imports neither gunicorn nor uWSGI (each instrumentation still patches nothing
# until its library is imported). Triggers have their own test.
BUNDLES = [
    ("gunicorn", [], ["server"], "server:instrumentations"),
    ("uwsgi", [], ["server"], "server:instrumentations"),
    ("libraries", [], ["frameworks", "clients", "db", "libraries"], "libraries:instrumentations"),
    ("asgi", [], ["asgi"], "asgi:instrumentations"),
]


def modules():
    with open(os.path.join(PKG, "__init__.py")) as f:
        out = [["_zerostep", f.read()]]
    for m in MODULE_ORDER:
        with open(os.path.join(PKG, m + ".py")) as f:
            out.append(["_zerostep." + m, f.read()])
    return out


def bundles():
    out = []
    for name, triggers, mods, entry in BUNDLES:
        sources = []
        for m in mods:
            with open(os.path.join(SENSORS, name, "python", m + ".py")) as f:
                sources.append([m, f.read()])
        out.append({"name": name, "version": "test", "triggers": triggers, "modules": sources,
                    "entry": entry, "tracer_api": ">=1.0,<2", "settings": {}})
    return out


def tracer_config():
    return {"flush_interval": 0.05, "bundles": bundles()}


def bootstrap_code(address):
    with open(os.path.join(os.path.dirname(HERE), "bootstrap.py")) as f:
        src = f.read()
    return ("try:\n    exec(compile(%s, '<zerostep-bootstrap>', 'exec'), "
            "{'PARAMS': __import__('json').loads(%s)})\nexcept BaseException:\n    pass\n"
            % (json.dumps(src), json.dumps(json.dumps({"address": address}))))


class FakeIntake(object):
    def __init__(self, version="0.2.0"):
        self.dir = tempfile.mkdtemp(prefix="zs-intake-")
        self.path = os.path.join(self.dir, "intake.sock")
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(16)
        self.frames = []
        self.conns = []
        self.version = version
        self.cond = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        while True:
            try:
                b = c.recv(65536)
            except OSError:
                return
            if not b:
                return
            buf += b
            while len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                if len(buf) < 4 + n:
                    break
                body = buf[4:4 + n]
                if body[:1] == b"\x01":
                    pid, dropped, spans = marshal.loads(body[1:])
                    msg = {"t": "spans", "pid": pid, "dropped": dropped, "spans": spans}
                else:
                    msg = json.loads(body)
                buf = buf[4 + n:]
                if msg.get("t") == "hello" and msg.get("role") == "bootstrap":
                    self.send(c, {"v": 1, "t": "load", "version": self.version,
                                  "modules": modules(), "config": tracer_config()})
                with self.cond:
                    self.frames.append(msg)
                    self.cond.notify_all()

    @staticmethod
    def send(c, obj):
        b = json.dumps(obj).encode()
        c.sendall(struct.pack(">I", len(b)) + b)

    def spans(self):
        out = []
        for f in self.frames:
            if f.get("t") == "spans":
                out.extend(f["spans"])
        return out

    def wait_spans(self, pred, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [s for s in self.spans() if pred(s)]
            if found:
                return found
            time.sleep(0.02)
        return []

    def close(self):
        self.srv.close()
        for c in self.conns:
            c.close()


def flush():
    m = sys.modules.get("_zerostep")
    if m is not None and m._state is not None:
        m._state.reporter.flush()


def hello_app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"hi"]


def call(app, path="/x", headers=None):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "a=1",
               "RAW_URI": path + "?a=1", "wsgi.url_scheme": "http", "HTTP_HOST": "127.0.0.1:8000",
               "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
    environ.update(headers or {})
    out = {}

    def sr(status, hdrs, exc_info=None):
        out["status"] = status

    body = app(environ, sr)
    try:
        data = b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    return out.get("status"), data


class TracerTest(unittest.TestCase):
    def setUp(self):
        self.intake = FakeIntake()
        self.path_before = list(sys.path)
        exec(bootstrap_code(self.intake.path), {})
        self.zs = sys.modules.get("_zerostep")
        self.assertIsNotNone(self.zs, "bootstrap did not install the tracer")

    def tearDown(self):
        m = sys.modules.get("_zerostep")
        if m is not None:
            m.uninstall()
        self.intake.close()

    def server(self):
        st = self.zs._state
        gun = [i for i in st.insts if i.name == "gunicorn"][0]
        return gun.server

    def test_bootstrap_is_small_and_leaves_no_path(self):
        with open(os.path.join(os.path.dirname(HERE), "bootstrap.py")) as f:
            self.assertLess(len(f.read()), 4096)
        self.assertEqual(sys.path, self.path_before)
        hello = [f for f in self.intake.frames if f.get("t") == "hello"]
        self.assertEqual(hello[0]["pid"], os.getpid())

    def test_idempotent_install(self):
        exec(bootstrap_code(self.intake.path), {})
        self.assertIs(sys.modules["_zerostep"], self.zs)
        self.assertEqual(sum(1 for f in sys.meta_path if type(f).__name__ == "ImportHook"), 1)

    def test_server_span_and_sqlite_child(self):
        srv = self.server()

        def app(environ, start_response):
            conn = sqlite3.connect(":memory:")
            conn.execute("create table t (x)")
            conn.execute("select * from t").fetchall()
            return hello_app(environ, start_response)

        status, body = call(lambda e, s: srv.call(app, e, s))
        self.assertEqual(body, b"hi")
        flush()
        spans = self.intake.wait_spans(lambda s: s[4] == 1)
        self.assertEqual(len(spans), 1)
        server = spans[0]
        self.assertEqual(server[3], "GET")
        attrs = server[9]
        self.assertEqual(attrs["http.request.method"], "GET")
        self.assertEqual(attrs["url.path"], "/x")
        self.assertEqual(attrs["url.query"], "a=1")
        self.assertEqual(attrs["http.response.status_code"], 200)
        self.assertEqual(attrs["server.port"], 8000)
        db = [s for s in self.intake.spans() if s[9].get("db.system") == "sqlite"]
        self.assertEqual(len(db), 2)
        for s in db:
            self.assertEqual(s[0], server[0])
            self.assertEqual(s[2], server[1])
        self.assertEqual(db[1][9]["db.query.text"], "select * from t")

    def test_incoming_context_continued_and_error(self):
        srv = self.server()
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        with self.assertRaises(RuntimeError):
            call(lambda e, s: srv.call(hello_app, e, s), "/boom",
                 {"HTTP_TRACEPARENT": tp, "HTTP_TRACESTATE": "congo=t61rcWkgMzE"})
        flush()
        s = self.intake.wait_spans(lambda s: s[4] == 1)[0]
        self.assertEqual(s[0], 0x0af7651916cd43dd8448eb211c80319c)
        self.assertEqual(s[2], 0xb7ad6b7169203331)
        self.assertEqual(s[7], 2)
        self.assertEqual(s[10][0][0], "exception")
        self.assertEqual(s[10][0][2]["exception.type"], "RuntimeError")

    def test_http_client_span_and_propagation(self):
        seen = {}

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen["tp"] = self.headers.get("traceparent")
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        httpd = http.server.HTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=httpd.handle_request, daemon=True).start()
        port = httpd.server_address[1]
        srv = self.server()

        def app(environ, start_response):
            urllib.request.urlopen("http://127.0.0.1:%d/down" % port).read()
            return hello_app(environ, start_response)

        call(lambda e, s: srv.call(app, e, s))
        httpd.server_close()
        flush()
        client = self.intake.wait_spans(lambda s: s[4] == 2)[0]
        server = self.intake.wait_spans(lambda s: s[4] == 1)[0]
        self.assertEqual(client[9]["url.full"], "http://127.0.0.1:%d/down" % port)
        self.assertEqual(client[9]["http.response.status_code"], 204)
        self.assertEqual(client[2], server[1])
        self.assertEqual(seen["tp"], "00-%032x-%016x-01" % (client[0], client[1]))

    def test_uninstall_restores_everything(self):
        import http.client
        before = http.client.HTTPConnection.__dict__["putrequest"]
        self.assertTrue(hasattr(before, "__zerostep_original__"))
        self.zs.uninstall()
        self.assertFalse(any(k.startswith("_zerostep") for k in sys.modules))
        self.assertFalse(hasattr(http.client.HTTPConnection.putrequest, "__zerostep_original__"))
        self.assertFalse(any(type(f).__name__ == "ImportHook" for f in sys.meta_path))
        self.assertIs(sqlite3.connect, sqlite3.dbapi2.connect)
        self.assertFalse(hasattr(sqlite3.connect, "__zerostep_original__"))

    def test_detach_command(self):
        for c in self.intake.conns:
            FakeIntake.send(c, {"v": 1, "t": "detach"})
        deadline = time.time() + 5
        while time.time() < deadline and "_zerostep" in sys.modules:
            time.sleep(0.02)
        self.assertFalse("_zerostep" in sys.modules)

    def test_upgrade_in_place(self):
        self.intake.version = "0.3.0"
        exec(bootstrap_code(self.intake.path), {})
        new = sys.modules["_zerostep"]
        self.assertIsNot(new, self.zs)
        self.assertIsNotNone(new._state)
        self.assertIsNone(self.zs._state)
        import http.client
        self.assertIs(http.client.HTTPConnection.putrequest.__zerostep_original__.__name__,
                      "putrequest")
        self.zs = new

    def test_code_swap_for_apps_called_from_c(self):
        uw = [i for i in self.zs._state.insts if i.name == "uwsgi"][0]

        def app(environ, start_response):
            return hello_app(environ, start_response)

        original = app.__code__
        uw._swap_code(app)
        self.assertIsNot(app.__code__, original)
        self.assertEqual(call(app, "/swapped"), ("200 OK", b"hi"))
        flush()
        self.assertEqual(len(self.intake.wait_spans(lambda s: s[9].get("url.path") == "/swapped")), 1)
        uw.restore()
        self.assertIs(app.__code__, original)

    def test_upgrade_command_keeps_the_connection(self):
        old_sock = self.zs._state.reporter.sock
        for c in self.intake.conns:
            FakeIntake.send(c, {"v": 1, "t": "upgrade", "version": "0.3.0", "modules": modules(),
                                "config": tracer_config()})
        deadline = time.time() + 5
        while time.time() < deadline and (sys.modules.get("_zerostep") is self.zs or getattr(
                sys.modules.get("_zerostep"), "_state", None) is None):
            time.sleep(0.02)
        new = sys.modules["_zerostep"]
        self.assertIsNot(new, self.zs)
        self.assertIsNotNone(new._state)
        self.assertIs(new._state.reporter.sock, old_sock)
        self.assertEqual(sum(1 for f in sys.meta_path if type(f).__name__ == "ImportHook"), 1)
        self.zs = new

    def test_import_hook_instruments_later_imports(self):
        d = tempfile.mkdtemp()
        pkg = os.path.join(d, "redis")
        os.makedirs(pkg)
        with open(os.path.join(pkg, "__init__.py"), "w") as f:
            f.write("")
        with open(os.path.join(pkg, "client.py"), "w") as f:
            f.write("class Redis(object):\n"
                    "    def execute_command(self, *args, **kw):\n        return args\n")
        sys.path.insert(0, d)
        try:
            import redis.client
            self.assertTrue(hasattr(redis.client.Redis.execute_command, "__zerostep_original__"))
            self.assertIs(type(redis.client.__loader__).__name__, "SourceFileLoader")
        finally:
            sys.path.remove(d)
            for k in ("redis", "redis.client"):
                sys.modules.pop(k, None)

    def test_worker_module_half_imported_at_injection_is_patched_after_fork(self):
        # What an injection during the master's own `import gunicorn.workers.sync` leaves.
        import importlib.machinery
        names = ("gunicorn", "gunicorn.workers", "gunicorn.workers.base", "gunicorn.workers.sync")
        saved = {n: sys.modules.get(n) for n in names}
        try:
            for n in names:
                sys.modules[n] = types.ModuleType(n)
            sync = sys.modules["gunicorn.workers.sync"]
            sync.__spec__ = importlib.machinery.ModuleSpec(sync.__name__, None)
            sync.__spec__._initializing = True
            self.zs.uninstall()
            exec(bootstrap_code(self.intake.path), {})
            self.zs = sys.modules["_zerostep"]

            class SyncWorker(object):
                def handle_request(self, *args):
                    return args

            sync.SyncWorker = SyncWorker
            self.zs.after_fork()  # still importing: nothing to do yet
            self.assertFalse(hasattr(SyncWorker.handle_request, "__zerostep_original__"))
            sync.__spec__._initializing = False
            self.zs.after_fork()
            self.assertTrue(hasattr(SyncWorker.handle_request, "__zerostep_original__"))
            self.assertEqual(self.zs._state.unsettled, set())
        finally:
            self.zs.uninstall()
            for n, m in saved.items():
                if m is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = m

    def test_breaker_trips_and_restores(self):
        st = self.zs._state
        inst = [i for i in st.insts if i.name == "http.client"][0]
        for _ in range(30):
            inst.fail(ValueError("x"))
        self.assertTrue(inst.tripped)
        flush()
        status = [f for f in self.intake.frames if f.get("t") == "status"]
        deadline = time.time() + 5
        while time.time() < deadline and not any(
                f["instrumentations"]["http.client"]["tripped"] for f in status):
            time.sleep(0.02)
            status = [f for f in self.intake.frames if f.get("t") == "status"]
        self.assertTrue(status[-1]["instrumentations"]["http.client"]["tripped"])
        import http.client
        self.assertFalse(hasattr(http.client.HTTPConnection.putrequest, "__zerostep_original__"))

    def test_fork_reports_under_child_pid(self):
        if not hasattr(os, "fork"):
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                srv = self.server()
                call(lambda e, s: srv.call(hello_app, e, s), "/child")
                flush()
                time.sleep(0.2)
                flush()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        spans = self.intake.wait_spans(lambda s: s[9].get("url.path") == "/child")
        self.assertEqual(len(spans), 1)
        frames = [f for f in self.intake.frames if f.get("t") == "spans"
                  and any(s[9].get("url.path") == "/child" for s in f["spans"])]
        self.assertEqual(frames[0]["pid"], pid)
        os.close(r)
        os.close(w)

    def test_no_thread_in_a_uwsgi_master(self):
        # uWSGI forks workers from C with the GIL released and no Python fork hook: a thread of
        # ours holding the GIL at that instant hangs the new worker. Only workers get one.
        self.zs.uninstall()
        fake = type(sys)("uwsgi")
        fake.opt = {"enable-threads": True}
        fake.worker_id = lambda: 0
        sys.modules["uwsgi"] = fake
        try:
            exec(bootstrap_code(self.intake.path), {})
            zs = sys.modules["_zerostep"]
            rep = zs._state.reporter
            self.assertIsNone(rep.thread)
            self.assertFalse([t for t in threading.enumerate() if t.name == "zerostep-reporter"])
            rep.request_end()
            self.assertIsNone(rep.thread, "no lazy start either")
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the fake intake's threads
                pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    fake.worker_id = lambda: 1
                    fake.post_fork_hook()
                    code = 0 if rep.thread is not None and rep.thread.is_alive() else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            self.assertEqual(os.WEXITSTATUS(status), 0, "a worker runs its own thread")
        finally:
            m = sys.modules.get("_zerostep")
            if m is not None:
                m.uninstall()
            del sys.modules["uwsgi"]

    def test_sqlalchemy_engine_made_before_injection(self):
        try:
            import sqlalchemy
        except ImportError:
            self.skipTest("SQLAlchemy not installed (tests/tracer.rs runs this in its venvs)")
        self.zs.uninstall()
        path = os.path.join(tempfile.mkdtemp(), "app.db")
        engine = sqlalchemy.create_engine("sqlite:///" + path)  # made and used before the tracer
        with engine.connect():
            pass
        exec(bootstrap_code(self.intake.path), {})
        self.zs = sys.modules["_zerostep"]
        srv = self.server()

        def app(environ, start_response):
            with engine.begin() as c:
                c.execute(sqlalchemy.text("create table if not exists t (x integer)"))
                c.execute(sqlalchemy.text("insert into t values (:x)"), {"x": 1})
                c.execute(sqlalchemy.text("select x from t")).fetchall()
            try:
                with engine.connect() as c:
                    c.execute(sqlalchemy.text("select nope from t"))
            except sqlalchemy.exc.OperationalError:
                pass
            return hello_app(environ, start_response)

        self.assertEqual(call(lambda e, s: srv.call(app, e, s), "/sqla"), ("200 OK", b"hi"))
        flush()
        server = self.intake.wait_spans(lambda s: s[9].get("url.path") == "/sqla")[0]
        self.intake.wait_spans(lambda s: "nope" in s[9].get("db.query.text", ""))
        db = [s for s in self.intake.spans() if s[0] == server[0] and s[4] == 2]
        texts = [s[9]["db.query.text"] for s in db]
        self.assertEqual(texts, ["create table if not exists t (x integer)",
                                 "insert into t values (?)", "select x from t",
                                 "select nope from t"], "one span per statement, none doubled")
        for s in db:
            self.assertEqual(s[2], server[1])
            self.assertEqual(s[9]["db.system"], "sqlite")
            self.assertEqual(s[9]["db.namespace"], path)
        self.assertEqual(db[1][3], "INSERT")
        self.assertEqual(db[3][7], 2, "the failed statement has error status")
        self.assertEqual(db[3][10][0][0], "exception")
        # Outside SQLAlchemy the sqlite3 span is back.
        self.assertIsNone(sys.modules["_zerostep.bundles.libraries.db"]._orm_span.get())
        self.zs.uninstall()
        from sqlalchemy.engine import Engine
        for name in ("before_cursor_execute", "after_cursor_execute", "handle_error"):
            self.assertFalse([f for f in Engine.dispatch._clslevel[Engine]
                              if "zerostep" in repr(getattr(f, "__code__", ""))]
                             if hasattr(Engine.dispatch, "_clslevel") else [], name)
        engine.dispose()

    def test_internal_error_falls_back_to_the_app(self):
        srv = self.server()
        wsgi = sys.modules["_zerostep.wsgi"]
        original = wsgi._attrs

        def broken(environ):
            raise KeyError("tracer bug")

        wsgi._attrs = broken
        try:
            for _ in range(3):
                self.assertEqual(call(lambda e, s: srv.call(hello_app, e, s)), ("200 OK", b"hi"))
        finally:
            wsgi._attrs = original
        self.assertEqual(srv.inst.errors, 3)
        self.assertFalse(srv.inst.tripped)

    def test_bounded_buffer_counts_drops(self):
        rep = self.zs._state.reporter
        rep.max_spans = 10
        srv = self.server()
        rep.request_end = lambda: None
        for _ in range(25):
            call(lambda e, s: srv.call(hello_app, e, s))
        self.assertEqual(len(rep.spans), 10)
        self.assertEqual(rep.dropped, 15)


class TraceContextTest(unittest.TestCase):
    def setUp(self):
        self.intake = FakeIntake()
        self.path_before = list(sys.path)
        exec(bootstrap_code(self.intake.path), {})
        self.t = sys.modules["_zerostep"].trace

    def tearDown(self):
        sys.modules["_zerostep"].uninstall()
        self.intake.close()

    def test_traceparent(self):
        p = self.t.parse_traceparent
        ok = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        self.assertEqual(p(ok), (0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, True))
        self.assertEqual(p(ok[:-2] + "00")[2], False)
        self.assertIsNone(p(ok.upper()))
        self.assertIsNone(p("ff" + ok[2:]))
        self.assertIsNone(p(ok + "-extra"))  # version 00 must be exactly 55 chars
        self.assertIsNotNone(p("cc" + ok[2:] + "-what-the-future-holds"))
        self.assertIsNone(p("cc" + ok[2:] + "x"))
        self.assertIsNone(p("00-" + "0" * 32 + "-b7ad6b7169203331-01"))
        self.assertIsNone(p("00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01"))
        self.assertIsNone(p(ok + "," + ok))
        self.assertIsNone(p("00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01"))
        self.assertIsNone(p(""))

    def test_tracestate(self):
        p = self.t.parse_tracestate
        self.assertEqual(p("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE"),
                         "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        self.assertEqual(p("a=1,,  ,b=2"), "a=1,b=2")
        self.assertEqual(p("t@vendor=1"), "t@vendor=1")
        self.assertIsNone(p("a=1,a=2"))
        self.assertIsNone(p("A=1"))
        self.assertIsNone(p("a=x=y"))
        self.assertIsNone(p("a=1 "[:-1] + ",b"))
        self.assertIsNone(p(",".join("k%d=v" % i for i in range(33))))
        self.assertIsNotNone(p(",".join("k%d=v" % i for i in range(32))))
        long_member = "big=" + "x" * 200
        out = p(",".join(["a=1", long_member] + ["k%d=%s" % (i, "v" * 40) for i in range(10)]))
        self.assertNotIn("big=", out)
        self.assertLessEqual(len(out), 512)

    def test_ids_unique_and_nonzero(self):
        ids = {self.t.new_span_id() for _ in range(10000)}
        self.assertEqual(len(ids), 10000)
        self.assertNotIn(0, ids)


class AuthIntake(object):
    """Plays the agent of host/src/intake/auth.rs at `path`: answers a nonce with the proof for
    `secret` (or a forged one), and sends `then` (commands) after it."""

    def __init__(self, path, secret, forge=False, then=()):
        self.path, self.secret, self.forge, self.then = path, secret, forge, list(then)
        if os.path.exists(path):
            os.unlink(path)
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(16)
        self.frames, self.conns, self.closed_by_peer, self.tags = [], [], 0, []
        threading.Thread(target=self._accept, daemon=True).start()

    def proof(self, nonce):
        return "0" * 64 if self.forge else self.proof_for("agent", nonce)

    def proof_for(self, who, nonce):
        import hashlib
        import hmac
        return hmac.new(self.secret.encode(), ("zerostep %s v1 %s" % (who, nonce)).encode(),
                        hashlib.sha256).hexdigest()

    def _accept(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        while True:
            try:
                b = c.recv(65536)
            except OSError:
                return
            if not b:
                self.closed_by_peer += 1
                return
            buf += b
            while len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                if len(buf) < 4 + n:
                    break
                body, buf = buf[4:4 + n], buf[4 + n:]
                msg = {"t": "spans"} if body[:1] == b"\x01" else json.loads(body)
                self.frames.append(msg)
                if msg.get("t") != "hello":
                    continue
                proof = self.proof(msg.get("nonce") or "")
                self.tags.append(msg.get("tag") == self.proof_for("tracer", msg.get("nonce")))
                try:
                    if msg.get("role") == "bootstrap":
                        FakeIntake.send(c, {"v": 1, "t": "load", "version": "0.1.0",
                                            "modules": modules(), "proof": proof,
                                            "config": {"flush_interval": 0.05}})
                    else:
                        FakeIntake.send(c, {"v": 1, "t": "auth", "proof": proof})
                    for cmd in self.then:
                        FakeIntake.send(c, cmd)
                except OSError:
                    return

    def close(self):
        self.srv.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)  # a thread blocked in recv keeps a closed fd open
                c.close()
            except OSError:
                pass


EVIL = [["_zerostep", "import sys\nsys._zs_pwned = True\nVERSION = '6.6.6'\n"
                      "def install(*a):\n    sys._zs_pwned = True\n    return True\n"]]


class AuthTest(unittest.TestCase):
    """The tracer runs no code and accepts no command from a listener that is not the agent."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="zs-auth-")
        self.path = os.path.join(self.dir, "intake.sock")
        self.secret = "5e" * 32
        self.auth = {"secret": self.secret, "root": [os.getpid(), 1], "uid": os.geteuid()}
        self.intakes = []

    def tearDown(self):
        m = sys.modules.get("_zerostep")
        if m is not None:
            m.uninstall()
        for i in self.intakes:
            i.close()
        if hasattr(sys, "_zs_pwned"):
            del sys._zs_pwned

    def intake(self, **kw):
        i = AuthIntake(self.path, self.secret, **kw)
        self.intakes.append(i)
        return i

    def bootstrap(self, auth):
        with open(os.path.join(os.path.dirname(HERE), "bootstrap.py")) as f:
            src = f.read()
        params = {"address": self.path, "auth": auth}
        try:
            exec(compile(src, "<zerostep-bootstrap>", "exec"), {"PARAMS": params})
        except BaseException:
            pass

    def test_no_load_from_a_forged_proof_or_another_user(self):
        self.intake(forge=True)
        self.bootstrap(self.auth)
        self.assertNotIn("_zerostep", sys.modules)
        self.intakes.pop().close()
        i = self.intake()
        self.bootstrap(dict(self.auth, uid=os.geteuid() + 1))
        self.assertNotIn("_zerostep", sys.modules)
        self.assertEqual(i.frames, [], "said hello to another user's listener")

    def test_an_upgrade_keeps_the_credentials(self):
        self.intake()
        self.bootstrap(self.auth)
        zs = sys.modules["_zerostep"]
        # The agent's upgrade carries its config, never the bootstrap's secret.
        self.assertTrue(zs.upgrade(modules(), {"flush_interval": 0.05}))
        new = sys.modules["_zerostep"]
        self.assertIsNot(new, zs)
        self.assertEqual(new._state.reporter.auth, self.auth)

    def test_reconnects_only_to_the_agent(self):
        good = self.intake()
        self.bootstrap(self.auth)
        zs = sys.modules.get("_zerostep")
        self.assertIsNotNone(zs, "the real agent's load was refused")
        rep = zs._state.reporter
        # The agent goes; a squatter with a forged proof takes the path and sends code.
        good.close()
        self.intakes.remove(good)
        squatter = self.intake(forge=True, then=[
            {"v": 1, "t": "upgrade", "version": "6.6.6", "modules": EVIL, "config": {}},
            {"v": 1, "t": "detach"}])
        deadline = time.time() + 10
        while time.time() < deadline and squatter.closed_by_peer == 0:
            rep.next_connect = 0.0
            rep.flush()
            time.sleep(0.05)
        self.assertGreater(squatter.closed_by_peer, 0, "the tracer never called the squatter")
        self.assertFalse(hasattr(sys, "_zs_pwned"), "the squatter's code ran")
        self.assertIs(sys.modules.get("_zerostep"), zs, "the squatter's detach was obeyed")
        self.assertEqual({f.get("t") for f in squatter.frames}, {"hello"})
        # The agent is back: the next reconnect is answered and status flows again.
        squatter.close()
        self.intakes.remove(squatter)
        good = self.intake()
        deadline = time.time() + 10
        while time.time() < deadline and not any(f.get("t") == "status" for f in good.frames):
            rep.next_connect = 0.0
            rep.flush()
            time.sleep(0.05)
        self.assertTrue(any(f.get("t") == "status" for f in good.frames), good.frames)
        self.assertTrue(rep.authed)
        self.assertTrue(good.tags and all(good.tags), "the tracer did not show its secret")


if __name__ == "__main__":
    unittest.main()

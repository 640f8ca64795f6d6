"""A plain WSGI function app for the tracer tests: each path exercises one instrumentation."""
import json
import os
import sqlite3
import urllib.request


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    body = b"ok"
    if path == "/boom":
        raise ValueError("boom")
    if path == "/sqlite":
        conn = sqlite3.connect(":memory:")
        conn.execute("create table t (x integer)")
        conn.execute("insert into t values (?)", (1,))
        body = json.dumps(conn.execute("select x from t").fetchall()).encode()
        conn.close()
    if path == "/redis":
        import redis
        r = redis.Redis(host="127.0.0.1", port=int(os.environ["ZS_REDIS_PORT"]))
        r.set("k", "v")
        body = r.get("k")
    if path == "/pg":
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=int(os.environ["ZS_PG_PORT"]),
                                user="postgres", dbname="postgres")
        cur = conn.cursor()
        cur.execute("select 1 + %s", (1,))
        body = str(cur.fetchone()[0]).encode()
        conn.close()
    if path == "/call":
        with urllib.request.urlopen(os.environ["ZS_DOWNSTREAM"] + "/sqlite") as resp:
            body = resp.read()
    if path == "/pid":
        body = str(os.getpid()).encode()
    if path == "/tracer":
        import sys
        body = b"yes" if "_zerostep" in sys.modules else b"no"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

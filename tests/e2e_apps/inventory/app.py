# Service B of the end-to-end test: a plain WSGI function on uWSGI that queries SQLite.
import json
import os
import sqlite3

DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inventory.db")


def application(environ, start_response):
    try:
        item = int(environ.get("PATH_INFO", "").rsplit("/", 1)[-1])
    except ValueError:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    con = sqlite3.connect("file:%s?mode=ro" % DB, uri=True)
    try:
        row = con.execute("SELECT name, qty FROM items WHERE id = ?", (item,)).fetchone()
    finally:
        con.close()
    if row is None:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    body = json.dumps({"id": item, "name": row[0], "qty": row[1]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]

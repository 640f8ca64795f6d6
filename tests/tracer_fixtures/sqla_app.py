"""A WSGI app using SQLAlchemy engines (a SQLite file, and PostgreSQL when ZS_PG_PORT is set). The
engines are created at import: with gunicorn --preload that is in the master, before injection."""
import os

import sqlalchemy
from sqlalchemy import text

engine = sqlalchemy.create_engine("sqlite:///" + os.path.join(os.getcwd(), "sqla.db"))
pg = None
if os.environ.get("ZS_PG_PORT"):
    pg = sqlalchemy.create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:%s/postgres" % os.environ["ZS_PG_PORT"])
# Connected once here (the dialect initialises on first connect), then no connection is shared
# with forked workers.
for e in filter(None, (engine, pg)):
    with e.connect():
        pass
    e.dispose()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    status = "200 OK"
    if path == "/sqla":
        with engine.begin() as c:
            c.execute(text("create table if not exists t (x integer)"))
            c.execute(text("insert into t values (:x)"), {"x": 1})
            body = str(c.execute(text("select count(*) from t")).scalar())
    elif path == "/sqla-error":
        try:
            with engine.connect() as c:
                c.execute(text("select nope from t"))
            body = "?"
        except sqlalchemy.exc.OperationalError:
            body = "error"
    elif path == "/sqla-pg":
        with pg.connect() as c:
            body = str(c.execute(text("select 1 + :x"), {"x": 1}).scalar())
    else:
        status, body = "404 Not Found", "no"
    data = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]

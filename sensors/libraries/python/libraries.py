"""The libraries bundle (sensor `libraries`, contract 0.2): frameworks (Flask and Django routes),
HTTP clients (http.client, httpx, aiohttp) and databases (sqlite3, psycopg2, PyMySQL, redis-py, SQLAlchemy), loaded
into every traced process whichever server sensor matched it. Each instrumentation applies only
once its library is imported, so carrying all of them costs nothing where they are not used."""
from _zerostep.bundles.libraries import clients, db, frameworks


def instrumentations(api, settings):
    """The entry point: every library instrumentation, in the order the tracer always used."""
    t, c = api.tracer, api.config
    return [
        frameworks.Flask(t, c), frameworks.Django(t, c), clients.HttpClient(t, c),
        clients.Httpx(t, c), clients.Aiohttp(t, c),
        db.Sqlite3(t, c), db.Psycopg2(t, c), db.PyMySQL(t, c), db.Redis(t, c),
        db.SQLAlchemy(t, c),
    ]

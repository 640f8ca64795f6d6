"""A WSGI app for gunicorn's gevent and eventlet workers: /call waits (cooperatively, the workers
monkey-patch time and sockets) so concurrent requests interleave, then calls /leaf on the same
server with the same query string, which names the request."""
import time
import urllib.request


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    qs = environ.get("QUERY_STRING", "")
    if path == "/call":
        time.sleep(0.3)
        url = "http://127.0.0.1:%s/leaf?%s" % (environ["SERVER_PORT"], qs)
        with urllib.request.urlopen(url) as resp:
            body = resp.read()
    else:
        body = qs.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

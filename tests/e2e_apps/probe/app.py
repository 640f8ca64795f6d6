# The app of the sensor-lifecycle end-to-end test: plain WSGI on gunicorn that uses a library no
# zerostep sensor knows, zs_probe_lib (beside it), until the test drops the probe sensor.
import zs_probe_lib


def app(environ, start_response):
    n = zs_probe_lib.Worker().run(21)
    body = ("%d\n" % n).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

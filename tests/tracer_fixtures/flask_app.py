"""A Flask app for the tracer tests (http.route, status codes, propagation through requests)."""
import os

import flask

app = flask.Flask(__name__)


@app.route("/users/<int:uid>")
def user(uid):
    return "user %d" % uid


@app.route("/missing")
def missing():
    flask.abort(404)


@app.route("/fail")
def fail():
    raise KeyError("nope")


@app.route("/call")
def call():
    import requests
    return requests.get(os.environ["ZS_DOWNSTREAM"] + "/sqlite").text

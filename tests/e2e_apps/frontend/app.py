# Service A of the end-to-end test: a Flask app on gunicorn that calls service B.
import os

import requests
from flask import Flask, abort

app = Flask(__name__)
INVENTORY = os.environ["INVENTORY_URL"]


@app.route("/orders/<int:order_id>")
def order(order_id):
    r = requests.get("%s/items/%d" % (INVENTORY, order_id), timeout=5)
    if r.status_code != 200:
        abort(502)
    return {"order": order_id, "item": r.json()}

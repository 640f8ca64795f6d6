# Service C of the end-to-end test: started after the agent, on Debian's own python3.11.
from flask import Flask

app = Flask(__name__)


@app.route("/invoices/<int:invoice_id>")
def invoice(invoice_id):
    return {"invoice": invoice_id, "total": invoice_id * 10}

"""The "realistic" workload: a Flask view rendering a Jinja template with a loop."""

from flask import Flask, render_template

app = Flask(__name__)

PRODUCTS = [
    {"id": i, "name": "Product %d" % i, "price": 9.99 + i * 1.25, "in_stock": i % 3 != 0,
     "tags": ["tag%d" % (i % 5), "tag%d" % (i % 7)]}
    for i in range(50)
]


@app.route("/flask")
def catalogue():
    return render_template("catalogue.html", title="Catalogue", products=PRODUCTS,
                           user={"name": "Ada"})

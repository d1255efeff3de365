"""A small Flask app for fcgihost's framework tests (tests/frameworks.rs).

Routes: a Jinja page, an HTML form (GET shows it, POST reads request.form), a multipart file
upload, a plain cookie set/read, a signed session counter, a redirect, and a JSON API.

For ``--threads`` (tests/threads.rs): ``/threads/echo`` (a Flask view) and
``/threads/write`` (a raw WSGI view using the ``write()`` callable) each wait at a barrier
of ``?parties=N`` requests before they read their body, so they only answer when N of them
run at once in one process (a barrier that breaks after 30 s answers 500).
"""

import os
import threading

from flask import Flask, jsonify, make_response, redirect, render_template_string, request, session, url_for

app = Flask(__name__)
_barriers = {}
_barriers_lock = threading.Lock()


def _meet(name, parties):
    """Waits until ``parties`` requests of the kind ``name`` are here at once."""
    with _barriers_lock:
        barrier = _barriers.get((name, parties))
        if barrier is None:
            barrier = _barriers[(name, parties)] = threading.Barrier(parties, timeout=30)
    barrier.wait()


class _WriteEcho:
    """``/threads/write``: streams the request body back through start_response's
    ``write()`` in 8 KiB pieces, after the barrier; other paths go to Flask."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != "/threads/write":
            return self.wsgi_app(environ, start_response)
        parties = int(environ.get("QUERY_STRING", "parties=1").split("=")[-1])
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        _meet("write", parties)
        stream = environ["wsgi.input"]
        while True:
            chunk = stream.read(8192)
            if not chunk:
                break
            write(chunk)
        return []


app.wsgi_app = _WriteEcho(app.wsgi_app)
app.secret_key = "fcgihost-test-secret-not-for-production"

PAGE = """<!doctype html>
<title>{{ title }}</title>
<h1>{{ title }}</h1>
{% if items %}<ul>{% for item in items %}<li>{{ item }}</li>{% endfor %}</ul>{% endif %}
<p>{{ message }}</p>
"""

FORM = """<!doctype html>
<form method="post" action="{{ url_for('form') }}">
  <input name="name"> <input name="tag"> <input name="tag">
  <button>Send</button>
</form>
"""


@app.route("/")
def index():
    name = request.args.get("name", "world")
    return render_template_string(PAGE, title="Flask on fcgihost", message="Hello, %s!" % name,
                                  items=["alpha", "beta"])


@app.route("/form", methods=["GET", "POST"])
def form():
    if request.method == "GET":
        return render_template_string(FORM)
    name = request.form.get("name", "")
    tags = request.form.getlist("tag")
    return render_template_string(PAGE, title="Thanks", message="Thanks, %s" % name, items=tags)


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(filename=f.filename, size=len(data), note=request.form.get("note"))


@app.route("/cookie/set")
def cookie_set():
    resp = make_response("cookie set")
    resp.set_cookie("flavor", request.args.get("value", "chocolate"), httponly=True)
    return resp


@app.route("/cookie/get")
def cookie_get():
    return jsonify(flavor=request.cookies.get("flavor"))


@app.route("/session/incr")
def session_incr():
    session["count"] = session.get("count", 0) + 1
    return jsonify(count=session["count"])


@app.route("/redirect")
def go_home():
    return redirect(url_for("index", name="redirected"))


@app.route("/api/items", methods=["POST"])
def api_items():
    data = request.get_json()
    if not isinstance(data, dict) or "items" not in data:
        return jsonify(error="expected {\"items\": [...]}"), 400
    return jsonify(received=data, count=len(data["items"]), method=request.method), 201


@app.route("/api/items/<int:item_id>", methods=["GET", "PUT", "DELETE"])
def api_item(item_id):
    return jsonify(id=item_id, method=request.method, json=request.get_json(silent=True))


@app.route("/threads/echo", methods=["POST"])
def threads_echo():
    _meet("echo", int(request.args.get("parties", "1")))
    return jsonify(tag=request.args.get("tag"), body=request.get_data(as_text=True),
                   path=request.environ["PATH_INFO"], pid=os.getpid(),
                   thread=threading.get_ident(),
                   multithread=request.environ["wsgi.multithread"])

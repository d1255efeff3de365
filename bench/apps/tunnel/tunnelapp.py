"""A hello app for the raw tunnel measurement (see debugpy.py beside it)."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, World!"]

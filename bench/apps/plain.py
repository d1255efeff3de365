"""The plain WSGI app every server in the benchmark runs (no framework).

Routes: /hello (13 bytes), /10k (10 KiB), /echo (request body echoed back),
/sleep (10 ms in time.sleep, then 13 bytes), /break (debugpy.breakpoint(), for the
DAP benchmark). Anything else: 404.
"""

import time

HELLO = b"Hello, World!"
TEN_K = b"x" * 10240
_TEXT = [("Content-Type", "text/plain")]


def _hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [HELLO]


def _ten_k(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", "10240")])
    return [TEN_K]


def _echo(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    parts = []
    while length > 0:
        chunk = stream.read(min(length, 65536))
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
    body = b"".join(parts)
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _sleep(environ, start_response):
    time.sleep(0.010)
    return _hello(environ, start_response)


def _break(environ, start_response):
    import debugpy

    payload = "y" * 1_000_000  # noqa: F841 (evaluated by the DAP benchmark)
    debugpy.breakpoint()
    return _hello(environ, start_response)


def _not_found(environ, start_response):
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"not found\n"]


ROUTES = {"/hello": _hello, "/10k": _ten_k, "/echo": _echo, "/sleep": _sleep, "/break": _break}


def app(environ, start_response):
    return ROUTES.get(environ.get("PATH_INFO", ""), _not_found)(environ, start_response)

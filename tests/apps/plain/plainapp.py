"""A stdlib-only WSGI test app for fcgihost's integration tests (tests/serve.rs).

Every route exercises one part of PEP 3333 or of the host's supervision, and answers
something a test can check exactly. Routes (PATH_INFO):

  /                  "Hello, world!" (text/plain)
  /echo[/...]        JSON of the request as the app saw it (method, path, query, headers, body...)
                     ?delay=SECONDS sleeps first (to spread concurrent requests over workers)
  /upload            reads wsgi.input in 64 KiB chunks, answers {bytes, sha256, crc32}
                     ?pattern=1 also checks the body against the /download pattern
                     ?delay_first=SECONDS waits before reading (the client keeps sending)
  /download?size=N   streams N bytes (byte p = p % 251) in 64 KiB chunks with Content-Length
  /stream            yields several chunks, no Content-Length; ?wait_for=PATH holds the
                     second chunk back until PATH exists (so a test can see the first arrive)
  /write             uses the write() callable from start_response
  /error-before      raises before start_response
  /error-after       raises after yielding a first chunk
  /exit              os._exit(1) in the middle of a request
  /sleep?s=N         sleeps N seconds (or until ?until=PATH exists), logs "sleep-start TAG"
  /pid               the worker's pid
  /cookies           two Set-Cookie headers
  /redirect          302 to /echo?from=redirect
  /readline          echoes body lines read with readline() (?mode=readline, default),
                     readline(size) (?mode=sized) or iteration (?mode=iter)
  /log?msg=M         writes M to wsgi.errors and to stdout
  /filewrapper       serves this file through wsgi.file_wrapper
  /closing?tag=T     an iterable whose close() logs "close-called T"
"""

import base64
import hashlib
import json
import os
import sys
import time
import zlib
from urllib.parse import parse_qs

CHUNK = 64 * 1024
PATTERN_PERIOD = 251
# Any window of the pattern starting at offset o is PATTERN[o % 251 : o % 251 + n].
PATTERN = bytes(i % PATTERN_PERIOD for i in range(CHUNK + PATTERN_PERIOD))


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}


def _content_length(environ):
    value = environ.get("CONTENT_LENGTH", "")
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _read_body_chunks(environ, size=CHUNK):
    """Yield the request body in chunks, with read(n) only (wsgiref.validate allows no other)."""
    stream = environ["wsgi.input"]
    remaining = _content_length(environ)
    while remaining is None or remaining > 0:
        n = size if remaining is None else min(size, remaining)
        data = stream.read(n)
        if not data:
            break
        if remaining is not None:
            remaining -= len(data)
        yield data


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj, sort_keys=True).encode("utf-8")
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _text(start_response, text, status="200 OK", extra=()):
    body = text.encode("utf-8")
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    headers.extend(extra)
    start_response(status, headers)
    return [body]


def hello(environ, start_response):
    return _text(start_response, "Hello, world!")


def echo(environ, start_response):
    q = _query(environ)
    if "delay" in q:
        time.sleep(float(q["delay"]))
    body = b"".join(_read_body_chunks(environ))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    cgi_keys = (
        "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE",
        "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR",
        "REMOTE_PORT", "HTTPS", "REQUEST_URI", "GATEWAY_INTERFACE",
    )
    return _json(start_response, {
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO"),
        "script_name": environ.get("SCRIPT_NAME"),
        "query": environ.get("QUERY_STRING"),
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
        "content_type": environ.get("CONTENT_TYPE"),
        "content_length": environ.get("CONTENT_LENGTH"),
        "body": text,
        "body_b64": base64.b64encode(body).decode("ascii"),
        "url_scheme": environ.get("wsgi.url_scheme"),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "cgi": {k: environ[k] for k in cgi_keys if k in environ},
        "wsgi": {
            "version": list(environ.get("wsgi.version", ())),
            "multithread": environ.get("wsgi.multithread"),
            "multiprocess": environ.get("wsgi.multiprocess"),
            "run_once": environ.get("wsgi.run_once"),
            "input_terminated": environ.get("wsgi.input_terminated"),
            "has_file_wrapper": "wsgi.file_wrapper" in environ,
        },
        "pid": os.getpid(),
    })


def upload(environ, start_response):
    q = _query(environ)
    if "delay_first" in q:
        time.sleep(float(q["delay_first"]))
    check_pattern = q.get("pattern") == "1"
    digest = hashlib.sha256()
    crc = 0
    total = 0
    mismatch_at = None
    for data in _read_body_chunks(environ):
        if check_pattern and mismatch_at is None:
            start = total % PATTERN_PERIOD
            if data != PATTERN[start:start + len(data)]:
                mismatch_at = total
        digest.update(data)
        crc = zlib.crc32(data, crc)
        total += len(data)
    result = {"bytes": total, "sha256": digest.hexdigest(), "crc32": crc}
    if check_pattern:
        result["pattern_mismatch_at"] = mismatch_at
    return _json(start_response, result)


def download(environ, start_response):
    size = int(_query(environ).get("size", "0"))
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])

    def body():
        offset = 0
        while offset < size:
            n = min(CHUNK, size - offset)
            start = offset % PATTERN_PERIOD
            yield PATTERN[start:start + n]
            offset += n

    return body()


def stream(environ, start_response):
    wait_for = _query(environ).get("wait_for")
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        yield b"chunk 0\n"
        if wait_for:
            deadline = time.monotonic() + 30
            while not os.path.exists(wait_for) and time.monotonic() < deadline:
                time.sleep(0.01)
        for i in range(1, 5):
            yield ("chunk %d\n" % i).encode()

    return body()


def write_callable(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"part1 ")
    write(b"part2 ")
    return [b"part3"]


def error_before(environ, start_response):
    raise RuntimeError("boom-before: raised before start_response")


def error_after(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        yield b"first chunk\n"
        raise RuntimeError("boom-after: raised after the first chunk")

    return body()


def exit_now(environ, start_response):
    # Read the body first so the crash happens squarely in the middle of the request.
    for _ in _read_body_chunks(environ):
        pass
    sys.stderr.flush()
    os._exit(1)


def sleep(environ, start_response):
    q = _query(environ)
    seconds = float(q.get("s", "1"))
    until = q.get("until")
    tag = q.get("tag", "")
    sys.stderr.write("sleep-start %s pid=%d\n" % (tag, os.getpid()))
    sys.stderr.flush()
    deadline = time.monotonic() + seconds
    if until:
        while not os.path.exists(until) and time.monotonic() < deadline:
            time.sleep(0.01)
    else:
        time.sleep(seconds)
    return _text(start_response, "slept %s %s" % (q.get("s", "1"), tag))


def pid(environ, start_response):
    return _text(start_response, str(os.getpid()))


def cookies(environ, start_response):
    return _text(start_response, "two cookies", extra=[
        ("Set-Cookie", "first=1; Path=/"),
        ("Set-Cookie", "second=2; Path=/; HttpOnly"),
    ])


def redirect(environ, start_response):
    start_response("302 Found", [("Location", "/echo?from=redirect"), ("Content-Type", "text/plain"),
                                 ("Content-Length", "0")])
    return [b""]


def readline(environ, start_response):
    mode = _query(environ).get("mode", "readline")
    stream = environ["wsgi.input"]
    lines = []
    if mode == "iter":
        for line in stream:
            lines.append(line)
    elif mode == "sized":
        while True:
            line = stream.readline(7)
            if not line:
                break
            lines.append(line)
    else:
        while True:
            line = stream.readline()
            if not line:
                break
            lines.append(line)
    return _json(start_response, {
        "count": len(lines),
        "lengths": [len(x) for x in lines],
        "lines": [x.decode("latin-1") for x in lines],
    })


def log(environ, start_response):
    msg = _query(environ).get("msg", "")
    environ["wsgi.errors"].write("wsgi.errors says %s\n" % msg)
    environ["wsgi.errors"].flush()
    print("stdout says %s" % msg, flush=True)
    return _text(start_response, "logged")


def filewrapper(environ, start_response):
    f = open(os.path.abspath(__file__), "rb")
    size = os.fstat(f.fileno()).st_size
    start_response("200 OK", [("Content-Type", "text/x-python"), ("Content-Length", str(size))])
    wrapper = environ.get("wsgi.file_wrapper", _FileIter)
    return wrapper(f, CHUNK)


class _FileIter:
    """The PEP 3333 fallback when the server offers no wsgi.file_wrapper."""

    def __init__(self, f, size):
        self.f = f
        self.size = size

    def __iter__(self):
        return iter(lambda: self.f.read(self.size), b"")

    def close(self):
        self.f.close()


class _Closing:
    def __init__(self, tag):
        self.tag = tag

    def __iter__(self):
        yield b"closing body"

    def close(self):
        sys.stderr.write("close-called %s\n" % self.tag)
        sys.stderr.flush()


def closing(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _Closing(_query(environ).get("tag", ""))


def not_found(environ, start_response):
    return _text(start_response, "no route for %s" % environ.get("PATH_INFO"), status="404 Not Found")


ROUTES = {
    "/": hello,
    "/upload": upload,
    "/download": download,
    "/stream": stream,
    "/write": write_callable,
    "/error-before": error_before,
    "/error-after": error_after,
    "/exit": exit_now,
    "/sleep": sleep,
    "/pid": pid,
    "/cookies": cookies,
    "/redirect": redirect,
    "/readline": readline,
    "/log": log,
    "/filewrapper": filewrapper,
    "/closing": closing,
}


def app(environ, start_response):
    """The WSGI entry point."""
    path = environ.get("PATH_INFO") or "/"
    if path == "/echo" or path.startswith("/echo/"):
        return echo(environ, start_response)
    return ROUTES.get(path, not_found)(environ, start_response)


def create_app():
    """An app factory, for the `plainapp.create_app()` and `plainapp:create_app()` specs."""
    return app

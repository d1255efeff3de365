"""A stdlib-only WSGI app for fcgihost's fault-injection tests (tests/faults.rs): views that
misbehave the way real apps do. Routes (PATH_INFO):

  /                  "ok" (a fast request)
  /pid               the worker's pid
  /stuck             logs "stuck-start", then blocks forever inside C code *holding the GIL*
                     (libc sleep() called through ctypes.PyDLL): no Python code runs in the
                     worker any more, not even its control-channel thread or signal
                     handlers, and it reads nothing from its FastCGI socket
  /stuck-read        logs "stuck-start", then blocks forever in os.read() on a pipe that never
                     gets data (C code that releases the GIL); reads nothing from its socket
                     either
  /flood?mb=N        writes N MiB of log lines, half to stdout and half to stderr (64 KiB
                     writes of 100-byte lines), then answers "flooded N"
  /env               JSON: which of the given ?names=A,B are in os.environ (values withheld)
                     and whether the X-Probe-Value header's value appears in any of them
"""

import ctypes
import json
import os
import sys
from urllib.parse import parse_qs

LINE = 100  # bytes per flood line, newline included


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _text(start_response, text, status="200 OK"):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


def _announce(what):
    """Log that a stuck view has started (tests wait for this line)."""
    sys.stderr.write("stuck-start %s pid=%d\n" % (what, os.getpid()))
    sys.stderr.flush()


def stuck(environ, start_response):
    _announce("gil")
    libc = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL
    libc.sleep.argtypes = [ctypes.c_uint]
    while True:
        libc.sleep(3600)


def stuck_read(environ, start_response):
    r, _w = os.pipe()
    _announce("read")
    os.read(r, 1)  # nobody ever writes to _w
    return _text(start_response, "unreachable")


def flood(environ, start_response):
    mib = int(_query(environ).get("mb", "50"))
    pid = os.getpid()
    lines = []
    for i in range(64 * 1024 // LINE):
        head = "flood pid=%d line=%05d " % (pid, i)
        lines.append(head + "x" * (LINE - 1 - len(head)) + "\n")
    block = "".join(lines).encode("ascii")
    total = mib * 1024 * 1024
    written = 0
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    while written < total:
        stream = out if (written // len(block)) % 2 == 0 else err
        stream.write(block)
        stream.flush()
        written += len(block)
    return _text(start_response, "flooded %d" % mib)


def env(environ, start_response):
    q = _query(environ)
    names = [n for n in q.get("names", "").split(",") if n]
    value = environ.get("HTTP_X_PROBE_VALUE", "")
    body = json.dumps({
        "present": [n for n in names if n in os.environ],
        "value_seen": bool(value) and any(value in v for v in os.environ.values()),
    })
    return _text(start_response, body)


def app(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    if path == "/":
        return _text(start_response, "ok")
    if path == "/pid":
        return _text(start_response, str(os.getpid()))
    if path == "/stuck":
        return stuck(environ, start_response)
    if path == "/stuck-read":
        return stuck_read(environ, start_response)
    if path == "/flood":
        return flood(environ, start_response)
    if path == "/env":
        return env(environ, start_response)
    return _text(start_response, "no route for %s" % path, status="404 Not Found")

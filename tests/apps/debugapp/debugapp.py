"""A stdlib-only WSGI app for fcgihost's remote-debugging tests (tests/debug.rs).

The tests set breakpoints on the lines marked ``# BP:<name>`` (they find the line numbers by
searching this file), so keep one marker per line. Routes (PATH_INFO):

  /debugme     runs three marked statements and answers "pid=<pid> total=<n>"
  /sleep?s=N   sleeps N seconds, then answers "slept"
  /pid         the worker's pid
  anything else  "app saw <PATH_INFO>" (so a test can tell the app answered, e.g. /ptvsd)
"""

import os
import time
from urllib.parse import parse_qs


def _text(start_response, text, status="200 OK"):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]


def debugme(environ, start_response):
    first = 1  # BP:first
    second = first + 1  # BP:step
    third = second + 1  # BP:second
    total = first + second + third
    return _text(start_response, "pid=%d total=%d" % (os.getpid(), total))


def sleep(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    time.sleep(float(query.get("s", ["1"])[-1]))
    return _text(start_response, "slept")


def app(environ, start_response):
    path = environ.get("PATH_INFO") or "/"
    if path == "/debugme":
        return debugme(environ, start_response)
    if path == "/sleep":
        return sleep(environ, start_response)
    if path == "/pid":
        return _text(start_response, str(os.getpid()))
    return _text(start_response, "app saw %s" % path)

"""A WSGI app that cannot be imported: the import-error tests expect a 503 carrying this traceback."""

import does_not_exist_xyz  # noqa: F401  (the point of this module)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"unreachable"]

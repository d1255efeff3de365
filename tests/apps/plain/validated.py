"""plainapp wrapped in wsgiref.validate, for the "no WSGI warnings" tests (tests/serve.rs).

wsgiref.validate raises AssertionError on hard PEP 3333 violations (the request then fails
and the traceback lands in the host log) and issues WSGIWarning for soft ones. Every
WSGIWarning is written to stderr as a line starting with "WSGI-WARNING", which the host
captures into its log, so a test can assert that none occurred.
"""

import sys
import warnings
import wsgiref.validate

import plainapp

_default_showwarning = warnings.showwarning


def _show(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, wsgiref.validate.WSGIWarning):
        sys.stderr.write("WSGI-WARNING %s (%s:%s)\n" % (message, filename, lineno))
        sys.stderr.flush()
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


warnings.showwarning = _show
warnings.simplefilter("always", wsgiref.validate.WSGIWarning)

app = wsgiref.validate.validator(plainapp.app)

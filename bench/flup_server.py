"""One single-threaded flup FastCGI process (the nginx -> flup peer, standing in for wfastcgi).

Usage: flup_server.py SOCKET_PATH APP_DIR MODULE:ATTR

wfastcgi runs one request at a time per process and IIS starts N such processes, each on its
own pipe; flup.server.fcgi_single.WSGIServer is the same model, so the benchmark starts two of
these, each on its own Unix socket, behind an nginx upstream (least_conn).
"""

import importlib
import os
import sys

from flup.server.fcgi_single import WSGIServer


def main():
    sock, app_dir, spec = sys.argv[1:4]
    os.chdir(app_dir)
    sys.path.insert(0, app_dir)
    module, _, attr = spec.partition(":")
    app = getattr(importlib.import_module(module), attr)
    WSGIServer(app, bindAddress=sock, umask=0o077).run()


if __name__ == "__main__":
    main()

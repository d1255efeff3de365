"""A stand-in for debugpy, used only to measure the raw capacity of fcgihost's /ptvsd tunnel.

The fcgihost worker puts the app directory first on sys.path before it imports debugpy, so
with ``--app-dir bench/apps/tunnel`` this module is imported instead of the real debugpy.
``listen()`` starts a loopback TCP server that speaks DAP framing (``Content-Length``
headers, JSON bodies) and answers two requests:

* ``ping``: an empty response at once (round-trip baseline);
* ``blast`` {"bytes": N}: ``output`` events of 60 KiB each until N bytes of event
  bodies were sent, then the response. This pushes bytes through the proxy (and its DAP
  monitor, which parses every message) as fast as the loopback and the relay allow.

Real debugpy cannot be used for this: its own JSON encoding and the adapter hop cap an
``evaluate`` far below the tunnel's capacity.
"""

import json
import socket
import threading

CHUNK = 60 * 1024


def _message(obj):
    body = json.dumps(obj, separators=(",", ":")).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    seq = 0
    filler = "z" * CHUNK
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buf += data
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                break
            length = int(buf[:head_end].split(b":", 1)[1])
            if len(buf) < head_end + 4 + length:
                break
            request = json.loads(buf[head_end + 4:head_end + 4 + length])
            buf = buf[head_end + 4 + length:]
            command = request.get("command")
            if command == "blast":
                remaining = int(request["arguments"]["bytes"])
                event = _message({"seq": 0, "type": "event", "event": "output",
                                  "body": {"category": "stdout", "output": filler}})
                while remaining > 0:
                    conn.sendall(event)
                    remaining -= len(event)
            seq += 1
            conn.sendall(_message({"seq": seq, "type": "response", "request_seq":
                                   request.get("seq"), "success": True,
                                   "command": command, "body": {}}))


def _accept(server):
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


def listen(address):
    """Bind a loopback TCP server and return its (host, port), like debugpy.listen."""
    server = socket.socket()
    server.bind(address)
    server.listen(8)
    threading.Thread(target=_accept, args=(server,), daemon=True).start()
    return server.getsockname()

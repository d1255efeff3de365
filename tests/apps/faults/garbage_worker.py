"""A FastCGI "worker" that breaks the protocol, for tests/faults.rs (run as worker.command).

Like any FastCGI program it accepts connections on fd 0 (FCGI_LISTENSOCK_FILENO). It reads
the host's request records, answers with the bytes of the chosen mode, then keeps the
connection open (so the host's error comes from what it read, not from an EOF):

  http      an HTTP response instead of FastCGI records (version byte 'H')
  type      a version-1 record of an unknown type (99)
  mgmt      an FCGI_STDOUT record on request id 0 (the management id)
  end       an FCGI_END_REQUEST whose body is 3 bytes instead of 8
  head      a well-formed STDOUT record whose CGI head is garbage, then END_REQUEST
"""

import os
import socket
import struct
import sys


def record(rtype, request_id, content):
    return struct.pack(">BBHHBx", 1, rtype, request_id, len(content), 0) + content


GARBAGE = {
    "http": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "type": record(99, 1, b"\x00" * 8),
    "mgmt": record(6, 0, b"Status: 200 OK\r\n\r\nhi"),
    "end": record(3, 1, b"\x00\x00\x00"),
    "head": record(6, 1, b"\x00\xff garbage \x01\r\nno colon here\r\n\r\nbody")
    + record(6, 1, b"")
    + record(3, 1, b"\x00" * 8),
}


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "http"
    answer = GARBAGE[mode]
    listener = socket.socket(fileno=os.dup(0))
    listener.setblocking(True)
    sys.stderr.write("garbage worker %d ready (mode %s)\n" % (os.getpid(), mode))
    sys.stderr.flush()
    while True:
        conn, _ = listener.accept()
        try:
            if conn.recv(65536):
                conn.sendall(answer)
            while conn.recv(65536):
                pass
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()

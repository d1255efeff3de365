"""fcgihost worker: a FastCGI responder that runs one Python WSGI application.

fcgihost (a Rust binary) starts several copies of this file, one process each, and hands
them HTTP requests over FastCGI. The file is embedded in the binary and written to a private
directory when the host starts. It uses only the standard library and runs on Python >= 3.9.

The protocol it speaks with the host -- start-up environment, the two channels (Unix:
the listening socket on fd 0 and the control socket on fd 3; Windows: loopback TCP with a
token), serving threads, control events and commands, level-tagged output lines, signals,
exit statuses, and the FastCGI details the host relies on -- is written down once, in
docs/worker-protocol.md. The Windows test stand-in (tests/windows/src/bin/winworker.rs)
follows the same text; change the three together.
"""

import hmac
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import traceback
import warnings
from collections import deque

# --- FastCGI constants (FastCGI specification 1.0, section 8) -------------------------

FCGI_VERSION_1 = 1

FCGI_BEGIN_REQUEST = 1
FCGI_ABORT_REQUEST = 2
FCGI_END_REQUEST = 3
FCGI_PARAMS = 4
FCGI_STDIN = 5
FCGI_STDOUT = 6
FCGI_STDERR = 7
FCGI_DATA = 8
FCGI_GET_VALUES = 9
FCGI_GET_VALUES_RESULT = 10
FCGI_UNKNOWN_TYPE = 11

FCGI_RESPONDER = 1
FCGI_KEEP_CONN = 1

FCGI_REQUEST_COMPLETE = 0
FCGI_UNKNOWN_ROLE = 3

MAX_CONTENT = 0xFFFF
"""Largest content of one record."""

MAX_RECORD = 8 + MAX_CONTENT + 0xFF
"""Largest record (header, content, padding)."""

RECV_BUFFER_SIZE = 256 * 1024
"""Size of a connection's receive buffer; several maximal records fit."""

READ_AHEAD_LIMIT = 1024 * 1024
"""While streaming a response, stop looking for ABORT_REQUEST once this many bytes of
other records are buffered (keeps memory bounded if the host sends a large body the
app does not read)."""

_HEADER = struct.Struct(">BBHHBx")  # version, type, request id, content len, padding len
_BEGIN_BODY = struct.Struct(">HB5x")  # role, flags
_END_BODY = struct.Struct(">IB3x")  # app status, protocol status
_UNKNOWN_TYPE_BODY = struct.Struct(">B7x")  # the type not understood
_U32 = struct.Struct(">I")

_REQUEST_RECORD_TYPES = frozenset(
    (FCGI_BEGIN_REQUEST, FCGI_ABORT_REQUEST, FCGI_PARAMS, FCGI_STDIN, FCGI_DATA)
)
"""Record types with a non-zero request id that the worker handles."""

def _get_values_answers(threads):
    """What GET_VALUES answers for a worker with ``threads`` serving threads."""
    return {"FCGI_MAX_CONNS": str(threads), "FCGI_MAX_REQS": str(threads),
            "FCGI_MPXS_CONNS": "0"}

REQUEST_THREAD_PREFIX = "fcgihost-request-"
"""The name of a serving thread while it runs the host's request ``<id>``."""

EXIT_HOST_GONE = 1
EXIT_BAD_INVOCATION = 2
EXIT_APP_ERROR = 3
EXIT_DEBUGPY_MISSING = 4


class ProtocolError(Exception):
    """The host broke the FastCGI protocol; the worker closes that connection."""


class ConnectionLost(OSError):
    """The FastCGI connection to the host closed, or writing to it failed."""


class RequestAborted(OSError):
    """The host sent ABORT_REQUEST for the request (its HTTP client went away)."""


# --- FastCGI encoding helpers -----------------------------------------------------------


def _record(rtype, request_id, content=b""):
    """Encode one record (content must fit in one record)."""
    return _HEADER.pack(FCGI_VERSION_1, rtype, request_id, len(content), 0) + content


def _end_request(request_id, app_status=0, protocol_status=FCGI_REQUEST_COMPLETE):
    """Encode an END_REQUEST record."""
    return _record(FCGI_END_REQUEST, request_id, _END_BODY.pack(app_status, protocol_status))


_RESPONSE_TAILS = {}


def _response_tail(request_id):
    """The empty STDOUT plus END_REQUEST(app status 0) that close a response (cached)."""
    tail = _RESPONSE_TAILS.get(request_id)
    if tail is None:
        tail = _record(FCGI_STDOUT, request_id) + _end_request(request_id)
        _RESPONSE_TAILS[request_id] = tail
    return tail


def _append_stdout(request_id, data, out):
    """Append STDOUT records carrying the bytes data to the list out (none if empty)."""
    size = len(data)
    if size <= MAX_CONTENT:
        if size:
            out.append(_HEADER.pack(FCGI_VERSION_1, FCGI_STDOUT, request_id, size, 0))
            out.append(data)
        return
    view = memoryview(data).cast("B")
    for offset in range(0, size, MAX_CONTENT):
        piece = view[offset:offset + MAX_CONTENT]
        out.append(_HEADER.pack(FCGI_VERSION_1, FCGI_STDOUT, request_id, len(piece), 0))
        out.append(piece)


def parse_name_values(data, into):
    """Parse FastCGI name-value pairs from the bytes data into the dict into.

    Each pair is a name length and a value length (1 byte if < 128, else 4 bytes with
    the top bit set), then the name and the value. Names and values are decoded as
    latin-1, as PEP 3333 asks; since latin-1 maps each byte to one character, the text
    is decoded once and sliced with the byte offsets.
    """
    text = data.decode("latin-1")
    end = len(data)
    unpack_u32 = _U32.unpack_from
    i = 0
    try:
        while i < end:
            name_len = data[i]
            if name_len < 128:
                i += 1
            else:
                name_len = unpack_u32(data, i)[0] & 0x7FFFFFFF
                i += 4
            value_len = data[i]
            if value_len < 128:
                i += 1
            else:
                value_len = unpack_u32(data, i)[0] & 0x7FFFFFFF
                i += 4
            name_end = i + name_len
            value_end = name_end + value_len
            if value_end > end:
                raise ProtocolError("truncated name-value pair")
            into[text[i:name_end]] = text[name_end:value_end]
            i = value_end
    except (IndexError, struct.error):
        raise ProtocolError("truncated name-value pair") from None


def encode_name_values(pairs):
    """Encode (name, value) str pairs (latin-1) as FastCGI name-value pairs."""
    out = []
    for name, value in pairs:
        name = name.encode("latin-1")
        value = value.encode("latin-1")
        for length in (len(name), len(value)):
            out.append(bytes((length,)) if length < 128 else _U32.pack(length | 0x80000000))
        out.append(name)
        out.append(value)
    return b"".join(out)


# --- WSGI helpers -------------------------------------------------------------------------


class InputStream:
    """wsgi.input: the request body, pulled from the request's STDIN records on demand.

    Only what the app asks for is buffered (at most one record beyond it), so a large
    body streams through without being held in memory. EOF is the empty STDIN record.
    """

    __slots__ = ("_source", "_buf", "_pos")

    def __init__(self, source):
        self._source = source  # the Connection, or None once the body has ended
        self._buf = b""  # current chunk; bytes before _pos were already returned
        self._pos = 0

    def detach(self):
        """End the stream: later reads return b"" (request finished, aborted, or lost)."""
        self._source = None

    def _next_chunk(self):
        """Return the next STDIN chunk, or b"" at the end of the body."""
        source = self._source
        if source is None:
            return b""
        try:
            chunk = source.read_stdin()
        except BaseException:
            self._source = None
            raise
        if not chunk:
            self._source = None
        return chunk

    def read(self, size=-1):
        """Read up to size bytes (all the rest if size is negative or None)."""
        buf, pos = self._buf, self._pos
        if size is None or size < 0:
            parts = [buf[pos:]]
            while True:
                chunk = self._next_chunk()
                if not chunk:
                    break
                parts.append(chunk)
            self._buf, self._pos = b"", 0
            return b"".join(parts)
        available = len(buf) - pos
        if available >= size:
            self._pos = pos + size
            return buf[pos:pos + size]
        parts = [buf[pos:]]
        needed = size - available
        self._buf, self._pos = b"", 0
        while needed:
            chunk = self._next_chunk()
            if not chunk:
                break
            if len(chunk) > needed:
                parts.append(chunk[:needed])
                self._buf, self._pos = chunk, needed
                break
            parts.append(chunk)
            needed -= len(chunk)
        return b"".join(parts)

    def readline(self, size=-1):
        """Read one line, including its b"\\n" (at most size bytes if size >= 0)."""
        limit = size if size is not None and size >= 0 else sys.maxsize
        buf, pos = self._buf, self._pos
        newline = buf.find(b"\n", pos, pos + limit)
        if newline >= 0:
            self._pos = newline + 1
            return buf[pos:newline + 1]
        if len(buf) - pos >= limit:
            self._pos = pos + limit
            return buf[pos:pos + limit]
        parts = [buf[pos:]]
        have = len(buf) - pos
        self._buf, self._pos = b"", 0
        while True:
            chunk = self._next_chunk()
            if not chunk:
                return b"".join(parts)
            room = limit - have
            newline = chunk.find(b"\n", 0, room)
            if newline >= 0:
                cut = newline + 1
            elif len(chunk) >= room:
                cut = room
            else:
                parts.append(chunk)
                have += len(chunk)
                continue
            parts.append(chunk[:cut])
            self._buf, self._pos = chunk, cut
            return b"".join(parts)

    def readlines(self, hint=-1):
        """Read lines until EOF, or until they total at least hint bytes if hint > 0."""
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """wsgi.file_wrapper: iterate a file-like object in blocks of blksize bytes."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def _is_loopback(address):
    """True if the REMOTE_ADDR string is a loopback address."""
    return address == "::1" or address.startswith(("127.", "::ffff:127."))


# --- The FastCGI connection -------------------------------------------------------------


class Connection:
    """One FastCGI connection from the host: reads records, runs requests one at a time.

    Records are parsed from one large receive buffer. Records of request ids other than
    the active one are kept in arrival order in ``_pending`` and served afterwards. The
    state of the request being served lives on this object (``start_response`` and
    ``write`` are its bound methods, made once per connection).
    """

    def __init__(self, sock, worker):
        self.sock = sock
        self.worker = worker
        self.app = worker.app
        self._buf = bytearray(RECV_BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte in _buf
        self._end = 0  # end of received bytes in _buf
        self._pending = deque()  # (type, request id, content) read ahead, not yet served
        self._pending_bytes = 0
        # The request being served.
        self._request_id = 0
        self._status = None
        self._headers = None
        self._headers_sent = False
        self._aborted = False
        self._ended = False
        self._input = None
        self._start_response = self.start_response
        self._write = self.write

    # -- reading records --

    def _fill(self):
        """Receive more bytes into the buffer; False at EOF."""
        start, end = self._start, self._end
        if start == end:
            self._start = self._end = start = end = 0
        elif len(self._buf) - end < MAX_RECORD:
            # Move the partial record to the front so that a whole record fits after it.
            self._buf[:end - start] = self._buf[start:end]
            self._start, self._end = 0, end - start
            end = self._end
        try:
            received = self.sock.recv_into(self._view[end:])
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc
        if not received:
            return False
        self._end = end + received
        return True

    def _take_record(self):
        """Return the next complete record already in the buffer, or None."""
        start = self._start
        available = self._end - start
        if available < 8:
            return None
        version, rtype, request_id, length, padding = _HEADER.unpack_from(self._buf, start)
        if available < 8 + length + padding:
            return None
        if version != FCGI_VERSION_1:
            raise ProtocolError("unsupported FastCGI version %d" % version)
        self._start = start + 8 + length + padding
        return rtype, request_id, bytes(self._view[start + 8:start + 8 + length])

    def _recv(self):
        """Next request record from the socket (management records are answered on the
        way), or None at EOF."""
        while True:
            record = self._take_record()
            if record is None:
                if not self._fill():
                    return None
                continue
            if record[1] and record[0] in _REQUEST_RECORD_TYPES:
                return record
            self._answer_management(record)

    def _answer_management(self, record):
        """Answer GET_VALUES, or UNKNOWN_TYPE for a record type the worker does not know."""
        rtype, request_id, content = record
        if rtype == FCGI_GET_VALUES and request_id == 0:
            asked = {}
            parse_name_values(content, asked)
            known = self.worker.get_values
            answers = [(n, known[n]) for n in asked if n in known]
            self._send(_record(FCGI_GET_VALUES_RESULT, 0, encode_name_values(answers)))
        else:
            self._send(_record(FCGI_UNKNOWN_TYPE, 0, _UNKNOWN_TYPE_BODY.pack(rtype)))

    def _keep(self, record):
        """Keep a record of another request for later."""
        self._pending.append(record)
        self._pending_bytes += len(record[2])

    def _next_record(self):
        """Next record in arrival order: kept ones first, then the socket's. None at EOF."""
        if self._pending:
            record = self._pending.popleft()
            self._pending_bytes -= len(record[2])
            return record
        return self._recv()

    def _next_record_for(self, request_id):
        """Next record of request_id; records of other requests are kept for later."""
        pending = self._pending
        if pending:
            for index, record in enumerate(pending):
                if record[1] == request_id:
                    del pending[index]
                    self._pending_bytes -= len(record[2])
                    return record
        while True:
            record = self._recv()
            if record is None:
                raise ConnectionLost("the host closed the connection")
            if record[1] == request_id:
                return record
            self._keep(record)

    def read_stdin(self):
        """Next chunk of the active request's body, b"" at its end (for InputStream)."""
        request_id = self._request_id
        while True:
            rtype, _, content = self._next_record_for(request_id)
            if rtype == FCGI_STDIN:
                return content
            if rtype == FCGI_ABORT_REQUEST:
                self._aborted = True
                raise RequestAborted("the host aborted the request")
            if rtype != FCGI_DATA:  # DATA is for the filter role: ignored
                raise ProtocolError("record type %d inside a request body" % rtype)

    def _poll_for_abort(self):
        """While streaming output, notice (without blocking) an ABORT_REQUEST or EOF."""
        if self._pending_bytes > READ_AHEAD_LIMIT:
            return
        try:
            readable = select.select((self.sock,), (), (), 0)[0]
        except (OSError, ValueError):
            return
        if not readable:
            return
        if not self._fill():
            raise ConnectionLost("the host closed the connection")
        while True:
            record = self._take_record()
            if record is None:
                return
            rtype, request_id, _ = record
            if not request_id or rtype not in _REQUEST_RECORD_TYPES:
                self._answer_management(record)
            elif rtype == FCGI_ABORT_REQUEST and request_id == self._request_id:
                self._aborted = True
            else:
                self._keep(record)

    # -- writing --

    def _send(self, data):
        """Send bytes to the host."""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(str(exc)) from exc

    # -- serving --

    def serve(self):
        """Serve requests until the host closes the connection (or clears KEEP_CONN)."""
        worker = self.worker
        while True:
            record = self._next_record()
            if record is None:
                return
            rtype, request_id, content = record
            if rtype != FCGI_BEGIN_REQUEST:
                # The unread rest of a finished request's body, or a late ABORT_REQUEST.
                continue
            try:
                role, flags = _BEGIN_BODY.unpack_from(content)
            except struct.error:
                raise ProtocolError("short BEGIN_REQUEST body") from None
            if role == FCGI_RESPONDER:
                worker.request_started()
                try:
                    self._serve_request(request_id)
                finally:
                    worker.request_ended()
            else:
                self._send(_end_request(request_id, 0, FCGI_UNKNOWN_ROLE))
            if worker.stopping:
                raise SystemExit(0)
            if not flags & FCGI_KEEP_CONN:
                return

    def _serve_request(self, request_id):
        """Read a request's PARAMS, then run the app on it."""
        params = []
        while True:
            rtype, _, content = self._next_record_for(request_id)
            if rtype == FCGI_PARAMS:
                if not content:
                    break
                params.append(content)
            elif rtype == FCGI_ABORT_REQUEST:
                self._send(_end_request(request_id))
                return
            else:
                raise ProtocolError("record type %d before the end of PARAMS" % rtype)
        environ = self.worker.base_environ.copy()
        parse_name_values(params[0] if len(params) == 1 else b"".join(params), environ)
        tag = environ.pop("FCGIHOST_REQUEST_ID", None)
        if tag is None:
            self._run_app(request_id, environ)
            return
        # A threaded worker: the thread is named after the host's request id while it runs
        # it, for ``dump_stacks`` of one request and for the debugger's thread list.
        thread = threading.current_thread()
        name = thread.name
        thread.name = REQUEST_THREAD_PREFIX + tag
        try:
            self._run_app(request_id, environ)
        finally:
            thread.name = name

    def _run_app(self, request_id, environ):
        """Call the WSGI app and send its response (or a 500) as STDOUT records."""
        self._request_id = request_id
        self._status = None
        self._headers = None
        self._headers_sent = False
        self._aborted = False
        stream = self._input = InputStream(self)
        environ["wsgi.input"] = stream
        https = environ.get("HTTPS")
        if https and https.lower() in ("on", "1"):
            environ["wsgi.url_scheme"] = "https"
        self._ended = False
        try:
            result = self.app(environ, self._start_response)
            if type(result) is list or type(result) is tuple:
                self._finish(b"".join(result))
            else:
                self._iterate(result)
        except ConnectionLost:
            raise
        except Exception:
            self._fail(environ)
        finally:
            stream.detach()
            self._input = None

    def _iterate(self, result):
        """Send an iterable response block by block, then END_REQUEST, then close() it.

        A first block that is the whole body the headers declare (frameworks return one
        block with a Content-Length) is held until the iteration ends, so head, body and
        END_REQUEST leave in one send; no block can follow it. The response is sent before
        close() runs the app's teardown, as each block is sent before the next is asked for.
        """
        held = b""
        try:
            for chunk in result:
                if not chunk:
                    continue
                if held:
                    self.write(held)
                    held = b""
                if not self._headers_sent and self._declares_length(len(chunk)):
                    held = chunk
                    continue
                self.write(chunk)
                if self._aborted:
                    break
            self._finish(held)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def start_response(self, status, headers, exc_info=None):
        """WSGI start_response (PEP 3333); returns the write() callable."""
        if exc_info:
            try:
                if self._headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._status is not None:
            raise AssertionError("start_response() called again without exc_info")
        if type(status) is not str:
            raise TypeError("status must be a str, not %s" % type(status).__name__)
        if len(status) < 4 or status[3] != " " or not status[:3].isdigit():
            raise ValueError("status must look like '200 OK', got %r" % (status,))
        if type(headers) is not list:
            raise TypeError("headers must be a list, not %s" % type(headers).__name__)
        self._status = status
        self._headers = headers
        return self._write

    def _declares_length(self, length):
        """True when the response headers declare a Content-Length of exactly length."""
        for name, value in self._headers or ():
            if len(name) == 14 and name.lower() == "content-length":
                return value.strip() == str(length)
        return False

    def _head(self):
        """Encode the CGI response head: Status line, headers, blank line."""
        if self._status is None:
            raise AssertionError("the application did not call start_response()")
        headers = self._headers
        head = "Status: %s\r\n%s\r\n" % (
            self._status,
            "".join([name + ": " + value + "\r\n" for name, value in headers]),
        )
        lines = len(headers) + 2
        if head.count("\n") != lines or head.count("\r") != lines:
            raise ValueError("CR or LF inside the status or a header")
        return head.encode("latin-1")

    def write(self, data):
        """WSGI write() callable; also sends each chunk of an iterated response.

        The head goes out with the first non-empty chunk.
        """
        if self._aborted or not data:
            return
        out = []
        if self._headers_sent:
            self._poll_for_abort()
            if self._aborted:
                return
        else:
            data = self._head() + data
            self._headers_sent = True
        _append_stdout(self._request_id, data, out)
        self._send(b"".join(out))

    def _finish(self, body):
        """Send the rest of the response (the head too if not sent yet) and END_REQUEST;
        a small response goes out in a single send."""
        self._send_rest(body)
        self._ended = True

    def _send_rest(self, body):
        """The sending part of _finish."""
        request_id = self._request_id
        if self._aborted:
            self._send(_end_request(request_id))
            return
        if self._headers_sent:
            out = []
            _append_stdout(request_id, body, out)
            out.append(_response_tail(request_id))
            self._send(b"".join(out))
            return
        head = self._head()
        self._headers_sent = True
        size = len(head) + len(body)
        if size <= MAX_CONTENT:
            self._send(b"".join((
                _HEADER.pack(FCGI_VERSION_1, FCGI_STDOUT, request_id, size, 0),
                head,
                body,
                _response_tail(request_id),
            )))
        else:
            out = []
            _append_stdout(request_id, head + body, out)
            out.append(_response_tail(request_id))
            self._send(b"".join(out))

    def _fail(self, environ):
        """Handle an app exception (called inside the except block): log it, then answer
        500, or end a response whose head is already sent with app status 1."""
        request_id = self._request_id
        if self._aborted and not self._ended:
            self._send(_end_request(request_id))
            return
        text = traceback.format_exc()
        target = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
        log_error("fcgihost worker: error in %s %s\n%s" % (
            environ.get("REQUEST_METHOD", "?"), target, text))
        if self._ended:
            return  # close() failed after the whole response was sent: logged only
        if self._headers_sent:
            self._send(_record(FCGI_STDOUT, request_id) + _end_request(request_id, 1))
            return
        message = "Internal Server Error\n"
        if self.worker.show_tracebacks or _is_loopback(environ.get("REMOTE_ADDR", "")):
            message += "\n" + text
        body = message.encode("utf-8", "replace")
        head = (
            b"Status: 500 Internal Server Error\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        self._headers_sent = True
        out = []
        _append_stdout(request_id, head + body, out)
        out.append(_response_tail(request_id))
        self._send(b"".join(out))


# --- The process ----------------------------------------------------------------------


class Worker:
    """Process-wide state: the app, the listening socket and the SIGTERM bookkeeping."""

    def __init__(self, app, listener, show_tracebacks, token=None, threads=1):
        self.app = app
        self.listener = listener
        self.token = token  # Windows: the line every FastCGI connection starts with
        self.show_tracebacks = show_tracebacks
        self.threads = threads  # serving threads (requests at once)
        self.get_values = _get_values_answers(threads)
        self.busy = 0  # requests being served
        self._busy_lock = threading.Lock()
        self.stopping = False  # SIGTERM received
        self.base_environ = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": threads > 1,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "SCRIPT_NAME": "",
            "PATH_INFO": "",
            "QUERY_STRING": "",
        }

    def request_started(self):
        with self._busy_lock:
            self.busy += 1

    def request_ended(self):
        """Counts a request done; with several serving threads, the last one to finish
        after SIGTERM ends the process (with one, the main thread does, in serve())."""
        with self._busy_lock:
            self.busy -= 1
            last = self.stopping and self.busy == 0
        # stopping is set before busy is read (on_sigterm), busy is lowered before
        # stopping is read (here): one of the two sees the other and exits.
        if last and threading.current_thread() is not threading.main_thread():
            _exit_gracefully(0)

    def on_sigterm(self, signum, frame):
        """SIGTERM: exit now if idle, else after the current requests (see serve() and
        request_ended())."""
        self.stopping = True
        if not self.busy:
            raise SystemExit(0)

    def on_stop_command(self):
        """The control command ``stop`` (SIGTERM's stand-in on Windows), on the control
        thread: exit now if idle, else once the requests in progress are done."""
        self.stopping = True
        if not self.busy:
            _exit_gracefully(0)

    def run(self):
        """Serve connections from the host: on the main thread, one at a time; or with
        several serving threads, each one connection at a time, while the main thread
        waits for signals."""
        self.listener.setblocking(True)
        if self.threads == 1:
            self._accept_loop()
        for index in range(self.threads):
            thread = threading.Thread(target=self._accept_loop, daemon=True,
                                      name="fcgihost-thread-%d" % index)
            thread.start()
        forever = threading.Event()
        while True:
            forever.wait()  # interrupted by SIGTERM's SystemExit

    def _accept_loop(self):
        """Accept connections from the host and serve each until it closes, forever (a
        serving thread ends once the worker is stopping)."""
        while True:
            sock, _ = self.listener.accept()
            try:
                if self.token is not None and not _presents_token(sock, self.token):
                    continue
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                Connection(sock, self).serve()
            except SystemExit:
                if threading.current_thread() is threading.main_thread():
                    raise
                return
            except ConnectionLost:
                pass
            except ProtocolError as exc:
                log_error("fcgihost worker: FastCGI protocol error: %s\n" % exc)
            finally:
                sock.close()


class ControlChannel:
    """The JSON-lines control socket shared with the host (FCGIHOST_CONTROL_FD, or the
    loopback connection to FCGIHOST_CONTROL_ADDR on Windows).

    Writes come from several threads and are serialised by a lock. A daemon thread reads
    commands; on EOF (the host is gone) it ends the process at once.
    """

    def __init__(self, fd, sock=None):
        self.fd = fd  # None when run by hand: send() does nothing
        self.sock = sock  # the connected socket instead of fd (Windows)
        self._lock = threading.Lock()
        # What ``stop`` does; the worker takes over once the app is loaded.
        self.on_stop = lambda: _exit(0)

    @property
    def connected(self):
        return self.fd is not None or self.sock is not None

    def send(self, event, **fields):
        """Send one event object as a JSON line."""
        if not self.connected:
            return
        fields["event"] = event
        data = (json.dumps(fields) + "\n").encode("utf-8")
        with self._lock:
            try:
                if self.sock is not None:
                    self.sock.sendall(data)
                else:
                    while data:
                        data = data[os.write(self.fd, data):]
            except OSError:
                pass  # the host is gone; the reader thread sees EOF and exits

    def start_reader(self):
        """Start the daemon thread that reads commands (hidden from debugpy, so that it
        keeps running while the debugger holds the app's threads)."""
        if not self.connected:
            return
        thread = threading.Thread(target=self._read_commands, name="fcgihost-control",
                                  daemon=True)
        thread.pydev_do_not_trace = True
        thread.is_pydev_daemon_thread = True
        thread.start()

    def _read_commands(self):
        pending = b""
        while True:
            try:
                if self.sock is not None:
                    chunk = self.sock.recv(65536)
                else:
                    chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                os._exit(EXIT_HOST_GONE)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    self._handle(line)

    def _handle(self, line):
        try:
            command = json.loads(line).get("cmd")
        except (ValueError, AttributeError):
            command = None
        if command == "dump_stacks":
            request = json.loads(line).get("request")
            self.send("stacks", text=format_all_stacks(request))
        elif command == "stop":
            self.on_stop()
        else:
            log_error("fcgihost worker: unknown control command %r\n" % (line[:200],))


def format_all_stacks(request=None):
    """Every thread's Python stack, main thread first, as text; with ``request`` (the
    host's request id), only the stack of the thread running it, when there is one."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    main_ident = threading.main_thread().ident
    frames = sorted(sys._current_frames().items(), key=lambda item: item[0] != main_ident)
    if request is not None:
        wanted = REQUEST_THREAD_PREFIX + str(request)
        only = [(ident, frame) for ident, frame in frames if names.get(ident) == wanted]
        if only:
            frames = only
    parts = []
    for ident, frame in frames:
        name = names.get(ident, "<unknown>")
        parts.append('Thread "%s" (id %d):\n%s' % (
            name, ident, "".join(traceback.format_stack(frame))))
    return "\n".join(parts)


# --- Loading the app ----------------------------------------------------------------------


def setup_paths(app_dir, extra_paths):
    """chdir to the app dir and put it first on sys.path; append the extra entries."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and sys.path[0] and os.path.abspath(sys.path[0]) == here:
        del sys.path[0]  # this private runtime dir holds nothing the app should import
    app_dir = os.path.abspath(app_dir) if app_dir else os.getcwd()
    os.chdir(app_dir)
    sys.path.insert(0, app_dir)
    for entry in extra_paths.split(os.pathsep):
        if entry:
            sys.path.append(entry)


def _import_longest_prefix(dotted):
    """Import the longest importable module prefix of dotted ('pkg.mod.app' -> pkg.mod);
    return (module, remaining attribute path)."""
    import importlib

    parts = dotted.split(".")
    if len(parts) < 2:
        raise ImportError("app %r must name a module and an attribute, like "
                          "'module.app' or 'module:app'" % dotted)
    error = None
    for split in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:split])
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only "this prefix is not a module" moves on to a shorter prefix; a module
            # that exists but fails to import must report its own error.
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                error = error or exc
                continue
            raise
        return module, ".".join(parts[split:])
    raise error


def load_app(spec):
    """Return the WSGI callable named by spec.

    Forms: 'pkg.mod.app' (wfastcgi: the longest importable prefix is the module),
    'pkg.mod:app' (gunicorn); a trailing '()' calls the named factory.
    """
    import importlib

    spec = spec.strip()
    call = spec.endswith("()")
    name = spec[:-2].rstrip() if call else spec
    if ":" in name:
        module_name, _, attributes = name.partition(":")
        obj = importlib.import_module(module_name)
    else:
        obj, attributes = _import_longest_prefix(name)
    for attribute in attributes.split("."):
        obj = getattr(obj, attribute)
    if call:
        obj = obj()
    if not callable(obj):
        raise TypeError("app %r is not callable (it is a %s)" % (spec, type(obj).__name__))
    return obj


def make_welcome_app():
    """The page served when no app is configured (FCGIHOST_WELCOME=1)."""
    import html

    version = "%d.%d.%d" % sys.version_info[:3]
    page = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>fcgihost is running</title>
<style>body{font-family:system-ui,sans-serif;max-width:46em;margin:3em auto;padding:0 1em;
line-height:1.5;color:#222}code,pre{background:#f3f3f3;border-radius:4px;padding:.1em .3em}
pre{padding:.6em}</style></head>
<body>
<h1>fcgihost is running</h1>
<p>This page comes from fcgihost's built-in welcome app: no WSGI application is configured yet.</p>
<p>Python {version} &mdash; <code>{executable}</code></p>
<h2>Point fcgihost at your application</h2>
<p>Name the WSGI callable as <code>module:attribute</code> (or <code>module.attribute</code>;
a trailing <code>()</code> calls an app factory), in one of these ways:</p>
<ul>
<li>on the command line: <pre>fcgihost serve --app myproj.wsgi:application</pre></li>
<li>in <code>fcgihost.toml</code>: <pre>app = "myproj.wsgi:application"</pre></li>
<li>under IIS, in <code>web.config</code>'s <code>&lt;appSettings&gt;</code>:
<pre>&lt;add key="WSGI_HANDLER" value="myproj.wsgi.application" /&gt;</pre></li>
</ul>
</body>
</html>
""".replace("{version}", version).replace("{executable}", html.escape(sys.executable or "?"))
    body = page.encode("utf-8")
    headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(body)))]

    def welcome_app(environ, start_response):
        start_response("200 OK", list(headers))
        return [body]

    return welcome_app


def start_debugger(control):
    """Import debugpy and listen on a free loopback port; report it to the host."""
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    try:
        import debugpy
    except ImportError:
        install = '"%s" -m pip install debugpy' % sys.executable
        control.send("debugpy_missing", python=sys.executable, install=install)
        log_error("fcgihost worker: debugging needs debugpy; install it with: %s\n" % install)
        _exit(EXIT_DEBUGPY_MISSING)
    address = debugpy.listen(("127.0.0.1", 0))
    control.send("debug_listening", port=address[1])


def _exit(code):
    """Flush stdio and end the process now (no waiting for the app's threads)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


_exiting = threading.Lock()


def _exit_gracefully(code):
    """Run the app's atexit handlers, then end the process (no waiting for its threads).
    Safe from any thread: the first caller wins, a second one blocks until the end."""
    _exiting.acquire()
    import atexit

    atexit._run_exitfuncs()
    _exit(code)


def _connect_control(address, token):
    """Windows: connect the control channel to the host's ``host:port`` and present the
    token."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(token.encode("utf-8") + b"\n")
    return sock


def _presents_token(sock, token):
    """Windows: True when a new FastCGI connection starts with the token line (read
    exactly, so the records behind it stay in the socket)."""
    expected = token.encode("utf-8") + b"\n"
    got = b""
    try:
        sock.settimeout(5)
        while len(got) < len(expected):
            chunk = sock.recv(len(expected) - len(got))
            if not chunk:
                return False
            got += chunk
        sock.settimeout(None)
    except OSError:
        return False
    return hmac.compare_digest(got, expected)


def _take_listener():
    """Wrap fd 0 (the listening socket) and point fd 0 at /dev/null instead."""
    listener = socket.socket(fileno=os.dup(0))
    if listener.type != socket.SOCK_STREAM:
        raise OSError("fd 0 is not a stream socket")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return listener


# --- The app's output: log levels on the pipes -----------------------------------------

LEVEL_MARK = "\x1f"
"""Encloses the level number that starts a tagged line (ASCII unit separator)."""

_emitting = threading.local()
"""``level``: the logging level of the record this thread is writing out, else None."""


class LevelTaggedStream:
    """Wraps sys.stdout or sys.stderr: each line written while this thread handles a
    logging record (see tag_log_levels) starts with LEVEL_MARK + levelno + LEVEL_MARK, so
    the host logs a traceback that Django's ``logger.error`` wrote as an ERROR, and a bare
    print at INFO. Everything else is the wrapped stream's."""

    def __init__(self, stream):
        self._stream = stream
        self._at_line_start = True

    def write(self, text):
        level = getattr(_emitting, "level", None)
        if level is None or not text or not isinstance(text, str):
            out = text
        else:
            mark = "%s%d%s" % (LEVEL_MARK, level, LEVEL_MARK)
            lines = text.split("\n")
            out = "\n".join(
                mark + line if line and (i > 0 or self._at_line_start) else line
                for i, line in enumerate(lines)
            )
        if isinstance(text, str) and text:
            self._at_line_start = text.endswith("\n")
        self._stream.write(out)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _at_level(levelno, function, *args, **kwargs):
    """Call function with this thread's output tagged as levelno."""
    previous = getattr(_emitting, "level", None)
    _emitting.level = levelno
    try:
        return function(*args, **kwargs)
    finally:
        _emitting.level = previous


def tag_log_levels():
    """Wrap stdout and stderr in LevelTaggedStream, and have every logging handler and the
    warnings module mark what they write with the record's level."""
    sys.stdout = LevelTaggedStream(sys.stdout)
    sys.stderr = LevelTaggedStream(sys.stderr)
    handle = logging.Handler.handle

    def handle_tagged(self, record):
        return _at_level(record.levelno, handle, self, record)

    logging.Handler.handle = handle_tagged
    show = warnings.showwarning

    def showwarning_tagged(*args, **kwargs):
        return _at_level(logging.WARNING, show, *args, **kwargs)

    warnings.showwarning = showwarning_tagged


def log_error(text):
    """Write the worker's own error report to stderr, marked as ERROR."""
    try:
        _at_level(logging.ERROR, sys.stderr.write, text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def main():
    """Start the worker: control channel, paths, debugger, app, then serve forever."""
    env = os.environ
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    tag_log_levels()

    control_addr = env.get("FCGIHOST_CONTROL_ADDR")
    token = None
    if control_addr:
        # Windows: loopback TCP for both channels (see the module docstring).
        token = env.get("FCGIHOST_CONTROL_TOKEN", "")
        try:
            control = ControlChannel(None, sock=_connect_control(control_addr, token))
            listener = socket.create_server(("127.0.0.1", 0))
        except (OSError, ValueError) as exc:
            log_error("fcgihost worker: cannot connect to the host at %s (%s)\n"
                      % (control_addr, exc))
            _exit(EXIT_BAD_INVOCATION)
        control.send("listening", port=listener.getsockname()[1])
        control.start_reader()
    else:
        control_fd = env.get("FCGIHOST_CONTROL_FD")
        control = ControlChannel(int(control_fd) if control_fd else None)
        if control.fd is not None:
            os.set_inheritable(control.fd, False)
        control.start_reader()

        try:
            listener = _take_listener()
        except OSError as exc:
            log_error("fcgihost worker: fd 0 must be a listening socket (%s)\n" % exc)
            _exit(EXIT_BAD_INVOCATION)

    spec = env.get("FCGIHOST_APP", "").strip()
    try:
        setup_paths(env.get("FCGIHOST_APP_DIR", ""), env.get("FCGIHOST_PYTHONPATH", ""))
        if env.get("FCGIHOST_DEBUG") == "1":
            start_debugger(control)
        if spec:
            app = load_app(spec)
        elif env.get("FCGIHOST_WELCOME") == "1":
            spec = "(welcome)"
            app = make_welcome_app()
        else:
            raise RuntimeError("no app configured: set FCGIHOST_APP")
    except BaseException:
        text = traceback.format_exc()
        control.send("app_error", traceback=text)
        log_error("fcgihost worker: cannot load app %r\n%s" % (spec, text))
        _exit(EXIT_APP_ERROR)

    try:
        threads = max(1, int(env.get("FCGIHOST_WORKER_THREADS", "1")))
    except ValueError:
        threads = 1
    worker = Worker(app, listener, env.get("FCGIHOST_SHOW_TRACEBACKS") == "1", token, threads)
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    control.on_stop = worker.on_stop_command
    control.send("ready", pid=os.getpid(), app=spec, python=sys.executable,
                 version="%d.%d.%d" % sys.version_info[:3])
    try:
        worker.run()
    except SystemExit as exc:
        # SIGTERM or ``stop``: run the app's atexit handlers, but do not wait for its threads.
        _exit_gracefully(exc.code if isinstance(exc.code, int) else 0)


if __name__ == "__main__":
    main()

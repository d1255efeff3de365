"""Tests for src/worker/fcgihost_worker.py, driven the way the host drives it.

Each worker is spawned with a listening Unix socket on fd 0 and one end of a socketpair
on fd 3 (the control channel); the tests talk FastCGI to it with the small client below.
Run: python3 -m unittest discover -s tests/worker -v
(FCGIHOST_TEST_PYTHON picks another interpreter for the worker; FCGIHOST_BENCH_N sets
the number of requests of the benchmark, 0 skips it.)
"""

import hashlib
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "..", "..", "src", "worker", "fcgihost_worker.py")
PYTHON = os.environ.get("FCGIHOST_TEST_PYTHON", sys.executable)

BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 2, 3, 4, 5, 6, 7
GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE = 9, 10, 11
HEADER = struct.Struct(">BBHHBx")

# The WSGI apps under test, written into the worker's app dir as testapps.py.
TEST_APPS = r'''
import hashlib, json, os, sys, threading, time

TEST_CONSTANT = 42

def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!"]

def create_hello():
    return hello

class Holder:
    app = staticmethod(hello)

def environ_app(environ, start_response):
    data = {k: v for k, v in environ.items() if isinstance(v, (str, bool, tuple))}
    data["cwd"] = os.getcwd()
    data["sys.path"] = sys.path
    body = json.dumps(data).encode("utf-8")
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]

def echo(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]

def echo_stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    stream = environ["wsgi.input"]
    def chunks():
        while True:
            chunk = stream.read(100000)
            if not chunk:
                return
            yield chunk
    return chunks()

def lines(environ, start_response):
    stream = environ["wsgi.input"]
    out = {
        "first": stream.readline().decode(),
        "limited": stream.readline(3).decode(),
        "rest_of_line": stream.readline().decode(),
        "read2": stream.read(2).decode(),
        "readlines": [l.decode() for l in stream.readlines(1)],
        "iterated": [l.decode() for l in stream],
        "after_eof": stream.read().decode(),
    }
    start_response("200 OK", [])
    return [json.dumps(out).encode()]

def write_app(environ, start_response):
    write = start_response("200 OK", [("X-Mode", "write")])
    write(b"one,")
    write(b"")
    write(b"two,")
    return [b"three"]

def empty_generator(environ, start_response):
    start_response("204 No Content", [("X-Empty", "yes")])
    yield b""

def exc_info_before(environ, start_response):
    start_response("200 OK", [("X-First", "1")])
    try:
        raise ValueError("handled")
    except ValueError:
        start_response("503 Replaced", [("X-Second", "2")], sys.exc_info())
    return [b"replaced"]

def exc_info_after(environ, start_response):
    start_response("200 OK", [])
    yield b"partial"
    try:
        raise ValueError("late-failure-marker")
    except ValueError:
        start_response("500 Too Late", [], sys.exc_info())
    yield b"never"

def twice(environ, start_response):
    start_response("200 OK", [])
    start_response("200 OK", [])
    return [b"unreachable"]

def error_before(environ, start_response):
    raise RuntimeError("boom-before-headers")

def error_after(environ, start_response):
    start_response("200 OK", [])
    yield b"partial"
    raise RuntimeError("boom-after-headers")

def no_start_response(environ, start_response):
    return [b"body without a head"]

def bad_header(environ, start_response):
    start_response("200 OK", [("X-Evil", "a\r\nInjected: yes")])
    return [b"x"]

def str_body(environ, start_response):
    start_response("200 OK", [])
    return ["not bytes"]

class Closing:
    def __init__(self, marker, fail):
        self.marker, self.fail = marker, fail
    def __iter__(self):
        yield b"closing-body"
        if self.fail:
            raise RuntimeError("fail-in-iteration")
    def close(self):
        with open(self.marker, "w") as f:
            f.write("closed")

class DeclaredBlock:
    """An iterable (not a list) whose one block is the whole declared body, like a
    framework's response; `extra` yields one more block beyond the declared length."""
    def __init__(self, marker, extra=False, fail_close=False):
        self.marker, self.extra, self.fail_close = marker, extra, fail_close
    def __iter__(self):
        yield b"declared-body"
        if self.extra:
            yield b"+extra"
    def close(self):
        with open(self.marker, "w") as f:
            f.write("closed")
        if self.fail_close:
            raise RuntimeError("close-failure-marker")

def declared_block(environ, start_response):
    q = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&"))
    start_response("200 OK", [("Content-Length", "13")])
    return DeclaredBlock(q["marker"], extra="extra" in q, fail_close="fail_close" in q)

def closing(environ, start_response):
    start_response("200 OK", [])
    return Closing(environ["QUERY_STRING"], fail=False)

def closing_error(environ, start_response):
    start_response("200 OK", [])
    return Closing(environ["QUERY_STRING"], fail=True)

def file_wrapper(environ, start_response):
    start_response("200 OK", [])
    return environ["wsgi.file_wrapper"](open("data.bin", "rb"), 4096)

def big(environ, start_response):
    body = bytes(range(256)) * 1000  # 256000 bytes, several records
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]

def stream_forever(environ, start_response):
    marker = environ["QUERY_STRING"]
    start_response("200 OK", [])
    def ticks():
        try:
            while True:
                yield b"tick\n"
                time.sleep(0.02)
        finally:
            with open(marker, "w") as f:
                f.write("closed")
    return ticks()

def read_and_report(environ, start_response):
    marker = environ["QUERY_STRING"]
    try:
        environ["wsgi.input"].read()
    except OSError as exc:
        with open(marker, "w") as f:
            f.write(type(exc).__name__)
        raise
    start_response("200 OK", [])
    return [b"read it all"]

def waiting_in_marker_function(environ, start_response):
    sys.stderr.write("marker-function-start\n")
    sys.stderr.flush()
    body = environ["wsgi.input"].read()
    start_response("200 OK", [])
    return [body]

def slow(environ, start_response):
    sys.stderr.write("slow-start\n")
    sys.stderr.flush()
    time.sleep(float(environ["QUERY_STRING"] or "0.5"))
    start_response("200 OK", [])
    return [b"slow done"]

def pid(environ, start_response):
    start_response("200 OK", [])
    return [str(os.getpid()).encode()]

def stderr_app(environ, start_response):
    environ["wsgi.errors"].write("wsgi-errors-marker\n")
    start_response("200 OK", [])
    return [b"logged"]

def log_levels(environ, start_response):
    import logging, warnings
    log = logging.getLogger("levels-test")
    if not log.handlers:
        log.addHandler(logging.StreamHandler())  # sys.stderr, as Django's "console" handler
        log.propagate = False
    log.setLevel(logging.DEBUG)
    print("plain-print-marker")
    log.warning("warning-marker")
    try:
        raise ValueError("boom-marker")
    except ValueError:
        log.exception("exception-marker")
    warnings.warn("warn-module-marker")
    sys.stderr.write("bare-stderr-marker\n")
    start_response("200 OK", [])
    return [b"logged"]

def router(environ, start_response):
    name = environ["PATH_INFO"].strip("/").split("/")[0]
    return globals()[name](environ, start_response)

def factory_with_state():
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"from factory"]
    return app
'''

BROKEN_APP = r'''
import json
raise RuntimeError("import-time-failure-marker")
'''


# --- a tiny FastCGI client ---------------------------------------------------------------


def record(rtype, request_id, content=b"", pad=True):
    """Encode one record; pads to a multiple of 8 to exercise the worker's padding skip."""
    padding = (-len(content)) % 8 if pad else 0
    return HEADER.pack(1, rtype, request_id, len(content), padding) + content + b"\0" * padding


def encode_pairs(pairs):
    out = []
    for name, value in pairs:
        name = name.encode("latin-1") if isinstance(name, str) else name
        value = value.encode("latin-1") if isinstance(value, str) else value
        for length in (len(name), len(value)):
            out.append(bytes((length,)) if length < 128 else struct.pack(">I", length | 0x80000000))
        out += [name, value]
    return b"".join(out)


def decode_pairs(data):
    pairs, i = {}, 0
    while i < len(data):
        lengths = []
        for _ in range(2):
            if data[i] < 128:
                lengths.append(data[i])
                i += 1
            else:
                lengths.append(struct.unpack_from(">I", data, i)[0] & 0x7FFFFFFF)
                i += 4
        name = data[i:i + lengths[0]]
        value = data[i + lengths[0]:i + lengths[0] + lengths[1]]
        pairs[name.decode()] = value.decode()
        i += lengths[0] + lengths[1]
    return pairs


def cgi_params(path="/", method="GET", query="", body_len=None, extra=None):
    params = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "fcgihost-test",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "8080",
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_URI": path + ("?" + query if query else ""),
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "51234",
        "HTTP_HOST": "localhost:8080",
        "HTTP_USER_AGENT": "fcgihost-test-client/1.0",
        "HTTP_ACCEPT": "*/*",
    }
    if body_len is not None:
        params["CONTENT_LENGTH"] = str(body_len)
        params["CONTENT_TYPE"] = "application/octet-stream"
    params.update(extra or {})
    return params


def request_bytes(params, body=b"", request_id=1, keep=True, stdin_chunk=65535, end_stdin=True):
    """BEGIN_REQUEST + PARAMS + empty PARAMS + STDIN records (+ empty STDIN)."""
    out = [record(BEGIN_REQUEST, request_id, struct.pack(">HB5x", 1, 1 if keep else 0))]
    out.append(record(PARAMS, request_id, encode_pairs(params.items())))
    out.append(record(PARAMS, request_id))
    for offset in range(0, len(body), stdin_chunk):
        out.append(record(STDIN, request_id, body[offset:offset + stdin_chunk]))
    if end_stdin:
        out.append(record(STDIN, request_id))
    return b"".join(out)


class Response:
    """A FastCGI response: the raw STDOUT, its parsed status/headers/body, END_REQUEST."""

    def __init__(self, stdout, app_status, protocol_status):
        self.stdout = stdout
        self.app_status = app_status
        self.protocol_status = protocol_status
        head, _, self.body = stdout.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n") if head else []
        self.headers = [tuple(line.split(": ", 1)) for line in lines]
        self.status = dict(self.headers).get("Status")

    def header(self, name):
        return dict(self.headers).get(name)


class Client:
    """A FastCGI client connection to a worker."""

    def __init__(self, path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = bytearray()
        self.kept = []  # records of other request ids, read while waiting for one

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def read_record(self):
        """Next record (type, request id, content), or None at EOF."""
        while True:
            if len(self.buf) >= 8:
                _, rtype, rid, length, padding = HEADER.unpack_from(self.buf)
                if len(self.buf) >= 8 + length + padding:
                    content = bytes(self.buf[8:8 + length])
                    del self.buf[:8 + length + padding]
                    return rtype, rid, content
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.buf += data

    def next_record_for(self, request_id):
        for index, rec in enumerate(self.kept):
            if rec[1] == request_id:
                return self.kept.pop(index)
        while True:
            rec = self.read_record()
            if rec is None:
                raise EOFError("worker closed the connection")
            if rec[1] == request_id:
                return rec
            self.kept.append(rec)

    def response(self, request_id=1):
        """Read one response: STDOUT until END_REQUEST; checks the empty STDOUT comes first."""
        stdout, closed = [], False
        while True:
            rtype, _, content = self.next_record_for(request_id)
            if rtype == STDOUT:
                if not content:
                    closed = True
                else:
                    assert not closed, "STDOUT after the empty STDOUT"
                    stdout.append(content)
            elif rtype == END_REQUEST:
                app_status, protocol_status = struct.unpack(">IB3x", content)
                resp = Response(b"".join(stdout), app_status, protocol_status)
                resp.stdout_closed = closed
                return resp
            else:
                raise AssertionError("unexpected record type %d" % rtype)

    def request(self, params, body=b"", request_id=1, keep=True):
        self.send(request_bytes(params, body, request_id, keep))
        return self.response(request_id)

    def get(self, path, query="", **extra):
        return self.request(cgi_params(path, query=query, extra=extra))


# --- worker processes --------------------------------------------------------------------


def wait_for_stderr(stderr, text, timeout=5):
    """Poll a worker's stderr (the stderr() callable) until it holds text."""
    deadline = time.monotonic() + timeout
    while text not in stderr():
        if time.monotonic() > deadline:
            raise AssertionError("%r not in stderr:\n%s" % (text, stderr()))
        time.sleep(0.01)


def read_control_line(sock, buf, timeout, stderr):
    """The next line from a worker's control channel: (line, what is left of the buffer),
    line None at EOF. buf holds bytes already read; stderr() describes a timeout."""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            raise TimeoutError("no control line; stderr:\n" + stderr())
        data = sock.recv(1 << 16)
        if not data:
            return None, buf
        buf += data
    line, rest = buf.split(b"\n", 1)
    return line, rest


class WorkerProcess:
    """A worker spawned as the host spawns it, with an app dir holding testapps.py."""

    def __init__(self, app="testapps:router", env=None, files=None, control=True):
        self.dir = tempfile.mkdtemp(prefix="fcgihost-worker-test-")
        self.app_dir = os.path.join(self.dir, "app")
        os.mkdir(self.app_dir)
        with open(os.path.join(self.app_dir, "testapps.py"), "w") as f:
            f.write(TEST_APPS)
        with open(os.path.join(self.app_dir, "data.bin"), "wb") as f:
            f.write(os.urandom(100000))
        for name, text in (files or {}).items():
            path = os.path.join(self.dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
        self.socket_path = os.path.join(self.dir, "worker.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.socket_path)
        self.listener.listen(8)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("FCGIHOST_")}
        child_env.update({"FCGIHOST_APP_DIR": self.app_dir, "FCGIHOST_WORKER_ID": "1"})
        if app is not None:
            child_env["FCGIHOST_APP"] = app
        self.control = None
        worker_end = None
        if control:
            self.control, worker_end = socket.socketpair()
            child_env["FCGIHOST_CONTROL_FD"] = "3"
        child_env.update({k: v.replace("{dir}", self.dir) for k, v in (env or {}).items()})
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.stderr_file = open(self.stderr_path, "wb")
        worker_fd = worker_end.fileno() if worker_end else None

        def put_control_on_fd3():
            if worker_fd is not None:
                os.dup2(worker_fd, 3)
                os.set_inheritable(3, True)

        self.proc = subprocess.Popen(
            [PYTHON, WORKER], stdin=self.listener.fileno(), stdout=self.stderr_file,
            stderr=self.stderr_file, env=child_env, close_fds=False,
            preexec_fn=put_control_on_fd3)
        if worker_end:
            worker_end.close()
        self.control_buf = b""
        self.clients = []

    @property
    def pid(self):
        return self.proc.pid

    def event(self, timeout=10):
        """Next JSON event from the control channel (None at EOF)."""
        line, self.control_buf = read_control_line(
            self.control, self.control_buf, timeout, self.stderr)
        return None if line is None else json.loads(line)

    def wait_ready(self):
        event = self.event()
        assert event and event["event"] == "ready", "%r\nstderr:\n%s" % (event, self.stderr())
        return event

    def client(self):
        client = Client(self.socket_path)
        self.clients.append(client)
        return client

    def stderr(self):
        self.stderr_file.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_stderr(self, text, timeout=5):
        wait_for_stderr(self.stderr, text, timeout)

    def status_field(self, name):
        """A field of /proc/<pid>/status in KiB (VmRSS, VmHWM)."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        raise KeyError(name)

    def cpu_seconds(self):
        """User + system CPU time of the worker so far."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.control:
            self.control.close()
        self.listener.close()
        self.stderr_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def marker_path(worker, name):
    return os.path.join(worker.dir, name)


def wait_for_file(path, timeout=5):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)
    with open(path) as f:
        return f.read()


class Dap:
    """A minimal Debug Adapter Protocol client (enough to hit a breakpoint)."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=20)
        self.buf = b""
        self.seq = 0
        self.messages = []

    def close(self):
        self.sock.close()

    def send_request(self, command, arguments):
        self.seq += 1
        body = json.dumps({"seq": self.seq, "type": "request", "command": command,
                           "arguments": arguments}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return self.seq

    def _read(self):
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        length = int(head.split(b":")[1])
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        body, self.buf = self.buf[:length], self.buf[length:]
        return json.loads(body)

    def _wait(self, match):
        for index, message in enumerate(self.messages):
            if match(message):
                return self.messages.pop(index)
        while True:
            message = self._read()
            if match(message):
                return message
            self.messages.append(message)

    def wait_event(self, name):
        return self._wait(lambda m: m.get("type") == "event" and m.get("event") == name)

    def wait_response(self, seq):
        message = self._wait(lambda m: m.get("type") == "response"
                             and m.get("request_seq") == seq)
        assert message.get("success"), message
        return message

    def request(self, command, arguments):
        return self.wait_response(self.send_request(command, arguments))


# --- tests -------------------------------------------------------------------------------


class SharedWorkerTests(unittest.TestCase):
    """Request/response behaviour, on one worker running testapps:router."""

    @classmethod
    def setUpClass(cls):
        cls.worker = WorkerProcess()
        cls.ready = cls.worker.wait_ready()

    @classmethod
    def tearDownClass(cls):
        cls.worker.stop()

    def setUp(self):
        self.client = self.worker.client()
        self.addCleanup(self.client.close)

    def test_ready_event(self):
        self.assertEqual(self.ready["pid"], self.worker.pid)
        self.assertEqual(self.ready["app"], "testapps:router")
        self.assertTrue(self.ready["python"])
        self.assertRegex(self.ready["version"], r"^3\.\d+\.\d+$")

    def test_hello(self):
        resp = self.client.get("/hello")
        self.assertEqual(resp.status, "200 OK")
        self.assertEqual(resp.header("Content-Type"), "text/plain")
        self.assertEqual(resp.body, b"Hello, world!")
        self.assertEqual((resp.app_status, resp.protocol_status), (0, 0))
        self.assertTrue(resp.stdout_closed)
        self.assertTrue(resp.stdout.startswith(b"Status: 200 OK\r\n"))

    def test_environ(self):
        params = cgi_params("/environ_app", query="a=1&b=%20x", extra={
            "HTTP_X_CUSTOM": "custom-value",
            "HTTP_COOKIE": "k=v",
            "HTTP_X_LATIN": "caf\xe9",
            "HTTP_X_LONG": "L" * 300,  # a 4-byte value length
        })
        params["PATH_INFO"] = "/environ_app"
        resp = self.client.request(params)
        env = json.loads(resp.body)
        self.assertEqual(env["REQUEST_METHOD"], "GET")
        self.assertEqual(env["PATH_INFO"], "/environ_app")
        self.assertEqual(env["QUERY_STRING"], "a=1&b=%20x")
        self.assertEqual(env["SCRIPT_NAME"], "")
        self.assertEqual(env["SERVER_NAME"], "localhost")
        self.assertEqual(env["HTTP_X_CUSTOM"], "custom-value")
        self.assertEqual(env["HTTP_COOKIE"], "k=v")
        self.assertEqual(env["HTTP_X_LATIN"], "caf\xe9")
        self.assertEqual(env["HTTP_X_LONG"], "L" * 300)
        self.assertEqual(env["HTTP_HOST"], "localhost:8080")
        self.assertEqual(env["wsgi.url_scheme"], "http")
        self.assertEqual(env["wsgi.version"], [1, 0])
        self.assertIs(env["wsgi.multithread"], False)
        self.assertIs(env["wsgi.multiprocess"], True)
        self.assertIs(env["wsgi.run_once"], False)
        self.assertIs(env["wsgi.input_terminated"], True)
        self.assertEqual(os.path.realpath(env["cwd"]), os.path.realpath(self.worker.app_dir))
        self.assertEqual(env["sys.path"][0], self.worker.app_dir)

    def test_utf8_path_is_latin1_decoded(self):
        params = cgi_params("/environ_app")
        params["PATH_INFO"] = "/environ_app".encode() + "/caf\xe9".encode("utf-8")
        resp = self.client.request(params)
        self.assertEqual(json.loads(resp.body)["PATH_INFO"],
                         "/environ_app/caf\xe9".encode("utf-8").decode("latin-1"))

    def test_https_scheme(self):
        for value, scheme in (("on", "https"), ("1", "https"), ("ON", "https"), ("off", "http")):
            resp = self.client.request(cgi_params("/environ_app", extra={"HTTPS": value}))
            self.assertEqual(json.loads(resp.body)["wsgi.url_scheme"], scheme, value)

    def test_params_split_across_records(self):
        data = encode_pairs(cgi_params("/hello").items())
        out = [record(BEGIN_REQUEST, 1, struct.pack(">HB5x", 1, 1))]
        for offset in range(0, len(data), 7):  # splits names, values and lengths
            out.append(record(PARAMS, 1, data[offset:offset + 7]))
        out += [record(PARAMS, 1), record(STDIN, 1)]
        self.client.send(b"".join(out))
        self.assertEqual(self.client.response().body, b"Hello, world!")

    def test_records_split_across_writes(self):
        data = request_bytes(cgi_params("/echo", method="POST", body_len=5), b"abcde")
        for i in range(len(data)):
            self.client.send(data[i:i + 1])
        self.assertEqual(self.client.response().body, b"abcde")

    def test_post_echo_small(self):
        body = b"hello body \x00\xff" * 10
        resp = self.client.request(cgi_params("/echo", "POST", body_len=len(body)), body)
        self.assertEqual(resp.status, "200 OK")
        self.assertEqual(resp.body, body)
        resp = self.client.request(cgi_params("/echo", "POST", body_len=0))
        self.assertEqual(resp.body, b"")

    def test_post_echo_in_small_records(self):
        body = os.urandom(5000)
        self.client.send(request_bytes(cgi_params("/echo", "POST", body_len=len(body)), body,
                                       stdin_chunk=333))
        self.assertEqual(self.client.response().body, body)

    def test_input_readline_and_iteration(self):
        body = b"first line\nabcdef\nxy-rest\nl3\nl4\n" + b"z" * 70000 + b"\nlast"
        self.client.send(request_bytes(cgi_params("/lines", "POST", body_len=len(body)), body,
                                       stdin_chunk=4))
        out = json.loads(self.client.response().body)
        self.assertEqual(out["first"], "first line\n")
        self.assertEqual(out["limited"], "abc")
        self.assertEqual(out["rest_of_line"], "def\n")
        self.assertEqual(out["read2"], "xy")
        self.assertEqual(out["readlines"], ["-rest\n"])
        self.assertEqual(out["iterated"], ["l3\n", "l4\n", "z" * 70000 + "\n", "last"])
        self.assertEqual(out["after_eof"], "")

    def test_write_callable(self):
        resp = self.client.get("/write_app")
        self.assertEqual(resp.status, "200 OK")
        self.assertEqual(resp.header("X-Mode"), "write")
        self.assertEqual(resp.body, b"one,two,three")
        self.assertEqual(resp.app_status, 0)

    def test_empty_generator_sends_head_at_end(self):
        resp = self.client.get("/empty_generator")
        self.assertEqual(resp.status, "204 No Content")
        self.assertEqual(resp.header("X-Empty"), "yes")
        self.assertEqual(resp.body, b"")

    def test_exc_info_before_headers_replaces_them(self):
        resp = self.client.get("/exc_info_before")
        self.assertEqual(resp.status, "503 Replaced")
        self.assertEqual(resp.header("X-Second"), "2")
        self.assertIsNone(resp.header("X-First"))
        self.assertEqual(resp.body, b"replaced")
        self.assertEqual(resp.app_status, 0)

    def test_exc_info_after_headers_reraises(self):
        resp = self.client.get("/exc_info_after")
        self.assertEqual(resp.status, "200 OK")
        self.assertEqual(resp.body, b"partial")
        self.assertNotEqual(resp.app_status, 0)
        self.worker.wait_stderr("late-failure-marker")

    def test_start_response_twice_is_an_error(self):
        resp = self.client.get("/twice")
        self.assertEqual(resp.status, "500 Internal Server Error")
        self.assertIn(b"AssertionError", resp.body)

    def test_exception_before_headers_is_500(self):
        resp = self.client.get("/error_before")
        self.assertEqual(resp.status, "500 Internal Server Error")
        self.assertEqual(resp.header("Content-Type"), "text/plain; charset=utf-8")
        self.assertEqual(int(resp.header("Content-Length")), len(resp.body))
        self.assertIn(b"boom-before-headers", resp.body)  # loopback client: traceback shown
        self.assertIn(b"Traceback", resp.body)
        self.assertEqual(resp.app_status, 0)
        self.worker.wait_stderr("boom-before-headers")
        self.worker.wait_stderr("GET /error_before")

    def test_500_hides_traceback_from_remote_clients(self):
        resp = self.client.request(cgi_params("/error_before",
                                              extra={"REMOTE_ADDR": "203.0.113.9"}))
        self.assertEqual(resp.status, "500 Internal Server Error")
        self.assertNotIn(b"boom-before-headers", resp.body)
        self.assertIn(b"Internal Server Error", resp.body)
        resp = self.client.request(cgi_params("/error_before", extra={"REMOTE_ADDR": "::1"}))
        self.assertIn(b"boom-before-headers", resp.body)

    def test_exception_after_headers_sets_app_status(self):
        resp = self.client.get("/error_after")
        self.assertEqual(resp.status, "200 OK")
        self.assertEqual(resp.body, b"partial")
        self.assertEqual(resp.app_status, 1)
        self.assertTrue(resp.stdout_closed)
        self.worker.wait_stderr("boom-after-headers")
        # The connection stays usable.
        self.assertEqual(self.client.get("/hello").body, b"Hello, world!")

    def test_app_contract_violations_are_500(self):
        for path in ("/no_start_response", "/bad_header", "/str_body"):
            resp = self.client.get(path)
            self.assertEqual(resp.status, "500 Internal Server Error", path)
            self.assertNotIn(b"Injected", resp.stdout.split(b"\r\n\r\n")[0])

    def test_close_called(self):
        marker = marker_path(self.worker, "closed-ok")
        resp = self.client.get("/closing", query=marker)
        self.assertEqual(resp.body, b"closing-body")
        self.assertEqual(resp.app_status, 0)
        self.assertEqual(wait_for_file(marker), "closed")

    def test_close_called_on_error(self):
        marker = marker_path(self.worker, "closed-error")
        resp = self.client.get("/closing_error", query=marker)
        self.assertEqual(resp.body, b"closing-body")
        self.assertEqual(resp.app_status, 1)
        self.assertEqual(wait_for_file(marker), "closed")

    def _declared_block(self, name, query=""):
        """GET /declared_block; checks the iterable was closed; returns the response."""
        marker = os.path.join(self.worker.dir, name)
        resp = self.client.get("/declared_block", query=query + "marker=" + marker)
        self.assertEqual(wait_for_file(marker), "closed")
        return resp

    def test_an_iterable_whose_block_is_the_declared_body(self):
        resp = self._declared_block("declared-marker")
        self.assertEqual(resp.status, "200 OK")
        self.assertEqual((resp.body, resp.app_status), (b"declared-body", 0))

    def test_a_block_beyond_the_declared_length_still_follows_in_order(self):
        resp = self._declared_block("extra-marker", "extra=1&")
        self.assertEqual(resp.body, b"declared-body+extra")

    def test_close_failing_after_the_whole_response_is_logged_only(self):
        resp = self._declared_block("fail-close-marker", "fail_close=1&")
        self.assertEqual(resp.body, b"declared-body")
        self.assertEqual(resp.app_status, 0, "the response was complete before close()")
        self.worker.wait_stderr("close-failure-marker")
        self.assertEqual(self.client.get("/hello").body, b"Hello, world!")

    def test_file_wrapper(self):
        resp = self.client.get("/file_wrapper")
        with open(os.path.join(self.worker.app_dir, "data.bin"), "rb") as f:
            self.assertEqual(resp.body, f.read())

    def test_big_response_split_in_records(self):
        self.client.send(request_bytes(cgi_params("/big")))
        sizes = []
        while True:
            rtype, _, content = self.client.next_record_for(1)
            if rtype == END_REQUEST:
                break
            sizes.append(len(content))
        self.assertLessEqual(max(sizes), 65535)
        self.assertGreater(sum(sizes), 256000)

    def test_wsgi_errors_goes_to_stderr(self):
        self.assertEqual(self.client.get("/stderr_app").body, b"logged")
        self.worker.wait_stderr("wsgi-errors-marker")

    def test_logging_records_are_marked_with_their_level(self):
        self.assertEqual(self.client.get("/log_levels").body, b"logged")
        self.worker.wait_stderr("bare-stderr-marker")
        lines = self.worker.stderr().splitlines()
        lines = lines[lines.index("plain-print-marker"):]  # this test's lines (shared worker)

        def line_with(text):
            found = [line for line in lines if text in line]
            self.assertEqual(len(found), 1, (text, lines))
            return found[0]

        self.assertEqual(line_with("plain-print-marker"), "plain-print-marker")
        self.assertEqual(line_with("bare-stderr-marker"), "bare-stderr-marker")
        self.assertEqual(line_with("warning-marker"), "\x1f30\x1fwarning-marker")
        self.assertEqual(line_with("exception-marker"), "\x1f40\x1fexception-marker")
        # Every line of the traceback is marked, not just the first.
        self.assertEqual(line_with("Traceback"), "\x1f40\x1fTraceback (most recent call last):")
        self.assertEqual(line_with("ValueError: boom-marker"), "\x1f40\x1fValueError: boom-marker")
        self.assertTrue(line_with("UserWarning: warn-module-marker").startswith("\x1f30\x1f"))

    def test_get_values(self):
        self.client.send(record(GET_VALUES, 0, encode_pairs(
            [("FCGI_MAX_CONNS", ""), ("FCGI_MPXS_CONNS", ""), ("FCGI_UNKNOWN_NAME", "")])))
        rtype, rid, content = self.client.read_record()
        self.assertEqual((rtype, rid), (GET_VALUES_RESULT, 0))
        self.assertEqual(decode_pairs(content), {"FCGI_MAX_CONNS": "1", "FCGI_MPXS_CONNS": "0"})
        self.client.send(record(GET_VALUES, 0, encode_pairs([("FCGI_MAX_REQS", "")])))
        self.assertEqual(decode_pairs(self.client.read_record()[2]), {"FCGI_MAX_REQS": "1"})

    def test_get_values_during_a_request(self):
        params = cgi_params("/echo", "POST", body_len=3)
        self.client.send(request_bytes(params, b"", end_stdin=False))
        self.client.send(record(GET_VALUES, 0, encode_pairs([("FCGI_MAX_REQS", "")])))
        rtype, _, content = self.client.read_record()
        self.assertEqual(rtype, GET_VALUES_RESULT)
        self.assertEqual(decode_pairs(content), {"FCGI_MAX_REQS": "1"})
        self.client.send(record(STDIN, 1, b"abc") + record(STDIN, 1))
        self.assertEqual(self.client.response().body, b"abc")

    def test_unknown_type(self):
        self.client.send(record(99, 0, b"whatever"))
        rtype, rid, content = self.client.read_record()
        self.assertEqual((rtype, rid), (UNKNOWN_TYPE, 0))
        self.assertEqual(content, bytes([99]) + b"\0" * 7)
        self.assertEqual(self.client.get("/hello").body, b"Hello, world!")

    def test_unknown_role(self):
        self.client.send(record(BEGIN_REQUEST, 1, struct.pack(">HB5x", 2, 1)))
        rtype, rid, content = self.client.read_record()
        self.assertEqual((rtype, rid), (END_REQUEST, 1))
        self.assertEqual(struct.unpack(">IB3x", content), (0, 3))
        # Its PARAMS/STDIN are ignored and the connection is still usable.
        self.client.send(record(PARAMS, 1) + record(STDIN, 1))
        self.assertEqual(self.client.get("/hello").body, b"Hello, world!")

    def test_keep_conn_three_requests(self):
        for i in range(3):
            body = b"request %d" % i
            resp = self.client.request(cgi_params("/echo", "POST", body_len=len(body)), body)
            self.assertEqual(resp.body, body)

    def test_without_keep_conn_worker_closes(self):
        resp = self.client.request(cgi_params("/hello"), keep=False)
        self.assertEqual(resp.body, b"Hello, world!")
        self.assertIsNone(self.client.read_record())  # EOF
        other = self.worker.client()
        self.assertEqual(other.get("/hello").body, b"Hello, world!")
        other.close()

    def test_pipelined_requests_answered_in_order(self):
        first = request_bytes(cgi_params("/slow", query="0.2"), request_id=1)
        second = request_bytes(cgi_params("/echo", "POST", body_len=6), b"second", request_id=2)
        self.client.send(first + second)
        records = []
        while len([r for r in records if r[0] == END_REQUEST]) < 2:
            records.append(self.client.read_record())
        ends = [r[1] for r in records if r[0] == END_REQUEST]
        self.assertEqual(ends, [1, 2])
        ids = [r[1] for r in records]
        self.assertEqual(ids, sorted(ids))  # no interleaving
        out = {1: b"", 2: b""}
        for rtype, rid, content in records:
            if rtype == STDOUT:
                out[rid] += content
        self.assertTrue(out[1].endswith(b"slow done"))
        self.assertTrue(out[2].endswith(b"second"))

    def test_pipelined_request_interleaved_with_body(self):
        # Request 2 arrives while request 1's body is still being sent.
        params1 = cgi_params("/echo", "POST", body_len=10)
        self.client.send(request_bytes(params1, b"12345", request_id=1, end_stdin=False))
        self.client.send(request_bytes(cgi_params("/hello"), request_id=2))
        self.client.send(record(STDIN, 1, b"67890") + record(STDIN, 1))
        self.assertEqual(self.client.response(1).body, b"1234567890")
        self.assertEqual(self.client.response(2).body, b"Hello, world!")

    def test_unread_body_is_discarded(self):
        body = os.urandom(300000)
        resp = self.client.request(cgi_params("/hello", "POST", body_len=len(body)), body)
        self.assertEqual(resp.body, b"Hello, world!")
        # Same request id again: the leftover STDIN of the first must not leak into it.
        resp = self.client.request(cgi_params("/echo", "POST", body_len=3), b"new")
        self.assertEqual(resp.body, b"new")

    def test_abort_while_reading_body(self):
        marker = marker_path(self.worker, "aborted-read")
        params = cgi_params("/read_and_report", "POST", query=marker, body_len=100)
        self.client.send(request_bytes(params, b"partial", end_stdin=False))
        time.sleep(0.1)
        self.client.send(record(ABORT_REQUEST, 1))
        resp = self.client.response()
        self.assertEqual(resp.stdout, b"")
        self.assertEqual(resp.protocol_status, 0)
        self.assertEqual(wait_for_file(marker), "RequestAborted")
        self.assertEqual(self.client.get("/hello").body, b"Hello, world!")

    def test_abort_during_streaming_response(self):
        marker = marker_path(self.worker, "aborted-stream")
        self.client.send(request_bytes(cgi_params("/stream_forever", query=marker)))
        rtype, _, content = self.client.next_record_for(1)
        self.assertEqual(rtype, STDOUT)
        self.assertIn(b"tick", content)
        self.client.send(record(ABORT_REQUEST, 1))
        deadline = time.monotonic() + 3
        while True:
            self.assertLess(time.monotonic(), deadline, "streaming went on after ABORT")
            rtype, _, content = self.client.next_record_for(1)
            if rtype == END_REQUEST:
                break
        self.assertEqual(wait_for_file(marker), "closed")
        self.assertEqual(self.client.get("/hello").body, b"Hello, world!")

    def test_abort_before_params_end(self):
        self.client.send(record(BEGIN_REQUEST, 1, struct.pack(">HB5x", 1, 1))
                         + record(ABORT_REQUEST, 1))
        resp = self.client.response()
        self.assertEqual(resp.stdout, b"")
        self.assertEqual(self.client.get("/hello").body, b"Hello, world!")

    def test_protocol_error_closes_connection_only(self):
        self.client.send(b"\x02" + b"\x00" * 15)  # FastCGI version 2
        self.assertIsNone(self.client.read_record())
        self.worker.wait_stderr("protocol error")
        other = self.worker.client()
        self.assertEqual(other.get("/hello").body, b"Hello, world!")
        other.close()

    def test_host_disconnect_mid_request_keeps_worker(self):
        self.client.send(request_bytes(cgi_params("/echo", "POST", body_len=10), b"12",
                                       end_stdin=False))
        self.client.close()
        other = self.worker.client()
        self.assertEqual(other.get("/hello").body, b"Hello, world!")
        other.close()


class PostBigBodyTest(unittest.TestCase):
    def test_post_20mib_streamed_with_bounded_memory(self):
        worker = WorkerProcess()
        self.addCleanup(worker.stop)
        worker.wait_ready()
        client = worker.client()
        client.get("/hello")
        baseline = worker.status_field("VmRSS")
        size = 20 * 1024 * 1024
        block = os.urandom(1024 * 1024)
        expected = hashlib.sha256(block * 20).hexdigest()
        client.send(request_bytes(cgi_params("/echo_stream", "POST", body_len=size),
                                  end_stdin=False))
        peak = [baseline]
        done = threading.Event()

        def sender():
            for _ in range(20):
                for offset in range(0, len(block), 32768):
                    client.send(record(STDIN, 1, block[offset:offset + 32768]))
            client.send(record(STDIN, 1))

        def sampler():
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], worker.status_field("VmRSS"))
                except (OSError, KeyError):
                    return
                time.sleep(0.005)

        threads = [threading.Thread(target=sender), threading.Thread(target=sampler)]
        for t in threads:
            t.start()
        try:
            resp = client.response()
        finally:
            done.set()
            for t in threads:
                t.join()
        self.assertEqual(len(resp.body), size)
        self.assertEqual(hashlib.sha256(resp.body).hexdigest(), expected)
        peak_kib = max(peak[0], worker.status_field("VmHWM"))
        growth_mib = (peak_kib - baseline) / 1024
        self.assertLess(growth_mib, 6, "worker RSS grew by %.1f MiB for a 20 MiB body"
                        % growth_mib)


class LoadingTests(unittest.TestCase):
    """App specs, import errors, paths, welcome app, debug mode."""

    def spawn(self, app, **kwargs):
        worker = WorkerProcess(app=app, **kwargs)
        self.addCleanup(worker.stop)
        return worker

    def test_app_spec_forms(self):
        for spec, body in (
            ("testapps.hello", b"Hello, world!"),
            ("testapps.create_hello()", b"Hello, world!"),
            ("testapps:hello", b"Hello, world!"),
            ("testapps:create_hello()", b"Hello, world!"),
            ("testapps.Holder.app", b"Hello, world!"),
            ("testapps:Holder.app", b"Hello, world!"),
            ("testapps.factory_with_state()", b"from factory"),
            ("pkg.sub.mod.application", b"pkg app"),
            ("pkg.sub.mod:application", b"pkg app"),
        ):
            worker = self.spawn(spec, files={
                "app/pkg/__init__.py": "",
                "app/pkg/sub/__init__.py": "",
                "app/pkg/sub/mod.py": textwrap.dedent('''
                    def application(environ, start_response):
                        start_response("200 OK", [])
                        return [b"pkg app"]
                    '''),
            })
            event = worker.wait_ready()
            self.assertEqual(event["app"], spec)
            client = worker.client()
            self.assertEqual(client.get("/").body, body, spec)

    def test_pythonpath_entries_appended(self):
        worker = self.spawn("extmod.app", files={"ext/extmod.py": textwrap.dedent('''
            import sys
            def app(environ, start_response):
                start_response("200 OK", [])
                return [repr(sys.path).encode()]
            ''')}, env={"FCGIHOST_PYTHONPATH": os.pathsep.join(["/nonexistent-entry", "{dir}/ext"])})
        worker.wait_ready()
        path = eval(worker.client().get("/").body.decode())
        self.assertEqual(path[0], worker.app_dir)
        self.assertEqual(path[-2:], ["/nonexistent-entry", os.path.join(worker.dir, "ext")])
        worker_dir = os.path.dirname(os.path.abspath(WORKER))
        self.assertNotIn(worker_dir, [os.path.abspath(p) for p in path if p])

    def test_import_error_reports_app_error_and_exits_3(self):
        worker = self.spawn("broken.app", files={"app/broken.py": BROKEN_APP})
        event = worker.event()
        self.assertEqual(event["event"], "app_error")
        self.assertIn("import-time-failure-marker", event["traceback"])
        self.assertIn("Traceback", event["traceback"])
        self.assertEqual(worker.proc.wait(5), 3)
        self.assertIn("import-time-failure-marker", worker.stderr())

    def test_missing_module_and_attribute_and_uncallable(self):
        for spec, text in (
            ("nosuchmodule.app", "nosuchmodule"),
            ("testapps.nosuchattr", "nosuchattr"),
            ("testapps:nosuchattr", "nosuchattr"),
            ("testapps.TEST_CONSTANT", "TEST_CONSTANT"),
            ("justaname", "must name a module and an attribute"),
        ):
            worker = self.spawn(spec)
            event = worker.event()
            self.assertEqual(event["event"], "app_error", spec)
            self.assertIn(text, event["traceback"], spec)
            self.assertEqual(worker.proc.wait(5), 3, spec)

    def test_import_error_inside_module_is_not_masked(self):
        worker = self.spawn("needsdep.app", files={
            "app/needsdep.py": "import a_dependency_that_is_missing\napp = None\n"})
        event = worker.event()
        self.assertEqual(event["event"], "app_error")
        self.assertIn("a_dependency_that_is_missing", event["traceback"])
        self.assertEqual(worker.proc.wait(5), 3)

    def test_no_app_configured(self):
        worker = self.spawn(None)
        event = worker.event()
        self.assertEqual(event["event"], "app_error")
        self.assertIn("FCGIHOST_APP", event["traceback"])
        self.assertEqual(worker.proc.wait(5), 3)

    def test_welcome_app(self):
        worker = self.spawn(None, env={"FCGIHOST_WELCOME": "1"})
        event = worker.wait_ready()
        self.assertEqual(event["app"], "(welcome)")
        resp = worker.client().get("/")
        self.assertEqual(resp.status, "200 OK")
        self.assertEqual(resp.header("Content-Type"), "text/html; charset=utf-8")
        self.assertEqual(int(resp.header("Content-Length")), len(resp.body))
        page = resp.body.decode("utf-8")
        self.assertIn("fcgihost is running", page)
        self.assertIn("fcgihost serve --app myproj.wsgi:application", page)
        self.assertIn("fcgihost.toml", page)
        self.assertIn("WSGI_HANDLER", page)
        self.assertIn(event["version"], page)
        self.assertIn(event["python"], page)

    def test_debugpy_missing_exits_4(self):
        # Shadow debugpy with a module that fails to import, whether or not the test
        # interpreter has the real one.
        shadow = tempfile.mkdtemp(prefix="fcgihost-nodebugpy-")
        self.addCleanup(shutil.rmtree, shadow, True)
        with open(os.path.join(shadow, "debugpy.py"), "w") as f:
            f.write("raise ImportError('debugpy hidden by the test')\n")
        env = {"FCGIHOST_DEBUG": "1", "PYTHONPATH": shadow}
        worker = self.spawn("testapps:hello", env=env)
        event = worker.event()
        self.assertEqual(event["event"], "debugpy_missing")
        self.assertEqual(event["install"], '"%s" -m pip install debugpy' % event["python"])
        self.assertEqual(worker.proc.wait(5), 4)

    def test_debug_mode_listens_before_importing_app(self):
        probe = subprocess.run([PYTHON, "-c", "import debugpy"], capture_output=True)
        if probe.returncode != 0:
            self.skipTest("debugpy is not installed for %s" % PYTHON)
        worker = self.spawn("testapps:hello", env={"FCGIHOST_DEBUG": "1"})
        event = worker.event(timeout=30)
        self.assertEqual(event["event"], "debug_listening")
        socket.create_connection(("127.0.0.1", event["port"]), timeout=5).close()
        worker.wait_ready()

    def test_control_works_while_paused_at_breakpoint(self):
        probe = subprocess.run([PYTHON, "-c", "import debugpy"], capture_output=True)
        if probe.returncode != 0:
            self.skipTest("debugpy is not installed for %s" % PYTHON)
        worker = self.spawn("testapps:hello", env={"FCGIHOST_DEBUG": "1"})
        port = worker.event(timeout=30)["port"]
        worker.wait_ready()
        dap = Dap(("127.0.0.1", port))
        self.addCleanup(dap.close)
        dap.request("initialize", {"adapterID": "fcgihost-test", "clientID": "test"})
        attach_seq = dap.send_request("attach", {"justMyCode": False})
        dap.wait_event("initialized")
        line = TEST_APPS.splitlines().index(
            '    start_response("200 OK", [("Content-Type", "text/plain")])') + 1
        dap.request("setBreakpoints", {
            "source": {"path": os.path.join(worker.app_dir, "testapps.py")},
            "breakpoints": [{"line": line}]})
        dap.request("configurationDone", {})
        dap.wait_response(attach_seq)
        client = worker.client()
        client.send(request_bytes(cgi_params("/")))
        dap.wait_event("stopped")
        worker.control.sendall(b'{"cmd": "dump_stacks"}\n')
        event = worker.event(timeout=5)
        self.assertEqual(event["event"], "stacks")
        self.assertIn("in hello", event["text"])
        worker.control.close()
        worker.control = None
        self.assertEqual(worker.proc.wait(1), 1)

    def test_runs_by_hand_without_control_fd(self):
        worker = self.spawn("testapps:hello", control=False)
        client = Client(worker.socket_path)
        self.addCleanup(client.close)
        self.assertEqual(client.get("/").body, b"Hello, world!")


class ThreadedWorkerTests(unittest.TestCase):
    """FCGIHOST_WORKER_THREADS=N: N serving threads, one connection each."""

    def spawn(self):
        worker = WorkerProcess(env={"FCGIHOST_WORKER_THREADS": "2"})
        self.addCleanup(worker.stop)
        worker.wait_ready()
        return worker

    def test_get_values_reports_the_threads(self):
        client = self.spawn().client()
        client.send(record(GET_VALUES, 0, encode_pairs(
            [("FCGI_MAX_CONNS", ""), ("FCGI_MAX_REQS", ""), ("FCGI_MPXS_CONNS", "")])))
        self.assertEqual(decode_pairs(client.read_record()[2]),
                         {"FCGI_MAX_CONNS": "2", "FCGI_MAX_REQS": "2", "FCGI_MPXS_CONNS": "0"})

    def test_a_second_connection_is_served_while_the_first_waits_for_its_body(self):
        worker = self.spawn()
        first = worker.client()
        first.send(request_bytes(cgi_params("/echo", "POST", body_len=6), b"", end_stdin=False))
        first.send(record(STDIN, 1, b"abc"))
        second = worker.client()
        resp = second.request(cgi_params("/environ_app"))
        self.assertIs(json.loads(resp.body)["wsgi.multithread"], True)
        first.send(record(STDIN, 1, b"def") + record(STDIN, 1))
        self.assertEqual(first.response().body, b"abcdef")

    def test_sigterm_waits_for_every_request_in_progress(self):
        worker = self.spawn()
        first, second = worker.client(), worker.client()
        params = cgi_params("/waiting_in_marker_function", "POST", body_len=2)
        for client in (first, second):
            client.send(request_bytes(params, b"", end_stdin=False))
        # Both requests run (the app wrote its marker twice) before SIGTERM comes.
        worker.wait_stderr("marker-function-start\nmarker-function-start\n")
        first.send(record(STDIN, 1, b"a"))
        second.send(record(STDIN, 1, b"b"))
        worker.proc.send_signal(signal.SIGTERM)
        first.send(record(STDIN, 1, b"1") + record(STDIN, 1))
        self.assertEqual(first.response().body, b"a1")
        self.assertIsNone(worker.proc.poll(), "exited with a request still running")
        second.send(record(STDIN, 1, b"2") + record(STDIN, 1))
        self.assertEqual(second.response().body, b"b2")
        self.assertEqual(worker.proc.wait(2), 0)


class ProcessTests(unittest.TestCase):
    """Control channel and signals."""

    def spawn(self, app="testapps:router"):
        worker = WorkerProcess(app=app)
        self.addCleanup(worker.stop)
        worker.wait_ready()
        return worker

    def test_control_eof_exits_within_1s(self):
        worker = self.spawn()
        worker.control.close()
        start = time.monotonic()
        self.assertEqual(worker.proc.wait(1), 1)
        self.assertLess(time.monotonic() - start, 1)
        worker.control = None

    def test_control_eof_exits_even_mid_request(self):
        worker = self.spawn()
        client = worker.client()
        client.send(request_bytes(cgi_params("/slow", query="30")))
        worker.wait_stderr("slow-start")
        worker.control.close()
        self.assertEqual(worker.proc.wait(1), 1)
        worker.control = None

    def test_dump_stacks(self):
        worker = self.spawn()
        client = worker.client()
        params = cgi_params("/waiting_in_marker_function", "POST", body_len=4)
        client.send(request_bytes(params, b"", end_stdin=False))
        worker.wait_stderr("marker-function-start")
        worker.control.sendall(b'{"cmd": "dump_stacks"}\n')
        event = worker.event()
        self.assertEqual(event["event"], "stacks")
        self.assertIn('Thread "MainThread"', event["text"])
        self.assertIn("waiting_in_marker_function", event["text"])
        self.assertIn("read_stdin", event["text"])
        self.assertIn("fcgihost-control", event["text"])
        client.send(record(STDIN, 1, b"done") + record(STDIN, 1))
        self.assertEqual(client.response().body, b"done")
        # Unknown commands and garbage are logged, not fatal.
        worker.control.sendall(b'{"cmd": "nope"}\nnot json\n')
        worker.wait_stderr("unknown control command")
        self.assertEqual(client.get("/hello").body, b"Hello, world!")

    def test_sigterm_when_idle_exits_at_once(self):
        worker = self.spawn()
        client = worker.client()
        client.get("/hello")
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.proc.wait(2), 0)

    def test_sigterm_before_any_connection(self):
        worker = self.spawn()
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.proc.wait(2), 0)

    def test_sigterm_when_busy_finishes_the_request(self):
        worker = self.spawn()
        client = worker.client()
        client.send(request_bytes(cgi_params("/slow", query="0.5")))
        worker.wait_stderr("slow-start")
        worker.proc.send_signal(signal.SIGTERM)
        resp = client.response()
        self.assertEqual(resp.body, b"slow done")
        self.assertEqual(worker.proc.wait(2), 0)

    def test_sigint_is_ignored(self):
        worker = self.spawn()
        worker.proc.send_signal(signal.SIGINT)
        # Python raises KeyboardInterrupt in the main thread at its next bytecode: had
        # SIGINT not been ignored, serving this request would have ended the worker.
        self.assertEqual(worker.client().get("/hello").body, b"Hello, world!")
        self.assertIsNone(worker.proc.poll())

    def test_listener_moved_off_fd0(self):
        # fd 0 becomes /dev/null, so the app's child processes do not inherit the listener.
        worker = self.spawn()
        self.assertEqual(os.readlink("/proc/%d/fd/0" % worker.pid), "/dev/null")
        self.assertEqual(worker.client().get("/hello").body, b"Hello, world!")


class BenchmarkTest(unittest.TestCase):
    def test_hello_throughput(self):
        count = int(os.environ.get("FCGIHOST_BENCH_N", "20000"))
        if not count:
            self.skipTest("FCGIHOST_BENCH_N=0")
        worker = WorkerProcess(app="testapps:hello")
        self.addCleanup(worker.stop)
        worker.wait_ready()
        client = worker.client()
        params = cgi_params("/hello", extra={
            "HTTP_ACCEPT_ENCODING": "gzip, deflate, br",
            "HTTP_ACCEPT_LANGUAGE": "en-US,en;q=0.9",
            "HTTP_CONNECTION": "keep-alive",
            "HTTP_COOKIE": "sessionid=abcdef0123456789; csrftoken=0123456789abcdef",
            "CONTENT_TYPE": "",
            "CONTENT_LENGTH": "",
        })
        data = request_bytes(params)
        sock = client.sock
        end_marker = HEADER.pack(1, END_REQUEST, 1, 8, 0)
        for _ in range(200):  # warm-up
            sock.sendall(data)
            buf = b""
            while end_marker not in buf:
                buf += sock.recv(65536)
        cpu0, wall0 = worker.cpu_seconds(), time.perf_counter()
        for _ in range(count):
            sock.sendall(data)
            buf = sock.recv(65536)
            while not buf.endswith(b"\0" * 8) or end_marker not in buf:
                buf += sock.recv(65536)
        wall = time.perf_counter() - wall0
        cpu = worker.cpu_seconds() - cpu0
        self.assertIn(b"Hello, world!", buf)
        cpu_us, wall_us = cpu / count * 1e6, wall / count * 1e6
        sys.stderr.write("\nbenchmark: %d requests, worker CPU %.1f us/request, "
                         "round trip %.1f us/request\n" % (count, cpu_us, wall_us))
        self.assertLess(cpu_us, 200)


if __name__ == "__main__":
    unittest.main()

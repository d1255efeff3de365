"""Tests for the worker's loopback-TCP mode (what the Windows host uses, selected by
FCGIHOST_CONTROL_ADDR), driven the way src/pool/transport.rs drives it: the test listens
for the control connection, checks the token line and the ``listening`` event, then talks
FastCGI to the reported port with the token line first. Runs on any OS.
Run: python3 -m unittest discover -s tests/worker -v
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import unittest

from test_worker import (PYTHON, STDIN, TEST_APPS, WORKER, Client, cgi_params,
                         read_control_line, record, request_bytes, wait_for_stderr)

TOKEN = "0123456789abcdef0123456789abcdef"


class TcpClient(Client):
    """A FastCGI connection to the worker's loopback port, token line first."""

    def __init__(self, port, token=TOKEN, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if token is not None:
            self.sock.sendall(token.encode() + b"\n")
        self.buf = bytearray()
        self.kept = []


class LoopbackWorker:
    """A worker started in loopback mode, its control connection accepted and checked."""

    def __init__(self, app="testapps:router", address=None, files=None):
        self.dir = tempfile.mkdtemp(prefix="fcgihost-loopback-test-")
        app_dir = os.path.join(self.dir, "app")
        os.mkdir(app_dir)
        with open(os.path.join(app_dir, "testapps.py"), "w") as f:
            f.write(TEST_APPS)
        for name, text in (files or {}).items():
            with open(os.path.join(app_dir, name), "w") as f:
                f.write(text)
        self.server = socket.create_server(("127.0.0.1", 0))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FCGIHOST_")}
        env.update({
            "FCGIHOST_APP_DIR": app_dir,
            "FCGIHOST_APP": app,
            "FCGIHOST_WORKER_ID": "1",
            "FCGIHOST_CONTROL_ADDR": address or "127.0.0.1:%d" % self.server.getsockname()[1],
            "FCGIHOST_CONTROL_TOKEN": TOKEN,
        })
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.stderr_file = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [PYTHON, WORKER], stdin=subprocess.DEVNULL, stdout=self.stderr_file,
            stderr=self.stderr_file, env=env)
        self.control = None
        self.buf = b""
        self.clients = []

    def handshake(self):
        """Accept the control connection; return the reported FastCGI port."""
        self.server.settimeout(10)
        self.control, _ = self.server.accept()
        self.assert_line(TOKEN)
        event = self.event()
        assert event["event"] == "listening", event
        return event["port"]

    def assert_line(self, expected):
        line = self.line()
        assert line == expected.encode(), (line, self.stderr())

    def line(self, timeout=10):
        line, self.buf = read_control_line(self.control, self.buf, timeout, self.stderr)
        return line

    def event(self, timeout=10):
        line = self.line(timeout)
        return None if line is None else json.loads(line)

    def client(self, port, token=TOKEN):
        client = TcpClient(port, token)
        self.clients.append(client)
        return client

    def stderr(self):
        self.stderr_file.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        for client in self.clients:
            client.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.control:
            self.control.close()
        self.server.close()
        self.stderr_file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class LoopbackTests(unittest.TestCase):
    def start(self, app="testapps:router"):
        worker = LoopbackWorker(app)
        self.addCleanup(worker.stop)
        port = worker.handshake()
        event = worker.event()
        self.assertEqual(event["event"], "ready", worker.stderr())
        return worker, port

    def test_handshake_then_requests(self):
        worker, port = self.start()
        client = worker.client(port)
        self.assertEqual(client.get("/hello").body, b"Hello, world!")
        self.assertEqual(client.get("/hello").body, b"Hello, world!")
        body = b"x" * 100000
        resp = client.request(cgi_params("/echo", "POST", body_len=len(body)), body)
        self.assertEqual(resp.body, body)

    def test_connection_without_the_token_is_closed(self):
        worker, port = self.start()
        for token in (None, "wrong-token-wrong-token-wrong-to"):
            stranger = worker.client(port, token=token)
            stranger.send(request_bytes(cgi_params("/hello")))
            try:
                self.assertIsNone(stranger.read_record())
            except ConnectionResetError:
                pass  # closed with our records unread: a reset, equally unanswered
        self.assertEqual(worker.client(port).get("/hello").body, b"Hello, world!")

    def test_token_and_records_in_one_segment(self):
        worker, port = self.start()
        client = TcpClient(port, token=None)
        worker.clients.append(client)
        client.send(TOKEN.encode() + b"\n" + request_bytes(cgi_params("/hello")))
        self.assertEqual(client.response().body, b"Hello, world!")

    def test_stop_when_idle_exits_at_once(self):
        worker, port = self.start()
        worker.client(port).get("/hello")
        worker.control.sendall(b'{"cmd":"stop"}\n')
        self.assertEqual(worker.proc.wait(2), 0)

    def test_stop_when_busy_finishes_the_request(self):
        worker, port = self.start()
        client = worker.client(port)
        client.send(request_bytes(cgi_params("/slow", query="0.5")))
        wait_for_stderr(worker.stderr, "slow-start")
        worker.control.sendall(b'{"cmd":"stop"}\n')
        self.assertEqual(client.response().body, b"slow done")
        self.assertEqual(worker.proc.wait(2), 0)

    def test_stop_before_ready_exits(self):
        slow = "import time\ntime.sleep(30)\napp = None\n"
        worker = LoopbackWorker("slowapp:app", files={"slowapp.py": slow})
        self.addCleanup(worker.stop)
        worker.handshake()
        worker.control.sendall(b'{"cmd":"stop"}\n')
        self.assertEqual(worker.proc.wait(5), 0)

    def test_dump_stacks_and_control_eof(self):
        worker, port = self.start()
        client = worker.client(port)
        params = cgi_params("/waiting_in_marker_function", "POST", body_len=4)
        client.send(request_bytes(params, b"", end_stdin=False))
        wait_for_stderr(worker.stderr, "marker-function-start")
        worker.control.sendall(b'{"cmd": "dump_stacks"}\n')
        event = worker.event()
        self.assertEqual(event["event"], "stacks")
        self.assertIn("waiting_in_marker_function", event["text"])
        client.send(record(STDIN, 1, b"done") + record(STDIN, 1))
        self.assertEqual(client.response().body, b"done")
        worker.control.close()
        worker.control = None
        self.assertEqual(worker.proc.wait(2), 1)

    def test_app_error_reported_after_listening(self):
        worker = LoopbackWorker("no_such_module:app")
        self.addCleanup(worker.stop)
        worker.handshake()
        event = worker.event()
        self.assertEqual(event["event"], "app_error")
        self.assertEqual(worker.proc.wait(5), 3)

    def test_unreachable_host_exits_2(self):
        with socket.create_server(("127.0.0.1", 0)) as probe:
            closed_port = probe.getsockname()[1]
        worker = LoopbackWorker(address="127.0.0.1:%d" % closed_port)
        self.addCleanup(worker.stop)
        self.assertEqual(worker.proc.wait(10), 2)
        self.assertIn("cannot connect to the host", worker.stderr())


if __name__ == "__main__":
    unittest.main()

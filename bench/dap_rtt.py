"""Debug-tunnel benchmark: DAP round trips and bytes/s through fcgihost's /ptvsd vs direct.

Starts fcgihost (1 worker, debug mode: FCGIHOST_DEBUG_SECRET set) twice:

1. with the real debugpy: attaches directly to the worker's debugpy port (read from the
   host's log line ``debugpy listening on 127.0.0.1 ... debug_port=N``), then through the
   /ptvsd WebSocket, each time initialize -> attach -> (initialized) -> configurationDone,
   then N sequential ``threads`` requests (round-trip times), then, with a request paused
   at debugpy.breakpoint() (GET /break), repeated ``evaluate`` requests returning a 1 MB
   string (bytes/s as debugpy itself can produce them);
2. with a stub debugpy (bench/apps/tunnel/debugpy.py) that streams DAP ``output`` events
   as fast as it can: the raw capacity of the tunnel (relay + DAP monitor), direct vs /ptvsd.

The WebSocket client is hand-rolled (blocking socket, no helper thread) so that the client
side costs the same as the plain TCP one. Prints one JSON object (and writes it to --out).
"""

import argparse
import base64
import hashlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "bench-" + base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- transports ---------------------------------------------------------------------------


class TcpTransport:
    """DAP bytes over a plain TCP connection (debugpy's own port)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data):
        self.sock.sendall(data)

    def recv(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("connection closed")
        return data

    def close(self):
        self.sock.close()


class WsTransport:
    """DAP bytes in binary WebSocket frames (RFC 6455 client, masked, blocking)."""

    def __init__(self, port, path, secret):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            "Authorization: Bearer %s\r\n\r\n" % (path, port, key, secret)).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError("closed during the WebSocket handshake")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError("WebSocket handshake refused: %r" % head[:200])
        accept = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        if accept not in head:
            raise RuntimeError("bad Sec-WebSocket-Accept: %r want %r" % (head, accept))
        self.buf = bytearray(rest)

    def _frame(self, opcode, payload):
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        keystream = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(keystream, "little")
                  ).to_bytes(n, "little") if n else b""
        return head + mask + masked

    def send(self, data):
        self.sock.sendall(self._frame(0x2, data))

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def recv(self):
        """Payload of the next data frame (pings answered, close raises EOFError)."""
        while True:
            self._need(2)
            b0, b1 = self.buf[0], self.buf[1]
            n = b1 & 0x7F
            offset = 2
            if n == 126:
                self._need(4)
                n = int.from_bytes(self.buf[2:4], "big")
                offset = 4
            elif n == 127:
                self._need(10)
                n = int.from_bytes(self.buf[2:10], "big")
                offset = 10
            if b1 & 0x80:
                raise RuntimeError("server frames must not be masked")
            self._need(offset + n)
            payload = bytes(self.buf[offset:offset + n])
            del self.buf[:offset + n]
            opcode = b0 & 0x0F
            if opcode in (0x0, 0x1, 0x2):
                return payload
            if opcode == 0x9:
                self.sock.sendall(self._frame(0xA, payload))
            elif opcode == 0x8:
                raise EOFError("WebSocket closed")

    def close(self):
        try:
            self.sock.sendall(self._frame(0x8, (1000).to_bytes(2, "big")))
        except OSError:
            pass
        self.sock.close()


# --- DAP ----------------------------------------------------------------------------------


class Dap:
    """A minimal DAP client: framing, requests, waiting for responses and events."""

    def __init__(self, transport):
        self.t = transport
        self.buf = bytearray()
        self.seq = 0
        self.bytes_in = 0
        self.messages = []  # parsed, not yet consumed

    def send(self, command, arguments=None):
        self.seq += 1
        msg = {"seq": self.seq, "type": "request", "command": command}
        if arguments is not None:
            msg["arguments"] = arguments
        body = json.dumps(msg).encode()
        self.t.send(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return self.seq

    def _parse(self):
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            m = re.search(rb"Content-Length:\s*(\d+)", self.buf[:end], re.I)
            length = int(m.group(1))
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            self.messages.append(body)

    def next(self, decode=True):
        while not self.messages:
            data = self.t.recv()
            self.bytes_in += len(data)
            self.buf += data
            self._parse()
        body = self.messages.pop(0)
        return json.loads(body) if decode else body

    def response(self, request_seq, timeout=30.0):
        """Wait for the response to request_seq (events and others are dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.next()
            if msg.get("type") == "response" and msg.get("request_seq") == request_seq:
                if not msg.get("success"):
                    raise RuntimeError("DAP %s failed: %s" % (msg.get("command"),
                                                              msg.get("message")))
                return msg
        raise TimeoutError("no response to %d" % request_seq)

    def event(self, name, stash=None):
        while True:
            msg = self.next()
            if msg.get("type") == "event" and msg.get("event") == name:
                return msg
            if stash is not None:
                stash.append(msg)

    def attach(self):
        """initialize -> attach -> initialized event -> configurationDone -> attach response."""
        init = self.send("initialize", {"clientID": "vscode", "adapterID": "debugpy",
                                        "pathFormat": "path", "linesStartAt1": True,
                                        "columnsStartAt1": True,
                                        "supportsRunInTerminalRequest": False})
        self.response(init)
        attach = self.send("attach", {"justMyCode": False})
        seen = []
        self.event("initialized", seen)
        done = self.send("configurationDone")
        got = {m.get("request_seq") for m in seen if m.get("type") == "response"}
        for want in (done, attach):
            if want not in got:
                self.response(want)

    def disconnect(self):
        try:
            self.response(self.send("disconnect", {"terminateDebuggee": False}), timeout=5)
        except (EOFError, OSError, TimeoutError, RuntimeError):
            pass
        self.t.close()


def rtt(dap, rounds):
    """Sequential `threads` round trips; list of microseconds."""
    for _ in range(50):  # warm-up
        dap.response(dap.send("threads"))
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        start = clock()
        dap.response(dap.send("threads"))
        samples.append((clock() - start) / 1000.0)
    return samples


def pct(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100.0 * (len(ordered) - 1))))]


def summarize(samples):
    return {"n": len(samples), "p50_us": round(pct(samples, 50), 1),
            "p99_us": round(pct(samples, 99), 1), "mean_us": round(statistics.mean(samples), 1)}


def evaluate_throughput(dap, http_port, rounds, window):
    """Pause a request at debugpy.breakpoint(), then evaluate a 1 MB string repeatedly
    (`window` requests in flight). Returns bytes/s of DAP traffic received."""
    result = {}

    def hit():
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/break" % http_port, timeout=60) as r:
                result["status"] = r.status
        except OSError as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=hit, daemon=True)
    thread.start()
    stopped = dap.event("stopped")
    thread_id = stopped["body"]["threadId"]
    frames = dap.response(dap.send("stackTrace", {"threadId": thread_id, "levels": 1}))
    frame_id = frames["body"]["stackFrames"][0]["id"]
    args = {"expression": "payload", "frameId": frame_id, "context": "clipboard"}
    probe = dap.response(dap.send("evaluate", args))
    value_len = len(probe["body"]["result"])
    dap.bytes_in = 0
    start = time.perf_counter()
    outstanding = []
    sent = 0
    while sent < window and sent < rounds:
        outstanding.append(dap.send("evaluate", args))
        sent += 1
    done = 0
    while done < rounds:
        msg = dap.next()
        if msg.get("type") == "response" and msg.get("command") == "evaluate":
            done += 1
            if sent < rounds:
                dap.send("evaluate", args)
                sent += 1
    elapsed = time.perf_counter() - start
    received = dap.bytes_in
    dap.response(dap.send("continue", {"threadId": thread_id}))
    thread.join(30)
    return {"value_chars": value_len, "rounds": rounds, "window": window,
            "bytes": received, "seconds": round(elapsed, 3),
            "MB_per_s": round(received / elapsed / 1e6, 1), "http": result}


def blast_throughput(dap, total, repeats):
    """Stub server: `blast` `total` bytes `repeats` times; best MB/s."""
    dap.response(dap.send("ping"))
    rates = []
    for _ in range(repeats):
        dap.bytes_in = 0
        start = time.perf_counter()
        seq = dap.send("blast", {"bytes": total})
        while True:
            body = dap.next(decode=False)
            if b'"type":"response"' in body[:200] or b'"type":"response"' in body[-200:]:
                msg = json.loads(body)
                if msg.get("request_seq") == seq:
                    break
        elapsed = time.perf_counter() - start
        rates.append(dap.bytes_in / elapsed / 1e6)
    return {"bytes": total, "repeats": repeats, "MB_per_s_best": round(max(rates), 1),
            "MB_per_s_median": round(statistics.median(rates), 1)}


def ping_rtt(dap, rounds):
    for _ in range(50):
        dap.response(dap.send("ping"))
    samples = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        start = clock()
        dap.response(dap.send("ping"))
        samples.append((clock() - start) / 1000.0)
    return samples


# --- host process -------------------------------------------------------------------------


class Host:
    def __init__(self, binary, python, app_dir, app):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="fcgihost-dap-", suffix=".log",
                                               delete=False)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FCGIHOST_", "WSGI_"))}
        env["FCGIHOST_DEBUG_SECRET"] = SECRET
        self.cwd = tempfile.mkdtemp(prefix="fcgihost-dap-cwd-")
        self.proc = subprocess.Popen(
            [binary, "serve", "--app", app, "--app-dir", app_dir, "--workers", "1",
             "--listen", "127.0.0.1:%d" % self.port, "--log-level", "info",
             "--python", python],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
            start_new_session=True)
        if os.environ.get("BENCH_PGID_FILE"):
            with open(os.environ["BENCH_PGID_FILE"], "a") as f:
                f.write("%d\n" % self.proc.pid)
        self.debug_port = self._wait_debug_port()

    def _wait_debug_port(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(self.log.name, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            m = re.search(r"debugpy listening on 127\.0\.0\.1.*?debug_port=(\d+)", text)
            if m and "worker ready" in text:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError("fcgihost exited:\n" + text)
            time.sleep(0.1)
        raise RuntimeError("no debug port in the log")

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
                self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(HERE, "..", "target", "release",
                                                     "fcgihost"))
    ap.add_argument("--python", default=os.path.join(HERE, ".venv", "bin", "python"))
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--eval-rounds", type=int, default=40)
    ap.add_argument("--blast-mb", type=int, default=256)
    ap.add_argument("--out")
    args = ap.parse_args()
    out = {"rounds": args.rounds}

    host = Host(args.binary, args.python, os.path.join(HERE, "apps"), "plain:app")
    try:
        direct = Dap(TcpTransport(host.debug_port))
        direct.attach()
        out["rtt_direct"] = summarize(rtt(direct, args.rounds))
        out["eval_direct"] = evaluate_throughput(direct, host.port, args.eval_rounds, 2)
        direct.disconnect()
        time.sleep(2.0)  # let debugpy's adapter finish the session before the next client
        tunnel = Dap(WsTransport(host.port, "/ptvsd", SECRET))
        tunnel.attach()
        out["rtt_ptvsd"] = summarize(rtt(tunnel, args.rounds))
        out["eval_ptvsd"] = evaluate_throughput(tunnel, host.port, args.eval_rounds, 2)
        tunnel.disconnect()
    finally:
        host.stop()

    stub = Host(args.binary, args.python, os.path.join(HERE, "apps", "tunnel"),
                "tunnelapp:app")
    try:
        total = args.blast_mb * 1_000_000
        direct = Dap(TcpTransport(stub.debug_port))
        out["raw_direct"] = blast_throughput(direct, total, 3)
        out["raw_rtt_direct"] = summarize(ping_rtt(direct, args.rounds))
        direct.t.close()
        tunnel = Dap(WsTransport(stub.port, "/ptvsd", SECRET))
        out["raw_ptvsd"] = blast_throughput(tunnel, total, 3)
        out["raw_rtt_ptvsd"] = summarize(ping_rtt(tunnel, args.rounds))
        tunnel.t.close()
    finally:
        stub.stop()

    out["rtt_ratio"] = round(out["rtt_ptvsd"]["p50_us"] / out["rtt_direct"]["p50_us"], 2)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    sys.exit(main())

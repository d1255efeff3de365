"""fcgihost benchmark driver (run it through bench/run, which installs what it needs).

For each app (bench/apps/plain.py, bench/apps/flaskapp.py) and each server (fcgihost,
gunicorn sync, Granian, nginx -> flup, uWSGI), start the server on a free 127.0.0.1 port with
2 workers, then for each workload of that app: a warm-up wrk run, then the measured one
(same settings for every server), while a sampler thread reads the RSS of every process of
the server each 100 ms. Then the DAP/tunnel benchmark (bench/dap_rtt.py). Writes
bench/results/latest.json, the tables between the markers in docs/benchmarks.md and the chart
docs/benchmarks.svg.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
APPS = os.path.join(BENCH, "apps")
VENV = os.path.join(BENCH, ".venv")
VENV_PY = os.path.join(VENV, "bin", "python")
RESULTS = os.path.join(BENCH, "results")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SVG = os.path.join(ROOT, "docs", "benchmarks.svg")
HOST_BIN = os.path.join(ROOT, "target", "release", "fcgihost")
MARK_START = "<!-- bench:results:start (written by bench/run; edits inside are replaced) -->"
MARK_END = "<!-- bench:results:end -->"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")

# (name, app module, path, wrk script)
WORKLOADS = [
    ("hello", "plain", "/hello", "report.lua"),
    ("10 KiB", "plain", "/10k", "report.lua"),
    ("1 MiB echo", "plain", "/echo", "post_1mib.lua"),
    ("sleep 10 ms", "plain", "/sleep", "report.lua"),
    ("Flask template", "flaskapp", "/flask", "report.lua"),
]
SERVERS = ["fcgihost", "fcgihost-prev", "fcgihost-t16", "fcgihost-t4", "gunicorn",
           "gunicorn-gthread", "granian", "nginx-flup", "uwsgi"]
# Variants run only the workloads they are there for (issue 16): threads on the waiting
# view and the Flask page, gunicorn's gthread beside them, and the previous commit's binary
# (BENCH_PREV_BIN) on hello, to check that --threads 1 costs nothing.
VARIANT_WORKLOADS = {
    "fcgihost-prev": {"hello"},
    "fcgihost-t16": {"sleep 10 ms"},
    "fcgihost-t4": {"Flask template"},
    "gunicorn-gthread": {"sleep 10 ms"},
}
LABELS = {
    "fcgihost": "fcgihost",
    "fcgihost-prev": "fcgihost, previous commit",
    "fcgihost-t16": "fcgihost --threads 16",
    "fcgihost-t4": "fcgihost --threads 4",
    "gunicorn": "gunicorn (sync)",
    "gunicorn-gthread": "gunicorn gthread --threads 16",
    "granian": "Granian",
    "nginx-flup": "nginx → flup",
    "uwsgi": "uWSGI",
}
COLORS = {
    "fcgihost": "#d9480f",
    "fcgihost-prev": "#f08c00",
    "fcgihost-t16": "#e8590c",
    "fcgihost-t4": "#e8590c",
    "gunicorn-gthread": "#4dabf7",
    "gunicorn": "#1c7ed6",
    "granian": "#37b24d",
    "nginx-flup": "#7048e8",
    "uwsgi": "#868e96",
}

STARTED = []  # Popen objects, each the leader of its own process group
PGID_FILE = os.environ.get("BENCH_PGID_FILE")


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def spawn(argv, log_path, cwd, env=None):
    """Start a process in its own process group (killed as a group at the end)."""
    out = open(log_path, "ab")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    STARTED.append(proc)
    if PGID_FILE:
        with open(PGID_FILE, "a") as f:
            f.write("%d\n" % proc.pid)
    return proc


def stop(proc, grace=5.0):
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (orphaned children)
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all():
    for proc in list(STARTED):
        stop(proc, grace=3.0)


def clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FCGIHOST_", "WSGI_"))}
    env["PATH"] = os.path.join(VENV, "bin") + os.pathsep + env.get("PATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# --- /proc sampling -----------------------------------------------------------------------


def children(pid):
    kids = []
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            try:
                with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                    kids.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return kids


def tree(root):
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children(pid))
    return out


def rss_bytes(pid):
    try:
        with open("/proc/%d/statm" % pid) as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


class Sampler(threading.Thread):
    """Samples RSS of the server's front and worker processes every `interval` seconds."""

    def __init__(self, server, interval=0.1):
        super().__init__(daemon=True)
        self.server = server
        self.interval = interval
        self.stop_event = threading.Event()
        self.samples = []  # (t, front_rss_sum, total_rss_sum, {worker_pid: rss})

    def snapshot(self):
        front, workers = self.server.classify()
        front_rss = sum(r for r in (rss_bytes(p) for p in front) if r)
        wr = {}
        for p in workers:
            r = rss_bytes(p)
            if r:
                wr[p] = r
        return (time.monotonic(), front_rss, front_rss + sum(wr.values()), wr)

    def run(self):
        while not self.stop_event.is_set():
            self.samples.append(self.snapshot())
            self.stop_event.wait(self.interval)

    def finish(self):
        self.stop_event.set()
        self.join()
        self.samples.append(self.snapshot())


def busy_seconds():
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / TICK


def own_seconds():
    """CPU time of this process plus its reaped children (wrk)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_snapshot(server):
    front, workers = server.classify()
    return ({p: cpu_ticks(p) for p in front}, {p: cpu_ticks(p) for p in workers})


def cpu_delta(before, after):
    total = 0
    for pid, end in after.items():
        if end is None:
            continue
        start = before.get(pid)
        total += end - (start if start is not None else 0)
    return total / TICK  # seconds


# --- servers ------------------------------------------------------------------------------


class Server:
    """One server under test; subclasses say how to start it and which pids are the front."""

    name = ""

    def __init__(self, module, workdir):
        self.module = module
        self.port = free_port()
        self.workdir = workdir
        self.procs = []
        self.log_path = os.path.join(workdir, "%s-%s.log" % (self.name, module))

    def start(self):
        raise NotImplementedError

    def main_pid(self):
        return self.procs[0].pid

    def classify(self):
        """(front pids, worker pids): by default the main process is the front and every
        descendant is a worker."""
        pids = tree(self.main_pid())
        return pids[:1], pids[1:]

    def alive(self):
        return all(p.poll() is None for p in self.procs)

    def stop(self):
        for proc in reversed(self.procs):
            stop(proc)

    def wait_ready(self, path, timeout=60.0):
        url = "http://127.0.0.1:%d%s" % (self.port, path)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                break
            try:
                req = urllib.request.Request(url, data=b"x" if path == "/echo" else None)
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            time.sleep(0.2)
        with open(self.log_path, "rb") as f:
            tail = f.read()[-3000:].decode("utf-8", "replace")
        raise RuntimeError("%s did not become ready on %s (%s)\n%s" % (self.name, url, last,
                                                                       tail))


class Fcgihost(Server):
    name = "fcgihost"
    binary = HOST_BIN
    extra = []

    def start(self):
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError("no binary at %r (BENCH_PREV_BIN)" % self.binary)
        self.procs.append(spawn(
            [self.binary, "serve", "--app", self.module + ":app", "--app-dir", APPS,
             "--workers", "2", "--listen", "127.0.0.1:%d" % self.port, "--log-level", "warn",
             "--python", VENV_PY] + self.extra,
            self.log_path, self.workdir, clean_env()))


class FcgihostPrev(Fcgihost):
    """The binary of the commit before, for a same-run comparison (BENCH_PREV_BIN)."""
    name = "fcgihost-prev"
    binary = os.environ.get("BENCH_PREV_BIN", "")


class FcgihostThreads16(Fcgihost):
    name = "fcgihost-t16"
    extra = ["--threads", "16"]


class FcgihostThreads4(Fcgihost):
    name = "fcgihost-t4"
    extra = ["--threads", "4"]


class Gunicorn(Server):
    name = "gunicorn"

    def start(self):
        self.procs.append(spawn(
            [os.path.join(VENV, "bin", "gunicorn"), "-w", "2", "-b",
             "127.0.0.1:%d" % self.port, "--chdir", APPS, "--log-level", "warning",
             self.module + ":app"],
            self.log_path, self.workdir, clean_env()))


class GunicornGthread(Server):
    name = "gunicorn-gthread"

    def start(self):
        self.procs.append(spawn(
            [os.path.join(VENV, "bin", "gunicorn"), "-w", "2", "-k", "gthread", "--threads",
             "16", "-b", "127.0.0.1:%d" % self.port, "--chdir", APPS, "--log-level",
             "warning", self.module + ":app"],
            self.log_path, self.workdir, clean_env()))


class Granian(Server):
    name = "granian"

    def start(self):
        self.procs.append(spawn(
            [os.path.join(VENV, "bin", "granian"), "--interface", "wsgi", "--workers", "2",
             "--host", "127.0.0.1", "--port", str(self.port), "--working-dir", APPS,
             "--log-level", "warning", self.module + ":app"],
            self.log_path, self.workdir, clean_env()))


class Uwsgi(Server):
    name = "uwsgi"

    def start(self):
        self.procs.append(spawn(
            [os.path.join(VENV, "bin", "uwsgi"), "--master", "--processes", "2",
             "--http", "127.0.0.1:%d" % self.port, "--http-keepalive",
             "--chdir", APPS, "--module", self.module + ":app", "--need-app",
             "--disable-logging", "--die-on-term", "--buffer-size", "32768"],
            self.log_path, self.workdir, clean_env()))

    def classify(self):
        pids = tree(self.main_pid())
        front = [pids[0]]
        with open(self.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        routers = {int(m) for m in re.findall(r"spawned uWSGI http \d+ \(pid: (\d+)\)", text)}
        front += [p for p in pids[1:] if p in routers]
        return front, [p for p in pids[1:] if p not in routers]


NGINX_CONF = """
{user}
worker_processes 2;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    fastcgi_temp_path {dir}/fastcgi;
    proxy_temp_path {dir}/proxy;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    client_max_body_size 4m;
    client_body_buffer_size 2m;
    fastcgi_buffer_size 64k;
    fastcgi_buffers 32 64k;
    upstream flup {{
        least_conn;
        server unix:{dir}/flup0.sock;
        server unix:{dir}/flup1.sock;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            fastcgi_pass flup;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $uri;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param REQUEST_SCHEME $scheme;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
            fastcgi_param SERVER_SOFTWARE nginx;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param REMOTE_PORT $remote_port;
            fastcgi_param SERVER_ADDR $server_addr;
            fastcgi_param SERVER_PORT $server_port;
            fastcgi_param SERVER_NAME $server_name;
            fastcgi_param HTTP_HOST $host;
        }}
    }}
}}
"""


class NginxFlup(Server):
    """nginx in front of two single-threaded flup FastCGI processes (one Unix socket each)."""

    name = "nginx-flup"

    def start(self):
        d = tempfile.mkdtemp(prefix="nginx-", dir=self.workdir)
        for i in range(2):
            self.procs.append(spawn(
                [VENV_PY, os.path.join(BENCH, "flup_server.py"),
                 os.path.join(d, "flup%d.sock" % i), APPS, self.module + ":app"],
                self.log_path, self.workdir, clean_env()))
        deadline = time.monotonic() + 30
        while not all(os.path.exists(os.path.join(d, "flup%d.sock" % i)) for i in range(2)):
            if time.monotonic() > deadline or not self.alive():
                raise RuntimeError("flup did not start; see %s" % self.log_path)
            time.sleep(0.1)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            # The workers must reach the 0700 sockets: same user as the master when root.
            user = "user root;" if os.geteuid() == 0 else ""
            f.write(NGINX_CONF.format(dir=d, port=self.port, user=user))
        self.procs.append(spawn(
            [shutil.which("nginx") or "/usr/sbin/nginx", "-p", d, "-c", conf, "-e",
             os.path.join(d, "nginx-error.log")],
            self.log_path, self.workdir, clean_env()))

    def main_pid(self):
        return self.procs[-1].pid  # nginx master

    def classify(self):
        front = tree(self.procs[-1].pid)
        workers = []
        for proc in self.procs[:-1]:
            workers.extend(tree(proc.pid))
        return front, workers


SERVER_CLASSES = {c.name: c for c in (Fcgihost, FcgihostPrev, FcgihostThreads16, FcgihostThreads4,
                                      Gunicorn, GunicornGthread, Granian, NginxFlup, Uwsgi)}


def runs(server, workload):
    """Whether `server` is measured on `workload` (variants only on their own)."""
    return workload in VARIANT_WORKLOADS.get(server, {workload})


# --- wrk ----------------------------------------------------------------------------------


def wrk(port, path, script, duration, log_file):
    argv = ["wrk", "-t1", "-c32", "-d%ds" % duration, "--latency", "-s",
            os.path.join(BENCH, "wrk", script), "http://127.0.0.1:%d%s" % (port, path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    with open(log_file, "a") as f:
        f.write("$ %s\n%s%s\n" % (" ".join(argv), proc.stdout, proc.stderr))
    m = re.search(r"^BENCHJSON (\{.*\})$", proc.stdout, re.M)
    if proc.returncode != 0 or not m:
        raise RuntimeError("wrk failed (%d): %s %s" % (proc.returncode, proc.stdout[-800:],
                                                       proc.stderr[-800:]))
    return json.loads(m.group(1))


ECHO_BODY = b"0123456789abcdef" * 65536  # 1 MiB, as bench/wrk/post_1mib.lua sends


def one_request(conn, path):
    if path == "/echo":
        conn.request("POST", path, body=ECHO_BODY,
                     headers={"Content-Type": "application/octet-stream"})
    else:
        conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def warm_up(port, path, seconds, concurrency=8):
    """Complete requests for `seconds` on `concurrency` keep-alive connections. Unlike a wrk
    run it never leaves a request cut off at the end (see docs/benchmarks.md: fcgihost stops
    answering after clients vanish mid-request), so every server enters the measured run
    warm and healthy. Returns (requests, non-200 answers or errors)."""
    import http.client

    deadline = time.monotonic() + seconds
    counts = [0, 0]
    lock = threading.Lock()

    def loop():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        ok = bad = 0
        while time.monotonic() < deadline:
            try:
                if one_request(conn, path) == 200:
                    ok += 1
                else:
                    bad += 1
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
                time.sleep(0.05)
        conn.close()
        with lock:
            counts[0] += ok
            counts[1] += bad

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts[0], counts[1]


def healthy(port, path, attempts=3, timeout=5.0):
    """Does the server still answer a request on a fresh connection (it may first have to
    drain what wrk left queued)?"""
    import http.client

    for _ in range(attempts):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            if one_request(conn, path) == 200:
                return True
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
    return False


def measure(server, workload, args, log_file):
    name, _, path, script = workload
    sampler = Sampler(server)
    sampler.samples.append(sampler.snapshot())  # before any load of this workload
    sampler.start()
    try:
        warm = warm_up(server.port, path, args.warmup)
        load_before = loadavg()
        cpu_before = cpu_snapshot(server)
        busy_before, own_before, t_before = busy_seconds(), own_seconds(), time.monotonic()
        result = wrk(server.port, path, script, args.duration, log_file)
        busy_after, own_after, t_after = busy_seconds(), own_seconds(), time.monotonic()
        cpu_after = cpu_snapshot(server)
        load_after = loadavg()
    finally:
        sampler.finish()
    alive_after = healthy(server.port, path)
    seconds = result["duration_us"] / 1e6
    requests = result["requests"]
    server_cpu = (cpu_delta(*_pair(cpu_before, cpu_after, 0))
                  + cpu_delta(*_pair(cpu_before, cpu_after, 1)))
    foreign = (busy_after - busy_before) - server_cpu - (own_after - own_before)
    foreign_pct = max(0.0, 100.0 * foreign / ((t_after - t_before) * (os.cpu_count() or 1)))
    errors = (result["connect"] + result["read"] + result["write"] + result["status"]
              + result["timeout"])
    samples = sampler.samples
    worker_start = max(samples[0][3].values()) if samples[0][3] else 0
    worker_peak = max((max(s[3].values()) for s in samples if s[3]), default=0)
    return {
        "workload": name,
        "server": server.name,
        "requests": requests,
        "rps": requests / seconds if seconds else 0.0,
        "p50_ms": result["p50"] / 1000.0,
        "p90_ms": result["p90"] / 1000.0,
        "p99_ms": result["p99"] / 1000.0,
        "max_ms": result["max"] / 1000.0,
        "errors": errors,
        "error_detail": {k: result[k] for k in ("connect", "read", "write", "status",
                                                "timeout")},
        "bytes": result["bytes"],
        "front_rss_start": samples[0][1],
        "front_rss_peak": max(s[1] for s in samples),
        "front_rss_end": samples[-1][1],
        "total_rss_peak": max(s[2] for s in samples),
        "worker_rss_start": worker_start,
        "worker_rss_peak": worker_peak,
        "worker_rss_end": max(samples[-1][3].values()) if samples[-1][3] else 0,
        "front_cpu_us_per_req": cpu_delta(*_pair(cpu_before, cpu_after, 0)) * 1e6
        / max(requests, 1),
        "worker_cpu_us_per_req": cpu_delta(*_pair(cpu_before, cpu_after, 1)) * 1e6
        / max(requests, 1),
        "foreign_cpu_pct": foreign_pct,
        "load_before": load_before,
        "load_after": load_after,
        "samples": len(samples),
        "warmup_requests": warm[0],
        "warmup_errors": warm[1],
        "healthy_after": alive_after,
    }


def _pair(before, after, index):
    return before[index], after[index]


# --- report -------------------------------------------------------------------------------


def mib(n):
    return n / (1 << 20)


def fmt_rps(x):
    return "{:,.0f}".format(x) if x >= 100 else "{:,.1f}".format(x)


def fmt_ms(x):
    return "%.2f" % x if x < 10 else "%.1f" % x if x < 100 else "%.0f" % x


def find(rows, workload, server):
    for r in rows:
        if r["workload"] == workload and r["server"] == server and "rps" in r:
            return r
    return None


def check(ok):
    return "✅" if ok else "❌"


def targets(rows, dap):
    """[(target text, measured text, met or None)]."""
    out = []

    def ratio_target(workload, peer, factor, ours="fcgihost"):
        a, b = find(rows, workload, ours), find(rows, workload, peer)
        text = "%s: ≥ %s× %s" % (workload, ("%g" % factor), LABELS[peer])
        if ours != "fcgihost":
            text = "%s: %s ≥ %s× %s" % (workload, LABELS[ours], ("%g" % factor), LABELS[peer])
        if not a or not b or not b["rps"]:
            out.append((text, "not measured", None))
            return
        r = a["rps"] / b["rps"]
        out.append((text, "%.2f×" % r, r >= factor))

    ratio_target("hello", "gunicorn", 4)
    ratio_target("hello", "nginx-flup", 4)
    ratio_target("hello", "granian", 0.5)
    ratio_target("Flask template", "gunicorn", 1.5)
    ratio_target("Flask template", "granian", 0.9)
    ratio_target("sleep 10 ms", "granian", 0.9, ours="fcgihost-t16")
    ratio_target("sleep 10 ms", "gunicorn-gthread", 1.0, ours="fcgihost-t16")
    ratio_target("hello", "fcgihost-prev", 0.95)
    ratio_target("1 MiB echo", "granian", 0.5)
    for name, _, _, _ in WORKLOADS:
        a, b = find(rows, name, "fcgihost"), find(rows, name, "gunicorn")
        text = "%s: p99 below gunicorn's" % name
        if a and b:
            out.append((text, "%s ms vs %s ms" % (fmt_ms(a["p99_ms"]), fmt_ms(b["p99_ms"])),
                        a["p99_ms"] < b["p99_ms"]))
        else:
            out.append((text, "not measured", None))
    if dap and "rtt_direct" in dap:
        r = dap["rtt_ptvsd"]["p50_us"] / dap["rtt_direct"]["p50_us"]
        out.append(("DAP `threads` round trip via /ptvsd ≤ 1.5× direct (p50)",
                    "%.2f× (%.1f ms vs %.1f ms)" % (r, dap["rtt_ptvsd"]["p50_us"] / 1000,
                                                    dap["rtt_direct"]["p50_us"] / 1000),
                    r <= 1.5))
        raw = dap["raw_ptvsd"]["MB_per_s_best"]
        out.append(("tunnel ≥ 100 MB/s", "%.0f MB/s raw (stub debugpy); %.0f MB/s of real "
                    "debugpy `evaluate` replies" % (raw, dap["eval_ptvsd"]["MB_per_s"]),
                    raw >= 100))
    else:
        out.append(("DAP round trip / tunnel", "not measured", None))
    peaks = [r["front_rss_peak"] for r in rows if r["server"] == "fcgihost" and "rps" in r]
    if peaks:
        out.append(("host RSS under load ≤ 30 MiB", "peak %.1f MiB" % mib(max(peaks)),
                    mib(max(peaks)) <= 30))
    echo = find(rows, "1 MiB echo", "fcgihost")
    if echo:
        host_growth = mib(echo["front_rss_peak"] - echo["front_rss_start"])
        worker_growth = mib(echo["worker_rss_peak"] - echo["worker_rss_start"])
        flat = host_growth <= 8 and worker_growth <= 8
        out.append(("1 MiB echo: flat memory on both sides (growth ≤ 8 MiB)",
                    "host +%.1f MiB, worker +%.1f MiB" % (host_growth, worker_growth), flat))
    return out


def markdown(meta, rows, dap, failures):
    lines = []
    w = lines.append
    w("Measured %s on %s (%d cores), Python %s, load average %s at the start and %s at the "
      "end (1, 5, 15 min). Each server is started afresh for each workload with 2 workers, "
      "warmed up for %d s (8 keep-alive connections, no request cut off), then loaded with wrk "
      "`-t1 -c32 -d%ds --latency`. Every number below comes from this one run." % (
          meta["date"], meta["kernel"], meta["cores"], meta["python"],
          " / ".join("%.2f" % x for x in meta["load_start"]),
          " / ".join("%.2f" % x for x in meta["load_end"]), meta["warmup"], meta["duration"]))
    w("")
    w("Versions: " + ", ".join("%s %s" % (k, v) for k, v in meta["versions"].items()) + ".")
    w("")
    w("| workload | server | req/s | p50 ms | p99 ms | errors | host RSS peak MiB "
      "| all processes RSS peak MiB | other CPU % | targets, notes |")
    w("|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
    tg = targets(rows, dap)
    for name, _, _, _ in WORKLOADS:
        for server in (s for s in SERVERS if runs(s, name)):
            r = find(rows, name, server)
            failure = next((f for f in failures if f["workload"] == name
                            and f["server"] == server), None)
            if r is None:
                why = failure["why"] if failure else "not run"
                w("| %s | %s | — | — | — | — | — | — | — | %s |" % (name, LABELS[server], why))
                continue
            marks = []
            if server == "fcgihost" or server in VARIANT_WORKLOADS:
                for text, measured, ok in tg:
                    mine = (LABELS[server] in text.split(" ≥ ")[0]) if server != "fcgihost" else (
                        not any(LABELS[v] in text.split(" ≥ ")[0] for v in VARIANT_WORKLOADS))
                    if text.startswith(name + ":") and ok is not None and mine:
                        marks.append("%s %s (%s)" % (check(ok), text.split(": ", 1)[1],
                                                     measured))
            if not r.get("healthy_after", True):
                marks.append("⚠️ stopped answering once wrk closed its connections")
            label = "**%s**" % LABELS[server] if server == "fcgihost" else LABELS[server]
            w("| %s | %s | %s | %s | %s | %d | %.1f | %.1f | %s | %s |" % (
                name, label, fmt_rps(r["rps"]), fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]),
                r["errors"], mib(r["front_rss_peak"]), mib(r["total_rss_peak"]),
                "%.0f" % r["foreign_cpu_pct"] if "foreign_cpu_pct" in r else "—",
                "<br>".join(marks)))
    w("")
    w("“other CPU %”: the share of the 2 cores that processes outside the benchmark (other "
      "builds and tests on the machine) used during that measured run, from /proc/stat minus "
      "the server's, wrk's and the driver's own CPU time; rows with a high value were "
      "measured on a busy machine.")
    w("")
    w("![req/s per workload and server](benchmarks.svg)")
    w("")
    w("### Targets")
    w("")
    w("| target | measured | met |")
    w("|---|---|:-:|")
    for text, measured, ok in tg:
        w("| %s | %s | %s |" % (text, measured, "—" if ok is None else check(ok)))
    w("")
    w("### CPU time per request (µs, from /proc utime+stime over the measured run)")
    w("")
    w("“host” is the front process(es) as in the RSS column; “workers” are the Python "
      "processes. On 2 cores the sum bounds req/s: 2 000 000 µs / (host + workers + wrk).")
    w("")
    base = [s for s in SERVERS if s not in VARIANT_WORKLOADS]
    w("| workload | " + " | ".join(LABELS[s] + " host / workers" for s in base) + " |")
    w("|---|" + "--:|" * len(base))
    for name, _, _, _ in WORKLOADS:
        cells = []
        for server in base:
            r = find(rows, name, server)
            cells.append("%.0f / %.0f" % (r["front_cpu_us_per_req"], r["worker_cpu_us_per_req"])
                         if r else "—")
        w("| %s | %s |" % (name, " | ".join(cells)))
    w("")
    w("### Memory during the 1 MiB echo (MiB: before the load → peak → after)")
    w("")
    w("| server | host | largest worker |")
    w("|---|--:|--:|")
    for server in SERVERS:
        r = find(rows, "1 MiB echo", server)
        if r:
            w("| %s | %.1f → %.1f → %.1f | %.1f → %.1f → %.1f |" % (
                LABELS[server], mib(r["front_rss_start"]), mib(r["front_rss_peak"]),
                mib(r["front_rss_end"]), mib(r["worker_rss_start"]), mib(r["worker_rss_peak"]),
                mib(r["worker_rss_end"])))
    w("")
    w("### Debug tunnel (`/ptvsd`) vs direct to the worker's debugpy port")
    w("")
    if dap and "rtt_direct" in dap:
        w("| measurement | direct | via /ptvsd | ratio |")
        w("|---|--:|--:|--:|")
        for key, label in (("rtt", "DAP `threads` round trip, real debugpy (%d sequential)"
                            % dap["rtt_direct"]["n"]),
                           ("raw_rtt", "round trip, stub debugpy `ping` (%d sequential)"
                            % dap["raw_rtt_direct"]["n"])):
            d, p = dap[key + "_direct"], dap[key + "_ptvsd"]
            w("| %s p50 / p99 µs | %.0f / %.0f | %.0f / %.0f | %.2f× / %.2f× |" % (
                label, d["p50_us"], d["p99_us"], p["p50_us"], p["p99_us"],
                p["p50_us"] / d["p50_us"], p["p99_us"] / d["p99_us"]))
        d, p = dap["eval_direct"], dap["eval_ptvsd"]
        w("| real debugpy: `evaluate` of a %s-char string while paused, MB/s | %.0f | %.0f "
          "| %.2f× |" % ("{:,}".format(d["value_chars"]), d["MB_per_s"], p["MB_per_s"],
                         p["MB_per_s"] / d["MB_per_s"]))
        d, p = dap["raw_direct"], dap["raw_ptvsd"]
        w("| stub debugpy: %d MB of DAP `output` events, best of %d, MB/s | %.0f | %.0f "
          "| %.2f× |" % (d["bytes"] // 1_000_000, d["repeats"], d["MB_per_s_best"],
                         p["MB_per_s_best"], p["MB_per_s_best"] / d["MB_per_s_best"]))
    else:
        w("Not measured in this run%s." % (": " + dap["error"] if dap and "error" in dap
                                           else ""))
    if failures:
        w("")
        w("### Not measured")
        w("")
        for f in failures:
            w("- %s, %s: %s" % (LABELS.get(f["server"], f["server"]), f["workload"], f["why"]))
    return "\n".join(lines)


def write_doc(block):
    with open(DOC) as f:
        text = f.read()
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < 0:
        text = text.rstrip("\n") + "\n\n" + MARK_START + "\n" + MARK_END + "\n"
        start, end = text.find(MARK_START), text.find(MARK_END)
    text = text[:start + len(MARK_START)] + "\n" + block + "\n" + text[end:]
    with open(DOC, "w") as f:
        f.write(text)


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_chart(meta, rows):
    """Small multiples: one panel per workload, one horizontal bar per server (req/s)."""
    width, left, right = 760, 150, 170
    bar_h, gap, panel_pad = 18, 6, 34
    y = 54
    parts = []
    for name, _, _, _ in WORKLOADS:
        present = [(s, find(rows, name, s)) for s in SERVERS if runs(s, name)]
        top = max([r["rps"] for _, r in present if r] + [1.0])
        parts.append('<text x="12" y="%d" class="h">%s</text>' % (y + 14, esc(name)))
        y += panel_pad - 10
        for server, r in present:
            parts.append('<text x="%d" y="%d" class="l" text-anchor="end">%s</text>'
                         % (left - 8, y + 13, esc(LABELS[server])))
            if r:
                w = max(1.0, (width - left - right) * r["rps"] / top)
                parts.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>'
                             % (left, y, w, bar_h, COLORS[server]))
                parts.append('<text x="%.1f" y="%d" class="v">%s req/s · p99 %s ms</text>'
                             % (left + w + 6, y + 13, fmt_rps(r["rps"]), fmt_ms(r["p99_ms"])))
            else:
                parts.append('<text x="%d" y="%d" class="v">not measured</text>'
                             % (left + 6, y + 13))
            y += bar_h + gap
        y += 14
    height = y + 10
    title = ("fcgihost vs peers — req/s, 2 workers each, wrk -t1 -c32 -d%ds, %s, load %.2f"
             % (meta["duration"], meta["date"], meta["load_start"][0]))
    return "\n".join([
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif">' % (width, height, width,
                                                                      height),
        '<style>.h{font-size:15px;font-weight:bold;fill:#222}.l{font-size:12px;fill:#333}'
        '.v{font-size:11px;fill:#333}.t{font-size:13px;fill:#222}</style>',
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="12" y="26" class="t">%s</text>' % esc(title),
        '<text x="12" y="44" class="v">Bars are scaled per workload (longest bar = fastest '
        'server of that workload).</text>',
    ] + parts + ["</svg>", ""])


# --- main ---------------------------------------------------------------------------------


def versions():
    def pip_version(dist):
        try:
            from importlib.metadata import version
            return version(dist)
        except Exception:
            return "?"

    out = {}
    try:
        out["fcgihost"] = subprocess.run([HOST_BIN, "--version"], capture_output=True,
                                         text=True).stdout.split()[-1]
    except (OSError, IndexError):
        out["fcgihost"] = "?"
    try:
        rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True).stdout.strip()
        if rev:
            out["fcgihost"] += " (%s)" % rev
    except OSError:
        pass
    for dist in ("gunicorn", "granian", "flup", "uWSGI", "Flask"):
        out[dist] = pip_version(dist)
    try:
        out["nginx"] = subprocess.run(["nginx", "-v"], capture_output=True,
                                      text=True).stderr.strip().split("/")[-1]
        out["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True,
                                    text=True).stdout.split()[1]
    except (OSError, IndexError):
        pass
    return out


def foreign_busy_pct(seconds=1.0):
    """Share (%) of all cores busy with processes outside this driver over `seconds`, while
    no server of ours runs."""
    b0, o0, t0 = busy_seconds(), own_seconds(), time.monotonic()
    time.sleep(seconds)
    b1, o1, t1 = busy_seconds(), own_seconds(), time.monotonic()
    return max(0.0, 100.0 * ((b1 - b0) - (o1 - o0)) / ((t1 - t0) * (os.cpu_count() or 1)))


def quiet_gate(max_wait, threshold):
    """Before a server starts: wait up to max_wait seconds for the other processes on the
    machine to use less than threshold % of the cores. Returns the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        pct = foreign_busy_pct()
        if pct < threshold or time.monotonic() >= deadline:
            return pct
        time.sleep(1.0)


def wait_for_quiet(minutes, threshold):
    deadline = time.monotonic() + minutes * 60
    while True:
        one = loadavg()[0]
        if one < threshold:
            log("1-min load %.2f < %.2f: starting" % (one, threshold))
            return
        if time.monotonic() >= deadline:
            log("1-min load still %.2f after %d min: running anyway (noted in the report)"
                % (one, minutes))
            return
        log("1-min load %.2f >= %.2f: waiting a minute" % (one, threshold))
        time.sleep(60)


def main():
    ap = argparse.ArgumentParser(description="fcgihost benchmark (see docs/benchmarks.md)")
    ap.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--workloads", default=None,
                    help="comma-separated subset of: " + ", ".join(w[0] for w in WORKLOADS))
    ap.add_argument("--dap-rounds", type=int, default=2000)
    ap.add_argument("--skip-dap", action="store_true")
    ap.add_argument("--quiet-wait", type=float, default=0,
                    help="wait up to this many minutes for the 1-min load to drop below "
                    "--quiet-load before starting")
    ap.add_argument("--quiet-load", type=float, default=1.0)
    ap.add_argument("--row-quiet-wait", type=float, default=0, metavar="SECONDS",
                    help="before each server start, wait up to this long for other processes "
                    "to use less than --row-quiet-pct of the cores")
    ap.add_argument("--row-quiet-pct", type=float, default=10.0)
    ap.add_argument("--no-write", action="store_true",
                    help="do not touch docs/ (results JSON only)")
    ap.add_argument("--render", metavar="JSON",
                    help="only rewrite docs/ from a results file (bench/results/latest.json)")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        block = markdown(saved["meta"], saved["rows"], saved["dap"], saved["failures"])
        write_doc(block)
        with open(SVG, "w") as f:
            f.write(svg_chart(saved["meta"], saved["rows"]))
        print(block)
        return
    servers = [s for s in args.servers.split(",") if s]
    wanted = set(args.workloads.split(",")) if args.workloads else None
    workloads = [w for w in WORKLOADS if wanted is None or w[0] in wanted]

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    os.makedirs(RESULTS, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="fcgihost-bench-")
    wrk_log = os.path.join(RESULTS, "no-write-wrk.log" if args.no_write else "wrk.log")
    open(wrk_log, "w").close()

    if args.quiet_wait > 0:
        wait_for_quiet(args.quiet_wait, args.quiet_load)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": "Linux " + platform.release(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "duration": args.duration,
        "warmup": args.warmup,
        "load_start": loadavg(),
        "versions": versions(),
    }
    rows, failures = [], []
    if os.path.exists(os.path.join(BENCH, ".venv", "uwsgi-build-failed")) and "uwsgi" in servers:
        servers.remove("uwsgi")
        for wl in workloads:
            failures.append({"server": "uwsgi", "workload": wl[0],
                             "why": "did not build (pip install uwsgi failed; see "
                             "bench/.venv/uwsgi-build-failed)"})
    t0 = time.monotonic()
    try:
        for wl in workloads:
            for name in servers:
                if not runs(name, wl[0]):
                    continue
                if args.row_quiet_wait > 0:
                    pct = quiet_gate(args.row_quiet_wait, args.row_quiet_pct)
                    if pct >= args.row_quiet_pct:
                        log("other processes still use %.0f%% of the cores; going on" % pct)
                server = SERVER_CLASSES[name](wl[1], workdir)
                log("%s: starting (%s, port %d)" % (name, wl[1], server.port))
                try:
                    server.start()
                    server.wait_ready(wl[2])
                    row = measure(server, wl, args, wrk_log)
                    rows.append(row)
                    log("%-10s %-15s %9s req/s  p50 %6s ms  p99 %6s ms  errors %d  "
                        "host RSS %.1f MiB  host CPU %.1f µs/req%s" % (
                            name, wl[0], fmt_rps(row["rps"]), fmt_ms(row["p50_ms"]),
                            fmt_ms(row["p99_ms"]), row["errors"],
                            mib(row["front_rss_peak"]), row["front_cpu_us_per_req"],
                            "" if row["healthy_after"] else "  NOT ANSWERING AFTER THE RUN"))
                except Exception as exc:  # record and go on with the next server
                    log("%s failed: %s" % (name, exc))
                    failures.append({"server": name, "workload": wl[0],
                                     "why": "failed: %s" % str(exc).splitlines()[0]})
                finally:
                    t_stop = time.monotonic()
                    server.stop()
                    if rows and rows[-1]["server"] == name and rows[-1]["workload"] == wl[0]:
                        rows[-1]["stop_s"] = round(time.monotonic() - t_stop, 1)
        dap = None
        if not args.skip_dap:
            log("debug tunnel benchmark (%d round trips each way)" % args.dap_rounds)
            dap_out = os.path.join(RESULTS, "dap.json")
            proc = subprocess.run([VENV_PY, os.path.join(BENCH, "dap_rtt.py"), "--rounds",
                                   str(args.dap_rounds), "--out", dap_out],
                                  capture_output=True, text=True, timeout=900,
                                  env=dict(clean_env(), BENCH_PGID_FILE=PGID_FILE or ""))
            if proc.returncode == 0:
                with open(dap_out) as f:
                    dap = json.load(f)
                log("DAP threads p50: direct %.0f µs, /ptvsd %.0f µs; raw tunnel %.0f MB/s"
                    % (dap["rtt_direct"]["p50_us"], dap["rtt_ptvsd"]["p50_us"],
                       dap["raw_ptvsd"]["MB_per_s_best"]))
            else:
                dap = {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
                log("DAP benchmark failed:\n%s" % proc.stderr[-2000:])
    finally:
        stop_all()
    meta["load_end"] = loadavg()
    meta["seconds"] = round(time.monotonic() - t0)
    # A --no-write run (e.g. --quick) keeps latest.json, which docs/ was rendered from.
    name = "no-write.json" if args.no_write else "latest.json"
    with open(os.path.join(RESULTS, name), "w") as f:
        json.dump({"meta": meta, "rows": rows, "dap": dap, "failures": failures}, f, indent=1)
    block = markdown(meta, rows, dap, failures)
    if not args.no_write:
        write_doc(block)
        with open(SVG, "w") as f:
            f.write(svg_chart(meta, rows))
        log("wrote %s and %s" % (os.path.relpath(DOC, ROOT), os.path.relpath(SVG, ROOT)))
    print(block)
    log("done in %d s" % meta["seconds"])


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)

"""Where fcgihost's time goes: perf profiles of the host and of one worker under wrk load.

Usage (after bench/run has set up bench/.venv and built the binary):

    bench/.venv/bin/python bench/profile.py [--workload hello] [--seconds 10]

Starts fcgihost with 2 workers on the workload's app, warms it up, then runs wrk
(`-t1 -c32`) while `perf record` samples the host process and one worker (cpu-clock, with
call graphs) and `perf stat` counts their system calls and context switches. Writes
bench/results/profile-<workload>-{host,worker}.txt (top symbols, self time), the call-graph
reports, and prints a summary: CPU µs, syscalls and context switches per request for each.
Needs `perf` (Debian: linux-perf) and root or kernel.perf_event_paranoid <= 1.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def perf_stat(pid, seconds, out):
    return subprocess.Popen(
        ["perf", "stat", "-x", ",", "-e", "task-clock,context-switches,raw_syscalls:sys_enter",
         "-p", str(pid), "-o", out, "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def parse_stat(path):
    values = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0] and not line.startswith("#"):
                try:
                    values[parts[2]] = float(parts[0])
                except ValueError:
                    pass
    return values


def report(data, out, call_graph):
    argv = ["perf", "report", "-i", data, "--stdio", "--percent-limit", "0.7"]
    argv += ["--no-children", "--sort", "dso,sym"]
    if not call_graph:
        argv += ["-g", "none"]
    else:
        argv += ["-g", "caller,0.5,callee,function,percent", "--max-stack", "14"]
    text = subprocess.run(argv, capture_output=True, text=True).stdout
    with open(out, "w") as f:
        f.write(text)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="hello", choices=[w[0] for w in bench.WORKLOADS])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--freq", type=int, default=999)
    ap.add_argument("--call-graph", default="none", help="none, fp or dwarf,8192")
    args = ap.parse_args()
    wl = next(w for w in bench.WORKLOADS if w[0] == args.workload)
    os.makedirs(bench.RESULTS, exist_ok=True)
    tag = re.sub(r"\W+", "-", wl[0].lower()).strip("-")
    workdir = tempfile.mkdtemp(prefix="fcgihost-profile-")
    server = bench.Fcgihost(wl[1], workdir)
    perf_procs = []
    try:
        server.start()
        server.wait_ready(wl[2])
        bench.warm_up(server.port, wl[2], 2)
        front, workers = server.classify()
        host, worker = front[0], workers[0]
        files = {k: os.path.join(bench.RESULTS, "profile-%s-%s" % (tag, k))
                 for k in ("host", "worker")}
        for who, pid, cg in (("host", host, args.call_graph), ("worker", worker, args.call_graph)):
            perf_procs.append(subprocess.Popen(
                ["perf", "record", "-e", "cpu-clock", "-F", str(args.freq)] + (["--call-graph", cg] if cg != "none" else []) + [
                 "-p", str(pid), "-o", files[who] + ".data"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        stats = {who: perf_stat(pid, args.seconds + 1, files[who] + ".stat")
                 for who, pid in (("host", host), ("worker", worker))}
        time.sleep(0.5)
        result = bench.wrk(server.port, wl[2], wl[3], args.seconds,
                           os.path.join(bench.RESULTS, "profile-wrk.log"))
        for p in stats.values():
            p.wait()
        for p in perf_procs:
            p.send_signal(2)
            p.wait(60)
        perf_procs.clear()
    finally:
        for p in perf_procs:
            p.kill()
        server.stop()
    requests = result["requests"]
    rps = requests / (result["duration_us"] / 1e6)
    print("fcgihost %s: %d requests, %.0f req/s (while being profiled)" % (wl[0], requests, rps))
    # One worker got about half of the requests: scale its counters by its share.
    for who in ("host", "worker"):
        s = parse_stat(files[who] + ".stat")
        share = requests if who == "host" else requests / 2.0
        print("  %-6s CPU %.1f µs/req, %.1f syscalls/req, %.2f context switches/req%s" % (
            who, s.get("task-clock", 0) * 1000 / share, s.get("raw_syscalls:sys_enter", 0)
            / share, s.get("context-switches", 0) / share,
            " (one of 2 workers, per request it served ≈ half)" if who == "worker" else ""))
        flat = report(files[who] + ".data", files[who] + ".txt", call_graph=False)
        report(files[who] + ".data", files[who] + "-callgraph.txt", call_graph=True)
        print("  top symbols (%s), self time:" % who)
        rows = [ln for ln in flat.splitlines() if re.match(r"\s+\d+\.\d+%", ln)]
        for ln in rows[:25]:
            print("    " + ln.strip())
    print("reports: %s" % bench.RESULTS)


if __name__ == "__main__":
    main()

//! Fault injection (issue 7): the real `fcgihost` binary and real Python workers, hurt on
//! purpose. Workers are SIGKILLed every second under load; workers get stuck in C code, break
//! the FastCGI protocol or flood their output; clients vanish mid-upload and mid-download;
//! 1,000 idle connections and slowloris clients sit on the front door. Each test checks that
//! the host loses no request it could have served, never hangs, and leaks no file descriptor,
//! process or socket file. Also: the runtime dir is private and goes at exit, the host raises
//! its open-files limit, and a request queued behind a killed worker goes to its replacement.
//! Everything is loopback and bounded in time; the harness (tests/common) kills every process
//! a test started.
//!
//! Apps: tests/apps/plain (fast routes, uploads, downloads) and tests/apps/faults (views that
//! misbehave, and `garbage_worker.py`, a `worker.command` that answers garbage).
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How long a test waits for a worker or a log line that should come promptly.
const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// /proc helpers: descriptors, zombies, start times, the runtime dir

/// Number of open file descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// What each open descriptor of `pid` points at (for failure messages).
fn fd_targets(pid: u32) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                let target = fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("? ({e})"));
                out.insert(n, target);
            }
        }
    }
    out
}

/// The fields of /proc/<pid>/stat after the command name (field 3, the state, is index 0).
fn stat_after_comm(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Children of `pid` that have exited but were not reaped (a leak of the host).
fn zombie_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(f) = stat_after_comm(p) {
            if f.first().map(String::as_str) == Some("Z")
                && f.get(1).and_then(|s| s.parse::<u32>().ok()) == Some(pid)
            {
                out.push(p);
            }
        }
    }
    out
}

/// When `pid` started (clock ticks since boot, /proc/<pid>/stat field 22).
fn start_ticks(pid: u32) -> u64 {
    stat_after_comm(pid)
        .and_then(|f| f.get(19).and_then(|s| s.parse().ok()))
        .unwrap_or(u64::MAX)
}

/// The host's runtime dir: `fcgihost-*` under its TMPDIR (the harness sets `<dir>/tmp`).
fn runtime_dirs(host: &Host) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(host.dir().join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("fcgihost-"))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// The worker socket files in the host's runtime dir.
fn socket_files(host: &Host) -> Vec<String> {
    let mut out = Vec::new();
    for dir in runtime_dirs(host) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sock") {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

/// What the host holds: descriptors, live and zombie children, descendants, socket files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holdings {
    fds: usize,
    workers: usize,
    descendants: usize,
    zombies: usize,
    sockets: usize,
}

impl Holdings {
    fn of(host: &Host) -> Holdings {
        Holdings {
            fds: fd_count(host.pid()),
            workers: host.worker_pids().len(),
            descendants: descendants(host.pid()).len(),
            zombies: zombie_children(host.pid()).len(),
            sockets: socket_files(host).len(),
        }
    }
}

/// TCP connections on the host's port that are not closed yet on the host's side (any state
/// but LISTEN and TIME_WAIT, which holds no descriptor), from /proc/net/tcp.
fn open_client_connections(host: &Host) -> usize {
    let port = format!(":{:04X}", host.addr().port());
    fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port) && f[3] != "0A" && f[3] != "06"
        })
        .count()
}

/// What the host holds once every client connection is gone (up to 15 s), for a baseline.
fn quiet_holdings(host: &Host) -> (Holdings, BTreeMap<u32, String>) {
    wait_until_every(Duration::from_secs(15), Duration::from_millis(20), || {
        open_client_connections(host) == 0
    });
    (Holdings::of(host), fd_targets(host.pid()))
}

/// Waits (up to 15 s) until the host holds what it held in `before`, then asserts it.
fn assert_no_leak(host: &Host, before: &Holdings, fds_before: &BTreeMap<u32, String>) {
    let mut now = Holdings::of(host);
    wait_until_every(Duration::from_secs(15), Duration::from_millis(50), || {
        now = Holdings::of(host);
        now == *before && open_client_connections(host) == 0
    });
    let fds_now = fd_targets(host.pid());
    let gone: Vec<_> = fds_before
        .iter()
        .filter(|(k, v)| fds_now.get(k) != Some(v))
        .collect();
    let new: Vec<_> = fds_now
        .iter()
        .filter(|(k, v)| fds_before.get(k) != Some(v))
        .collect();
    assert_eq!(
        now,
        *before,
        "the host leaked something.\nfds no longer open: {gone:?}\nfds opened since: {new:?}\n\
         client connections still open: {}\nsockets now: {:?}",
        open_client_connections(host),
        socket_files(host)
    );
}

/// Waits until the log says `n` workers are ready in total and the pool has `workers` live
/// processes; returns their pids.
fn settle(host: &Host, ready_lines: usize, workers: usize) -> Vec<u32> {
    host.wait_for_log_count("worker ready", ready_lines, T);
    host.wait_workers(workers, T)
}

fn pid_of(host: &Host) -> u32 {
    let r = get(&host.url("/pid"));
    assert_eq!(r.status, 200, "GET /pid: {}", r.text());
    r.text().trim().parse().unwrap()
}

fn faultapp(workers: usize) -> HostOpts {
    HostOpts::new()
        .app("faultapp.app")
        .app_dir(app_dir("faults"))
        .workers(workers)
}

// ---------------------------------------------------------------------------------------------
// SIGKILL every second under load

/// One request of the load: when it ran and how it ended.
#[derive(Debug, Clone)]
struct Sample {
    start: Instant,
    end: Instant,
    /// HTTP status, or None for a transport error (connection reset, timeout, cut body).
    status: Option<u16>,
    /// The pid the worker reported (200 only).
    pid: Option<u32>,
    /// What went wrong at the transport level (shown in failure messages).
    #[allow(dead_code)]
    error: Option<String>,
}

/// Sends `GET /pid` over one keep-alive connection until `stop`, reconnecting when the
/// server closes it; records every request.
fn load_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut conn: Option<RawConn> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = conn.get_or_insert_with(|| {
            let c = RawConn::connect(addr);
            c.set_read_timeout(Duration::from_secs(20));
            c
        });
        let start = Instant::now();
        let result = c
            .try_send(b"GET /pid HTTP/1.1\r\nHost: load\r\n\r\n")
            .and_then(|()| c.read_head());
        let sample = match result {
            Ok(head) => {
                let resp = c.read_body(&head, false);
                let close = resp
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let pid = (resp.status == 200)
                    .then(|| resp.text().trim().parse().ok())
                    .flatten();
                let error = (!resp.complete).then(|| "body cut short".to_string());
                if close || !resp.complete {
                    conn = None;
                }
                Sample {
                    start,
                    end: Instant::now(),
                    status: resp.complete.then_some(resp.status),
                    pid,
                    error,
                }
            }
            Err(e) => {
                conn = None;
                Sample {
                    start,
                    end: Instant::now(),
                    status: None,
                    pid: None,
                    error: Some(e.to_string()),
                }
            }
        };
        samples.push(sample);
    }
    samples
}

/// One kill of the fault-injection loop.
#[derive(Debug, Clone)]
struct Kill {
    at: Instant,
    victim: u32,
    /// The replacement process and when it appeared.
    replacement: Option<(u32, Instant)>,
}

#[test]
fn sigkill_a_worker_every_second_under_32_connections() {
    const CONNECTIONS: usize = 32;
    const KILLS: usize = 20;
    let host = Host::start(
        HostOpts::plain()
            .workers(2)
            .env("FCGIHOST_LOG_ACCESS", "false"),
    );
    let first = settle(&host, 2, 2);
    // Warm both workers and the host's connection paths, then take the baseline.
    for _ in 0..20 {
        assert_eq!(get(&host.url("/pid")).status, 200);
    }
    let (before, fds_before) = quiet_holdings(&host);
    assert_eq!(before.workers, 2, "{before:?}");
    assert_eq!(before.sockets, 2, "{:?}", socket_files(&host));

    let stop = Arc::new(AtomicBool::new(false));
    let addr = host.addr();
    let load: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || load_loop(addr, stop))
        })
        .collect();

    // One kill a second, always the oldest worker (each process lives about two seconds, so
    // no kill meets a worker in its first second, which the supervisor would count as a
    // failed start and answer with backoff).
    let t0 = Instant::now();
    let mut kills: Vec<Kill> = Vec::new();
    let mut known: BTreeSet<u32> = first.iter().copied().collect();
    for k in 0..KILLS {
        let due = t0 + Duration::from_millis(500 + 1000 * k as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait); // the test is about time: one kill per second
        }
        let live = host.worker_pids();
        let Some(&victim) = live.iter().min_by_key(|p| start_ticks(**p)) else {
            panic!("no worker alive at kill {k}; pids: {live:?}");
        };
        // Taken before the signal: this thread may lose the CPU right after sending it.
        let at = Instant::now();
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is a worker of ours.
        assert_eq!(
            unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) },
            0
        );
        let mut kill = Kill {
            at,
            victim,
            replacement: None,
        };
        // Back at full size: two live workers, the victim not among them.
        wait_until_every(Duration::from_secs(3), Duration::from_millis(5), || {
            let pids = host.worker_pids();
            if pids.len() == 2 && !pids.contains(&victim) {
                let new = pids.iter().copied().find(|p| !known.contains(p));
                kill.replacement = new.map(|p| (p, Instant::now()));
                true
            } else {
                false
            }
        });
        if let Some((p, _)) = kill.replacement {
            known.insert(p);
        }
        kills.push(kill);
    }
    // The load runs on for a while after the last kill, so its replacement serves too.
    thread::sleep(Duration::from_millis(1500));
    let load_time = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<Sample> = load.into_iter().flat_map(|h| h.join().unwrap()).collect();

    // --- the figures
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for s in &samples {
        let key = match s.status {
            Some(code) => code.to_string(),
            None => "transport error".to_string(),
        };
        *by_status.entry(key).or_default() += 1;
    }
    let respawn: Vec<Duration> = kills
        .iter()
        .map(|k| {
            k.replacement
                .map(|(_, t)| t - k.at)
                .unwrap_or(Duration::MAX)
        })
        .collect();
    // When each replacement first served a request (the pool really is back).
    let serving: Vec<Duration> = kills
        .iter()
        .map(|k| match k.replacement {
            Some((pid, _)) => samples
                .iter()
                .filter(|s| s.pid == Some(pid))
                .map(|s| s.end)
                .min()
                .map(|t| t.saturating_duration_since(k.at))
                .unwrap_or(Duration::MAX),
            None => Duration::MAX,
        })
        .collect();
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.end - s.start).collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    eprintln!(
        "sigkill under load: {} requests in {load_time:?} over {CONNECTIONS} connections, \
         {} kills; outcomes {by_status:?}; latency p50 {:?} p99 {:?} max {:?}; \
         respawn {respawn:?}; first served by the replacement after {serving:?}",
        samples.len(),
        kills.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );

    // --- the assertions
    let transport: Vec<&Sample> = samples.iter().filter(|s| s.status.is_none()).collect();
    assert!(
        transport.is_empty(),
        "{} requests failed at the transport level: {:?}",
        transport.len(),
        transport.iter().take(5).collect::<Vec<_>>()
    );
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.status != Some(200)).collect();
    for s in &failed {
        assert_eq!(s.status, Some(502), "only 502 may come of a kill: {s:?}");
        // A 502 belongs to a kill: it ended after one, at most a second later.
        assert!(
            kills
                .iter()
                .any(|k| s.end >= k.at && s.end - k.at < Duration::from_secs(1)),
            "a 502 that no kill explains: it ended {:?} after the load started; kills at {:?}",
            s.end - t0,
            kills.iter().map(|k| k.at - t0).collect::<Vec<_>>()
        );
    }
    assert!(
        failed.len() <= kills.len(),
        "{} requests failed for {} kills (at most the one in flight per kill may fail)",
        failed.len(),
        kills.len()
    );
    for (k, d) in kills.iter().zip(&respawn) {
        assert!(
            *d < Duration::from_secs(1),
            "the pool was not back at two workers within 1 s of killing {}: {d:?}\n{kills:?}",
            k.victim
        );
    }
    for (k, d) in kills.iter().zip(&serving) {
        assert!(
            *d < Duration::from_secs(2),
            "the replacement of {} served its first request {d:?} after the kill",
            k.victim
        );
    }
    assert!(
        samples.len() > 1000,
        "the load was too thin to mean anything: {} requests",
        samples.len()
    );

    // --- no leak once the load is gone and the pool settled
    settle(&host, 2 + KILLS, 2);
    assert_no_leak(&host, &before, &fds_before);
    assert!(!host.log().contains("panicked"), "{}", host.log());
}

// ---------------------------------------------------------------------------------------------
// Stuck, malformed and noisy workers

/// A request to `path` with `request_timeout = 2s` on a worker stuck in C code: 504 at the
/// deadline, the worker killed and replaced. Returns the host for more checks.
fn stuck_case(path: &str) -> Host {
    let host = Host::start(faultapp(1).arg("--request-timeout").arg("2s"));
    let before_pid = pid_of(&host);
    let started = Instant::now();
    let r = get(&host.url(path));
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{path}: {}", r.text());
    // 2 s of clock, up to 0.5 s for the stack dump the host asks for before the kill.
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "{path}: 504 after {took:?}, expected about 2-2.5 s"
    );
    assert!(
        wait_until(T, || !pid_alive(before_pid)),
        "the stuck worker {before_pid} is still alive"
    );
    settle(&host, 2, 1);
    let after_pid = pid_of(&host);
    assert_ne!(
        after_pid, before_pid,
        "{path}: the stuck worker was not replaced"
    );
    host.wait_for_log("request timed out", T);
    host
}

#[test]
fn a_worker_stuck_in_c_code_holding_the_gil_is_killed_at_the_deadline() {
    let host = stuck_case("/stuck");
    // Holding the GIL, the worker cannot even answer the stack dump: the kill still comes.
    let log = host.wait_for_log("did not report its stacks in time", T);
    assert!(log.contains("/stuck"), "{log}");
}

#[test]
fn a_worker_stuck_in_a_blocking_read_is_killed_at_the_deadline() {
    let host = stuck_case("/stuck-read");
    // The GIL is free, so the stacks come first and show where it hung.
    let log = host.wait_for_log("stuck_read", T);
    assert!(log.contains("Python stacks"), "{log}");
}

#[test]
fn a_stuck_worker_that_stopped_reading_a_large_upload_is_killed_at_the_deadline() {
    // The worker reads nothing: the host's writes to its socket block once the buffers are
    // full, and the deadline must fire all the same.
    let host = Host::start(faultapp(1).arg("--request-timeout").arg("2s"));
    let before_pid = pid_of(&host);
    let size = 64 * 1024 * 1024;
    let mut stream = TcpStream::connect(host.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(
            format!("POST /stuck-read HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
    let started = Instant::now();
    let sender = {
        let mut stream = stream.try_clone().unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        thread::spawn(move || {
            let chunk = vec![b'u'; 64 * 1024];
            let mut sent = 0usize;
            while sent < size {
                if stream.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        })
    };
    let status = read_status(&mut stream).expect("a response to the stuck upload");
    let took = started.elapsed();
    assert_eq!(status, 504);
    assert!(took < Duration::from_secs(6), "504 after {took:?}");
    drop(stream);
    let sent = sender.join().unwrap();
    assert!(
        sent < size,
        "the whole body went through a worker that reads nothing"
    );
    assert!(wait_until(T, || !pid_alive(before_pid)));
    settle(&host, 2, 1);
    assert_ne!(pid_of(&host), before_pid);
}

/// Reads a response head off `stream` and returns its status code.
fn read_status(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::other(format!(
                "closed before a response head: {:?}",
                String::from_utf8_lossy(&head)
            )));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad head {text:?}")))
}

#[test]
fn a_worker_that_writes_malformed_fastcgi_gets_502_and_is_recycled() {
    let script = app_dir("faults").join("garbage_worker.py");
    for mode in ["http", "type", "mgmt", "end", "head"] {
        let toml = format!(
            "[worker]\ncommand = [\"{{python}}\", \"{}\", \"{mode}\"]\n",
            toml_escape(&script.to_string_lossy())
        );
        let host = Host::start(HostOpts::new().workers(1).config(&toml));
        host.wait_for_log("garbage worker", T);
        let first = host.wait_workers(1, T)[0];
        let r = get(&host.url("/"));
        assert_eq!(r.status, 502, "mode {mode}: {}", r.text());
        assert!(
            !r.text().contains("garbage") && !r.text().contains("hello"),
            "mode {mode}: the worker's bytes reached the client: {}",
            r.text()
        );
        host.wait_for_log("worker broke the FastCGI protocol", T);
        assert!(
            wait_until(T, || !pid_alive(first)),
            "mode {mode}: the broken worker {first} was not killed"
        );
        host.wait_for_log_count("garbage worker", 2, T);
        let now = host.wait_workers(1, T);
        assert_ne!(now[0], first, "mode {mode}: not recycled");
        // The replacement breaks the protocol too; each request is answered, none hangs.
        let r = get(&host.url("/again"));
        assert_eq!(r.status, 502, "mode {mode}");
    }
}

#[test]
fn a_worker_flooding_stdout_and_stderr_does_not_stall_the_host() {
    const MIB: u64 = 50;
    let host = Host::start(faultapp(2));
    settle(&host, 2, 2);
    let url = host.url(&format!("/flood?mb={MIB}"));
    let started = Instant::now();
    let flood = thread::spawn(move || {
        let r = get(&url);
        (r, Instant::now())
    });
    // Wait until the flood is under way (its lines reach the log), then probe the other
    // worker while it lasts.
    assert!(
        wait_until_every(T, Duration::from_millis(20), || host
            .log()
            .contains("flood pid=")),
        "no flood line in the log"
    );
    let mut probes: Vec<Duration> = Vec::new();
    let agent = agent();
    while !flood.is_finished() {
        let t = Instant::now();
        let r = request_with(&agent, "GET", &host.url("/"), &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        probes.push(t.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the flood request is still running after 2 minutes"
        );
        thread::sleep(Duration::from_millis(20)); // pacing of the probes
    }
    let (r, done) = flood.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), format!("flooded {MIB}"));
    let mut sorted = probes.clone();
    sorted.sort();
    eprintln!(
        "flood of {MIB} MiB took {:?}; {} probes on the other worker meanwhile, median {:?}, max {:?}",
        done - started,
        probes.len(),
        sorted.get(sorted.len() / 2),
        sorted.last()
    );
    assert!(
        probes.len() >= 3,
        "too few probes ran during the flood: {probes:?}"
    );
    let slow: Vec<&Duration> = probes
        .iter()
        .filter(|d| **d > Duration::from_secs(1))
        .collect();
    assert!(
        slow.is_empty(),
        "requests to the other worker stalled during the flood: {slow:?}"
    );
    // Every line of the flood reached the log (each is 100 bytes, 655 to a 64 KiB write).
    let blocks = (MIB * 1024 * 1024).div_ceil(65_500);
    let lines = (blocks * 655) as usize;
    let mut seen = 0;
    wait_until_every(T, Duration::from_millis(500), || {
        seen = host.log().matches("flood pid=").count();
        seen >= lines
    });
    assert_eq!(seen, lines, "flood lines logged");
}

// ---------------------------------------------------------------------------------------------
// Clients that vanish

#[test]
fn a_client_vanishing_mid_upload_does_not_leave_the_worker_blocked() {
    let host = Host::start(HostOpts::plain().workers(1));
    let before_pid = pid_of(&host);
    let mut conn = RawConn::connect(host.addr());
    conn.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Half of a 50 MB chunked body, then the connection just goes.
    let chunk = pattern_buf();
    let chunk = &chunk[..64 * 1024];
    let mut sent = 0usize;
    while sent < 25 * 1024 * 1024 {
        conn.send(format!("{:x}\r\n", chunk.len()).as_bytes());
        conn.send(chunk);
        conn.send(b"\r\n");
        sent += chunk.len();
    }
    drop(conn);
    let started = Instant::now();
    let r = get(&host.url("/pid"));
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_secs(5),
        "the next request waited {took:?}"
    );
    assert_eq!(
        r.text().trim().parse::<u32>().unwrap(),
        before_pid,
        "the worker was replaced instead of freed"
    );
    let r = post(
        &host.url("/upload"),
        "application/octet-stream",
        &[7u8; 100_000],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bytes"], 100_000);
}

#[test]
fn a_client_vanishing_mid_download_does_not_leave_the_worker_blocked() {
    let host = Host::start(HostOpts::plain().workers(1));
    let before_pid = pid_of(&host);
    let mut stream = TcpStream::connect(host.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /download?size=500000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 1024 * 1024 {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the download ended early");
        got += n;
    }
    drop(stream);
    let started = Instant::now();
    let r = get(&host.url("/pid"));
    let took = started.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_secs(5),
        "the next request waited {took:?}"
    );
    assert_eq!(r.text().trim().parse::<u32>().unwrap(), before_pid);
    // The abandoned download was cut short, not streamed to the end into the void.
    let log = host.wait_for_log("path=\"/download\"", T);
    let line = log
        .lines()
        .find(|l| l.contains("path=\"/download\""))
        .unwrap();
    let bytes: u64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("bytes="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no bytes= in {line:?}"));
    assert!(bytes < 100_000_000, "{bytes} bytes went out: {line}");
}

// ---------------------------------------------------------------------------------------------
// Idle connections and slowloris

/// Raises this process's soft RLIMIT_NOFILE to `want`, or as near as the hard limit allows
/// but at least `need` (the host, started afterwards, inherits it).
fn raise_nofile(want: u64, need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let target = want.min(lim.rlim_max);
        assert!(
            target >= need,
            "this test needs {need} open files; the hard RLIMIT_NOFILE is {}",
            lim.rlim_max
        );
        if lim.rlim_cur < target {
            lim.rlim_cur = target;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

#[test]
fn a_thousand_idle_connections_and_slowloris_clients_do_not_stop_normal_requests() {
    const IDLE: usize = 1000;
    const SLOW: usize = 20;
    const PROBE_FOR: Duration = Duration::from_secs(12);
    raise_nofile(8192, IDLE as u64 + 200);
    // With the defaults: `max_connections` (10,000) leaves room above 1,000 idle
    // connections, and the host raises its open-files limit to match.
    let host = Host::start(HostOpts::plain().workers(2));
    settle(&host, 2, 2);
    let addr = host.addr();

    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}")))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let head = format!(
                    "GET / HTTP/1.1\r\nHost: slowloris\r\nX-Slow: {}\r\n\r\n",
                    "s".repeat(200)
                );
                let mut sent = 0;
                for b in head.bytes() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if s.write_all(&[b]).is_err() {
                        break;
                    }
                    sent += 1;
                    thread::sleep(Duration::from_secs(1)); // the attack is about time
                }
                sent
            })
        })
        .collect();

    // A normal GET on a fresh connection, five times a second, for PROBE_FOR.
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < PROBE_FOR {
        let t = Instant::now();
        let mut c = RawConn::connect(addr);
        c.set_read_timeout(Duration::from_secs(10));
        c.send(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
        let head = c.read_head();
        let took = t.elapsed();
        match head {
            Ok(head) => {
                let r = c.read_body(&head, false);
                assert_eq!(r.status, 200);
                assert_eq!(r.text(), "Hello, world!");
            }
            Err(e) => panic!(
                "a normal request failed after {took:?} with {IDLE} idle and {SLOW} slowloris \
                 connections open: {e}"
            ),
        }
        latencies.push(took);
        thread::sleep(Duration::from_millis(200)); // pacing of the probes
    }
    stop.store(true, Ordering::Relaxed);
    let max = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{} probes with {IDLE} idle + {SLOW} slowloris connections: max latency {max:?}",
        latencies.len()
    );
    assert!(
        max < Duration::from_secs(1),
        "a normal request took {max:?}: {latencies:?}"
    );
    for h in slow {
        h.join().unwrap();
    }
    drop(idle);
}

/// The soft and hard RLIMIT_NOFILE of `pid`, from /proc/<pid>/limits.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |s: &str| s.parse().unwrap_or(u64::MAX); // "unlimited"
    (num(f[3]), num(f[4]))
}

#[test]
fn the_host_raises_its_open_files_limit_from_the_usual_1024() {
    // Regression: with the soft limit most Linux systems start services with (1,024),
    // `accept` failed with EMFILE near 1,000 connections and nobody else got in.
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["serve", "--app", "plainapp.app", "--workers", "1"])
        .arg("--app-dir")
        .arg(app_dir("plain"))
        .args(["--listen", "127.0.0.1:0", "--python", &python()])
        .env_remove("RUST_LOG")
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only async-signal-safe calls (getrlimit, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = lim.rlim_cur.min(1024);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let _guard = KillOnDrop(vec![pid]);
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("listening on http://"));
    assert!(listening.is_some(), "the host did not start");
    let workers = KillOnDrop(descendants(pid));
    let (soft, hard) = open_files_limits(pid);
    assert!(
        soft >= hard.min(4096),
        "the host kept a soft open-files limit of {soft} (hard {hard})"
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(workers);
}

// ---------------------------------------------------------------------------------------------
// The host's own files

#[test]
fn the_runtime_dir_is_private_while_running_and_removed_at_exit() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut host = Host::start(HostOpts::plain().workers(2));
    settle(&host, 2, 2);
    let dirs = runtime_dirs(&host);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let dir = &dirs[0];
    let meta = fs::metadata(dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o700,
        "{} has mode {:o}",
        dir.display(),
        meta.permissions().mode()
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    let names: BTreeSet<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains("fcgihost_worker.py"), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".sock")).count(),
        2,
        "{names:?}"
    );
    let workers = host.worker_pids();
    let _guard = KillOnDrop(workers.clone());

    host.signal(libc::SIGTERM);
    let status = host.wait_exit(T).expect("the host did not exit on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!dir.exists(), "{} is still there after exit", dir.display());
    assert!(
        workers.iter().all(|p| !pid_alive(*p)),
        "workers outlived the host: {workers:?}"
    );
}

#[test]
fn a_request_queued_behind_a_timed_out_request_is_served_by_the_replacement() {
    // Regression: the host killed the timed-out worker and then reconnected to its socket
    // while it was still dying, handing the queued request a connection into a dead
    // worker's backlog: 502 for a request that never reached a worker.
    let host = Host::start(faultapp(1).arg("--request-timeout").arg("2s"));
    let before_pid = pid_of(&host);
    for (n, path) in ["/stuck", "/stuck-read"].into_iter().enumerate() {
        let url = host.url(path);
        let stuck = thread::spawn(move || get(&url));
        host.wait_for_log_count("stuck-start", n + 1, T);
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let url = host.url("/pid");
                thread::spawn(move || get(&url))
            })
            .collect();
        assert_eq!(stuck.join().unwrap().status, 504);
        for q in queued {
            let r = q.join().unwrap();
            assert_eq!(
                r.status,
                200,
                "{path}: a queued request failed: {}",
                r.text()
            );
            assert_ne!(r.text().trim().parse::<u32>().unwrap(), before_pid);
        }
    }
}

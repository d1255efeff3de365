//! The soak (issue 7): minutes of mixed traffic against the real binary with worker recycling
//! on, watching the host's and the workers' memory. Not part of the normal test run (the test
//! is `#[ignore]`d); run it with `scripts/soak` (10 minutes by default, `--minutes N`).
//!
//! Traffic (tests/apps/plain, over keep-alive connections): `GET /` (4 connections), a 1 MiB
//! `POST /echo` whose body must come back intact (1), a streamed 8 MiB `GET /download` whose
//! bytes are checked (1), and `GET /sleep?s=0.3` (2), on 4 workers recycled after 200 (+0-50)
//! requests each. Every 10 s it prints a row: host RSS, the workers' RSS (sum and largest),
//! the host's open descriptors, the number of workers, and the requests and errors so far.
//!
//! It fails when any request fails, when the host's RSS grows after the warm-up by more than
//! the threshold (mean of the last three samples against the mean of the first three after
//! the warm-up), or when the host holds more descriptors at the end than at the start.
//!
//! Settings (environment): SOAK_SECS (600), SOAK_WARMUP_SECS (20% of the run, at least 30),
//! SOAK_SAMPLE_SECS (10), SOAK_MAX_GROWTH_MIB (10), SOAK_WORKERS (4), SOAK_ACCESS_LOG (0).
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Counts of the traffic, shared by the client threads.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn error(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_default() += 1;
    }
    fn errors(&self) -> u64 {
        self.errors.lock().unwrap().values().sum()
    }
}

/// One kind of request and how to check its answer.
#[derive(Clone, Copy, Debug)]
enum Work {
    Hello,
    Echo,
    Download,
    Sleep,
}

const ECHO_SIZE: usize = 1024 * 1024;
const DOWNLOAD_SIZE: usize = 8 * 1024 * 1024;

/// Sends `work` over one keep-alive connection until `stop`; counts outcomes in `tally`.
fn client(addr: SocketAddr, work: Work, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let echo_body: Vec<u8> = (0..ECHO_SIZE).map(|i| (i * 7 % 256) as u8).collect();
    let echo_request = {
        let mut r = format!(
            "POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {ECHO_SIZE}\r\n\r\n"
        )
        .into_bytes();
        r.extend_from_slice(&echo_body);
        r
    };
    let pattern = pattern_buf();
    let mut conn: Option<RawConn> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = conn.get_or_insert_with(|| {
            let c = RawConn::connect(addr);
            c.set_read_timeout(Duration::from_secs(60));
            c
        });
        let request: &[u8] = match work {
            Work::Hello => b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n",
            Work::Echo => &echo_request,
            Work::Download => b"GET /download?size=8388608 HTTP/1.1\r\nHost: soak\r\n\r\n",
            Work::Sleep => b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: soak\r\n\r\n",
        };
        let head = c.try_send(request).and_then(|()| c.read_head());
        let head = match head {
            Ok(head) => head,
            Err(e) => {
                tally.error(format!("{work:?}: transport: {e}"));
                conn = None;
                continue;
            }
        };
        let resp = c.read_body(&head, false);
        if !resp.complete {
            tally.error(format!("{work:?}: body cut short"));
            conn = None;
            continue;
        }
        if resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            conn = None;
        }
        if resp.status != 200 {
            tally.error(format!("{work:?}: status {}", resp.status));
            continue;
        }
        let good = match work {
            Work::Hello => resp.body == b"Hello, world!",
            Work::Echo => {
                let v = resp.json();
                v["body_b64"]
                    .as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .is_some_and(|b| b == echo_body)
            }
            Work::Download => {
                resp.body.len() == DOWNLOAD_SIZE
                    && resp.body.chunks(64 * 1024).enumerate().all(|(i, chunk)| {
                        let o = (i * 64 * 1024) % PATTERN_PERIOD;
                        chunk == &pattern[o..o + chunk.len()]
                    })
            }
            Work::Sleep => resp.text().starts_with("slept"),
        };
        if good {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.error(format!("{work:?}: wrong body"));
        }
    }
}

/// One row of the series.
#[derive(Debug, Clone)]
struct Sample {
    at: Duration,
    host_kib: u64,
    workers_kib: u64,
    worker_max_kib: u64,
    workers: usize,
    fds: usize,
    ok: u64,
    errors: u64,
}

fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
}

#[test]
#[ignore = "a soak of minutes; run it with scripts/soak"]
fn soak_mixed_traffic_with_recycling() {
    let secs = setting("SOAK_SECS", 600);
    let warmup = setting("SOAK_WARMUP_SECS", (secs / 5).max(30));
    let every = Duration::from_secs(setting("SOAK_SAMPLE_SECS", 10).max(1));
    let max_growth_kib = setting("SOAK_MAX_GROWTH_MIB", 10) * 1024;
    let workers = setting("SOAK_WORKERS", 4) as usize;
    let access = setting("SOAK_ACCESS_LOG", 0) == 1;
    assert!(
        warmup + 6 * every.as_secs() <= secs,
        "SOAK_SECS={secs} leaves too few samples after a {warmup} s warm-up"
    );

    let host = Host::start(
        HostOpts::plain()
            .workers(workers)
            .env("FCGIHOST_MAX_REQUESTS", "200")
            .env("FCGIHOST_MAX_REQUESTS_JITTER", "50")
            .env("FCGIHOST_LOG_ACCESS", if access { "true" } else { "false" }),
    );
    host.wait_for_log_count("worker ready", workers, Duration::from_secs(60));
    thread::sleep(Duration::from_millis(500)); // let the start-up connections close
    let fds_start = fd_count(host.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mix = [
        (Work::Hello, 4),
        (Work::Echo, 1),
        (Work::Download, 1),
        (Work::Sleep, 2),
    ];
    let clients: Vec<_> = mix
        .iter()
        .flat_map(|(work, n)| std::iter::repeat_n(*work, *n))
        .map(|work| {
            let (stop, tally, addr) = (stop.clone(), tally.clone(), host.addr());
            thread::spawn(move || client(addr, work, stop, tally))
        })
        .collect();

    eprintln!(
        "soak: {secs} s ({warmup} s warm-up), {workers} workers recycled every 200-250 \
         requests, sample every {every:?}, host RSS may grow by {} MiB",
        max_growth_kib / 1024
    );
    eprintln!(
        "{:>6} {:>10} {:>12} {:>12} {:>7} {:>5} {:>9} {:>6}",
        "t(s)", "host KiB", "workers KiB", "largest KiB", "workers", "fds", "requests", "errors"
    );
    let started = Instant::now();
    let mut series: Vec<Sample> = Vec::new();
    let mut next = started + every;
    while started.elapsed() < Duration::from_secs(secs) {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait); // the soak is about time: one sample per interval
        }
        next += every;
        let pids = host.worker_pids();
        let rss: Vec<u64> = pids.iter().filter_map(|p| rss_kib(*p)).collect();
        let s = Sample {
            at: started.elapsed(),
            host_kib: rss_kib(host.pid()).unwrap_or(0),
            workers_kib: rss.iter().sum(),
            worker_max_kib: rss.iter().copied().max().unwrap_or(0),
            workers: pids.len(),
            fds: fd_count(host.pid()),
            ok: tally.ok.load(Ordering::Relaxed),
            errors: tally.errors(),
        };
        eprintln!(
            "{:>6} {:>10} {:>12} {:>12} {:>7} {:>5} {:>9} {:>6}",
            s.at.as_secs(),
            s.host_kib,
            s.workers_kib,
            s.worker_max_kib,
            s.workers,
            s.fds,
            s.ok,
            s.errors
        );
        series.push(s);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }

    // The descriptors come back once the clients are gone.
    let mut fds_end = fd_count(host.pid());
    wait_until_every(Duration::from_secs(15), Duration::from_millis(100), || {
        fds_end = fd_count(host.pid());
        fds_end <= fds_start
    });
    let recycled = host.log().matches("max_requests reached").count();
    let after: Vec<&Sample> = series
        .iter()
        .filter(|s| s.at >= Duration::from_secs(warmup))
        .collect();
    let first: Vec<u64> = after.iter().take(3).map(|s| s.host_kib).collect();
    let last: Vec<u64> = after.iter().rev().take(3).map(|s| s.host_kib).collect();
    let growth = mean(&last) - mean(&first);
    let errors = tally.errors.lock().unwrap().clone();
    eprintln!(
        "soak done: {} requests, {} errors {errors:?}, {recycled} recyclings; host RSS after \
         warm-up {:.0} KiB -> {:.0} KiB ({growth:+.0} KiB); fds {fds_start} -> {fds_end}",
        tally.ok.load(Ordering::Relaxed),
        tally.errors(),
        mean(&first),
        mean(&last),
    );

    assert!(errors.is_empty(), "requests failed: {errors:?}");
    assert!(
        recycled > 0,
        "no worker was recycled: the soak missed recycling"
    );
    assert!(
        growth <= max_growth_kib as f64,
        "host RSS grew by {growth:.0} KiB after the warm-up (limit {max_growth_kib} KiB): {series:#?}"
    );
    assert!(
        fds_end <= fds_start,
        "the host holds {fds_end} descriptors after the soak, {fds_start} before"
    );
    // A recycled worker's replacement starts before it leaves: one or two extra at times.
    assert!(
        series
            .iter()
            .all(|s| s.workers >= workers && s.workers <= workers + 2),
        "the pool was not at {workers} workers: {series:#?}"
    );
}

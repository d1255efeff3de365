//! Worker lifecycle operations (issue 5): recycling by `max_requests` (+ jitter),
//! `max_worker_rss` and `max_worker_lifetime`, SIGHUP reload and SIGTTIN/SIGTTOU. Every
//! replacement is graceful — the new worker starts before the old one leaves, and no
//! request is refused or cut.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn pid_of(host: &Host) -> u32 {
    let r = get(&host.url("/pid"));
    assert_eq!(r.status, 200, "GET /pid: {}", r.text());
    r.text().trim().parse().expect("pid")
}

#[test]
fn max_requests_recycles_every_fifth_request_without_refusing_any() {
    let host = Host::start(HostOpts::plain().workers(1).config("max_requests = 5\n"));
    let mut pids = Vec::new();
    for _ in 0..50 {
        pids.push(pid_of(&host));
    }
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        10,
        "50 requests at max_requests = 5 → 10 workers; saw {pids:?}"
    );
    for chunk in pids.chunks(5) {
        assert!(
            chunk.iter().all(|p| *p == chunk[0]),
            "each worker serves exactly 5: {pids:?}"
        );
    }
    assert!(
        host.log().contains("max_requests reached"),
        "the log says why"
    );
}

#[test]
fn max_requests_under_concurrent_load_answers_every_request() {
    let host = Host::start(
        HostOpts::plain()
            .workers(2)
            .config("max_requests = 5\nmax_requests_jitter = 3\n"),
    );
    let url = host.url("/pid");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                (0..15)
                    .map(|_| {
                        let r = get(&url);
                        assert_eq!(
                            r.status,
                            200,
                            "no request is refused while recycling: {}",
                            r.text()
                        );
                        r.text().trim().parse::<u32>().expect("pid")
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for t in threads {
        seen.extend(t.join().expect("client thread"));
    }
    // 120 requests over workers living 5..=8 requests each: at least 15 distinct workers.
    assert!(
        seen.len() >= 15,
        "recycling happened under load: {} workers",
        seen.len()
    );
    assert_eq!(
        host.wait_workers(2, T).len(),
        2,
        "the pool is back at full size"
    );
}

#[test]
fn max_worker_rss_recycles_a_worker_that_grew() {
    let host = Host::start(
        HostOpts::plain()
            .workers(1)
            .config("max_worker_rss = \"1MiB\"\n"),
    );
    // Any Python process is far above 1 MiB, so every request recycles its worker.
    let first = pid_of(&host);
    let second = pid_of(&host);
    assert_ne!(
        first, second,
        "a worker over max_worker_rss is replaced after its request"
    );
    host.wait_for_log("max_worker_rss passed", T);
}

#[test]
fn max_worker_lifetime_replaces_an_idle_worker() {
    let host = Host::start(
        HostOpts::plain()
            .workers(1)
            .config("max_worker_lifetime = \"1s\"\n"),
    );
    let first = pid_of(&host);
    host.wait_for_log("max_worker_lifetime reached", T);
    let replaced = wait_until(T, || pid_of(&host) != first);
    assert!(
        replaced,
        "the worker is replaced once it has lived max_worker_lifetime"
    );
}

/// Clients that keep requesting `/pid` until stopped; each answer must be 200.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..clients)
            .map(|_| {
                let (url, stop) = (url.clone(), stop.clone());
                thread::spawn(move || {
                    let (mut ok, mut failures) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let r = get(&url);
                        if r.status == 200 {
                            ok += 1;
                        } else {
                            failures.push(format!("{} {}", r.status, r.text()));
                        }
                    }
                    (ok, failures)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients; returns (successful requests, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = (0, Vec::new());
        for t in self.threads {
            let (ok, failures) = t.join().expect("client thread");
            total.0 += ok;
            total.1.extend(failures);
        }
        total
    }
}

#[test]
fn sighup_reload_changes_the_worker_count_without_failing_a_request() {
    let host = Host::start(HostOpts::plain().config("workers = 2\n"));
    assert_eq!(host.wait_workers(2, T).len(), 2);
    let load = Load::start(host.url("/pid"), 4);
    fs::write(host.dir().join("fcgihost.toml"), "workers = 3\n").expect("write config");
    host.signal(libc::SIGHUP);
    host.wait_for_log("configuration reloaded", T);
    // The two old workers are replaced one by one and a third slot starts.
    host.wait_for_log_count("worker replaced", 2, T);
    assert!(
        wait_until(T, || host.worker_pids().len() == 3),
        "3 workers after the reload; have {:?}",
        host.worker_pids()
    );
    let (ok, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "no request failed during the reload: {failures:?}"
    );
    assert!(ok > 0, "the load ran");
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one_serving() {
    let host = Host::start(HostOpts::plain().config("workers = 2\n"));
    let before = host.wait_workers(2, T);
    fs::write(host.dir().join("fcgihost.toml"), "workers = \"many\"\n").expect("write config");
    host.signal(libc::SIGHUP);
    let log = host.wait_for_log("reload failed", T);
    assert!(log.contains("workers"), "the error names the key:\n{log}");
    assert_eq!(
        get(&host.url("/")).status,
        200,
        "the old configuration keeps serving"
    );
    let mut after = host.worker_pids();
    after.sort_unstable();
    let mut before = before;
    before.sort_unstable();
    assert_eq!(after, before, "the workers were left alone");
}

#[test]
fn sigttin_and_sigttou_add_and_remove_a_worker() {
    let host = Host::start(HostOpts::plain().config("workers = 2\n"));
    assert_eq!(host.wait_workers(2, T).len(), 2);
    host.signal(libc::SIGTTIN);
    assert!(
        wait_until(T, || host.worker_pids().len() == 3),
        "SIGTTIN adds a worker"
    );
    // Standard signals do not queue: wait for each to take effect before the next.
    host.signal(libc::SIGTTOU);
    assert!(
        wait_until(T, || host.worker_pids().len() == 2),
        "SIGTTOU removes a worker"
    );
    host.signal(libc::SIGTTOU);
    assert!(
        wait_until(T, || host.worker_pids().len() == 1),
        "a second SIGTTOU leaves one worker; have {:?}",
        host.worker_pids()
    );
    assert_eq!(
        get(&host.url("/")).status,
        200,
        "the remaining worker serves"
    );
}

#[test]
fn control_endpoint_changes_workers_and_fcgihost_reload_reloads() {
    let config = "workers = 1\nstatus_path = \"/_fcgihost/status\"\n";
    let host = Host::start(HostOpts::plain().config(config));
    assert_eq!(host.wait_workers(1, T).len(), 1);

    let r = request(
        "POST",
        &host.url("/_fcgihost/status/control/workers?count=3"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        wait_until(T, || host.worker_pids().len() == 3),
        "the control endpoint sets the count"
    );
    let r = request(
        "GET",
        &host.url("/_fcgihost/status/control/workers?count=2"),
        &[],
        b"",
    );
    assert_eq!(r.status, 405, "control actions need POST");

    // `fcgihost reload` finds the host through the same config and asks it to reload.
    let out = run_cli(
        HostOpts::new()
            .subcommand("reload")
            .no_listen_flag()
            .no_python_flag()
            .arg("--listen")
            .arg(host.addr().to_string()),
        host.dir(),
        T,
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    host.wait_for_log("configuration reloaded", T);
    assert!(
        wait_until(T, || host.worker_pids().len() == 1),
        "the reloaded config (workers = 1) applies; have {:?}",
        host.worker_pids()
    );
    assert_eq!(get(&host.url("/")).status, 200);
}

#[test]
fn control_endpoint_refuses_web_pages_and_absurd_counts() {
    let host =
        Host::start(HostOpts::plain().config("workers = 1\nstatus_path = \"/_fcgihost/status\"\n"));
    let url = host.url("/_fcgihost/status/control/workers?count=2");
    let r = request("POST", &url, &[("Origin", "http://evil.example")], b"");
    assert_eq!(
        r.status,
        403,
        "a browser-originated POST is refused: {}",
        r.text()
    );
    let r = request(
        "POST",
        &host.url("/_fcgihost/status/control/workers?count=100000"),
        &[],
        b"",
    );
    assert_eq!(r.status, 400, "absurd counts are refused: {}", r.text());
    assert_eq!(host.worker_pids().len(), 1, "nothing changed");
}

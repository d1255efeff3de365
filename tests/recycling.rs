//! Worker recycling (issue 5): `max_requests` (+ jitter), `max_worker_rss` and
//! `max_worker_lifetime` replace workers gracefully — the replacement starts before the old
//! worker leaves, and no request is refused or cut.

mod common;

use std::collections::BTreeSet;
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

//! Pipelining (`pipeline_depth`, issue 6), end to end with the real binary and real Python
//! workers: requests written behind a busy worker's running request get their own answers;
//! a request behind one whose worker is killed or times out runs on the replacement; one
//! whose client leaves before its turn costs nothing; requests with a body, requests in
//! debug mode and requests behind one that has run past `pipeline_window` wait in the queue
//! instead; `max_requests` stays exact; and the host keeps answering after clients vanish in
//! bulk.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const STATUS: &str = "/_fcgihost/status";

/// One worker with the status page and pipelining; `pipeline_window = "1h"` unless `extra`
/// sets it, so a request always goes behind a running one when it can.
fn one_worker(extra: &str) -> Host {
    let window = if extra.contains("pipeline_window") {
        ""
    } else {
        "pipeline_window = \"1h\"\n"
    };
    Host::start(HostOpts::plain().workers(1).config(&format!(
        "status_path = \"{STATUS}\"\npipeline_depth = 2\n{window}{extra}"
    )))
}

fn status(host: &Host) -> Value {
    status_page(host, STATUS)
}

/// Waits until the status page satisfies `pred`; panics with the last page if it never does.
fn wait_status(host: &Host, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_status_page(host, STATUS, what, pred)
}

/// Starts a request on the only worker that holds it until `release` exists (up to 60 s).
fn hold_worker(host: &Host, tag: &str) -> thread::JoinHandle<Resp> {
    let release = host.dir().join("release");
    let url = host.url(&format!(
        "/sleep?s=60&until={}&tag={tag}",
        release.display()
    ));
    let handle = thread::spawn(move || get(&url));
    host.wait_for_log(&format!("sleep-start {tag}"), T);
    handle
}

fn release(host: &Host) {
    std::fs::write(host.dir().join("release"), b"").expect("write the release file");
}

fn spawn_get(url: String) -> thread::JoinHandle<Resp> {
    thread::spawn(move || get(&url))
}

fn pid_of(r: &Resp) -> u32 {
    r.json()["pid"].as_u64().expect("pid in the echo") as u32
}

#[test]
fn requests_written_behind_a_running_one_get_their_own_answers() {
    let host = one_worker("");
    host.wait_workers(1, T);
    let clients = 16;
    let rounds = 25;
    let barrier = Arc::new(Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let base = host.url("/echo");
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let agent = agent();
                barrier.wait();
                (0..rounds)
                    .map(|r| {
                        let query = format!("client={c}&round={r}");
                        let resp =
                            request_with(&agent, "GET", &format!("{base}?{query}"), &[], b"")
                                .expect("transport error");
                        (query, resp)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for h in handles {
        for (query, resp) in h.join().expect("client thread") {
            assert_eq!(resp.status, 200, "{query}: {}", resp.text());
            assert_eq!(resp.json()["query"], query, "someone else's answer");
        }
    }
    let doc = status(&host);
    let pipelined = doc["pipelined_requests"].as_u64().unwrap();
    assert!(
        pipelined > 0,
        "16 clients on one worker: some requests should have gone behind a running one: {doc:#}"
    );
    assert_eq!(doc["workers"][0]["respawns"], 0, "{doc:#}");
}

/// Holds the only worker with a request, writes a second one behind it, lets `lose` end the
/// worker (given its pid), and checks that the running request gets `status` while the one
/// behind, which never ran, runs on the replacement.
fn behind_a_lost_worker(extra: &str, status: u16, lose: impl FnOnce(u32)) {
    let host = one_worker(extra);
    let old = host.wait_workers(1, T)[0];
    let head = hold_worker(&host, "head");
    let behind = spawn_get(host.url("/echo?tag=behind"));
    wait_status(&host, "the second request should go behind", |d| {
        d["workers"][0]["pipelined"] == 1
    });

    lose(old);

    let head = head.join().unwrap();
    assert_eq!(head.status, status, "the running request: {}", head.text());
    let behind = behind.join().unwrap();
    assert_eq!(
        behind.status,
        200,
        "the request behind never ran, so it runs on the replacement: {}",
        behind.text()
    );
    assert_eq!(behind.json()["query"], "tag=behind");
    assert_ne!(pid_of(&behind), old, "served by the replacement worker");
}

#[test]
fn a_request_behind_a_killed_worker_runs_on_the_replacement() {
    behind_a_lost_worker("", 502, |pid| unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    });
}

#[test]
fn a_request_behind_a_timed_out_one_runs_on_the_replacement() {
    // The running request never ends: the 2 s request_timeout kills its worker.
    behind_a_lost_worker("request_timeout = \"2s\"\n", 504, |_| {});
}

#[test]
fn a_request_whose_client_left_before_its_turn_costs_nothing() {
    let host = one_worker("");
    let pid = host.wait_workers(1, T)[0];
    let head = hold_worker(&host, "head");
    let mut gone = TcpStream::connect(host.addr()).unwrap();
    gone.write_all(b"GET /echo?tag=gone HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    wait_status(&host, "the raw request should go behind", |d| {
        d["workers"][0]["pipelined"] == 1
    });
    drop(gone);

    release(&host);
    assert_eq!(head.join().unwrap().status, 200);
    let after = get(&host.url("/echo?tag=after"));
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(pid_of(&after), pid, "no worker was lost over it");
    let doc = wait_status(&host, "the worker should be idle again", |d| {
        d["idle_workers"] == 1
    });
    assert_eq!(doc["workers"][0]["respawns"], 0, "{doc:#}");
}

#[test]
fn a_request_with_a_body_waits_in_the_queue_not_behind() {
    let host = one_worker("");
    host.wait_workers(1, T);
    let head = hold_worker(&host, "head");
    let url = host.url("/echo?tag=post");
    let post_handle = thread::spawn(move || post(&url, "text/plain", b"a body"));
    let doc = wait_status(&host, "the POST should wait in the queue", |d| {
        d["queue_length"] == 1
    });
    assert_eq!(doc["workers"][0]["pipelined"], 0, "{doc:#}");

    release(&host);
    assert_eq!(head.join().unwrap().status, 200);
    let posted = post_handle.join().unwrap();
    assert_eq!(posted.status, 200, "{}", posted.text());
    assert_eq!(posted.json()["body"], "a body");
}

#[test]
fn no_request_goes_behind_one_that_has_run_past_pipeline_window() {
    let host = one_worker("pipeline_window = \"200ms\"\n");
    host.wait_workers(1, T);
    let head = hold_worker(&host, "head");
    // `active_ms` counts from the request's dispatch to the worker; `running_ms` counts
    // from its arrival, which can be earlier (the worker may still have been starting).
    wait_status(&host, "the running request should pass the window", |d| {
        d["workers"][0]["current"]["active_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 400)
    });
    let late = spawn_get(host.url("/echo?tag=late"));
    let doc = wait_status(&host, "the request should wait in the queue", |d| {
        d["queue_length"] == 1
    });
    assert_eq!(doc["workers"][0]["pipelined"], 0, "{doc:#}");
    assert_eq!(doc["pipelined_requests"], 0, "{doc:#}");

    release(&host);
    assert_eq!(head.join().unwrap().status, 200);
    assert_eq!(late.join().unwrap().status, 200);
}

#[test]
fn debug_mode_never_writes_a_request_behind_another() {
    require_python_module("debugpy");
    let host = Host::start(
        HostOpts::plain()
            .workers(1)
            .env("WSGI_PTVSD_SECRET", "pipelining-Secret_0123456789")
            .config(&format!(
                "status_path = \"{STATUS}\"\npipeline_depth = 2\npipeline_window = \"1h\"\n"
            )),
    );
    host.wait_workers(1, T);
    let head = hold_worker(&host, "head");
    let second = spawn_get(host.url("/echo?tag=second"));
    let doc = wait_status(&host, "the request should wait in the queue", |d| {
        d["queue_length"] == 1
    });
    assert_eq!(doc["workers"][0]["pipelined"], 0, "{doc:#}");

    release(&host);
    assert_eq!(head.join().unwrap().status, 200);
    assert_eq!(second.join().unwrap().status, 200);
}

/// A stress test for the races between a client leaving and its request being handed a
/// worker (a grant, or a place behind a running request, on its way to a request whose
/// client just left must not strand the worker). With the hand-back of an abandoned place
/// behind disabled, it failed in 1 of 4 runs here; it passes every run with it.
#[test]
fn the_host_keeps_answering_after_clients_vanish_in_bulk() {
    let host = Host::start(
        HostOpts::plain()
            .workers(2)
            .config(&format!("status_path = \"{STATUS}\"\npipeline_depth = 2\n")),
    );
    let pids: BTreeSet<u32> = host.wait_workers(2, T).into_iter().collect();
    for round in 0..100 {
        // 32 clients each send a request and leave, some before their request is
        // dispatched, some while it waits behind another, some mid-response.
        let clients: Vec<TcpStream> = (0..32)
            .map(|i| {
                let mut s = TcpStream::connect(host.addr()).unwrap();
                let req = format!(
                    "GET /echo?round={round}&i={i}&delay=0.001 HTTP/1.1\r\nHost: test\r\n\r\n"
                );
                s.write_all(req.as_bytes()).unwrap();
                s
            })
            .collect();
        drop(clients);
        let r = get(&host.url(&format!("/echo?after={round}")));
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
    }
    let doc = wait_status(&host, "every worker should be idle again", |d| {
        d["idle_workers"] == 2 && d["queue_length"] == 0
    });
    let now: BTreeSet<u32> = host.wait_workers(2, T).into_iter().collect();
    assert_eq!(now, pids, "no worker was lost: {doc:#}");
}

#[test]
fn max_requests_stays_exact_with_requests_written_behind() {
    let host = one_worker("max_requests = 3\n");
    host.wait_workers(1, T);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let url = host.url("/pid");
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                (0..6).map(|_| get(&url)).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut served: std::collections::BTreeMap<u32, usize> = Default::default();
    for h in handles {
        for r in h.join().expect("client thread") {
            assert_eq!(r.status, 200, "{}", r.text());
            *served
                .entry(r.text().trim().parse().expect("pid"))
                .or_default() += 1;
        }
    }
    assert!(
        served.values().all(|&n| n <= 3),
        "no worker serves more than max_requests, even with requests written behind: {served:?}"
    );
    assert!(
        status(&host)["pipelined_requests"].as_u64().unwrap() > 0,
        "the load should have pipelined requests"
    );
}

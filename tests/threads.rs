//! Concurrency inside a worker (`threads`, issue 16), end to end with the real binary and
//! real Python workers: a Flask app under `--threads 4` keeps each request's `environ`,
//! `wsgi.input` and `write()` apart while four run at once in one process; one thread
//! streams a request body in while another streams a response out; a killed threaded worker
//! fails only its own requests (502, counted); a request that runs out of `request_timeout`
//! gets its 504 at once while its neighbour on the same worker finishes, after which the
//! worker is killed and replaced, and it takes no new request meanwhile.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const STATUS: &str = "/_fcgihost/status";

fn status(host: &Host) -> Value {
    status_page(host, STATUS)
}

/// Waits until the status page satisfies `pred`; panics with the last page if it never does.
fn wait_status(host: &Host, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_status_page(host, STATUS, what, pred)
}

/// The plain app with `workers` × `threads`, the status page, and `args`.
fn plain_threads(workers: usize, threads: usize, args: &[&str]) -> Host {
    let opts = HostOpts::plain()
        .workers(workers)
        .arg("--threads")
        .arg(threads.to_string())
        .config(&format!("status_path = \"{STATUS}\"\n"));
    Host::start(args.iter().fold(opts, |o, a| o.arg(*a)))
}

fn flask(threads: usize) -> Host {
    Host::start(
        HostOpts::new()
            .app("flaskapp.app")
            .app_dir(app_dir("flaskapp"))
            .workers(1)
            .arg("--threads")
            .arg(threads.to_string()),
    )
}

/// A body that differs per request and is long enough to arrive in several reads.
fn body_of(tag: usize, len: usize) -> Vec<u8> {
    format!("request-{tag:02}:")
        .bytes()
        .cycle()
        .take(len)
        .collect()
}

#[test]
fn flask_under_four_threads_keeps_each_requests_environ_and_input_apart() {
    let host = flask(4);
    host.wait_workers(1, T);
    for round in 0..3 {
        // The view waits at a barrier of four: it only answers when four requests run at
        // once in the one worker process.
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let url = host.url(&format!("/threads/echo?parties=4&tag=r{round}-{i}"));
                thread::spawn(move || {
                    let body = String::from_utf8(body_of(i, 100_000)).unwrap();
                    (i, post(&url, "text/plain", body.as_bytes()))
                })
            })
            .collect();
        let mut threads = BTreeSet::new();
        let mut pids = BTreeSet::new();
        for h in handles {
            let (i, r) = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let doc = r.json();
            assert_eq!(doc["tag"], format!("r{round}-{i}"));
            assert_eq!(doc["path"], "/threads/echo");
            assert_eq!(doc["multithread"], true);
            assert_eq!(
                doc["body"].as_str().unwrap().as_bytes(),
                body_of(i, 100_000).as_slice(),
                "request {i} got another request's body"
            );
            threads.insert(doc["thread"].as_u64().unwrap());
            pids.insert(doc["pid"].as_u64().unwrap());
        }
        assert_eq!(pids.len(), 1, "one worker process: {pids:?}");
        assert_eq!(threads.len(), 4, "four threads at once: {threads:?}");
    }
}

#[test]
fn flask_under_four_threads_keeps_each_requests_write_callable_apart() {
    let host = flask(4);
    host.wait_workers(1, T);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = host.url("/threads/write?parties=4");
            thread::spawn(move || {
                (
                    i,
                    post(&url, "application/octet-stream", &body_of(i, 300_000)),
                )
            })
        })
        .collect();
    for h in handles {
        let (i, r) = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.body == body_of(i, 300_000),
            "request {i}: {} bytes back, not its own body",
            r.body.len()
        );
    }
}

#[test]
fn one_thread_streams_a_body_in_while_another_streams_a_response_out() {
    let host = plain_threads(1, 2, &[]);
    host.wait_workers(1, T);
    let total: usize = 4 << 20;
    let piece = vec![b'u'; 64 * 1024];
    let mut upload = RawConn::connect(host.addr());
    upload.send(
        format!("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
    );
    upload.send(&piece);
    wait_status(&host, "the upload runs on the worker", |doc| {
        doc["workers"][0]["running"]
            .as_array()
            .is_some_and(|r| r.iter().any(|c| c["path"] == "/upload"))
    });

    // A streamed response starts on the other thread and stays open (the app waits for a
    // file the test writes only after the upload is done).
    let resume = host.dir().join("resume");
    let mut download = RawConn::connect(host.addr());
    download.send(
        format!(
            "GET /stream?wait_for={} HTTP/1.1\r\nHost: t\r\n\r\n",
            resume.display()
        )
        .as_bytes(),
    );
    let head = download.read_head().expect("stream head");
    assert_eq!(head.status, 200);
    wait_status(&host, "both requests run", |doc| {
        doc["workers"][0]["busy_threads"] == 2
    });

    let mut sent = piece.len();
    let mut crc = Crc32::new();
    crc.update(&piece);
    while sent < total {
        upload.send(&piece);
        crc.update(&piece);
        sent += piece.len();
    }
    let up_head = upload.read_head().expect("upload head");
    let up = upload.read_body(&up_head, false);
    assert_eq!(up_head.status, 200);
    let doc: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(doc["bytes"], total);
    assert_eq!(doc["crc32"], u64::from(crc.finish()));

    std::fs::write(&resume, b"").unwrap();
    let down = download.read_body(&head, false);
    assert!(down.complete, "stream cut short");
    assert_eq!(
        String::from_utf8_lossy(&down.body),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n"
    );
}

#[test]
fn a_killed_threaded_worker_fails_only_its_own_requests() {
    let host = plain_threads(2, 2, &[]);
    host.wait_workers(2, T);
    let release = host.dir().join("release");
    // Least loaded first: four held requests take both threads of both workers.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let url = host.url(&format!(
                "/sleep?s=60&until={}&tag=held{i}",
                release.display()
            ));
            let h = thread::spawn(move || get(&url));
            host.wait_for_log(&format!("sleep-start held{i} "), T);
            h
        })
        .collect();
    let log = host.log();
    let pid_of = |i: usize| -> u32 {
        let at = log.find(&format!("sleep-start held{i} pid=")).unwrap();
        let rest = &log[at + format!("sleep-start held{i} pid=").len()..];
        rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap()]
            .parse()
            .unwrap()
    };
    let pids: Vec<u32> = (0..4).map(pid_of).collect();
    let victim = pids[0];
    let on_victim: Vec<usize> = (0..4).filter(|i| pids[*i] == victim).collect();
    assert_eq!(on_victim.len(), 2, "two requests per worker: {pids:?}");
    let doc = status(&host);
    assert_eq!(doc["busy_threads"], 4, "{doc:#}");

    let before = get(&host.url(&format!("{STATUS}/metrics"))).text();
    let five = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("fcgihost_responses_total{code=\"5xx\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    kill_pid(victim);
    // The victim's requests fail; the others are still running, then finish.
    host.wait_for_log_count("worker lost mid-request", 2, T);
    std::fs::write(&release, b"").unwrap();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.join().unwrap();
        if on_victim.contains(&i) {
            assert_eq!(r.status, 502, "held{i}: {}", r.text());
        } else {
            assert_eq!(
                r.status,
                200,
                "held{i} was on the other worker: {}",
                r.text()
            );
            assert_eq!(r.text(), format!("slept 60 held{i}"));
        }
    }
    let after = get(&host.url(&format!("{STATUS}/metrics"))).text();
    assert_eq!(five(&after) - five(&before), 2, "{after}");
    host.wait_workers(2, T);
}

#[test]
fn a_timed_out_request_gets_504_at_once_while_its_neighbour_finishes() {
    let host = plain_threads(1, 2, &["--request-timeout", "4s"]);
    let old = host.wait_workers(1, T)[0];
    let release = host.dir().join("release");
    let stuck_url = host.url("/sleep?s=60&tag=stuck");
    let stuck = thread::spawn(move || get(&stuck_url));
    host.wait_for_log("sleep-start stuck ", T);
    // The neighbour starts once the stuck request has used most of its 4 s, so it still
    // has time left when the stuck one runs out; the test holds it until then.
    wait_status(&host, "the stuck request has run 2.5 s", |doc| {
        doc["workers"][0]["running"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|c| c["active_ms"].as_u64())
            .is_some_and(|ms| ms >= 2500)
    });
    let neighbour_url = host.url(&format!(
        "/sleep?s=60&until={}&tag=neighbour",
        release.display()
    ));
    let neighbour = thread::spawn(move || get(&neighbour_url));
    host.wait_for_log("sleep-start neighbour ", T);

    let r = stuck.join().unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    // The worker takes no new request: this one waits for the replacement.
    let next_url = host.url("/pid");
    let next = thread::spawn(move || get(&next_url));
    assert!(
        host.worker_pids().contains(&old),
        "the worker was killed with a neighbour still running"
    );
    std::fs::write(&release, b"").unwrap();
    let n = neighbour.join().unwrap();
    assert_eq!(n.status, 200, "neighbour: {}", n.text());
    assert_eq!(n.text(), "slept 60 neighbour");
    let next = next.join().unwrap();
    assert_eq!(next.status, 200, "{}", next.text());
    let new: u32 = next.text().parse().unwrap();
    assert_ne!(new, old, "a request went to the draining worker");
    let log = host.wait_for_log("timed-out worker drained; killing it", T);
    let timed_out = log.find("request timed out").unwrap();
    let killed = log.find("timed-out worker drained").unwrap();
    assert!(timed_out < killed, "{log}");
}

/// SIGKILLs a worker process the test's host started.
fn kill_pid(pid: u32) {
    let status = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let _ = std::io::stdout().flush();
}

#[test]
fn the_pool_grows_when_every_slot_is_busy_and_shrinks_back_when_idle() {
    let host = Host::start(HostOpts::plain().workers(1).config(&format!(
        "status_path = \"{STATUS}\"\nworkers_max = 2\nspawn_after = \"100ms\"\nidle_timeout = \"1s\"\n"
    )));
    let first = host.wait_workers(1, T)[0];
    let doc = status(&host);
    assert_eq!(
        (
            &doc["workers_current"],
            &doc["workers_floor"],
            &doc["workers_max"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(2)),
        "{doc:#}"
    );
    let release = host.dir().join("release");
    let held_url = host.url(&format!("/sleep?s=60&until={}&tag=held", release.display()));
    let held = thread::spawn(move || get(&held_url));
    host.wait_for_log("sleep-start held ", T);

    // Every slot is busy: this request waits spawn_after, then a second worker serves it.
    let r = get(&host.url("/pid"));
    assert_eq!(r.status, 200, "{}", r.text());
    let second: u32 = r.text().parse().unwrap();
    assert_ne!(second, first, "served by the busy worker?");
    let doc = status(&host);
    assert_eq!(doc["workers_current"], 2, "{doc:#}");
    assert_eq!(host.worker_pids().len(), 2);

    std::fs::write(&release, b"").unwrap();
    assert_eq!(held.join().unwrap().status, 200);
    // Idle for idle_timeout, the worker above the floor stops; the floor stays.
    host.wait_for_log("idle for idle_timeout", T);
    assert_eq!(host.wait_workers(1, T), vec![first]);
    let doc = wait_status(&host, "back at the floor", |d| d["workers_current"] == 1);
    assert_eq!(doc["workers_floor"], 1, "{doc:#}");

    // SIGTTIN still moves the floor.
    host.signal(libc::SIGTTIN);
    host.wait_workers(2, T);
    let doc = wait_status(&host, "floor raised", |d| d["workers_floor"] == 2);
    assert_eq!(doc["workers_current"], 2, "{doc:#}");
    assert_eq!(doc["workers_max"], 2, "{doc:#}");
}

#[test]
fn the_slow_log_of_a_threaded_worker_shows_the_stuck_threads_stack_only() {
    let host = plain_threads(1, 2, &["--set", "slow_request_threshold=1s"]);
    host.wait_workers(1, T);
    let release = host.dir().join("release");
    let held = |tag: &str| {
        let url = host.url(&format!(
            "/sleep?s=60&until={}&tag={tag}",
            release.display()
        ));
        thread::spawn(move || get(&url))
    };
    let stuck = held("stuck");
    host.wait_for_log("sleep-start stuck ", T);
    let doc = status(&host);
    let stuck_id = doc["workers"][0]["running"][0]["request_id"]
        .as_u64()
        .unwrap();
    let neighbour = held("neighbour");
    host.wait_for_log("sleep-start neighbour ", T);

    host.wait_for_log("Python stacks of the worker", T);
    std::fs::write(&release, b"").unwrap();
    // The dump is one multi-line log event: it is whole once a later event follows it.
    let mut log = String::new();
    assert!(wait_until(T, || {
        log = host.log();
        let at = log.find("Python stacks of the worker").unwrap_or(0);
        log[at..].contains("\n20")
    }));
    let dump = &log[log.find("Python stacks of the worker").unwrap()..];
    let dump = &dump[..dump.find("\n20").unwrap_or(dump.len())];
    assert_eq!(
        dump.matches("Thread \"").count(),
        1,
        "one thread's stack:\n{dump}"
    );
    assert!(
        dump.contains(&format!("Thread \"fcgihost-request-{stuck_id}\"")),
        "the stuck request's thread (request {stuck_id}):\n{dump}"
    );
    assert!(dump.contains(", in sleep"), "{dump}");
    assert_eq!(stuck.join().unwrap().status, 200);
    assert_eq!(neighbour.join().unwrap().status, 200);
}

//! Operations (issue 5), end to end with the real binary and real Python workers: the status
//! page (JSON, HTML, Prometheus text) against what the test can observe, the Python stacks
//! logged for a slow request and before a timeout kill (never for a worker paused in the
//! debugger), the limits against hostile clients over raw sockets (431, 413, slowloris,
//! idle keep-alive, the connection cap) with the server serving others meanwhile, and the
//! JSON and gunicorn-style access-log formats.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::dap::{basic_auth, marker_line, DapClient};
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const STATUS: &str = "/_fcgihost/status";
const SECRET: &str = "ops-Secret_0123456789xyz";

fn plain_with(workers: usize, toml: &str) -> Host {
    Host::start(HostOpts::plain().workers(workers).config(toml))
}

fn status_json(host: &Host) -> Value {
    let r = get(&host.url(STATUS));
    assert_eq!(r.status, 200, "status page: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// GET on a thread (for requests that take a while).
fn spawn_get(url: String) -> thread::JoinHandle<Resp> {
    thread::spawn(move || get(&url))
}

/// The lines of the log that mention `needle`.
fn log_lines(host: &Host, needle: &str) -> Vec<String> {
    host.log()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// The value of an unlabelled or labelled sample in Prometheus text.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name_and_labels))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Status page

#[test]
fn status_json_shows_the_busy_worker_its_path_and_the_queue() {
    // No pipelining: the second request must wait in the queue, not behind the first.
    let host = plain_with(
        1,
        &format!("status_path = \"{STATUS}\"\npipeline_depth = 0\n"),
    );
    let mut first = Value::Null;
    assert!(
        wait_until(T, || {
            first = status_json(&host);
            first["idle_workers"] == 1
        }),
        "the worker never became idle: {first:#}"
    );
    assert_eq!(first["accepted_requests"], 0, "{first:#}");
    assert_eq!(first["workers"][0]["state"], "idle", "{first:#}");
    assert!(first["start_time"].as_str().unwrap().ends_with('Z'));

    let busy = spawn_get(host.url("/sleep?s=2&tag=busy"));
    host.wait_for_log("sleep-start busy", T);
    let queued = spawn_get(host.url("/sleep?s=0.1&tag=queued"));
    let mut doc = Value::Null;
    assert!(
        wait_until(T, || {
            doc = status_json(&host);
            doc["queue_length"] == 1
        }),
        "the second request should wait in the queue: {doc:#}"
    );
    assert_eq!(doc["busy_workers"], 1, "{doc:#}");
    assert_eq!(doc["idle_workers"], 0, "{doc:#}");
    assert_eq!(doc["accepted_requests"], 2, "{doc:#}");
    assert_eq!(doc["max_queue_length"], 1, "{doc:#}");
    let worker = &doc["workers"][0];
    assert_eq!(worker["state"], "busy", "{doc:#}");
    assert_eq!(worker["current"]["method"], "GET");
    assert_eq!(worker["current"]["path"], "/sleep");
    assert!(worker["current"]["running_ms"].as_u64().unwrap() > 0);
    assert_eq!(worker["current"]["paused_ms"], 0);
    let pid = worker["pid"].as_u64().unwrap() as u32;
    assert_eq!(
        host.worker_pids(),
        vec![pid],
        "the status pid is the live worker"
    );
    assert!(worker["rss_bytes"].as_u64().unwrap() > 1 << 20, "{doc:#}");
    assert_eq!(worker["respawns"], 0);

    // A browser gets the same data as a page.
    let html = request("GET", &host.url(STATUS), &[("Accept", "text/html")], b"");
    assert_eq!(html.status, 200);
    assert!(html
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let page = html.text();
    for part in ["/sleep", "busy", &pid.to_string(), "accepted_requests"] {
        assert!(page.contains(part), "HTML lacks {part:?}: {page}");
    }

    assert_eq!(busy.join().unwrap().status, 200);
    assert_eq!(queued.join().unwrap().status, 200);
    let mut doc = Value::Null;
    assert!(wait_until(T, || {
        doc = status_json(&host);
        doc["workers"][0]["requests"] == 2
    }));
    assert_eq!(doc["queue_length"], 0, "{doc:#}");
    assert_eq!(doc["max_queue_length"], 1, "{doc:#}");
    assert_eq!(doc["idle_workers"], 1, "{doc:#}");
    assert!(doc["workers"][0]["current"].is_null(), "{doc:#}");
}

#[test]
fn status_page_is_for_direct_loopback_clients_only() {
    let host = plain_with(1, &format!("status_path = \"{STATUS}\"\n"));
    // Through a reverse proxy every client looks like loopback; its headers give it away.
    let proxied = request(
        "GET",
        &host.url(STATUS),
        &[("X-Forwarded-For", "203.0.113.7")],
        b"",
    );
    assert_eq!(proxied.status, 403, "{}", proxied.text());
    // Without status_path the path belongs to the app.
    let host = plain_with(1, "");
    let r = get(&host.url(STATUS));
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no route for"), "{}", r.text());
}

#[test]
fn prometheus_metrics_carry_the_counters_and_a_duration_histogram() {
    let host = plain_with(1, &format!("status_path = \"{STATUS}/\"\n"));
    for _ in 0..3 {
        assert_eq!(get(&host.url("/")).status, 200);
    }
    assert_eq!(get(&host.url("/missing")).status, 404);
    let metrics_url = host.url(&format!("{STATUS}/metrics"));
    let mut text = String::new();
    assert!(
        wait_until(T, || {
            text = get(&metrics_url).text();
            sample(&text, "fcgihost_request_duration_seconds_count") == Some(4.0)
        }),
        "{text}"
    );
    let r = get(&metrics_url);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        sample(&text, "fcgihost_requests_accepted_total"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "fcgihost_responses_total{code=\"2xx\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "fcgihost_responses_total{code=\"4xx\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "fcgihost_queue_length"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "fcgihost_workers{state=\"idle\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "fcgihost_worker_requests_total{worker=\"0\"}"),
        Some(4.0),
        "{text}"
    );
    assert!(sample(&text, "fcgihost_worker_rss_bytes{worker=\"0\"}").unwrap() > 0.0);
    assert!(sample(&text, "fcgihost_start_time_seconds").unwrap() > 1.6e9);
    assert!(text.contains("# TYPE fcgihost_request_duration_seconds histogram"));
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("fcgihost_request_duration_seconds_bucket"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(buckets.len() > 5, "{text}");
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {text}"
    );
    assert_eq!(
        sample(
            &text,
            "fcgihost_request_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        Some(4.0)
    );
    assert!(sample(&text, "fcgihost_request_duration_seconds_sum").unwrap() > 0.0);
}

// ---------------------------------------------------------------------------------------------
// Where was it stuck

#[test]
fn a_slow_request_logs_the_workers_python_stack_with_the_view_function() {
    let host = plain_with(
        1,
        &format!("status_path = \"{STATUS}\"\nslow_request_threshold = \"500ms\"\n"),
    );
    let r = get(&host.url("/sleep?s=1.5&tag=slow"));
    assert_eq!(r.status, 200, "a slow request is only logged, not cut");
    let log = host.wait_for_log("Python stacks of the worker", T);
    assert!(
        log.contains("slow request (slow_request_threshold)"),
        "{log}"
    );
    let dump = &log[log.find("Python stacks of the worker").unwrap()..];
    assert!(dump.contains("plainapp.py"), "{dump}");
    assert!(
        dump.contains(", in sleep"),
        "the view's function is in the stack: {dump}"
    );
    assert!(dump.contains("MainThread"), "{dump}");
    let metrics = get(&host.url(&format!("{STATUS}/metrics"))).text();
    assert_eq!(
        sample(&metrics, "fcgihost_slow_requests_total"),
        Some(1.0),
        "{metrics}"
    );

    // A fast request logs nothing.
    assert_eq!(get(&host.url("/")).status, 200);
    assert_eq!(log_lines(&host, "slow request").len(), 1);
}

#[test]
fn a_timeout_kill_logs_the_stack_before_the_worker_is_killed() {
    let host = Host::start(
        HostOpts::plain()
            .workers(1)
            .arg("--request-timeout")
            .arg("1s"),
    );
    let pid = get(&host.url("/pid")).text();
    let r = get(&host.url("/sleep?s=20&tag=stuck"));
    assert_eq!(r.status, 504, "{}", r.text());
    let log = host.wait_for_log("worker exited; respawning", T);
    let timed_out = log.find("request timed out").expect("timeout logged");
    let stacks = log
        .find("Python stacks of the worker")
        .unwrap_or_else(|| panic!("no stack dump before the kill:\n{log}"));
    let exited = log.find("worker exited; respawning").unwrap();
    assert!(
        timed_out < stacks && stacks < exited,
        "order: timeout, stacks, exit:\n{log}"
    );
    assert!(
        log[stacks..exited].contains(", in sleep"),
        "{}",
        &log[stacks..exited]
    );
    // The host goes on with a fresh worker.
    let r = get(&host.url("/pid"));
    assert_eq!(r.status, 200);
    assert_ne!(r.text(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_worker_shows_paused_and_is_never_dumped_or_killed() {
    let host = Host::start(
        HostOpts::debugapp()
            .workers(1)
            .arg("--request-timeout")
            .arg("2s")
            .env("WSGI_PTVSD_SECRET", SECRET)
            .config(&format!(
                "status_path = \"{STATUS}\"\nslow_request_threshold = \"1s\"\n"
            )),
    );
    let status_url = host.url(STATUS);
    let get_status = |headers: Vec<(&'static str, String)>| {
        let url = status_url.clone();
        tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request("GET", &url, &headers, b"")
        })
    };

    let file = app_dir("debugapp").join("debugapp.py");
    let mut dap = DapClient::connect_ws(&format!("ws://{}/ptvsd", host.addr()), Some(SECRET))
        .await
        .unwrap_or_else(|e| panic!("attach: {e}\n{}", host.log()));
    dap.attach(
        "vscode",
        &[(file.as_path(), vec![marker_line(&file, "first")])],
    )
    .await;
    let url = host.url("/debugme");
    let req = tokio::task::spawn_blocking(move || get(&url));
    let (thread, reason) = dap.stopped().await;
    assert_eq!(reason, "breakpoint");

    let mut doc = Value::Null;
    for _ in 0..200 {
        doc = get_status(Vec::new()).await.unwrap().json();
        if doc["paused_workers"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(doc["paused_workers"], 1, "{doc:#}");
    assert_eq!(doc["busy_workers"], 0, "{doc:#}");
    let worker = &doc["workers"][0];
    assert_eq!(worker["state"], "paused", "{doc:#}");
    assert_eq!(worker["current"]["path"], "/debugme", "{doc:#}");
    assert_eq!(worker["debuggers"], 1, "{doc:#}");

    // Held well past both slow_request_threshold (1 s) and request_timeout (2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let doc = get_status(Vec::new()).await.unwrap().json();
    let current = &doc["workers"][0]["current"];
    assert!(current["paused_ms"].as_u64().unwrap() >= 2500, "{doc:#}");
    assert!(current["active_ms"].as_u64().unwrap() < 1000, "{doc:#}");
    let log = host.log();
    assert!(!log.contains("slow request"), "{log}");
    assert!(!log.contains("Python stacks of the worker"), "{log}");
    assert!(!log.contains("request timed out"), "{log}");

    // A proxied client needs the debug secret.
    let forwarded = ("X-Forwarded-For", "198.51.100.4".to_string());
    let refused = get_status(vec![forwarded.clone()]).await.unwrap();
    assert_eq!(refused.status, 401, "{}", refused.text());
    let allowed = get_status(vec![forwarded, ("Authorization", basic_auth(SECRET))])
        .await
        .unwrap();
    assert_eq!(allowed.status, 200, "{}", allowed.text());

    dap.resume_held(thread, req).await;
    dap.disconnect().await;
}

// ---------------------------------------------------------------------------------------------
// Limits and hostile clients

fn limits_host(toml: &str) -> Host {
    plain_with(1, toml)
}

/// A well-behaved request on a fresh connection still works.
fn assert_serving(host: &Host) {
    let r = get(&host.url("/"));
    assert_eq!(
        r.status,
        200,
        "the server stopped serving others: {}",
        r.text()
    );
    assert_eq!(r.text(), "Hello, world!");
}

#[test]
fn oversized_request_heads_get_431_and_the_server_keeps_serving() {
    let host = limits_host("max_header_size = \"16KiB\"\nmax_headers = 20\n");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let r = raw_request(host.addr(), big.as_bytes(), false);
    assert_eq!(r.status, 431, "{r:?}");
    assert_serving(&host);

    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = raw_request(host.addr(), many.as_bytes(), false);
    assert_eq!(r.status, 431, "{r:?}");
    assert_serving(&host);

    // Within the limits is fine.
    let mut fine = String::from("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..15 {
        fine.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(500)));
    }
    fine.push_str("\r\n");
    assert_eq!(raw_request(host.addr(), fine.as_bytes(), false).status, 200);
}

#[test]
fn bodies_over_max_body_size_get_413_announced_or_chunked() {
    let host = limits_host("max_body_size = \"1KiB\"\n");
    // Announced by Content-Length: refused before any of it is read.
    let mut c = RawConn::connect(host.addr());
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.is_closed_by_peer(Duration::from_secs(5)));
    assert_serving(&host);

    // Chunked: cut off once it passes the limit.
    let mut c = RawConn::connect(host.addr());
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send(format!("{:x}\r\n{}\r\n", 600, "a".repeat(600)).as_bytes());
    c.send(format!("{:x}\r\n{}\r\n", 600, "b".repeat(600)).as_bytes());
    let r = c.read_response(false);
    assert_eq!(r.status, 413, "{r:?}");
    assert_serving(&host);
    assert!(
        wait_until(T, || host.log().contains("passed max_body_size")),
        "{}",
        host.log()
    );

    // At the limit is fine, chunked or not.
    let body = vec![b'z'; 1024];
    let r = post(&host.url("/upload"), "application/octet-stream", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["bytes"], 1024);
    let mut c = RawConn::connect(host.addr());
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.send(
        format!(
            "200\r\n{}\r\n200\r\n{}\r\n0\r\n\r\n",
            "a".repeat(512),
            "b".repeat(512)
        )
        .as_bytes(),
    );
    let r = c.read_response(false);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["bytes"], 1024);
}

/// Sends a request head one header line at a time, `every` apart, until the server closes
/// the connection; returns how long that took (None if it never did within `limit`).
fn slowloris(addr: std::net::SocketAddr, every: Duration, limit: Duration) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut i = 0;
    while start.elapsed() < limit {
        thread::sleep(every);
        if s.write_all(format!("X-Slow-{i}: v\r\n").as_bytes())
            .is_err()
        {
            return Some(start.elapsed());
        }
        i += 1;
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => panic!("a slowloris head got a response"),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn slowloris_is_closed_after_header_read_timeout_while_others_are_served() {
    let host = limits_host("header_read_timeout = \"1s\"\nkeep_alive_timeout = \"3s\"\n");
    let addr = host.addr();
    let attacker =
        thread::spawn(move || slowloris(addr, Duration::from_millis(150), Duration::from_secs(10)));
    thread::sleep(Duration::from_millis(300));
    assert_serving(&host);
    let closed = attacker
        .join()
        .unwrap()
        .expect("the slow client was never cut off");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(4),
        "closed after {closed:?}; header_read_timeout is 1s"
    );
    assert_serving(&host);

    // A client that opens a connection and sends nothing is closed too.
    let mut c = RawConn::connect(host.addr());
    let start = Instant::now();
    assert!(c.is_closed_by_peer(Duration::from_secs(5)));
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn idle_keep_alive_connections_close_after_keep_alive_timeout_not_before() {
    let host = limits_host("header_read_timeout = \"1s\"\nkeep_alive_timeout = \"3s\"\n");
    let mut c = RawConn::connect(host.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    // Idle longer than header_read_timeout but within keep_alive_timeout: still usable.
    thread::sleep(Duration::from_millis(1800));
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    let idle = Instant::now();
    assert!(c.is_closed_by_peer(Duration::from_secs(10)));
    let after = idle.elapsed();
    assert!(
        after >= Duration::from_millis(2800) && after < Duration::from_secs(6),
        "closed after {after:?} idle; keep_alive_timeout is 3s"
    );
    assert_serving(&host);
}

#[test]
fn connections_over_max_connections_wait_until_one_closes() {
    let host = limits_host("max_connections = 2\n");
    let hog1 = RawConn::connect(host.addr());
    let mut hog2 = RawConn::connect(host.addr());
    hog2.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        hog2.read_response(false).status,
        200,
        "the second connection is served"
    );

    let mut third = RawConn::connect(host.addr());
    third.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    third.set_read_timeout(Duration::from_secs(1));
    assert!(
        third.read_head().is_err(),
        "a third connection must wait while two are open"
    );
    drop(hog1);
    third.set_read_timeout(T);
    let head = third.read_head().expect("served once a connection closed");
    assert_eq!(head.status, 200);
    assert!(
        host.log().contains("connection cap reached"),
        "{}",
        host.log()
    );
    drop(hog2);
    drop(third);
    assert_serving(&host);
}

// ---------------------------------------------------------------------------------------------
// Access log formats

#[test]
fn json_access_log_lines_parse() {
    let host = plain_with(1, "[log]\naccess_format = \"json\"\n");
    let r = request(
        "GET",
        &host.url("/echo/json-probe?x=1"),
        &[
            ("User-Agent", "ops-test/1"),
            ("Referer", "http://r.example/"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(&host.url("/missing-json")).status, 404);
    host.wait_for_log("/missing-json", T);
    let lines: Vec<Value> = host
        .log()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let probe = lines
        .iter()
        .find(|v| v["path"] == "/echo/json-probe")
        .unwrap_or_else(|| panic!("no JSON line for the probe in\n{}", host.log()));
    assert_eq!(probe["method"], "GET");
    assert_eq!(probe["query"], "x=1");
    assert_eq!(probe["status"], 200);
    assert_eq!(probe["protocol"], "HTTP/1.1");
    assert_eq!(probe["remote"], "127.0.0.1");
    assert_eq!(probe["user_agent"], "ops-test/1");
    assert_eq!(probe["referer"], "http://r.example/");
    assert_eq!(probe["worker"], 0);
    assert!(probe["bytes"].as_u64().unwrap() > 0);
    assert!(probe["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(probe["time"].as_str().unwrap().ends_with('Z'));
    let missing = lines.iter().find(|v| v["path"] == "/missing-json").unwrap();
    assert_eq!(missing["status"], 404);
}

#[test]
fn gunicorn_style_access_format() {
    let host = plain_with(
        1,
        "[log]\naccess_format = '%(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\" %(D)s %(p)s %({x-trace}i)s'\n",
    );
    let pid = get(&host.url("/pid")).text();
    let r = request(
        "GET",
        &host.url("/echo/atoms?q=1"),
        &[("User-Agent", "atoms/2"), ("X-Trace", "t-77")],
        b"",
    );
    assert_eq!(r.status, 200);
    host.wait_for_log("/echo/atoms", T);
    let line = log_lines(&host, "/echo/atoms").pop().unwrap();
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("] \"GET /echo/atoms?q=1 HTTP/1.1\" 200 "),
        "{line}"
    );
    assert!(line.contains(" \"-\" \"atoms/2\" "), "{line}");
    assert!(line.ends_with(&format!(" <{pid}> t-77")), "{line}");
}

#[test]
fn an_abandoned_download_is_logged_as_aborted_and_counted() {
    let host = plain_with(1, &format!("status_path = \"{STATUS}\"\n"));
    assert_eq!(get(&host.url("/")).status, 200);

    // A client that reads the head and the first bytes of a 200 MB download, then leaves.
    let mut conn = RawConn::connect(host.addr());
    conn.send(b"GET /download?size=200000000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let head = conn.read_head().unwrap();
    assert_eq!(head.status, 200);
    conn.peek_until(&[0u8, 1, 2, 3]).unwrap();
    drop(conn);

    host.wait_for_log("path=\"/download\"", T);
    let line = log_lines(&host, "path=\"/download\"").pop().unwrap();
    assert!(line.contains(" status=200 "), "{line}");
    assert!(line.contains(" aborted=true "), "{line}");
    let bytes: u64 = field(&line, "bytes").parse().unwrap();
    assert!(bytes < 200_000_000, "{line}");

    // A complete response: no `aborted`, and the duration in ms with exactly 3 decimals.
    let line = log_lines(&host, "path=\"/\"").pop().unwrap();
    assert!(!line.contains("aborted"), "{line}");
    let duration = field(&line, "duration_ms");
    let (whole, decimals) = duration.split_once('.').expect("a decimal point");
    assert!(
        whole.chars().all(|c| c.is_ascii_digit()) && decimals.len() == 3,
        "{line}"
    );

    let metrics = get(&host.url(&format!("{STATUS}/metrics"))).text();
    assert_eq!(
        sample(&metrics, "fcgihost_requests_aborted_total"),
        Some(1.0),
        "{metrics}"
    );
}

/// The value of `name=value` in a text access line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 2;
    line[start..].split_whitespace().next().unwrap_or("")
}

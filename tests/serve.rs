//! `fcgihost serve` end to end (issue 2): the real binary, real Python workers, the stdlib
//! test app in tests/apps/plain, real HTTP clients. Covers the built-in welcome app, the
//! WSGI surface (echo, bodies both ways, streaming, write(), errors, crashes), the same
//! requests through wsgiref.validate, pool behaviour (concurrency, queue overflow, import
//! errors, memory bounds) and signals (SIGTERM/SIGINT drain, SIGKILL leaves no worker).
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;

const T: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

fn host_plain(workers: usize) -> Host {
    Host::start(HostOpts::plain().workers(workers))
}

fn pid_of(host: &Host) -> u32 {
    let r = get(&host.url("/pid"));
    assert_eq!(r.status, 200, "GET /pid: {}", r.text());
    r.text()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("/pid answered {:?}", r.text()))
}

// ---------------------------------------------------------------------------------------------
// The built-in app and the basics

#[test]
fn welcome_app_is_served_when_no_app_is_configured() {
    let host = Host::start(HostOpts::new().workers(1));
    let r = get(&host.url("/"));
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert!(
        r.text().contains("fcgihost"),
        "welcome page does not mention fcgihost: {}",
        r.text()
    );
    let t = r.text();
    assert!(
        t.contains("--app") || t.contains("app =") || t.contains("FCGIHOST_APP"),
        "welcome page should say how to point fcgihost at an app: {t}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/")),
        "{:?}",
        r.headers
    );
}

#[test]
fn hello_world_and_unknown_paths() {
    let host = host_plain(1);
    let r = get(&host.url("/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello, world!");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.header("content-length"), Some("13"));

    let r = get(&host.url("/no/such/page"));
    assert_eq!(r.status, 404, "the app's own 404 must pass through");
    assert_eq!(r.text(), "no route for /no/such/page");
}

#[test]
fn echo_shows_method_path_query_headers_as_cgi_meta_variables() {
    let host = host_plain(1);
    let path = "/echo/caf%C3%A9/a%20b?x=1&y=%20z&x=2";
    let r = request(
        "GET",
        &host.url(path),
        &[
            ("X-Custom-Header", "hello"),
            ("X-Multi", "a"),
            ("X-Multi", "b"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["method"], "GET");
    // PATH_INFO is percent-decoded; PEP 3333 carries the raw bytes as latin-1 code points.
    assert_eq!(
        j["path"], "/echo/caf\u{c3}\u{a9}/a b",
        "PATH_INFO (percent-decoded, bytes as latin-1)"
    );
    assert_eq!(j["script_name"], "");
    assert_eq!(
        j["query"], "x=1&y=%20z&x=2",
        "QUERY_STRING must be passed raw"
    );
    assert_eq!(j["headers"]["HTTP_X_CUSTOM_HEADER"], "hello");
    assert_eq!(
        j["headers"]["HTTP_X_MULTI"], "a, b",
        "repeated headers are joined with \", \""
    );
    assert_eq!(j["headers"]["HTTP_HOST"], host.addr().to_string());
    assert!(
        j["headers"].get("HTTP_CONTENT_LENGTH").is_none()
            && j["headers"].get("HTTP_CONTENT_TYPE").is_none()
    );
    assert_eq!(j["remote_addr"], "127.0.0.1");
    assert_eq!(j["url_scheme"], "http");
    let cgi = &j["cgi"];
    assert_eq!(cgi["REQUEST_METHOD"], "GET");
    assert_eq!(cgi["SERVER_PROTOCOL"], "HTTP/1.1");
    assert_eq!(cgi["SERVER_PORT"], host.addr().port().to_string());
    assert_eq!(
        cgi["SERVER_NAME"].as_str().map(|s| !s.is_empty()),
        Some(true),
        "SERVER_NAME: {cgi}"
    );
    assert_eq!(cgi["REQUEST_URI"], path);
    assert!(
        cgi["REMOTE_PORT"]
            .as_str()
            .and_then(|p| p.parse::<u16>().ok())
            .is_some(),
        "REMOTE_PORT: {cgi}"
    );
    assert_eq!(j["wsgi"]["version"], serde_json::json!([1, 0]));
    assert_eq!(j["wsgi"]["run_once"], false);
    assert_eq!(j["wsgi"]["multiprocess"], true);
}

#[test]
fn echo_returns_request_bodies_for_every_method() {
    let host = host_plain(1);
    let form = "name=Ann&city=Z%C3%BCrich";
    let r = post(
        &host.url("/echo/form"),
        "application/x-www-form-urlencoded",
        form.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["method"], "POST");
    assert_eq!(j["body"], form);
    assert_eq!(j["content_type"], "application/x-www-form-urlencoded");
    assert_eq!(j["content_length"], form.len().to_string());

    for method in ["PUT", "PATCH", "DELETE", "OPTIONS"] {
        let body = format!("{{\"method\": \"{method}\"}}");
        let r = request(
            method,
            &host.url("/echo"),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        let j = r.json();
        assert_eq!(j["method"], method);
        assert_eq!(j["body"], body.as_str(), "{method}");
    }

    // Binary bodies arrive byte for byte.
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let r = post(&host.url("/echo"), "application/octet-stream", &binary);
    let got = base64::engine::general_purpose::STANDARD
        .decode(r.json()["body_b64"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, binary);
}

#[test]
fn chunked_request_bodies_are_streamed_to_the_app() {
    let host = host_plain(1);
    let pattern = pattern_buf();
    // 1 MiB + a bit, sent as chunks of varied sizes.
    let total = MIB + 12_345;
    let mut conn = RawConn::connect(host.addr());
    conn.send(
        format!(
            "POST /upload?pattern=1 HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n",
            host.addr()
        )
        .as_bytes(),
    );
    let sizes = [1usize, 7, 4096, 65_536, 100_000, 3];
    let (mut sent, mut i) = (0usize, 0usize);
    while sent < total {
        let n = sizes[i % sizes.len()].min(total - sent).min(64 * 1024);
        let start = sent % PATTERN_PERIOD;
        conn.send(format!("{n:x}\r\n").as_bytes());
        conn.send(&pattern[start..start + n]);
        conn.send(b"\r\n");
        sent += n;
        i += 1;
    }
    conn.send(b"0\r\n\r\n");
    let r = conn.read_response(false);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["bytes"], total);
    assert_eq!(j["pattern_mismatch_at"], serde_json::Value::Null);

    // And a small chunked body reaches /echo intact on the same connection.
    conn.send(
        format!("POST /echo HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n", host.addr())
            .as_bytes(),
    );
    let r = conn.read_response(false);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], "hello, world");
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let host = host_plain(1);
    let body = vec![b'x'; 200_000];
    let mut conn = RawConn::connect(host.addr());
    conn.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            host.addr(),
            body.len()
        )
        .as_bytes(),
    );
    conn.set_read_timeout(Duration::from_secs(20));
    let interim = conn
        .read_head()
        .expect("an interim response to Expect: 100-continue");
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue before sending the body"
    );
    conn.send(&body);
    let r = conn.read_response(false);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["bytes"], body.len());
    assert_eq!(j["crc32"], Crc32::of(&body));
}

#[test]
fn head_requests_get_headers_only_and_keep_the_connection() {
    let host = host_plain(1);
    let mut conn = RawConn::connect(host.addr());
    let h = host.addr();
    conn.send(format!("HEAD / HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes());
    let r = conn.read_response(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    if let Some(len) = r.header("content-length") {
        assert_eq!(
            len, "13",
            "HEAD must report the GET length if it reports one"
        );
    }
    // If the HEAD response had carried a body, this response would be garbled.
    conn.send(format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes());
    let r = conn.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello, world!");
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let host = host_plain(2);
    let mut conn = RawConn::connect(host.addr());
    for i in 0..20 {
        let body = format!("request number {i}");
        conn.send(
            format!(
                "POST /echo?i={i} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                host.addr(),
                body.len()
            )
            .as_bytes(),
        );
        let r = conn.read_response(false);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let j = r.json();
        assert_eq!(j["query"], format!("i={i}"));
        assert_eq!(j["body"], body);
    }
}

#[test]
fn streamed_responses_reach_the_client_before_the_app_finishes() {
    let host = host_plain(1);
    let gate = host.dir().join("release-stream");
    let mut conn = RawConn::connect(host.addr());
    conn.set_read_timeout(Duration::from_secs(20));
    conn.send(
        format!(
            "GET /stream?wait_for={} HTTP/1.1\r\nHost: {}\r\n\r\n",
            gate.display(),
            host.addr()
        )
        .as_bytes(),
    );
    // The app holds chunk 1 back until the gate file exists: chunk 0 must arrive first.
    let early = conn
        .peek_until(b"chunk 0\n")
        .expect("the first chunk should arrive while the app still runs");
    assert!(!String::from_utf8_lossy(&early).contains("chunk 1"));
    fs::write(&gate, b"go").unwrap();
    let r = conn.read_response(false);
    assert_eq!(r.status, 200);
    assert!(
        r.chunked,
        "a response without Content-Length is sent chunked: {:?}",
        r.headers
    );
    assert!(r.complete);
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
}

#[test]
fn write_callable_output_comes_before_the_returned_iterable() {
    let host = host_plain(1);
    let r = get(&host.url("/write"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "part1 part2 part3");
}

#[test]
fn readline_and_iteration_over_wsgi_input() {
    let host = host_plain(1);
    let long = "L".repeat(200_000);
    let body = format!("first\nsecond line\n\n{long}\nno newline at end");
    for mode in ["readline", "iter"] {
        let r = post(
            &host.url(&format!("/readline?mode={mode}")),
            "text/plain",
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{mode}: {}", r.text());
        let j = r.json();
        assert_eq!(j["count"], 5, "{mode}");
        assert_eq!(
            j["lengths"],
            serde_json::json!([6, 12, 1, 200_001, 17]),
            "{mode}"
        );
        assert_eq!(j["lines"][4], "no newline at end");
    }
    let r = post(
        &host.url("/readline?mode=sized"),
        "text/plain",
        b"abc\n0123456789abc\n",
    );
    assert_eq!(
        r.json()["lines"],
        serde_json::json!(["abc\n", "0123456", "789abc\n"])
    );
}

#[test]
fn set_cookie_headers_are_kept_apart_and_redirects_pass_through() {
    let host = host_plain(1);
    let r = get(&host.url("/cookies"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header_all("set-cookie"),
        vec!["first=1; Path=/", "second=2; Path=/; HttpOnly"]
    );

    let r = get(&host.url("/redirect"));
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/echo?from=redirect"));
}

#[test]
fn file_wrapper_and_close_are_honoured() {
    let host = host_plain(1);
    let r = get(&host.url("/filewrapper"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        fs::read(app_dir("plain").join("plainapp.py")).unwrap()
    );

    let r = get(&host.url("/closing?tag=close-probe-41"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "closing body");
    host.wait_for_log("close-called close-probe-41", T);
}

#[test]
fn worker_output_and_access_lines_go_to_the_host_log() {
    let host = host_plain(1);
    let r = get(&host.url("/log?msg=xyzzy-1234"));
    assert_eq!(r.status, 200);
    host.wait_for_log("wsgi.errors says xyzzy-1234", T);
    host.wait_for_log("stdout says xyzzy-1234", T);

    let r = get(&host.url("/echo/access-log-probe"));
    assert_eq!(r.status, 200);
    let log = host.wait_for_log("/echo/access-log-probe", T);
    let line = log
        .lines()
        .find(|l| l.contains("/echo/access-log-probe"))
        .unwrap();
    for part in ["GET", "200", "127.0.0.1"] {
        assert!(
            line.contains(part),
            "access log line lacks {part:?}: {line}"
        );
    }
}

#[test]
fn every_app_spec_form_loads_the_app() {
    for spec in [
        "plainapp.app",
        "plainapp:app",
        "plainapp.create_app()",
        "plainapp:create_app()",
    ] {
        let host = Host::start(
            HostOpts::new()
                .app(spec)
                .app_dir(app_dir("plain"))
                .workers(1),
        );
        let r = get(&host.url("/"));
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "Hello, world!"),
            "app spec {spec}"
        );
    }
}

#[test]
fn default_worker_count_is_the_number_of_cpus() {
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let host = Host::start(HostOpts::plain());
    host.wait_workers(cpus, T);
}

#[test]
fn worker_sockets_live_in_a_private_directory() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let host = host_plain(2);
    assert_eq!(get(&host.url("/")).status, 200);
    // TMPDIR of the host is <test dir>/tmp: its runtime dir is the one holding the worker file.
    let tmp = host.dir().join("tmp");
    let mut runtime = None;
    assert!(
        wait_until(T, || {
            runtime = walk(&tmp)
                .into_iter()
                .find(|p| p.file_name().is_some_and(|n| n == "fcgihost_worker.py"));
            runtime.is_some()
        }),
        "no fcgihost_worker.py under the host's TMPDIR {}: {:?}",
        tmp.display(),
        walk(&tmp)
    );
    let runtime = runtime.unwrap().parent().unwrap().to_path_buf();
    let mode = fs::metadata(&runtime).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode,
        0o700,
        "runtime dir {} has mode {mode:o}",
        runtime.display()
    );
    let sockets: Vec<_> = walk(&runtime)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .collect();
    assert!(
        sockets.len() >= 2,
        "each of the 2 workers has its own socket in {}: {sockets:?}",
        runtime.display()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn http_platform_port_sets_the_listen_port() {
    for var in ["HTTP_PLATFORM_PORT", "ASPNETCORE_PORT"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = Host::start(
            HostOpts::plain()
                .workers(1)
                .no_listen_flag()
                .env(var, port.to_string()),
        );
        assert_eq!(
            host.addr(),
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            "{var}"
        );
        assert_eq!(get(&host.url("/")).text(), "Hello, world!");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and crashes

#[test]
fn exception_before_start_response_is_a_500_and_logged() {
    let host = host_plain(1);
    let r = get(&host.url("/error-before"));
    assert_eq!(r.status, 500, "{}", r.text());
    host.wait_for_log("boom-before", T);
    assert_eq!(
        get(&host.url("/")).text(),
        "Hello, world!",
        "the worker keeps serving"
    );
}

#[test]
fn exception_after_the_first_chunk_aborts_the_response() {
    let host = host_plain(1);
    let mut conn = RawConn::connect(host.addr());
    conn.send(format!("GET /error-after HTTP/1.1\r\nHost: {}\r\n\r\n", host.addr()).as_bytes());
    let r = conn.read_response(false);
    assert_eq!(r.status, 200, "headers were already sent");
    assert!(r.text().starts_with("first chunk\n"), "{:?}", r.text());
    assert!(
        !r.complete,
        "a response cut by an exception must not look complete to the client: {:?}",
        r.text()
    );
    host.wait_for_log("boom-after", T);
    assert_eq!(
        get(&host.url("/")).text(),
        "Hello, world!",
        "the host keeps serving"
    );
}

#[test]
fn worker_exit_mid_request_costs_only_that_request_a_502() {
    let host = host_plain(2);
    let (tx, rx) = mpsc::channel();
    let url = host.url("/sleep?s=3&tag=survivor");
    thread::spawn(move || tx.send(get(&url)).unwrap());
    host.wait_for_log("sleep-start survivor", T);

    let before: BTreeSet<u32> = host.wait_workers(2, T).into_iter().collect();
    let r = post(&host.url("/exit"), "text/plain", b"some body");
    assert_eq!(r.status, 502, "{}", r.text());

    let survivor = rx
        .recv_timeout(T)
        .expect("the other in-flight request should finish");
    assert_eq!(survivor.status, 200, "{}", survivor.text());
    assert_eq!(survivor.text(), "slept 3 survivor");

    // The dead worker is gone and its replacement serves.
    let mut dead: Vec<u32> = Vec::new();
    let one_gone = wait_until(T, || {
        dead = before.iter().copied().filter(|p| !pid_alive(*p)).collect();
        !dead.is_empty()
    });
    assert!(
        one_gone && dead.len() == 1,
        "exactly the crashed worker should be gone: before {before:?}, dead {dead:?}"
    );
    let after = host.wait_workers(2, T);
    assert!(!after.contains(&dead[0]));
    for _ in 0..6 {
        let p = pid_of(&host);
        assert_ne!(p, dead[0], "a request was served by the dead worker's pid");
    }
}

#[test]
fn worker_exit_then_next_request_is_served_by_a_fresh_worker() {
    let host = host_plain(1);
    let first = pid_of(&host);
    let r = get(&host.url("/exit"));
    assert_eq!(r.status, 502, "{}", r.text());
    let second = pid_of(&host);
    assert_ne!(
        first, second,
        "the next request must come from a fresh worker"
    );
    assert!(
        wait_until(T, || !pid_alive(first)),
        "the crashed worker {first} is still alive"
    );
}

#[test]
fn import_error_gives_503_with_the_traceback_for_loopback_clients() {
    let host = Host::start(
        HostOpts::new()
            .app("brokenapp.app")
            .app_dir(app_dir("broken"))
            .workers(1),
    );
    let r = get(&host.url("/"));
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.text();
    assert!(
        body.contains("does_not_exist_xyz"),
        "503 page should carry the traceback: {body}"
    );
    assert!(
        body.contains("ModuleNotFoundError") || body.contains("ImportError"),
        "{body}"
    );
    assert!(body.contains("Traceback"), "{body}");
    host.wait_for_log("does_not_exist_xyz", T);
}

#[test]
fn an_app_failing_too_often_stops_respawning_and_says_so() {
    let host = Host::start(
        HostOpts::new()
            .app("brokenapp.app")
            .app_dir(app_dir("broken"))
            .workers(1)
            .config("rapid_fails_per_minute = 3\n"),
    );
    host.wait_for_log("rapid_fails_per_minute", T);
    let r = get(&host.url("/"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("does_not_exist_xyz"), "{}", r.text());
    assert!(
        r.text().contains("rapid_fails_per_minute"),
        "the 503 page should say respawning stopped: {}",
        r.text()
    );
    assert!(
        host.worker_pids().is_empty(),
        "no worker should be running: {:?}",
        host.worker_pids()
    );
}

#[test]
fn fixing_the_app_brings_the_site_back_after_respawning_stopped() {
    // A private copy of the broken app, so the test can fix it.
    let dir = tempfile::Builder::new()
        .prefix("fcgihost-test-")
        .tempdir()
        .unwrap();
    let app = dir.path().join("app");
    fs::create_dir_all(&app).unwrap();
    fs::copy(
        app_dir("broken").join("brokenapp.py"),
        app.join("brokenapp.py"),
    )
    .unwrap();
    let host = Host::start_in(
        HostOpts::new()
            .app("brokenapp.app")
            .app_dir(&app)
            .workers(1)
            .config("rapid_fails_per_minute = 2\n"),
        dir,
    );
    host.wait_for_log("rapid_fails_per_minute", T);
    assert_eq!(get(&host.url("/")).status, 503);

    fs::write(
        app.join("brokenapp.py"),
        "def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'fixed']\n",
    )
    .unwrap();
    let mut last = None;
    let back = wait_until_every(T, Duration::from_millis(200), || {
        let r = get(&host.url("/"));
        let ok = r.status == 200 && r.text() == "fixed";
        last = Some(r);
        ok
    });
    assert!(
        back,
        "after the app file was fixed the site should come back; last answer: {last:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The same requests through wsgiref.validate

#[test]
fn validated_app_serves_every_route_without_wsgi_warnings() {
    let host = Host::start(
        HostOpts::new()
            .app("validated.app")
            .app_dir(app_dir("plain"))
            .workers(1),
    );
    let h = host.addr();

    assert_eq!(get(&host.url("/")).text(), "Hello, world!");
    let r = request("GET", &host.url("/echo/v?x=1"), &[("X-A", "1")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&host.url("/echo"), "text/plain", b"validated body");
    assert_eq!(r.json()["body"], "validated body");
    let r = raw_request(
        h,
        format!("POST /echo HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n").as_bytes(),
        false,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body"], "abc");
    let r = post(
        &host.url("/upload"),
        "application/octet-stream",
        &vec![7u8; 300_000],
    );
    assert_eq!(r.json()["bytes"], 300_000);
    let r = get(&host.url("/download?size=300000"));
    assert_eq!(r.body.len(), 300_000);
    let gate = host.dir().join("open");
    fs::write(&gate, b"").unwrap();
    assert_eq!(
        get(&host.url(&format!("/stream?wait_for={}", gate.display())))
            .text()
            .lines()
            .count(),
        5
    );
    assert_eq!(get(&host.url("/write")).text(), "part1 part2 part3");
    for mode in ["readline", "iter", "sized"] {
        let r = post(
            &host.url(&format!("/readline?mode={mode}")),
            "text/plain",
            b"a\nbb\nccc",
        );
        assert_eq!(r.status, 200, "{mode}: {}", r.text());
    }
    assert_eq!(get(&host.url("/cookies")).header_all("set-cookie").len(), 2);
    assert_eq!(get(&host.url("/redirect")).status, 302);
    assert_eq!(get(&host.url("/filewrapper")).status, 200);
    assert_eq!(get(&host.url("/closing?tag=validated")).status, 200);
    assert_eq!(
        raw_request(
            h,
            format!("HEAD / HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes(),
            true
        )
        .status,
        200
    );
    assert_eq!(get(&host.url("/error-before")).status, 500);
    // What the client sees of /error-after is exception_after_the_first_chunk_aborts_the_response's
    // business; here the app only has to have run.
    let mut conn = RawConn::connect(h);
    conn.send(format!("GET /error-after HTTP/1.1\r\nHost: {h}\r\n\r\n").as_bytes());
    if let Ok(head) = conn.read_head() {
        assert!(
            !conn.read_body(&head, false).complete,
            "a response cut by an exception looked complete"
        );
    }
    drop(conn);
    assert_eq!(get(&host.url("/no-such-route")).status, 404);

    // Everything the worker wrote is in the log once this marker (same worker) is.
    assert_eq!(get(&host.url("/log?msg=validated-end-marker")).status, 200);
    let log = host.wait_for_log("validated-end-marker", T);
    host.wait_for_log("close-called validated", T);
    for bad in [
        "WSGI-WARNING",
        "AssertionError",
        "garbage collected without being closed",
    ] {
        assert!(
            !log.contains(bad),
            "wsgiref.validate complained ({bad}):\n{log}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The pool

#[test]
fn two_hundred_concurrent_requests_over_four_workers_all_answered_correctly() {
    let host = Host::start(
        HostOpts::plain()
            .workers(4)
            .config("max_queue = 1000\nqueue_timeout = \"60s\"\n"),
    );
    let workers: BTreeSet<u32> = host.wait_workers(4, T).into_iter().collect();
    let n = 200;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let url = host.url(&format!("/echo?i={i}&delay=0.02"));
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let body = format!("body of request {i}");
                barrier.wait();
                let r = post(&url, "text/plain", body.as_bytes());
                (i, body, r)
            })
        })
        .collect();
    let mut pids = BTreeSet::new();
    for h in handles {
        let (i, body, r) = h.join().expect("client thread panicked");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let j = r.json();
        assert_eq!(
            j["query"],
            format!("i={i}&delay=0.02"),
            "request {i} got someone else's answer"
        );
        assert_eq!(j["body"], body, "request {i}");
        pids.insert(j["pid"].as_u64().unwrap() as u32);
    }
    assert_eq!(pids, workers, "all four workers should have served");
}

#[test]
fn queue_overflow_gets_503_with_retry_after() {
    // No pipelining: the queue's one slot is what is tested.
    let host = Host::start(
        HostOpts::plain()
            .workers(1)
            .config("max_queue = 1\npipeline_depth = 0\n"),
    );
    let release = host.dir().join("release");
    let (tx, rx) = mpsc::channel();
    let spawn = |tag: &'static str| {
        let url = host.url(&format!(
            "/sleep?s=60&until={}&tag={tag}",
            release.display()
        ));
        let tx = tx.clone();
        thread::spawn(move || tx.send((tag, get(&url))).unwrap());
    };
    spawn("in-flight");
    host.wait_for_log("sleep-start in-flight", T);
    spawn("second");
    spawn("third");

    // With the only worker busy and the one queue slot taken, one of the two is refused at once.
    let (tag, refused) = rx
        .recv_timeout(T)
        .expect("a request beyond max_queue should be refused, not held");
    assert_eq!(refused.status, 503, "{tag}: {}", refused.text());
    let retry = refused
        .header("retry-after")
        .expect("503 carries Retry-After");
    assert!(
        retry.trim().parse::<u64>().is_ok(),
        "Retry-After should be seconds: {retry:?}"
    );

    fs::write(&release, b"").unwrap();
    let mut ok = Vec::new();
    for _ in 0..2 {
        let (tag, r) = rx
            .recv_timeout(T)
            .expect("the in-flight and the queued request finish");
        assert_eq!(r.status, 200, "{tag}: {}", r.text());
        ok.push(tag);
    }
    assert!(ok.contains(&"in-flight"), "{ok:?}");
}

#[test]
fn hundred_mib_upload_keeps_host_and_worker_memory_bounded() {
    let host = host_plain(1);
    let worker = pid_of(&host);
    let (host_base, worker_base) = (rss_kib(host.pid()).unwrap(), rss_kib(worker).unwrap());

    let total = 100 * MIB;
    let pattern = pattern_buf();
    let mut conn = RawConn::connect(host.addr());
    // The app waits before reading, so whatever the client sends meanwhile must be held back
    // by flow control, not buffered.
    conn.send(
        format!(
            "POST /upload?pattern=1&delay_first=0.5 HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {total}\r\n\r\n",
            host.addr()
        )
        .as_bytes(),
    );
    let mut sent = 0;
    while sent < total {
        let n = (64 * 1024).min(total - sent);
        let start = sent % PATTERN_PERIOD;
        conn.send(&pattern[start..start + n]);
        sent += n;
    }
    let r = conn.read_response(false);
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["bytes"], total);
    assert_eq!(
        j["pattern_mismatch_at"],
        serde_json::Value::Null,
        "the body arrived altered"
    );

    assert_eq!(pid_of(&host), worker, "the same worker is still serving");
    assert_memory_bounded("host", host.pid(), host_base);
    assert_memory_bounded("worker", worker, worker_base);
}

#[test]
fn hundred_mib_download_keeps_host_and_worker_memory_bounded() {
    let host = host_plain(1);
    let worker = pid_of(&host);
    let (host_base, worker_base) = (rss_kib(host.pid()).unwrap(), rss_kib(worker).unwrap());

    let total = 100 * MIB;
    let mut resp = agent()
        .get(&host.url(&format!("/download?size={total}")))
        .call()
        .expect("download");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(total.to_string().as_str())
    );
    let pattern = pattern_buf();
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    let mut paused = false;
    loop {
        let n = reader.read(&mut buf).expect("reading the download");
        if n == 0 {
            break;
        }
        let start = got % PATTERN_PERIOD;
        assert!(
            buf[..n] == pattern[start..start + n],
            "download differs from the pattern near byte {got}"
        );
        got += n;
        if !paused && got >= MIB {
            // A deliberately slow client: while it does not read, the app keeps producing, and
            // only flow control (not buffering in the host or worker) may absorb that.
            paused = true;
            thread::sleep(Duration::from_millis(700));
        }
    }
    assert_eq!(got, total);
    drop(reader);

    assert_eq!(pid_of(&host), worker, "the same worker is still serving");
    assert_memory_bounded("host", host.pid(), host_base);
    assert_memory_bounded("worker", worker, worker_base);
}

fn assert_memory_bounded(what: &str, pid: u32, base_kib: u64) {
    let peak = peak_rss_kib(pid).unwrap();
    let growth_mib = peak.saturating_sub(base_kib) / 1024;
    eprintln!("{what} pid {pid}: RSS before {base_kib} KiB, peak {peak} KiB");
    assert!(
        growth_mib < 60,
        "{what} (pid {pid}) peak RSS grew by {growth_mib} MiB during a 100 MiB transfer (base {base_kib} KiB, peak {peak} KiB)"
    );
}

// ---------------------------------------------------------------------------------------------
// Signals

fn in_flight_requests_finish_on(sig: i32) {
    let mut host = host_plain(2);
    let workers = host.wait_workers(2, T);
    let _cleanup = KillOnDrop(workers.clone());
    let (tx, rx) = mpsc::channel();
    for tag in ["drain-a", "drain-b"] {
        let url = host.url(&format!("/sleep?s=2&tag={tag}"));
        let tx = tx.clone();
        thread::spawn(move || {
            tx.send((tag, request_with(&agent(), "GET", &url, &[], b"")))
                .unwrap()
        });
    }
    host.wait_for_log("sleep-start drain-a", T);
    host.wait_for_log("sleep-start drain-b", T);

    host.signal(sig);
    for _ in 0..2 {
        let (tag, r) = rx.recv_timeout(T).expect("in-flight request should finish");
        let r = r.unwrap_or_else(|e| panic!("{tag} failed after the signal: {e}"));
        assert_eq!(r.status, 200, "{tag}: {}", r.text());
        assert_eq!(r.text(), format!("slept 2 {tag}"));
    }
    let status = host
        .wait_exit(T)
        .expect("the host should exit once drained");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after draining: {status:?}"
    );
    let survivors = |ws: &[u32]| {
        ws.iter()
            .copied()
            .filter(|p| pid_alive(*p))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(5), || survivors(&workers).is_empty()),
        "workers still running after the host exited: {:?}",
        survivors(&workers)
            .iter()
            .map(|p| (p, cmdline(*p)))
            .collect::<Vec<_>>()
    );
}

#[test]
fn sigterm_lets_in_flight_requests_finish_then_no_worker_remains() {
    in_flight_requests_finish_on(libc::SIGTERM);
}

#[test]
fn sigint_lets_in_flight_requests_finish_then_no_worker_remains() {
    in_flight_requests_finish_on(libc::SIGINT);
}

#[test]
fn sigkill_of_the_host_leaves_no_worker_within_two_seconds() {
    let mut host = host_plain(3);
    let workers = host.wait_workers(3, T);
    let _cleanup = KillOnDrop(workers.clone());
    // One worker is in the middle of a request when the host dies.
    let url = host.url("/sleep?s=30&tag=busy-at-kill");
    thread::spawn(move || {
        let _ = request_with(&agent(), "GET", &url, &[], b"");
    });
    host.wait_for_log("sleep-start busy-at-kill", T);

    host.signal(libc::SIGKILL);
    let killed = Instant::now();
    host.wait_exit(T).expect("SIGKILL ends the host");
    let alive = || {
        workers
            .iter()
            .copied()
            .filter(|p| pid_alive(*p))
            .collect::<Vec<_>>()
    };
    let gone = wait_until(
        Duration::from_secs(2).saturating_sub(killed.elapsed()),
        || alive().is_empty(),
    );
    assert!(
        gone,
        "workers outlived the SIGKILLed host by 2 s: {:?}",
        alive().iter().map(|p| (p, cmdline(*p))).collect::<Vec<_>>()
    );
}

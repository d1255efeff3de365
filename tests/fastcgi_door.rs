//! The FastCGI front door and the proxy headers, end to end: a FastCGI client written with
//! the crate's own codec (`fcgihost::gateway::fcgi`) multiplexing requests on one
//! connection, aborting one, asking GET_VALUES; the FastCGI standard's listening socket on
//! stdin; real nginx (Debian's package; scripts/test installs it) with `fastcgi_pass` to the
//! FastCGI door serving the Flask test app, and with `proxy_pass` + WebSocket upgrade
//! carrying a `/ptvsd` debug session; `X-Forwarded-*` / `Forwarded` / `X-ARR-SSL` from
//! trusted and untrusted peers; IIS URL Rewrite's `X-Original-URL` and wfastcgi's
//! `SCRIPT_NAME`.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::dap::{marker_line, DapClient};
use common::fronts::{fastcgi_addr, parse_fastcgi_addr, Front, Nginx};
use common::{
    agent, app_dir, bin, cookie_header, form_encode, python, request, request_with,
    require_python_module, wait_until, Host, HostOpts,
};
use fcgihost::gateway::fcgi::{
    self, parse_name_values, EndRequest, ParamsWriter, ProtocolStatus, Record, RecordDecoder,
    RecordType, Role,
};
use serde_json::{json, Value};

/// How long a test waits for a log line or a FastCGI answer.
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// A FastCGI client (the web server's side), on the crate's codec

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// One connection to the FastCGI door.
struct FcgiConn {
    stream: Box<dyn Stream>,
    buf: BytesMut,
    decoder: RecordDecoder,
}

/// What one request got back.
#[derive(Debug, Default, Clone)]
struct FcgiResponse {
    stdout: Vec<u8>,
    stdout_ended: bool,
    end: Option<EndRequest>,
}

impl FcgiResponse {
    /// The CGI head and the body.
    fn split(&self) -> (String, &[u8]) {
        let at = self
            .stdout
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!("no CGI head in {:?}", String::from_utf8_lossy(&self.stdout))
            });
        (
            String::from_utf8_lossy(&self.stdout[..at]).into_owned(),
            &self.stdout[at + 4..],
        )
    }

    fn status(&self) -> u16 {
        let (head, _) = self.split();
        head.lines()
            .find_map(|l| l.strip_prefix("Status: "))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no Status line in {head:?}"))
    }

    fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.split();
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn body(&self) -> &[u8] {
        self.split().1
    }

    fn json(&self) -> Value {
        serde_json::from_slice(self.body()).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.stdout)
            )
        })
    }

    /// The request ended normally with a complete response.
    fn assert_complete(&self) {
        let end = self.end.expect("END_REQUEST");
        assert_eq!(end.protocol_status(), Some(ProtocolStatus::RequestComplete));
        assert_eq!(end.app_status, 0);
        assert!(
            self.stdout_ended,
            "no empty STDOUT record before END_REQUEST"
        );
    }
}

impl FcgiConn {
    fn tcp(addr: &str) -> FcgiConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        FcgiConn::new(Box::new(stream))
    }

    fn unix(path: &Path) -> FcgiConn {
        let stream = std::os::unix::net::UnixStream::connect(path)
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(WAIT)).unwrap();
        FcgiConn::new(Box::new(stream))
    }

    fn new(stream: Box<dyn Stream>) -> FcgiConn {
        FcgiConn {
            stream,
            buf: BytesMut::new(),
            decoder: RecordDecoder::default(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .expect("write to the FastCGI door");
    }

    fn begin(&mut self, id: u16, keep_conn: bool) {
        let mut b = BytesMut::new();
        fcgi::put_begin_request(&mut b, id, Role::Responder, keep_conn);
        self.send(&b);
    }

    fn params(&mut self, id: u16, pairs: &[(String, String)]) {
        let mut b = BytesMut::new();
        let mut w = ParamsWriter::new(&mut b, id);
        for (k, v) in pairs {
            w.push(k.as_bytes(), v.as_bytes());
        }
        w.finish();
        self.send(&b);
    }

    /// STDIN data; empty ends the stream.
    fn stdin(&mut self, id: u16, data: &[u8]) {
        let mut b = BytesMut::new();
        fcgi::put_stream(&mut b, RecordType::Stdin, id, data);
        self.send(&b);
    }

    /// A whole request: BEGIN, PARAMS, STDIN.
    fn request(&mut self, id: u16, keep_conn: bool, pairs: &[(String, String)], body: &[u8]) {
        self.begin(id, keep_conn);
        self.params(id, pairs);
        if !body.is_empty() {
            self.stdin(id, body);
        }
        self.stdin(id, b"");
    }

    /// The next record, or None at EOF.
    fn record(&mut self) -> Option<Record> {
        loop {
            if let Some(r) = self.decoder.decode(&mut self.buf).expect("valid FastCGI") {
                return Some(r);
            }
            let mut tmp = [0u8; 64 * 1024];
            let n = self
                .stream
                .read(&mut tmp)
                .expect("read from the FastCGI door");
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }

    /// Reads until every id in `ids` has its END_REQUEST; returns the responses and the
    /// order in which the requests ended.
    fn responses(&mut self, ids: &[u16]) -> (HashMap<u16, FcgiResponse>, Vec<u16>) {
        let mut out: HashMap<u16, FcgiResponse> = HashMap::new();
        let mut order = Vec::new();
        while order.len() < ids.len() {
            let r = self
                .record()
                .unwrap_or_else(|| panic!("connection closed; got {out:#?}"));
            assert!(
                ids.contains(&r.request_id),
                "record for unexpected id: {r:?}"
            );
            let resp = out.entry(r.request_id).or_default();
            match r.kind {
                RecordType::Stdout if r.content.is_empty() => resp.stdout_ended = true,
                RecordType::Stdout => {
                    assert!(!resp.stdout_ended, "STDOUT after its end");
                    resp.stdout.extend_from_slice(&r.content);
                }
                RecordType::Stderr => {}
                RecordType::EndRequest => {
                    resp.end = Some(EndRequest::parse(&r.content).unwrap());
                    order.push(r.request_id);
                }
                other => panic!("unexpected {other:?} from the FastCGI door"),
            }
        }
        (out, order)
    }

    fn response(&mut self, id: u16) -> FcgiResponse {
        self.responses(&[id]).0.remove(&id).unwrap()
    }

    /// Asserts that the door closes the connection next (EOF before the read timeout, no
    /// further record).
    fn assert_closed(&mut self) {
        if let Some(r) = self.record() {
            panic!("expected the connection to close, got {r:?}");
        }
    }
}

/// The parameters nginx's stock `fastcgi_params` sends for a request (SCRIPT_NAME is the
/// whole path, no PATH_INFO), plus `extra` (which may override).
fn nginx_params(
    method: &str,
    uri: &str,
    body: &[u8],
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut p: Vec<(String, String)> = [
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", method),
        (
            "CONTENT_TYPE",
            if body.is_empty() {
                ""
            } else {
                "application/octet-stream"
            },
        ),
        ("SCRIPT_NAME", path),
        ("REQUEST_URI", uri),
        ("DOCUMENT_URI", path),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "nginx/test"),
        ("REMOTE_ADDR", "192.0.2.10"),
        ("REMOTE_PORT", "40123"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", "localhost"),
        ("HTTP_HOST", "localhost"),
        ("HTTP_USER_AGENT", "fcgi-test"),
        ("HTTP_PROXY", "http://evil.example:1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    p.push(("CONTENT_LENGTH".into(), body.len().to_string()));
    for (k, v) in extra {
        p.retain(|(name, _)| name != k);
        p.push((k.to_string(), v.to_string()));
    }
    p
}

/// `serve` of the plain test app with the FastCGI door on a free loopback port.
fn plain_with_door(workers: usize) -> HostOpts {
    HostOpts::plain()
        .workers(workers)
        .arg("--fastcgi-listen")
        .arg("127.0.0.1:0")
}

// ---------------------------------------------------------------------------------------------
// (a) The FastCGI door with a hand-driven client

#[test]
fn multiplexed_requests_keep_conn_and_get_values() {
    let host = Host::start(plain_with_door(2));
    let addr = fastcgi_addr(&host);
    let mut c = FcgiConn::tcp(&addr);

    // GET_VALUES (management record, id 0).
    let mut b = BytesMut::new();
    fcgi::put_get_values(
        &mut b,
        &[
            "FCGI_MAX_CONNS",
            "FCGI_MAX_REQS",
            "FCGI_MPXS_CONNS",
            "FCGI_NOT_A_VAR",
        ],
    );
    c.send(&b);
    let r = c.record().expect("GET_VALUES_RESULT");
    assert_eq!(r.kind, RecordType::GetValuesResult);
    let values: HashMap<String, String> = parse_name_values(&r.content)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    assert_eq!(values.get("FCGI_MPXS_CONNS").map(String::as_str), Some("1"));
    assert!(values.contains_key("FCGI_MAX_CONNS") && values.contains_key("FCGI_MAX_REQS"));
    assert!(!values.contains_key("FCGI_NOT_A_VAR"));

    // Two requests interleaved on one connection: request 1 is slow and sends its body in
    // pieces, request 2 is quick; 2 must finish first (they run on two workers at once).
    let body1 = b"first part|second part".to_vec();
    let p1 = nginx_params("POST", "/echo/slow?delay=1.5", &body1, &[]);
    // Request 2 takes 0.3 s too, so the two overlap whichever reaches the pool first.
    let p2 = nginx_params("GET", "/echo/quick?x=1&y=%20z&delay=0.3", b"", &[]);
    // Request 1's params complete first, so it holds a worker while its body is still
    // coming; request 2's records arrive in between and must run on the other worker.
    c.begin(1, true);
    c.begin(2, true);
    c.params(1, &p1);
    c.stdin(1, &body1[..10]);
    c.params(2, &p2);
    c.stdin(2, b"");
    c.stdin(1, &body1[10..]);
    c.stdin(1, b"");
    let (responses, order) = c.responses(&[1, 2]);
    assert_eq!(
        order,
        vec![2, 1],
        "the quick request waited for the slow one"
    );
    for r in responses.values() {
        r.assert_complete();
        assert_eq!(r.status(), 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/json"));
    }
    let j1 = responses[&1].json();
    let j2 = responses[&2].json();
    assert_eq!(j1["method"], "POST");
    assert_eq!(j1["body"], "first part|second part");
    assert_eq!(j1["script_name"], "");
    assert_eq!(j1["path"], "/echo/slow");
    assert_eq!(j2["path"], "/echo/quick");
    assert_eq!(j2["query"], "x=1&y=%20z&delay=0.3");
    assert_eq!(j2["cgi"]["REQUEST_URI"], "/echo/quick?x=1&y=%20z&delay=0.3");
    // The web server's variables pass through; its client is the app's client.
    assert_eq!(j2["remote_addr"], "192.0.2.10");
    assert_eq!(j2["cgi"]["REMOTE_PORT"], "40123");
    assert_eq!(j2["cgi"]["SERVER_NAME"], "localhost");
    assert_eq!(j2["headers"]["HTTP_USER_AGENT"], "fcgi-test");
    assert_eq!(j2["url_scheme"], "http");
    assert!(
        j2["headers"].get("HTTP_PROXY").is_none(),
        "HTTP_PROXY must be dropped (httpoxy): {j2}"
    );
    assert_ne!(j1["pid"], j2["pid"], "both ran on one worker");

    // The connection stays open (FCGI_KEEP_CONN): a request id is reusable, and a large
    // upload streams through.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let p = nginx_params("POST", "/upload?pattern=1", &big, &[]);
    c.begin(1, true);
    c.params(1, &p);
    for chunk in big.chunks(60_000) {
        c.stdin(1, chunk);
    }
    c.stdin(1, b"");
    let r = c.response(1);
    r.assert_complete();
    let j = r.json();
    assert_eq!(j["bytes"], 300_000, "{j}");
    assert_eq!(j["pattern_mismatch_at"], Value::Null, "{j}");

    // Without FCGI_KEEP_CONN the door closes the connection after the request.
    c.request(3, false, &nginx_params("GET", "/", b"", &[]), b"");
    let r = c.response(3);
    r.assert_complete();
    assert_eq!(r.body(), b"Hello, world!");
    c.assert_closed();
}

/// The HTTP door's framing rules apply to the web server's parameters too: each malformed
/// request gets its 400 (as a CGI response, the connection kept), a WARN naming the client
/// the web server reported, and never reaches the worker, which keeps serving.
#[test]
fn malformed_parameters_get_400_and_spare_the_worker() {
    let host = Host::start(plain_with_door(1));
    let addr = fastcgi_addr(&host);
    let pid = host.wait_workers(1, WAIT);
    let mut c = FcgiConn::tcp(&addr);
    // (what, the parameters that break a rule, the reason the log gives)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (
            "CONTENT_LENGTH five",
            &[("CONTENT_LENGTH", "five")],
            "CONTENT_LENGTH is not a decimal number",
        ),
        (
            "CONTENT_LENGTH -1",
            &[("CONTENT_LENGTH", "-1")],
            "CONTENT_LENGTH is not a decimal number",
        ),
        (
            "method G T",
            &[("REQUEST_METHOD", "G T")],
            "REQUEST_METHOD is not a token",
        ),
        (
            "host a/b",
            &[("HTTP_HOST", "a/b")],
            "HTTP_HOST is not a valid host",
        ),
        (
            "control in a header",
            &[("HTTP_X_Y", "a\u{1}b")],
            "control character in a field value",
        ),
    ];
    for (i, (name, extra, reason)) in cases.iter().enumerate() {
        let id = i as u16 + 1;
        let port = (41000 + i).to_string();
        let mut extra = extra.to_vec();
        extra.push(("REMOTE_PORT", &port));
        c.request(
            id,
            true,
            &nginx_params("POST", "/echo", b"hello", &extra),
            b"hello",
        );
        let r = c.response(id);
        r.assert_complete();
        assert_eq!(
            r.status(),
            400,
            "{name}: {:?}",
            String::from_utf8_lossy(&r.stdout)
        );
        host.wait_for_log(&format!("client=192.0.2.10:{port}"), WAIT);
        let log = host.log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("client=192.0.2.10:{port}")))
            .unwrap_or_default();
        assert!(
            line.contains("WARN") && line.contains(reason),
            "{name}: {line}"
        );
    }
    c.request(9, true, &nginx_params("GET", "/echo", b"", &[]), b"");
    let r = c.response(9);
    assert_eq!(r.status(), 200);
    assert_eq!(host.worker_pids(), pid, "the worker was replaced");
    assert!(!host.log().contains("worker lost"), "{}", host.log());
}

#[test]
fn abort_unknown_role_and_unknown_management_record() {
    let host = Host::start(plain_with_door(1));
    let addr = fastcgi_addr(&host);
    let mut c = FcgiConn::tcp(&addr);

    // ABORT_REQUEST while the app sleeps: END_REQUEST comes at once (the sync worker
    // finishes the app call, as it would for an HTTP client that went away, and drops the
    // output).
    c.request(
        5,
        true,
        &nginx_params("GET", "/sleep?s=3&tag=aborted", b"", &[]),
        b"",
    );
    host.wait_for_log("sleep-start aborted", WAIT);
    let started = Instant::now();
    let mut b = BytesMut::new();
    fcgi::put_abort_request(&mut b, 5);
    c.send(&b);
    let (responses, _) = c.responses(&[5]);
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert!(responses[&5].stdout.is_empty(), "{:?}", responses[&5]);
    let end = responses[&5].end.unwrap();
    assert_eq!(end.protocol_status(), Some(ProtocolStatus::RequestComplete));
    // The access log says the web server abandoned it.
    let log = host.wait_for_log("path=\"/sleep\"", WAIT);
    let line = log.lines().find(|l| l.contains("path=\"/sleep\"")).unwrap();
    assert!(line.contains(" aborted=true "), "{line}");

    // The connection still serves (once the worker is free again).
    c.request(6, true, &nginx_params("GET", "/", b"", &[]), b"");
    let r = c.response(6);
    r.assert_complete();
    assert_eq!(r.body(), b"Hello, world!");

    // An authorizer request is refused with UNKNOWN_ROLE.
    let mut b = BytesMut::new();
    fcgi::put_begin_request(&mut b, 7, Role::Authorizer, true);
    c.send(&b);
    let r = c.record().unwrap();
    assert_eq!(r.kind, RecordType::EndRequest);
    assert_eq!(r.request_id, 7);
    assert_eq!(
        EndRequest::parse(&r.content).unwrap().protocol_status(),
        Some(ProtocolStatus::UnknownRole)
    );

    // A management record of a type FastCGI 1.0 lacks: UNKNOWN_TYPE.
    c.send(&[1, 42, 0, 0, 0, 3, 5, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]);
    let r = c.record().unwrap();
    assert_eq!(r.kind, RecordType::UnknownType);
    assert_eq!(r.content[0], 42);

    // Closing the connection mid-request aborts it: the worker is free again soon.
    c.request(
        8,
        true,
        &nginx_params("GET", "/sleep?s=2&tag=dropped", b"", &[]),
        b"",
    );
    host.wait_for_log("sleep-start dropped", WAIT);
    drop(c);
    let mut c = FcgiConn::tcp(&addr);
    let started = Instant::now();
    c.request(1, true, &nginx_params("GET", "/", b"", &[]), b"");
    let r = c.response(1);
    r.assert_complete();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the dropped request kept its worker"
    );
    host.wait_for_log("path=\"/sleep\" status=200 bytes=0", WAIT);
}

/// A host started the FastCGI way: a listening Unix socket as stdin, no `--listen`.
struct StdinHost {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for StdinHost {
    fn drop(&mut self) {
        for pid in common::descendants(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- fcgihost log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

#[test]
fn listening_socket_on_stdin_serves_fastcgi_only() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fcgi.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let log = dir.path().join("host.log");
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("FCGIHOST_") || k == "HTTP_PLATFORM_PORT" || k == "ASPNETCORE_PORT" {
            cmd.env_remove(&key);
        }
    }
    cmd.args([
        "serve",
        "--app",
        "plainapp.app",
        "--workers",
        "1",
        "--python",
    ])
    .arg(python())
    .arg("--app-dir")
    .arg(app_dir("plain"))
    .env("NO_COLOR", "1")
    .env("TMPDIR", dir.path().join("tmp"))
    .current_dir(dir.path())
    .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
    .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
    .stderr(Stdio::from(
        std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
    ));
    let host = StdinHost {
        child: cmd.spawn().unwrap(),
        log: log.clone(),
        _dir: dir,
    };
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(WAIT, || read_log()
            .contains("FastCGI front door listening on")),
        "no FastCGI listening line:\n{}",
        read_log()
    );
    let text = read_log();
    assert_eq!(
        parse_fastcgi_addr(&text).as_deref(),
        Some(format!("unix:{}", socket.display()).as_str()),
        "{text}"
    );
    assert!(
        !text.contains("listening on http://"),
        "an HTTP listener was opened without --listen:\n{text}"
    );

    let mut c = FcgiConn::unix(&socket);
    c.request(1, true, &nginx_params("GET", "/echo/stdin", b"", &[]), b"");
    let r = c.response(1);
    r.assert_complete();
    assert_eq!(r.json()["path"], "/echo/stdin");
    drop(host);
}

#[test]
fn unix_socket_fastcgi_listen() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("door.sock");
    // A stale socket file from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let host = Host::start(
        HostOpts::plain()
            .workers(1)
            .arg("--request-timeout")
            .arg("1s")
            .arg("--fastcgi-listen")
            .arg(format!("unix:{}", socket.display())),
    );
    assert_eq!(fastcgi_addr(&host), format!("unix:{}", socket.display()));
    let mut c = FcgiConn::unix(&socket);
    c.request(1, true, &nginx_params("GET", "/", b"", &[]), b"");
    assert_eq!(c.response(1).body(), b"Hello, world!");

    // The pause-aware request clock applies as for HTTP: 504 as a CGI response.
    c.request(2, true, &nginx_params("GET", "/sleep?s=10", b"", &[]), b"");
    let r = c.response(2);
    r.assert_complete();
    assert_eq!(r.status(), 504);

    // An app that fails mid-response: the door closes the connection without END_REQUEST,
    // so the web server knows the response is incomplete.
    let mut c = FcgiConn::unix(&socket);
    c.request(3, true, &nginx_params("GET", "/error-after", b"", &[]), b"");
    let mut stdout = Vec::new();
    loop {
        match c.record() {
            Some(r) if r.kind == RecordType::Stdout => stdout.extend_from_slice(&r.content),
            Some(r) if r.kind == RecordType::Stderr => {}
            Some(r) => panic!("unexpected {r:?} for a broken response"),
            None => break,
        }
    }
    let text = String::from_utf8_lossy(&stdout);
    assert!(text.starts_with("Status: 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nfirst chunk\n"), "{text}");
    // A clean shutdown removes the socket file.
    let mut host = host;
    host.signal(libc::SIGTERM);
    assert!(host.wait_exit(WAIT).is_some(), "no exit after SIGTERM");
    assert!(!socket.exists(), "the socket file outlived the host");
}

// ---------------------------------------------------------------------------------------------
// (d) Forwarded headers

const PROXY_HEADERS: &[(&str, &str)] = &[
    ("X-Forwarded-For", "6.6.6.6, 203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "www.example.com"),
];

fn echo(host: &Host, path: &str, headers: &[(&str, &str)]) -> Value {
    let resp = request("GET", &host.url(path), headers, b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.json()
}

#[test]
fn forwarded_headers_from_a_trusted_proxy() {
    let host = Host::start(plain_with_door(1));
    let j = echo(&host, "/echo", PROXY_HEADERS);
    assert_eq!(j["remote_addr"], "203.0.113.9", "{j}");
    assert!(j["cgi"].get("REMOTE_PORT").is_none(), "{j}");
    assert_eq!(j["url_scheme"], "https");
    assert_eq!(j["cgi"]["HTTPS"], "on");
    assert_eq!(j["cgi"]["SERVER_NAME"], "www.example.com");
    assert_eq!(j["cgi"]["SERVER_PORT"], "443");
    assert_eq!(j["headers"]["HTTP_HOST"], "www.example.com");
    // The original headers stay visible to the app.
    assert_eq!(j["headers"]["HTTP_X_FORWARDED_FOR"], "6.6.6.6, 203.0.113.9");

    // IIS ARR: X-ARR-SSL means the client used https; ARR appends the client's port.
    let j = echo(
        &host,
        "/echo",
        &[
            ("X-ARR-SSL", "2048|256|C=US, O=Example|CN=www.example.com"),
            ("X-Forwarded-For", "198.51.100.20:53122"),
        ],
    );
    assert_eq!(j["url_scheme"], "https");
    assert_eq!(j["remote_addr"], "198.51.100.20");
    assert_eq!(j["cgi"]["REMOTE_PORT"], "53122");

    // RFC 7239 Forwarded.
    let j = echo(
        &host,
        "/echo",
        &[(
            "Forwarded",
            "for=\"[2001:db8:cafe::17]:4711\";proto=https;host=api.example.org",
        )],
    );
    assert_eq!(j["remote_addr"], "2001:db8:cafe::17");
    assert_eq!(j["url_scheme"], "https");
    assert_eq!(j["cgi"]["SERVER_NAME"], "api.example.org");

    // Through the FastCGI door: the web server's REMOTE_ADDR is the peer that is checked.
    let addr = fastcgi_addr(&host);
    let mut c = FcgiConn::tcp(&addr);
    let extra = [
        ("REMOTE_ADDR", "127.0.0.1"),
        ("HTTP_X_FORWARDED_FOR", "203.0.113.50"),
        ("HTTP_X_FORWARDED_PROTO", "https"),
    ];
    c.request(1, true, &nginx_params("GET", "/echo", b"", &extra), b"");
    let j = c.response(1).json();
    assert_eq!(j["remote_addr"], "203.0.113.50", "{j}");
    assert_eq!(j["url_scheme"], "https");
    let extra = [
        ("REMOTE_ADDR", "198.51.100.1"),
        ("HTTP_X_FORWARDED_FOR", "203.0.113.50"),
        ("HTTP_X_FORWARDED_PROTO", "https"),
    ];
    c.request(2, true, &nginx_params("GET", "/echo", b"", &extra), b"");
    let j = c.response(2).json();
    assert_eq!(j["remote_addr"], "198.51.100.1", "{j}");
    assert_eq!(j["url_scheme"], "http");
}

#[test]
fn forwarded_headers_from_an_untrusted_peer_change_nothing() {
    // 127.0.0.1 (the test client) is not in the list: its proxy headers are only headers.
    let host = Host::start(
        HostOpts::plain()
            .workers(1)
            .config("trusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]\n"),
    );
    let mut headers = PROXY_HEADERS.to_vec();
    headers.push(("X-ARR-SSL", "yes"));
    headers.push(("Forwarded", "for=192.0.2.1;proto=https"));
    headers.push(("X-Original-URL", "/echo/admin"));
    let j = echo(&host, "/echo/public", &headers);
    assert_eq!(j["remote_addr"], "127.0.0.1", "{j}");
    assert_eq!(j["url_scheme"], "http");
    assert!(j["cgi"].get("HTTPS").is_none());
    assert_eq!(j["cgi"]["SERVER_NAME"], "127.0.0.1");
    assert_eq!(j["path"], "/echo/public");
    assert_eq!(j["headers"]["HTTP_X_FORWARDED_FOR"], "6.6.6.6, 203.0.113.9");
    assert_eq!(j["headers"]["HTTP_X_ORIGINAL_URL"], "/echo/admin");

    let check = common::run_cli(
        HostOpts::plain()
            .subcommand("check")
            .no_listen_flag()
            .env("FCGIHOST_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.0.1")
            .arg("--fastcgi-listen")
            .arg("9001"),
        tempfile::tempdir().unwrap().path(),
        WAIT,
    );
    let out = check.all();
    assert!(
        out.contains("trusted_proxies")
            && out.contains("[\"10.0.0.0/8\", \"192.168.0.1\"]")
            && out.contains("(env FCGIHOST_TRUSTED_PROXIES)"),
        "{out}"
    );
    assert!(
        out.contains("fastcgi_listen") && out.contains("127.0.0.1:9001"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// (e) wfastcgi's SCRIPT_NAME and X-Original-URL

/// The plain app in a directory of its own with a wfastcgi-era web.config.
fn wfastcgi_site() -> (tempfile::TempDir, HostOpts) {
    let dir = tempfile::Builder::new()
        .prefix("fcgihost-test-")
        .tempdir()
        .unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::copy(
        app_dir("plain").join("plainapp.py"),
        site.join("plainapp.py"),
    )
    .unwrap();
    std::fs::write(
        site.join("web.config"),
        r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <appSettings>
    <add key="WSGI_HANDLER" value="plainapp.app" />
    <add key="SCRIPT_NAME" value="/app" />
    <add key="WSGI_RESTART_FILE_REGEX" value="" />
  </appSettings>
</configuration>
"#,
    )
    .unwrap();
    let opts = HostOpts::new()
        .app_dir(&site)
        .workers(1)
        .arg("--fastcgi-listen")
        .arg("127.0.0.1:0");
    (dir, opts)
}

#[test]
fn script_name_and_x_original_url() {
    let (dir, opts) = wfastcgi_site();
    let host = Host::start_in(opts, dir);
    let j = echo(&host, "/app/echo/x?y=1", &[]);
    assert_eq!(
        (j["script_name"].as_str(), j["path"].as_str()),
        (Some("/app"), Some("/echo/x"))
    );
    assert_eq!(j["query"], "y=1");
    // IIS matches the mount case-insensitively, and so did wfastcgi.
    let j = echo(&host, "/APP/echo", &[]);
    assert_eq!(
        (j["script_name"].as_str(), j["path"].as_str()),
        (Some("/app"), Some("/echo"))
    );
    // Outside the mount (a prefix of a segment does not count): the app sees it all.
    let resp = request("GET", &host.url("/application/echo"), &[], b"");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.text(), "no route for /application/echo");

    // IIS URL Rewrite sent the request to a handler URL; X-Original-URL has the real one.
    let j = echo(
        &host,
        "/app/echo/rewritten?handler=1",
        &[("X-Original-URL", "/app/echo/caf%C3%A9/a%20b?q=2&r")],
    );
    assert_eq!(j["script_name"], "/app", "{j}");
    // PEP 3333: PATH_INFO holds the decoded bytes as latin-1 ("é" is two characters).
    assert_eq!(j["path"], "/echo/caf\u{c3}\u{a9}/a b");
    assert_eq!(j["query"], "q=2&r");
    assert_eq!(j["cgi"]["REQUEST_URI"], "/app/echo/caf%C3%A9/a%20b?q=2&r");

    // The same through the FastCGI door (the web server's SCRIPT_NAME + PATH_INFO is the path).
    let addr = fastcgi_addr(&host);
    let mut c = FcgiConn::tcp(&addr);
    let p = nginx_params(
        "GET",
        "/app/echo/y?z=3",
        b"",
        &[
            ("SCRIPT_NAME", "/app/echo"),
            ("PATH_INFO", "/y"),
            ("REMOTE_ADDR", "127.0.0.1"),
        ],
    );
    c.request(1, true, &p, b"");
    let j = c.response(1).json();
    assert_eq!(
        (j["script_name"].as_str(), j["path"].as_str()),
        (Some("/app"), Some("/echo/y"))
    );
    assert_eq!(j["query"], "z=3");
    let p = nginx_params(
        "GET",
        "/handler.fcgi",
        b"",
        &[
            ("REMOTE_ADDR", "127.0.0.1"),
            ("HTTP_X_ORIGINAL_URL", "/app/echo/orig?o=1"),
        ],
    );
    c.request(2, true, &p, b"");
    let j = c.response(2).json();
    assert_eq!(
        (j["script_name"].as_str(), j["path"].as_str()),
        (Some("/app"), Some("/echo/orig"))
    );
    assert_eq!(j["query"], "o=1");
    assert_eq!(j["cgi"]["REQUEST_URI"], "/app/echo/orig?o=1");
    // From a web server whose client is not a trusted proxy, X-Original-URL is a header only.
    let p = nginx_params(
        "GET",
        "/app/echo/plain",
        b"",
        &[("HTTP_X_ORIGINAL_URL", "/app/echo/orig")],
    );
    c.request(3, true, &p, b"");
    let j = c.response(3).json();
    assert_eq!(j["path"], "/echo/plain");
}

// ---------------------------------------------------------------------------------------------
// Real nginx

/// nginx on a free loopback port with `location` as the body of its `location / { }`.
fn nginx_with_location(location: &str) -> Front {
    Nginx::start(|port| {
        format!(
            "    server {{\n        listen 127.0.0.1:{port};\n        server_name localhost;\n        location / {{\n{location}\n        }}\n    }}"
        )
    })
}

/// `fastcgi_pass` to the FastCGI door, with the stock parameters and timeouts far above
/// fcgihost's own request_timeout (as docs/nginx.md shows).
fn fastcgi_location(door: &str) -> String {
    format!(
        r#"            include /etc/nginx/fastcgi_params;
            fastcgi_pass {door};
            fastcgi_keep_conn on;
            fastcgi_read_timeout 1h;
            fastcgi_send_timeout 1h;"#
    )
}

#[test]
fn nginx_fastcgi_pass_serves_the_flask_app() {
    require_python_module("flask");
    let host = Host::start(
        HostOpts::new()
            .app("flaskapp.app")
            .app_dir(app_dir("flaskapp"))
            .workers(2)
            .arg("--fastcgi-listen")
            .arg("127.0.0.1:0"),
    );
    let door = fastcgi_addr(&host);
    let nginx = nginx_with_location(&fastcgi_location(&door));

    let resp = request("GET", &nginx.url("/?name=nginx"), &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.text().contains("Hello, nginx!"), "{}", resp.text());

    // Form POST.
    let resp = request("GET", &nginx.url("/form"), &[], b"");
    assert!(
        resp.text()
            .contains("<form method=\"post\" action=\"/form\">"),
        "{}",
        resp.text()
    );
    let form = form_encode(&[("name", "Ada Lovelace"), ("tag", "x&y"), ("tag", "z")]);
    let resp = request(
        "POST",
        &nginx.url("/form"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = resp.text();
    assert!(text.contains("Thanks, Ada Lovelace"), "{text}");
    assert!(
        text.contains("<li>x&amp;y</li>") && text.contains("<li>z</li>"),
        "{text}"
    );

    // Cookies: a plain one and the signed session, over several requests.
    let a = agent();
    let resp = request_with(&a, "GET", &nginx.url("/cookie/set?value=mint"), &[], b"").unwrap();
    assert_eq!(resp.status, 200);
    let cookie = cookie_header(&resp);
    assert!(cookie.contains("flavor=mint"), "{cookie}");
    let resp = request(
        "GET",
        &nginx.url("/cookie/get"),
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(resp.json()["flavor"], "mint");
    let mut session = String::new();
    for want in 1..=3 {
        let headers: Vec<(&str, &str)> = if session.is_empty() {
            Vec::new()
        } else {
            vec![("Cookie", session.as_str())]
        };
        let resp = request("GET", &nginx.url("/session/incr"), &headers, b"");
        assert_eq!(resp.json()["count"], want);
        let next = cookie_header(&resp);
        if !next.is_empty() {
            session = next;
        }
    }

    // Redirect (the Location the app wrote, through nginx).
    let resp = request("GET", &nginx.url("/redirect"), &[], b"");
    assert_eq!(resp.status, 302);
    let location = resp.header("location").unwrap_or_default().to_string();
    assert!(location.ends_with("/?name=redirected"), "{location}");

    // JSON API: 201 with a body, PUT, DELETE, and a 400 from the app.
    let resp = request(
        "POST",
        &nginx.url("/api/items"),
        &[("Content-Type", "application/json")],
        br#"{"items": [1, 2, 3]}"#,
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    assert_eq!(resp.json()["count"], 3);
    let resp = request(
        "PUT",
        &nginx.url("/api/items/7"),
        &[("Content-Type", "application/json")],
        br#"{"name": "seven"}"#,
    );
    assert_eq!(
        resp.json(),
        json!({"id": 7, "method": "PUT", "json": {"name": "seven"}})
    );
    let resp = request("DELETE", &nginx.url("/api/items/8"), &[], b"");
    assert_eq!(resp.json()["method"], "DELETE");
    let resp = request(
        "POST",
        &nginx.url("/api/items"),
        &[("Content-Type", "application/json")],
        b"[]",
    );
    assert_eq!(resp.status, 400);

    // A multipart upload of 1 MiB streams through.
    let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let boundary = "fcgihostboundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nbig one\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let resp = request(
        "POST",
        &nginx.url("/upload"),
        &[(
            "Content-Type",
            &format!("multipart/form-data; boundary={boundary}"),
        )],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"filename": "data.bin", "size": 1024 * 1024, "note": "big one"})
    );

    // 404 from the app passes through.
    let resp = request("GET", &nginx.url("/nope"), &[], b"");
    assert_eq!(resp.status, 404);
    drop(nginx);

    // nginx's default is a connection per request (no fastcgi_keep_conn): also fine.
    let nginx = nginx_with_location(&format!(
        "            include /etc/nginx/fastcgi_params;\n            fastcgi_pass {door};"
    ));
    for _ in 0..3 {
        let resp = request(
            "POST",
            &nginx.url("/form"),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"name=again&tag=1",
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(resp.text().contains("Thanks, again"), "{}", resp.text());
    }
}

/// The secret the debug test configures.
const SECRET: &str = "dbg-Secret_0123456789xyz";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nginx_proxy_pass_carries_a_ptvsd_debug_session() {
    let host = Host::start(
        HostOpts::debugapp()
            .workers(1)
            .arg("--request-timeout")
            .arg("2s")
            .env("WSGI_PTVSD_SECRET", SECRET),
    );
    let upstream = host.addr();
    let nginx = nginx_with_location(&format!(
        r#"            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;"#
    ));

    let file = app_dir("debugapp").join("debugapp.py");
    let ws = format!("ws://127.0.0.1:{}/ptvsd", nginx.port);
    let mut dap = DapClient::connect_ws(&ws, Some(SECRET))
        .await
        .unwrap_or_else(|e| panic!("WebSocket through nginx: {e}\n--- log ---\n{}", host.log()));
    dap.attach(
        "vscode",
        &[(file.as_path(), vec![marker_line(&file, "first")])],
    )
    .await;

    let url = nginx.url("/debugme");
    let req = tokio::task::spawn_blocking(move || request("GET", &url, &[], b""));
    let (thread, reason) = dap.stopped().await;
    assert_eq!(reason, "breakpoint");
    assert_eq!(dap.top_frame(thread).await.0, marker_line(&file, "first"));
    host.wait_for_log("request clock stopped", WAIT);
    // Held past request_timeout = 2s: the pause stops fcgihost's clock, and nginx's
    // proxy_read_timeout is far above it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!req.is_finished(), "the paused request finished early");
    let resp = dap.resume_held(thread, req).await;
    assert!(resp.text().ends_with("total=6"), "{}", resp.text());
    dap.disconnect().await;
    host.wait_for_log("debugger detached", WAIT);
    // The proxy saw the client nginx named (X-Forwarded-For from a loopback peer).
    assert!(!host.log().contains("request timed out"), "{}", host.log());
    drop(nginx);
}

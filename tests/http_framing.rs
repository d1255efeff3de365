//! The HTTP front door's framing rules (RFC 9112, RFC 9110), end to end: a table of raw
//! requests, valid and invalid, each sent on its own connection to the real binary serving
//! the plain test app with one worker. A valid request reaches the app with the body the
//! client framed; `OPTIONS *` and `CONNECT` get the host's own answer; an invalid one gets
//! exactly the 4xx the RFC names, `Connection: close`, then the close, and a WARN line that
//! names the client — and the one worker serves the whole table without being restarted.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::{get, Host, HostOpts, RawConn};

/// What the host must do with one request of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Valid: the app answers 200 and sees this body.
    App(&'static str),
    /// Valid, answered by the host itself with this status (the app never sees it).
    Host(u16),
    /// Invalid: this status, `Connection: close`, the close, a WARN naming the client.
    Reject(u16),
}

struct Case {
    name: &'static str,
    /// Where the rule comes from.
    rule: &'static str,
    request: Vec<u8>,
    expect: Expect,
}

fn case(name: &'static str, rule: &'static str, request: &str, expect: Expect) -> Case {
    Case {
        name,
        rule,
        request: request.as_bytes().to_vec(),
        expect,
    }
}

fn case_bytes(name: &'static str, rule: &'static str, request: Vec<u8>, expect: Expect) -> Case {
    Case {
        name,
        rule,
        request,
        expect,
    }
}

/// A chunked POST to /echo whose body is `body` (raw chunked framing, as written).
fn chunked(body: &str) -> String {
    format!("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
}

/// A POST to /echo with these extra header lines (each ending in CRLF) and `body`.
fn post(headers: &str, body: &str) -> String {
    format!("POST /echo HTTP/1.1\r\nHost: t\r\n{headers}\r\n{body}")
}

fn corpus() -> Vec<Case> {
    use Expect::{App, Host, Reject};
    let long_target = format!(
        "GET /echo?{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(10_000)
    );
    let huge_head = format!(
        "GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    vec![
        // --- valid ---
        case("get", "9112 3", "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n", App("")),
        case("http10 without host", "9112 3.2", "GET /echo HTTP/1.0\r\n\r\n", App("")),
        case("content-length body", "9112 6.2", &post("Content-Length: 5\r\n", "hello"), App("hello")),
        case("chunked body", "9112 7.1", &chunked("5\r\nhello\r\n0\r\n\r\n"), App("hello")),
        case("chunked, two chunks, upper-case hex", "9112 7.1", &chunked("3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"), App("abc0123456789")),
        case("chunked coding name in any case", "9112 7", "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", App("ok")),
        case("chunk extension", "9112 7.1.1", &chunked("5;name=value\r\nhello\r\n0;last\r\n\r\n"), App("hello")),
        case("allowed trailer field", "9112 7.1.2", &chunked("5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n"), App("hello")),
        case("empty chunked body", "9112 7.1", &chunked("0\r\n\r\n"), App("")),
        case("leading zeros in chunk size", "9112 7.1", &chunked("005\r\nhello\r\n0\r\n\r\n"), App("hello")),
        case("absolute-form target", "9112 3.2.2", "GET http://t/echo HTTP/1.1\r\nHost: t\r\n\r\n", App("")),
        case("extension method token", "9110 9.1", "PURGE /echo HTTP/1.1\r\nHost: t\r\n\r\n", App("")),
        case("tab and obs-text in a field value", "9110 5.5", "GET /echo HTTP/1.1\r\nHost: t\r\nX-V: a\tb \x7e\r\n\r\n", App("")),
        case("empty line before the request line", "9112 2.2", "\r\nGET /echo HTTP/1.1\r\nHost: t\r\n\r\n", App("")),
        case("host with port", "9110 7.2", "GET /echo HTTP/1.1\r\nHost: t:8080\r\n\r\n", App("")),
        case("expect 100-continue", "9110 10.1.1", &post("Content-Length: 2\r\nExpect: 100-continue\r\n", "ok"), App("ok")),
        case("OPTIONS asterisk-form", "9112 3.2.4", "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", Host(200)),
        case("CONNECT authority-form", "9110 9.3.6", "CONNECT t:443 HTTP/1.1\r\nHost: t:443\r\n\r\n", Host(405)),
        // --- invalid: chunked framing ---
        case("chunk size with a plus sign", "9112 7.1", &chunked("+5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunk size with a minus sign", "9112 7.1", &chunked("-5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunk size with a 0x prefix", "9112 7.1", &chunked("0x5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunk size that overflows", "9112 7.1", &chunked("fffffffffffffffff1\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunk size not hex", "9112 7.1", &chunked("g\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunk size missing", "9112 7.1", &chunked("\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunk size line ends in bare LF", "9112 7.1", &chunked("5\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunk data longer than its size", "9112 7.1", &chunked("3\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunk data without CRLF", "9112 7.1", &chunked("5\r\nhelloXX0\r\n\r\n"), Reject(400)),
        case("chunk extension with a bare LF", "9112 7.1.1", &chunked("5;a\nb\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("trailer Content-Length", "9110 6.5.1", &chunked("5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n"), Reject(400)),
        case("trailer Transfer-Encoding", "9110 6.5.1", &chunked("5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"), Reject(400)),
        case("trailer Host", "9110 6.5.1", &chunked("5\r\nhello\r\n0\r\nHost: other\r\n\r\n"), Reject(400)),
        case("trailer Authorization", "9110 6.5.1", &chunked("5\r\nhello\r\n0\r\nAuthorization: Basic eDp5\r\n\r\n"), Reject(400)),
        case("trailer Content-Type", "9110 6.5.1", &chunked("5\r\nhello\r\n0\r\nContent-Type: text/plain\r\n\r\n"), Reject(400)),
        // --- invalid: message length ---
        case("Content-Length with Transfer-Encoding", "9112 6.1", &post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("Transfer-Encoding with Content-Length", "9112 6.1", &post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunked not the last coding", "9112 6.3", &post("Transfer-Encoding: chunked, gzip\r\n", "5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("identity coding with Content-Length", "9112 6.3", &post("Transfer-Encoding: identity\r\nContent-Length: 5\r\n", "hello"), Reject(400)),
        case("identity coding alone", "9112 6.3", &post("Transfer-Encoding: identity\r\n", "hello"), Reject(400)),
        case("chunked applied twice", "9112 6.1", &post("Transfer-Encoding: chunked, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("chunked twice over two fields", "9112 6.1", &post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("unknown coding before chunked", "9112 6.1", &post("Transfer-Encoding: gzip, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Reject(501)),
        case("look-alike coding name", "9112 6.3", &post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), Reject(400)),
        case("Transfer-Encoding in HTTP/1.0", "9112 6.1", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Reject(400)),
        case("differing Content-Length fields", "9112 6.3", &post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"), Reject(400)),
        case("differing Content-Length list", "9112 6.3", &post("Content-Length: 5, 6\r\n", "hello!"), Reject(400)),
        case("repeated Content-Length field", "9112 6.3", &post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), Reject(400)),
        case("Content-Length not a number", "9110 8.6", &post("Content-Length: five\r\n", "hello"), Reject(400)),
        case("Content-Length with a sign", "9110 8.6", &post("Content-Length: +5\r\n", "hello"), Reject(400)),
        case("Content-Length negative", "9110 8.6", &post("Content-Length: -1\r\n", "hello"), Reject(400)),
        case("Content-Length that overflows", "9110 8.6", &post("Content-Length: 99999999999999999999999\r\n", "hello"), Reject(400)),
        // --- invalid: request target and Host ---
        case("asterisk-form on GET", "9112 3.2.4", "GET * HTTP/1.1\r\nHost: t\r\n\r\n", Reject(400)),
        case("asterisk-form on POST", "9112 3.2.4", "POST * HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", Reject(400)),
        case("authority-form on GET", "9112 3.2.3", "GET t:80 HTTP/1.1\r\nHost: t\r\n\r\n", Reject(400)),
        case("origin-form on CONNECT", "9112 3.2.3", "CONNECT /echo HTTP/1.1\r\nHost: t\r\n\r\n", Reject(400)),
        case("HTTP/1.1 without Host", "9112 3.2", "GET /echo HTTP/1.1\r\n\r\n", Reject(400)),
        case("two Host fields", "9112 3.2", "GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Reject(400)),
        case("Host with a space", "9112 3.2", "GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n", Reject(400)),
        case("Host with a path", "9112 3.2", "GET /echo HTTP/1.1\r\nHost: a/b\r\n\r\n", Reject(400)),
        case("Host with user-info", "9110 4.2.4", "GET /echo HTTP/1.1\r\nHost: u@a\r\n\r\n", Reject(400)),
        case("target too long", "9112 3", &long_target, Reject(414)),
        case("head too large", "6585 5", &huge_head, Reject(431)),
        // --- invalid: tokens and control characters ---
        case("method with a parenthesis", "9110 9.1", "GE(T /echo HTTP/1.1\r\nHost: t\r\n\r\n", Reject(400)),
        case("method with a control character", "9110 9.1", "G\x01T /echo HTTP/1.1\r\nHost: t\r\n\r\n", Reject(400)),
        case("method with a slash", "9110 9.1", "GE/T /echo HTTP/1.1\r\nHost: t\r\n\r\n", Reject(400)),
        case("field name with a space", "9110 5.1", "GET /echo HTTP/1.1\r\nHost: t\r\nX Y: z\r\n\r\n", Reject(400)),
        case("space before the colon", "9112 5.1", "GET /echo HTTP/1.1\r\nHost: t\r\nX-Y : z\r\n\r\n", Reject(400)),
        case("obs-fold", "9112 5.2", "GET /echo HTTP/1.1\r\nHost: t\r\nX-Y: a\r\n b\r\n\r\n", Reject(400)),
        case("NUL in a field value", "9110 5.5", "GET /echo HTTP/1.1\r\nHost: t\r\nX-Y: a\x00b\r\n\r\n", Reject(400)),
        case("control character in a field value", "9110 5.5", "GET /echo HTTP/1.1\r\nHost: t\r\nX-Y: a\x01b\r\n\r\n", Reject(400)),
        case("bare CR in a field value", "9112 2.2", "GET /echo HTTP/1.1\r\nHost: t\r\nX-Y: a\rb\r\n\r\n", Reject(400)),
        case("DEL in a field value", "9110 5.5", "GET /echo HTTP/1.1\r\nHost: t\r\nX-Y: a\x7fb\r\n\r\n", Reject(400)),
        case("control character in the target", "9112 3.2", "GET /ec\x01ho HTTP/1.1\r\nHost: t\r\n\r\n", Reject(400)),
        case("unknown HTTP version", "9112 2.3", "GET /echo HTTP/1.2\r\nHost: t\r\n\r\n", Reject(400)),
        case("HTTP/0.9 request line", "9112 2.3", "GET /echo\r\n\r\n", Reject(400)),
        case("lower-case protocol name", "9112 2.3", "GET /echo http/1.1\r\nHost: t\r\n\r\n", Reject(400)),
        case_bytes("obs-text in the method", "9110 9.1", b"G\xc9T /echo HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), Reject(400)),
    ]
}

/// What one case got.
struct Seen {
    status: Option<u16>,
    connection_close: bool,
    closed_after: bool,
    body: Vec<u8>,
    client: String,
    app_pid: Option<u64>,
}

fn send(host: &Host, case: &Case) -> Seen {
    let mut conn = RawConn::connect(host.addr());
    conn.set_read_timeout(Duration::from_secs(20));
    let client = conn.local_addr().to_string();
    let _ = conn.try_send(&case.request);
    let mut seen = Seen {
        status: None,
        connection_close: false,
        closed_after: false,
        body: Vec::new(),
        client,
        app_pid: None,
    };
    let Ok(head) = conn.read_head() else {
        return seen;
    };
    let head = if head.status == 100 {
        match conn.read_head() {
            Ok(head) => head,
            Err(_) => return seen,
        }
    } else {
        head
    };
    seen.status = Some(head.status);
    seen.connection_close = head
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let response = conn.read_body(&head, case.request.starts_with(b"HEAD"));
    seen.body = response.body.clone();
    if head.status == 200 && head.header("content-type") == Some("application/json") {
        let echo: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        seen.app_pid = echo["pid"].as_u64();
        seen.body = echo["body"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec();
    }
    if matches!(case.expect, Expect::Reject(_)) {
        seen.closed_after = conn.is_closed_by_peer(Duration::from_secs(5));
    }
    seen
}

/// Why `seen` does not meet `case` (None when it does).
fn judge(case: &Case, seen: &Seen, worker: u64, log: &str) -> Option<String> {
    match case.expect {
        Expect::App(body) => {
            if seen.status != Some(200) || seen.app_pid != Some(worker) {
                return Some(format!(
                    "expected the app's 200, got {:?} (app pid {:?})",
                    seen.status, seen.app_pid
                ));
            }
            (seen.body != body.as_bytes()).then(|| {
                format!(
                    "the app saw body {:?}, not {body:?}",
                    String::from_utf8_lossy(&seen.body)
                )
            })
        }
        Expect::Host(status) => {
            (seen.status != Some(status) || seen.app_pid.is_some()).then(|| {
                format!(
                    "expected the host's own {status}, got {:?} (app pid {:?})",
                    seen.status, seen.app_pid
                )
            })
        }
        Expect::Reject(status) => {
            if seen.status != Some(status) {
                return Some(format!("expected {status}, got {:?}", seen.status));
            }
            if !seen.connection_close || !seen.closed_after {
                return Some(format!(
                    "expected Connection: close and a close (header: {}, closed: {})",
                    seen.connection_close, seen.closed_after
                ));
            }
            let warned = log
                .lines()
                .any(|line| line.contains("WARN") && line.contains(&seen.client));
            (!warned).then(|| format!("no WARN line names the client {}", seen.client))
        }
    }
}

#[test]
fn rfc9112_corpus_against_the_binary() {
    // gunicorn's limit_request_line default is 4094; the corpus uses nginx's 8 KiB.
    let host = Host::start(
        HostOpts::plain()
            .workers(1)
            .arg("--limit-request-line")
            .arg("8190"),
    );
    let worker = get(&host.url("/echo")).json()["pid"]
        .as_u64()
        .expect("the app's pid");
    let cases = corpus();
    let seen: Vec<Seen> = cases.iter().map(|case| send(&host, case)).collect();
    // The WARN lines of the last rejections may still be on their way to the log.
    let last_rejected = cases
        .iter()
        .zip(&seen)
        .rev()
        .find(|(case, _)| matches!(case.expect, Expect::Reject(_)))
        .map(|(_, seen)| seen.client.clone());
    if let Some(client) = last_rejected {
        let _ = host.log_wait(|log| {
            log.lines()
                .any(|l| l.contains("WARN") && l.contains(&client))
        });
    }
    let log = host.log();

    let mut failures = Vec::new();
    let (mut valid, mut valid_ok, mut invalid, mut invalid_4xx, mut invalid_ok) = (0, 0, 0, 0, 0);
    for (case, seen) in cases.iter().zip(&seen) {
        let verdict = judge(case, seen, worker, &log);
        match case.expect {
            Expect::App(_) | Expect::Host(_) => {
                valid += 1;
                valid_ok += usize::from(verdict.is_none());
            }
            Expect::Reject(_) => {
                invalid += 1;
                invalid_4xx += usize::from(
                    seen.status
                        .is_some_and(|s| (400..500).contains(&s) || s == 501),
                );
                invalid_ok += usize::from(verdict.is_none());
            }
        }
        if let Some(why) = verdict {
            failures.push(format!("{} (RFC {}): {why}", case.name, case.rule));
        }
    }
    println!(
        "corpus: valid accepted {valid_ok}/{valid}; invalid refused (4xx, or 501) {invalid_4xx}/{invalid}, \
         with the exact status, close and WARN {invalid_ok}/{invalid}"
    );
    let pid_after = get(&host.url("/echo")).json()["pid"].as_u64();
    assert_eq!(
        pid_after,
        Some(worker),
        "the worker was replaced during the corpus\n--- log ---\n{log}"
    );
    assert!(
        !log.contains("worker lost") && !log.contains("restarting it"),
        "a client's request cost a worker\n--- log ---\n{log}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n  {}\n--- log ---\n{log}",
        failures.len(),
        cases.len(),
        failures.join("\n  ")
    );
}

//! The debug endpoint's defences (issue 7), against the real binary and real debugpy: 10,000
//! wrong secrets are refused and rate-limited per address; the secret comparison takes the
//! same time however much of the secret a guess got right (measured in-process on
//! `fcgihost::debug::auth::matches`, with a deliberately leaky comparison as the control
//! that proves the measurement can see a leak); the secret reaches no log line even at trace
//! level, nor the workers' environment; debugpy listens on loopback only; with debug mode off
//! `/ptvsd` is the app's; without the secret the endpoint reveals nothing.
//!
//! The threat model these tests stand for is docs/security.md.
// Unix only: tests/common drives the binary with Unix signals and reads /proc.
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::dap::{basic_auth, DapClient};
use common::*;
use fcgihost::debug::auth::{matches, Secret};

/// The configured secret: distinctive, so that a grep for it finds nothing by accident.
const SECRET: &str = "Qx7-dbgSecret_k2P9vL4mZt8Rw3Yh";
/// How long a test waits for a log line.
const LOG_WAIT: Duration = Duration::from_secs(30);

fn debugapp(workers: usize) -> HostOpts {
    HostOpts::debugapp().workers(workers)
}

fn debug_on(workers: usize) -> HostOpts {
    debugapp(workers).env("WSGI_PTVSD_SECRET", SECRET)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Percent-encodes everything but unreserved characters.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A minimal keep-alive HTTP client on a socket bound to a chosen loopback source address

/// Connects to `dst` from `src` (any 127.0.0.0/8 address is this host's loopback on Linux,
/// so each source address is a distinct client to the rate limiter).
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr structs outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(src, 0);
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(*dst.ip(), dst.port());
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Whether this machine routes 127.0.0.2 to loopback (Linux does by default).
fn extra_loopback_addresses_work(dst: SocketAddr) -> bool {
    connect_from(Ipv4Addr::new(127, 0, 0, 2), dst).is_ok()
}

/// A response: status, headers, body.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive client connection from a fixed source address.
struct Client {
    src: Ipv4Addr,
    dst: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn new(src: Ipv4Addr, dst: SocketAddr) -> Client {
        Client {
            src,
            dst,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// Sends `request` (reconnecting when the server had closed) and reads the answer.
    fn roundtrip(&mut self, request: &[u8], head_only_body: bool) -> Answer {
        for attempt in 0..2 {
            match self.try_roundtrip(request, head_only_body) {
                Ok(a) => return a,
                Err(e) if attempt == 0 => {
                    // The server may close a keep-alive connection between requests.
                    let _ = e;
                    self.stream = None;
                    self.buf.clear();
                }
                Err(e) => panic!("request from {} failed: {e}", self.src),
            }
        }
        unreachable!()
    }

    fn try_roundtrip(&mut self, request: &[u8], head_request: bool) -> std::io::Result<Answer> {
        if self.stream.is_none() {
            let s = connect_from(self.src, self.dst)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let stream = self.stream.as_mut().unwrap();
        stream.write_all(request)?;
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut tmp = [0u8; 16 * 1024];
            let n = stream.read(&mut tmp)?;
            if n == 0 {
                return Err(std::io::Error::other("closed before a response"));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad head {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 {
            // Switched protocols: the connection is no longer HTTP.
            self.stream = None;
            return Ok(answer);
        }
        let len: usize = if head_request {
            0
        } else {
            answer
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        while self.buf.len() < len {
            let mut tmp = [0u8; 16 * 1024];
            let n = stream.read(&mut tmp)?;
            if n == 0 {
                return Err(std::io::Error::other("closed inside a body"));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
        answer.body = self.buf.drain(..len).collect();
        if answer
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.stream = None;
        }
        Ok(answer)
    }
}

// ---------------------------------------------------------------------------------------------
// 10,000 wrong secrets

/// A wrong secret, the `i`-th of a varied family: near misses (one byte off at either end,
/// one byte short or long, case flipped), unrelated guesses, empty.
fn wrong_secret(i: usize) -> String {
    let s = SECRET;
    let n = s.len();
    let w = match i % 8 {
        0 => format!(
            "{}{}",
            &s[..n - 1],
            if s.ends_with('a') { 'b' } else { 'a' }
        ),
        1 => s[..n - 1].to_string(),
        2 => format!("{s}x"),
        3 => s
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect(),
        4 => format!("guess-{i:08}-{}", "z".repeat(n.saturating_sub(15))),
        5 => format!("{}{}", if s.starts_with('a') { 'b' } else { 'a' }, &s[1..]),
        6 => String::new(),
        _ => format!("{}{}", &s[..n / 2], "0".repeat(n - n / 2)),
    };
    assert_ne!(w, SECRET);
    w
}

/// The `i`-th request presenting wrong secret `w`: each of the ways a client may present a
/// secret, as a plain GET, a HEAD, a POST or a WebSocket upgrade, to the endpoint or a worker.
fn wrong_request(i: usize, w: &str) -> (Vec<u8>, bool) {
    let auth = match (i / 8) % 5 {
        0 => format!("Authorization: Basic {}\r\n", b64(&format!("{w}:"))),
        1 => format!("Authorization: Basic {}\r\n", b64(&format!("ptvsd:{w}"))),
        2 => format!("Authorization: Bearer {w}\r\n"),
        3 => String::new(), // in the query below
        _ => String::new(), // no secret at all
    };
    let query = if (i / 8) % 5 == 3 {
        format!("?secret={}", pct(w))
    } else {
        String::new()
    };
    let path = if i % 3 == 0 { "/ptvsd/0" } else { "/ptvsd" };
    let (method, extra, head) = match (i / 40) % 4 {
        0 => ("GET", String::new(), false),
        1 => ("HEAD", String::new(), true),
        2 => ("POST", "Content-Length: 0\r\n".to_string(), false),
        _ => (
            "GET",
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                .to_string(),
            false,
        ),
    };
    let req = format!("{method} {path}{query} HTTP/1.1\r\nHost: attacker\r\n{auth}{extra}\r\n");
    (req.into_bytes(), head)
}

#[test]
fn ten_thousand_wrong_secrets_are_refused_and_rate_limited_per_address() {
    const TOTAL: usize = 10_000;
    let host = Host::start(debug_on(1));
    host.wait_for_log("debugpy listening", LOG_WAIT);
    let addr = host.addr();
    let many = extra_loopback_addresses_work(addr);
    let sources: Vec<Ipv4Addr> = if many {
        (0..10).map(|i| Ipv4Addr::new(127, 0, 0, 10 + i)).collect()
    } else {
        eprintln!("127.0.0.2 is not routable here: every attempt comes from 127.0.0.1");
        vec![Ipv4Addr::LOCALHOST]
    };
    let per_source = TOTAL / sources.len();
    let started = Instant::now();
    let threads: Vec<_> = sources
        .iter()
        .enumerate()
        .map(|(k, &src)| {
            thread::spawn(move || {
                let mut client = Client::new(src, addr);
                let mut statuses = Vec::with_capacity(per_source);
                for j in 0..per_source {
                    let i = k * per_source + j;
                    let w = wrong_secret(i);
                    let (req, head) = wrong_request(i, &w);
                    let a = client.roundtrip(&req, head);
                    if a.status == 101 || a.status == 200 {
                        panic!("wrong secret {w:?} was let in: {a:?}");
                    }
                    statuses.push(a.status);
                }
                (src, statuses, Instant::now())
            })
        })
        .collect();
    let results: Vec<(Ipv4Addr, Vec<u16>, Instant)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let took = started.elapsed();

    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for (_, statuses, _) in &results {
        for s in statuses {
            *counts.entry(*s).or_default() += 1;
        }
    }
    eprintln!(
        "{TOTAL} wrong secrets from {} source address(es) in {took:?}: {counts:?}",
        sources.len()
    );
    assert_eq!(counts.values().sum::<usize>(), TOTAL);
    assert!(
        counts.keys().all(|s| *s == 401 || *s == 429),
        "only 401 and 429 may answer a wrong secret: {counts:?}"
    );
    for (src, statuses, _) in &results {
        assert!(
            statuses[..10].iter().all(|s| *s == 401),
            "{src}: the first ten failures are answered 401: {:?}",
            &statuses[..10]
        );
        if took < Duration::from_secs(55) {
            // Within the 60 s ban everything after the tenth failure is 429.
            assert!(
                statuses[10..].iter().all(|s| *s == 429),
                "{src}: after ten failures every attempt is refused 429"
            );
        } else {
            let unbanned = statuses.iter().filter(|s| **s == 401).count();
            let bans = 1 + took.as_secs() as usize / 60;
            assert!(
                unbanned <= 10 * bans,
                "{src}: {unbanned} attempts got through to the check"
            );
        }
    }
    if took < Duration::from_secs(55) {
        assert_eq!(counts.get(&401).copied().unwrap_or(0), 10 * sources.len());
    }

    // A banned address is refused even with the right secret; with several source
    // addresses, a client that has not failed is not locked out by the others.
    let banned = sources[0];
    let right = format!(
        "GET /ptvsd HTTP/1.1\r\nHost: dev\r\nAuthorization: {}\r\n\r\n",
        basic_auth(SECRET)
    );
    let a = Client::new(banned, addr).roundtrip(right.as_bytes(), false);
    assert_eq!(a.status, 429, "{a:?}");
    assert!(a.header("retry-after").is_some());
    if many {
        let a = Client::new(Ipv4Addr::new(127, 0, 0, 99), addr).roundtrip(right.as_bytes(), false);
        assert_eq!(a.status, 200, "a fresh address is not banned: {a:?}");
        assert!(a.text().contains("Remote debugging is on"));
    }
    let log = host.log();
    assert_eq!(
        log.matches("wrong or missing secret (401)").count(),
        counts.get(&401).copied().unwrap_or(0),
        "every refusal that reached the check is logged"
    );
    assert!(!log.contains(SECRET));
}

// ---------------------------------------------------------------------------------------------
// Constant-time comparison

/// Nanoseconds per call of `f` over `reps` calls.
fn per_call(reps: usize, mut f: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    for _ in 0..reps {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / reps as f64
}

/// Batch means of `compare(secret, a)` and `compare(secret, b)`, measured alternately (the
/// order flips every batch) so drift and background load fall on both alike.
fn measure(
    batches: usize,
    reps: usize,
    a: &str,
    b: &str,
    compare: impl Fn(&str) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    let (mut xa, mut xb) = (Vec::with_capacity(batches), Vec::with_capacity(batches));
    // Warm-up.
    for _ in 0..batches / 10 {
        per_call(reps, || compare(black_box(a)));
        per_call(reps, || compare(black_box(b)));
    }
    for i in 0..batches {
        if i % 2 == 0 {
            xa.push(per_call(reps, || compare(black_box(a))));
            xb.push(per_call(reps, || compare(black_box(b))));
        } else {
            xb.push(per_call(reps, || compare(black_box(b))));
            xa.push(per_call(reps, || compare(black_box(a))));
        }
    }
    (xa, xb)
}

/// Summary statistics of two samples of batch means (the medians are shown in messages).
#[derive(Debug)]
#[allow(dead_code)]
struct Comparison {
    median_a: f64,
    median_b: f64,
    /// |median_a - median_b| / min(median_a, median_b).
    relative: f64,
    /// Welch's t on the samples with their slowest 10% (preemptions) trimmed.
    welch_t: f64,
}

fn compare(mut a: Vec<f64>, mut b: Vec<f64>) -> Comparison {
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v[v.len() / 2];
    let (ma, mb) = (median(&a), median(&b));
    let trim = |v: &[f64]| v[..v.len() * 9 / 10].to_vec();
    let (ta, tb) = (trim(&a), trim(&b));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let var =
        |v: &[f64], m: f64| v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    let (mean_a, mean_b) = (mean(&ta), mean(&tb));
    let se = (var(&ta, mean_a) / ta.len() as f64 + var(&tb, mean_b) / tb.len() as f64).sqrt();
    Comparison {
        median_a: ma,
        median_b: mb,
        relative: (ma - mb).abs() / ma.min(mb),
        welch_t: if se > 0.0 {
            (mean_a - mean_b) / se
        } else {
            0.0
        },
    }
}

/// What a naive comparison does: stop at the first differing byte. The control: the same
/// measurement must see this leak, or it proves nothing about `matches`.
fn leaky_eq(secret: &str, presented: &str) -> bool {
    let (a, b) = (secret.as_bytes(), presented.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    for i in 0..a.len() {
        if black_box(a[i]) != black_box(b[i]) {
            return false;
        }
    }
    true
}

#[test]
fn comparison_time_does_not_depend_on_how_much_of_the_secret_matched() {
    // A long secret magnifies any per-byte early exit.
    let secret_text: String = (0..256)
        .map(|i| (b'!' + ((i * 37 + 11) % 90) as u8) as char)
        .collect();
    let secret = Secret::new(secret_text.clone());
    // Same length: every byte wrong, versus all bytes right but the last.
    let all_wrong: String = secret_text
        .bytes()
        .map(|c| if c == b'~' { '!' } else { (c + 1) as char })
        .collect();
    let mut near = secret_text.clone();
    near.pop();
    near.push(if secret_text.ends_with('~') { '!' } else { '~' });
    assert_eq!(all_wrong.len(), near.len());
    assert!(!matches(&secret, &all_wrong) && !matches(&secret, &near));
    assert!(matches(&secret, &secret_text));

    // 1,000 batches of 100 calls per candidate: 200,000 alternating calls.
    let (batches, reps) = (1000, 100);
    let (a, b) = measure(batches, reps, &all_wrong, &near, |c| matches(&secret, c));
    let ct = compare(a, b);
    let (a, b) = measure(batches, reps, &all_wrong, &near, |c| {
        leaky_eq(&secret_text, c)
    });
    let control = compare(a, b);
    eprintln!("matches():   {ct:?}\nleaky_eq(): {control:?}");

    // The control shows the measurement can see a leak...
    assert!(
        control.relative > 0.5 && control.welch_t.abs() > 10.0,
        "the timing measurement cannot even see a naive early-exit comparison, so it proves \
         nothing (machine too noisy?): {control:?}"
    );
    // ...and `matches` shows none: a difference must be both large and significant to fail.
    assert!(
        ct.relative < 0.05 || ct.welch_t.abs() < 5.0,
        "matches() takes measurably different time for a wrong guess and a near miss: {ct:?} \
         (control: {control:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// The secret in logs and in the workers' environment

/// Every text form in which the secret could leak.
fn secret_forms() -> Vec<String> {
    vec![
        SECRET.to_string(),
        b64(&format!("{SECRET}:")),
        b64(&format!("ptvsd:{SECRET}")),
        pct(SECRET),
        // A long enough piece that a truncated or split print would show.
        SECRET[4..SECRET.len() - 4].to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_secret_is_in_no_log_line_even_at_trace_level() {
    let mut host = Host::start(
        debug_on(1)
            .arg("--log-level")
            .arg("trace")
            .env("RUST_LOG", "trace")
            .env("FCGIHOST_STATUS_PATH", "/status"),
    );
    host.wait_for_log("debugpy listening", LOG_WAIT);
    let url = host.url("/ptvsd");
    let addr = host.addr();

    // Failed attempts with near misses, in every form (fewer than ten: no ban yet).
    let near: Vec<String> = (0..6).map(wrong_secret).collect();
    let refused = tokio::task::spawn_blocking({
        let near = near.clone();
        move || {
            let mut client = Client::new(Ipv4Addr::LOCALHOST, addr);
            let mut statuses = Vec::new();
            for (i, w) in near.iter().enumerate().take(6) {
                let (req, head) = wrong_request(i * 8 + i, w);
                statuses.push(client.roundtrip(&req, head).status);
            }
            statuses
        }
    })
    .await
    .unwrap();
    assert!(refused.iter().all(|s| *s == 401), "{refused:?}");

    // The secret accepted in every form: the info page, the status page (as a proxied
    // client, which needs the secret), and a WebSocket with a DAP session.
    let forms = [
        ("Authorization", basic_auth(SECRET)),
        (
            "Authorization",
            format!("Basic {}", b64(&format!("ptvsd:{SECRET}"))),
        ),
        ("Authorization", format!("Bearer {SECRET}")),
    ];
    for (k, v) in &forms {
        let (u, k, v) = (url.clone(), k.to_string(), v.clone());
        let r = tokio::task::spawn_blocking(move || request("GET", &u, &[(&k, &v)], b""))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(!r.text().contains(SECRET));
    }
    let q = format!("{url}?secret={}", pct(SECRET));
    let r = tokio::task::spawn_blocking(move || get(&q)).await.unwrap();
    assert_eq!(r.status, 200);
    let status_url = format!("{}?secret={}", host.url("/status"), pct(SECRET));
    let r = tokio::task::spawn_blocking(move || {
        request(
            "GET",
            &status_url,
            &[
                ("X-Forwarded-For", "203.0.113.9"),
                ("Accept", "application/json"),
            ],
            b"",
        )
    })
    .await
    .unwrap();
    assert_eq!(r.status, 200, "status page with the secret: {}", r.text());

    let mut dap = DapClient::connect_ws(&format!("ws://{addr}/ptvsd"), Some(SECRET))
        .await
        .unwrap_or_else(|e| panic!("attach: {e}\n{}", host.log()));
    dap.attach("vscode", &[]).await;
    let pid_url = host.url("/pid");
    let r = tokio::task::spawn_blocking(move || get(&pid_url))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    dap.disconnect().await;
    host.wait_for_log("debugger detached", LOG_WAIT);

    // `fcgihost attach` at trace level, with the secret in its URL.
    let mut attach = std::process::Command::new(bin())
        .args([
            "attach",
            &format!("ws://{SECRET}@{addr}/ptvsd"),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1")
        .env_remove("FCGIHOST_ATTACH_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(vec![attach.id()]);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(attach.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(attach.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let mut attach_out = String::new();
    let mut local: Option<SocketAddr> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while local.is_none() && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    local = rest.split(';').next().unwrap_or("").trim().parse().ok();
                }
                attach_out.push_str(&line);
                attach_out.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    let local = local.unwrap_or_else(|| panic!("fcgihost attach did not start:\n{attach_out}"));
    let mut dap = DapClient::connect_tcp(local).await.unwrap();
    dap.attach("vscode", &[]).await;
    dap.disconnect().await;
    host.wait_for_log_count("debugger detached", 2, LOG_WAIT);
    let _ = attach.kill();
    let _ = attach.wait();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        attach_out.push_str(&line);
        attach_out.push('\n');
    }

    // An orderly stop flushes whatever the host still had to say.
    host.signal(libc::SIGTERM);
    assert!(host.wait_exit(Duration::from_secs(30)).is_some());
    let log = host.log();
    assert!(
        log.lines().count() > 200 && log.contains("TRACE"),
        "the host did not log at trace level ({} lines)",
        log.lines().count()
    );
    for form in secret_forms() {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(&form)).take(5).collect();
        assert!(
            hits.is_empty(),
            "the host logged the secret ({form:?}): {hits:#?}"
        );
        let hits: Vec<&str> = attach_out
            .lines()
            .filter(|l| l.contains(&form))
            .take(5)
            .collect();
        assert!(
            hits.is_empty(),
            "fcgihost attach printed the secret ({form:?}): {hits:#?}"
        );
    }
    // Near misses are as good as the secret to someone reading the log: not there either.
    for w in near.iter().filter(|w| w.len() >= 8) {
        assert!(
            !log.contains(w.as_str()),
            "the host logged a presented (wrong) secret {w:?}"
        );
    }
}

#[test]
fn the_workers_do_not_inherit_the_secret() {
    // Anything running in the worker (the app, a crash reporter that dumps os.environ,
    // debugpy's adapter) would otherwise hold the key to the debugger.
    let host = Host::start(
        HostOpts::new()
            .app("faultapp.app")
            .app_dir(app_dir("faults"))
            .workers(1)
            .env("WSGI_PTVSD_SECRET", SECRET),
    );
    host.wait_for_log("worker ready", LOG_WAIT);
    let r = request(
        "GET",
        &host.url("/env?names=WSGI_PTVSD_SECRET,FCGIHOST_DEBUG_SECRET"),
        &[("X-Probe-Value", SECRET)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["present"], serde_json::json!([]), "{v}");
    assert_eq!(v["value_seen"], false, "{v}");
    for pid in descendants(host.pid()) {
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&environ).contains(SECRET),
            "process {pid} ({}) has the secret in its environment",
            cmdline(pid)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// debugpy on loopback only

/// Every TCP socket (any state) in /proc/net/tcp{,6}: inode → (local address text, state).
fn tcp_sockets() -> BTreeMap<u64, (String, String)> {
    let mut out = BTreeMap::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some((ip_hex, port_hex)), Ok(inode)) = (f[1].split_once(':'), f[9].parse::<u64>())
            else {
                continue;
            };
            let port = u16::from_str_radix(port_hex, 16).unwrap_or(0);
            let ip = if v6 {
                // Four little-endian 32-bit words.
                let mut bytes = [0u8; 16];
                for w in 0..4 {
                    let word = u32::from_str_radix(&ip_hex[w * 8..w * 8 + 8], 16).unwrap_or(0);
                    bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
                }
                std::net::Ipv6Addr::from(bytes).to_string()
            } else {
                let word = u32::from_str_radix(ip_hex, 16).unwrap_or(0);
                Ipv4Addr::from(word.to_le_bytes()).to_string()
            };
            out.insert(inode, (format!("{ip}:{port}"), f[3].to_string()));
        }
    }
    out
}

/// Socket inodes open in process `pid`.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(target) = fs::read_link(e.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                if let Ok(n) = n.parse() {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// Processes (any) holding one of `inodes` open.
fn socket_owners(inodes: &BTreeSet<u64>) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
            if !socket_inodes(pid).is_disjoint(inodes) {
                out.insert(pid);
            }
        }
    }
    out
}

/// The listening TCP sockets of the host's descendants and of the processes that own its
/// workers' debugpy ports (debugpy's adapter runs daemonized, outside the process tree):
/// (pid, local address).
fn worker_side_listeners(host: &Host, debug_ports: &BTreeSet<u16>) -> Vec<(u32, String)> {
    let sockets = tcp_sockets();
    let debug_inodes: BTreeSet<u64> = sockets
        .iter()
        .filter(|(_, (local, state))| {
            state == "0A"
                && local
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_some_and(|p| debug_ports.contains(&p))
        })
        .map(|(inode, _)| *inode)
        .collect();
    let mut pids: BTreeSet<u32> = descendants(host.pid()).into_iter().collect();
    pids.extend(socket_owners(&debug_inodes));
    let mut out = Vec::new();
    for pid in pids {
        for inode in socket_inodes(pid) {
            if let Some((local, state)) = sockets.get(&inode) {
                if state == "0A" {
                    out.push((pid, local.clone()));
                }
            }
        }
    }
    out
}

fn is_loopback_text(local: &str) -> bool {
    let ip = local.rsplit_once(':').map(|(ip, _)| ip).unwrap_or("");
    ip.parse::<std::net::IpAddr>()
        .map(|ip| match ip {
            std::net::IpAddr::V4(v4) => v4.is_loopback(),
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        })
        .unwrap_or(false)
}

/// The debugpy ports the host logged (`debug_port=N`).
fn logged_debug_ports(log: &str) -> BTreeSet<u16> {
    log.lines()
        .filter(|l| l.contains("debugpy listening"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("debug_port="))
                .and_then(|p| p.parse().ok())
        })
        .collect()
}

/// This machine's non-loopback IPv4 address, if it has one with a route.
fn outward_ipv4() -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?; // TEST-NET-1: nothing is sent
    match s.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debugpy_listens_on_loopback_only() {
    let host = Host::start(debug_on(2));
    let log = host.wait_for_log_count("debugpy listening", 2, LOG_WAIT);
    host.wait_for_log_count("worker ready", 2, LOG_WAIT);
    let ports = logged_debug_ports(&log);
    assert_eq!(ports.len(), 2, "{log}");

    // With a debugger attached too (debugpy opens more sockets once a client is in).
    let mut dap = DapClient::connect_ws(&format!("ws://{}/ptvsd/1", host.addr()), Some(SECRET))
        .await
        .unwrap();
    dap.attach("vscode", &[]).await;

    let listeners = worker_side_listeners(&host, &ports);
    eprintln!("listeners of the workers and debugpy's adapters: {listeners:?}");
    for port in &ports {
        assert!(
            listeners
                .iter()
                .any(|(_, l)| l.ends_with(&format!(":{port}"))),
            "debugpy port {port} is not among the workers' listeners {listeners:?}"
        );
    }
    let exposed: Vec<&(u32, String)> = listeners
        .iter()
        .filter(|(_, l)| !is_loopback_text(l))
        .collect();
    assert!(
        exposed.is_empty(),
        "sockets listening beyond loopback: {:?}",
        exposed
            .iter()
            .map(|(p, l)| format!("{l} by {p} ({})", cmdline(*p)))
            .collect::<Vec<_>>()
    );
    // And from outside: the machine's own address does not reach them.
    if let Some(ip) = outward_ipv4() {
        for port in &ports {
            let r =
                TcpStream::connect_timeout(&SocketAddr::from((ip, *port)), Duration::from_secs(2));
            assert!(r.is_err(), "debugpy port {port} answers on {ip}");
        }
    }
    dap.disconnect().await;
}

// ---------------------------------------------------------------------------------------------
// Debug mode off, and no secret

#[test]
fn with_debug_mode_off_ptvsd_is_the_apps_in_every_form() {
    let host = Host::start(debugapp(1));
    host.wait_for_log("worker ready", LOG_WAIT);
    let addr = host.addr();
    let mut client = Client::new(Ipv4Addr::LOCALHOST, addr);
    let requests = [
        format!("GET /ptvsd HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n", basic_auth(SECRET)),
        "GET /ptvsd/0 HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        format!("GET /ptvsd?secret={SECRET} HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!(
            "GET /ptvsd HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             X-Fcgihost-Probe: 1\r\n\r\n"
        ),
        "POST /ptvsd HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".to_string(),
    ];
    for req in &requests {
        let a = client.roundtrip(req.as_bytes(), false);
        assert_eq!(a.status, 200, "{req:?} → {a:?}");
        assert!(
            a.text().starts_with("app saw /ptvsd"),
            "{req:?} did not reach the app: {a:?}"
        );
        assert!(a.header("x-fcgihost-app-dir").is_none(), "{a:?}");
        assert!(a.header("www-authenticate").is_none(), "{a:?}");
    }
    let log = host.log();
    assert!(!log.contains("debugpy listening"), "{log}");
    assert!(!log.contains("debug proxy"), "{log}");
    let listeners = worker_side_listeners(&host, &BTreeSet::new());
    assert!(
        listeners.is_empty(),
        "workers listen on TCP with debugging off: {listeners:?}"
    );
}

#[test]
fn without_the_secret_the_endpoint_reveals_nothing() {
    let host = Host::start(debug_on(2));
    let log = host.wait_for_log_count("debugpy listening", 2, LOG_WAIT);
    host.wait_for_log_count("worker ready", 2, LOG_WAIT);
    let addr = host.addr();
    // What an outsider must not learn.
    let mut secrets: Vec<String> = host.worker_pids().iter().map(|p| p.to_string()).collect();
    secrets.extend(logged_debug_ports(&log).iter().map(|p| p.to_string()));
    secrets.push(app_dir("debugapp").display().to_string());
    secrets.push(python());
    let words = [
        "debugpy",
        "worker",
        "pid",
        "attach",
        "launch.json",
        "secret",
    ];

    let upgrade = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let attempts: Vec<(String, bool)> = vec![
        ("GET /ptvsd HTTP/1.1\r\nHost: x\r\n\r\n".into(), false),
        ("HEAD /ptvsd HTTP/1.1\r\nHost: x\r\n\r\n".into(), true),
        (
            "POST /ptvsd HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".into(),
            false,
        ),
        ("GET /ptvsd/ HTTP/1.1\r\nHost: x\r\n\r\n".into(), false),
        (
            format!("GET /ptvsd/0 HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"),
            false,
        ),
        // A worker that does not exist: 401, not 404 (the worker count is not revealed).
        (
            format!("GET /ptvsd/7 HTTP/1.1\r\nHost: x\r\n{upgrade}\r\n"),
            false,
        ),
        // The attach probe: no app directory header without the secret.
        (
            format!("GET /ptvsd HTTP/1.1\r\nHost: x\r\n{upgrade}X-Fcgihost-Probe: 1\r\n\r\n"),
            false,
        ),
        // A bad WebSocket version: still 401 first (no 426 hinting at the endpoint).
        (
            "GET /ptvsd HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: a2V5\r\n\r\n"
                .into(),
            false,
        ),
        (
            format!(
                "GET /ptvsd?secret=wrong HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                wrong_secret(0)
            ),
            false,
        ),
    ];
    assert!(attempts.len() < 10, "stay under the ban threshold");
    let mut client = Client::new(Ipv4Addr::LOCALHOST, addr);
    let mut bodies = BTreeSet::new();
    for (req, head) in &attempts {
        let a = client.roundtrip(req.as_bytes(), *head);
        assert_eq!(a.status, 401, "{req:?} → {a:?}");
        assert_eq!(
            a.header("www-authenticate"),
            Some("Basic realm=\"fcgihost debug\"")
        );
        assert!(a.header("x-fcgihost-app-dir").is_none(), "{a:?}");
        let text = a.text().to_lowercase();
        for s in &secrets {
            assert!(
                !text.contains(&s.to_lowercase()),
                "{req:?} revealed {s:?}: {text}"
            );
            for (k, v) in &a.headers {
                assert!(!v.contains(s.as_str()), "{req:?} revealed {s:?} in {k}");
            }
        }
        for w in words {
            assert!(!text.contains(w), "{req:?} says {w:?}: {text}");
        }
        if !head {
            bodies.insert(a.body.clone());
        }
    }
    // One and the same answer whatever was tried: no oracle.
    assert_eq!(bodies.len(), 1, "{bodies:?}");
}

// ---------------------------------------------------------------------------------------------
// Tracebacks

#[test]
fn tracebacks_go_only_to_loopback_clients_that_came_straight_in() {
    // Behind IIS or nginx every request comes from loopback: the proxy's headers decide.
    let proxied = [("X-Forwarded-For", "203.0.113.9")];
    // The host's own page: the app fails to import (503).
    let host = Host::start(
        HostOpts::new()
            .app("brokenapp.app")
            .app_dir(app_dir("broken"))
            .workers(1),
    );
    let r = get(&host.url("/"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("does_not_exist_xyz"), "{}", r.text());
    let r = request("GET", &host.url("/"), &proxied, b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        !r.text().contains("does_not_exist_xyz") && !r.text().contains("Traceback"),
        "a proxied client got the import traceback: {}",
        r.text()
    );
    drop(host);
    // The worker's page: the view raises (500).
    let host = Host::start(HostOpts::plain().workers(1));
    let r = get(&host.url("/error-before"));
    assert_eq!(r.status, 500);
    assert!(r.text().contains("boom-before"), "{}", r.text());
    let r = request("GET", &host.url("/error-before"), &proxied, b"");
    assert_eq!(r.status, 500);
    assert!(
        !r.text().contains("boom-before") && !r.text().contains("Traceback"),
        "a proxied client got the view's traceback: {}",
        r.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Forwarded headers cannot reset the failure count

#[test]
fn rotating_x_forwarded_for_does_not_escape_the_rate_limit() {
    // Loopback is a trusted proxy by default, so each X-Forwarded-For names a new client;
    // the TCP peer's own count (100 a minute) still stops the guessing.
    let host = Host::start(debug_on(1));
    let url = host.url("/ptvsd");
    let mut statuses = Vec::new();
    for i in 0..120 {
        let client = format!("203.0.113.{}", i % 250 + 1);
        let auth = format!("Basic {}", b64(&format!("wrong-{i}:")));
        let r = request(
            "GET",
            &url,
            &[
                ("X-Forwarded-For", client.as_str()),
                ("Authorization", auth.as_str()),
            ],
            b"",
        );
        statuses.push(r.status);
    }
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses[..100].iter().all(|s| *s == 401),
        "each forwarded client is new: the first 100 guesses are 401"
    );
    assert!(
        statuses[100..].iter().all(|s| *s == 429),
        "after 100 failures through one peer, every guess is 429: {:?}",
        &statuses[100..]
    );
}

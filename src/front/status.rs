//! The status page (`status_path`, in the spirit of PHP-FPM's `pm.status_path`): pool start
//! time, accepted requests, queue length and its maximum, workers by state, and per worker
//! its pid, state, requests served, current request (method, path, running and paused
//! time), RSS and respawn count — as JSON, or as HTML for a browser — and the same figures
//! plus a request-duration histogram as Prometheus text at `<status_path>/metrics`.
//!
//! Only loopback clients that came straight in (no proxy headers) are let in, or clients
//! presenting the debug secret (`debug.secret`, checked as the `/ptvsd` proxy checks it,
//! with its own failure limiter).

use std::fmt::{Display, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde_json::{json, Value};

use super::access_log::UtcTime;
use super::ResponseBody;
use crate::debug::auth::{authorize, FailureLimiter, Secret};
use crate::pages::{self, escape_html};
use crate::pool::{resident_bytes, CurrentRequest, Phase, Pool, PoolStats, WorkerSnapshot};

/// Upper bounds (seconds) of the request-duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Failed secret attempts from one address within [`FAILURE_WINDOW`] before it is banned.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const BAN: Duration = Duration::from_secs(60);

/// Headers a reverse proxy adds; a loopback request carrying one came from elsewhere.
const PROXY_HEADERS: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "x-original-url",
];

/// Request counters fed by every finished request (see `access_log`).
///
/// It exists so the metrics endpoint can report durations and status classes without the
/// exchange knowing about Prometheus.
#[derive(Debug)]
pub struct Metrics {
    /// Per bucket of [`DURATION_BUCKETS`] plus one for +Inf; not cumulative.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Responses by status class: 1xx … 5xx, then anything else.
    classes: [AtomicU64; 6],
    slow: AtomicU64,
    timeouts: AtomicU64,
    aborted: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All counters at zero.
    pub fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            classes: std::array::from_fn(|_| AtomicU64::new(0)),
            slow: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
        }
    }

    /// Counts one finished request.
    pub fn observe(&self, status: u16, duration: Duration) {
        let secs = duration.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 5,
        };
        self.classes[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request that passed `slow_request_threshold`.
    pub fn slow_request(&self) {
        self.slow.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request killed by `request_timeout`.
    pub fn timed_out(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request whose client went away before its response was complete.
    pub fn client_aborted(&self) {
        self.aborted.fetch_add(1, Ordering::Relaxed);
    }
}

/// The status endpoint.
///
/// It exists so operators can see what every worker is doing (and where a request is
/// stuck) without attaching a debugger, as PHP-FPM's status page and uWSGI's stats server
/// allow.
pub struct StatusPage {
    path: String,
    metrics_path: String,
    /// `<path>/control/reload` and `<path>/control/workers` (POST): what SIGHUP and
    /// SIGTTIN/SIGTTOU do, for Windows and for scripts (`fcgihost reload`).
    control_path: String,
    reload: Option<ReloadHook>,
    pool: Pool,
    metrics: std::sync::Arc<Metrics>,
    secret: Option<Secret>,
    limiter: Mutex<FailureLimiter>,
}

/// Most workers the control endpoint will set (a typo must not fork-bomb the machine).
const MAX_WORKERS: usize = 512;

/// Re-reads the configuration and applies it (provided by `serve`).
pub type ReloadHook = std::sync::Arc<dyn Fn() + Send + Sync>;

impl StatusPage {
    /// The status page at `path` (metrics at `<path>/metrics`) for `pool`.
    pub fn new(pool: Pool, path: &str, metrics: std::sync::Arc<Metrics>) -> Self {
        let path = path.trim_end_matches('/').to_owned();
        Self {
            metrics_path: format!("{path}/metrics"),
            control_path: format!("{path}/control"),
            reload: None,
            path,
            pool,
            metrics,
            secret: None,
            limiter: Mutex::new(FailureLimiter::new(MAX_FAILURES, FAILURE_WINDOW, BAN)),
        }
    }

    /// Also lets in non-loopback clients that present `secret` (the debug secret).
    pub fn with_secret(mut self, secret: Option<Secret>) -> Self {
        self.secret = secret;
        self
    }

    /// Enables `POST <path>/control/reload`.
    pub fn with_reload(mut self, reload: ReloadHook) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Whether a request path is the status page, its metrics, or a control action.
    pub fn owns(&self, path: &str) -> bool {
        let path = path.strip_suffix('/').unwrap_or(path);
        path == self.path
            || path == self.metrics_path
            || path
                .strip_prefix(self.control_path.as_str())
                .is_some_and(|rest| rest == "/reload" || rest == "/workers")
    }

    /// `POST <path>/control/reload` re-reads the configuration; `POST
    /// <path>/control/workers?count=N` (or `?add=1`, `?remove=1`) changes the worker count.
    fn control(&self, parts: &http::request::Parts, action: &str) -> Response<ResponseBody> {
        if parts.headers.contains_key(header::ORIGIN) {
            // Browsers send Origin with cross-site POSTs; `fcgihost reload` and curl do not.
            // Refusing it keeps a web page open on the server from driving the pool.
            return text(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                "control actions are not accepted from web pages\n".into(),
            );
        }
        if parts.method != Method::POST {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "Use POST.\n".into(),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        match action {
            "/reload" => match &self.reload {
                Some(reload) => {
                    reload();
                    text(
                        StatusCode::ACCEPTED,
                        "text/plain; charset=utf-8",
                        "reloading: workers are replaced one by one; the log says whether the new configuration loaded\n".into(),
                    )
                }
                None => text(
                    StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    "reload is not available\n".into(),
                ),
            },
            _ => {
                let current = self.pool.settings().workers;
                let query = parts.uri.query().unwrap_or("");
                let wanted = query.split('&').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    let n: usize = value.parse().ok()?;
                    match key {
                        "count" => Some(n),
                        "add" => Some(current.saturating_add(n)),
                        "remove" => Some(current.saturating_sub(n)),
                        _ => None,
                    }
                });
                match wanted {
                    Some(n) if (1..=MAX_WORKERS).contains(&n) => {
                        self.pool.resize(n);
                        text(
                            StatusCode::OK,
                            "application/json",
                            format!("{{\"workers\":{n}}}\n"),
                        )
                    }
                    _ => text(
                        StatusCode::BAD_REQUEST,
                        "text/plain; charset=utf-8",
                        format!("use ?count=N (1 <= N <= {MAX_WORKERS}), ?add=N or ?remove=N\n"),
                    ),
                }
            }
        }
    }

    /// Answers a request to [`StatusPage::owns`]'s paths.
    pub fn handle(
        &self,
        parts: &http::request::Parts,
        remote: SocketAddr,
    ) -> Response<ResponseBody> {
        if let Some(refusal) = self.check_access(parts, remote) {
            return refusal;
        }
        if let Some(action) = parts.uri.path().strip_prefix(self.control_path.as_str()) {
            return self.control(parts, action.trim_end_matches('/'));
        }
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "Use GET.\n".into(),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let path = parts.uri.path();
        let path = path.strip_suffix('/').unwrap_or(path);
        let now = Instant::now();
        let stats = self.pool.stats();
        let workers = self.pool.snapshot();
        let views: Vec<WorkerView> = workers
            .iter()
            .map(|w| WorkerView::of(w, &self.pool, now))
            .collect();
        if path == self.metrics_path {
            return text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.prometheus(&stats, &views),
            );
        }
        let doc = status_json(&stats, &views);
        if wants_html(parts) {
            text(
                StatusCode::OK,
                "text/html; charset=utf-8",
                status_html(&doc, &self.metrics_path),
            )
        } else {
            let mut body = doc.to_string();
            body.push('\n');
            text(StatusCode::OK, "application/json", body)
        }
    }

    /// `Some(response)` refuses the request: neither a direct loopback client nor the secret.
    fn check_access(
        &self,
        parts: &http::request::Parts,
        remote: SocketAddr,
    ) -> Option<Response<ResponseBody>> {
        if is_direct_loopback(remote, &parts.headers) {
            return None;
        }
        let Some(secret) = &self.secret else {
            tracing::warn!(%remote, path = parts.uri.path(), "status page refused: not a loopback client (403)");
            return Some(text(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                "The status page answers loopback clients only.\n".into(),
            ));
        };
        let ip = remote.ip();
        let now = std::time::Instant::now();
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if limiter.is_blocked(ip, now) {
            let mut response = text(
                StatusCode::TOO_MANY_REQUESTS,
                "text/plain; charset=utf-8",
                "Too many failed attempts. Try again later.\n".into(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(BAN.as_secs()));
            return Some(response);
        }
        if authorize(secret, parts) {
            limiter.record_success(ip);
            return None;
        }
        limiter.record_failure(ip, now);
        tracing::warn!(%remote, path = parts.uri.path(), "status page: wrong or missing secret (401)");
        let mut response = text(
            StatusCode::UNAUTHORIZED,
            "text/plain; charset=utf-8",
            "Unauthorized.\n".into(),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fcgihost status\""),
        );
        Some(response)
    }

    /// The Prometheus text exposition (format 0.0.4).
    fn prometheus(&self, stats: &PoolStats, workers: &[WorkerView]) -> String {
        let mut out = String::with_capacity(4096);
        let started = stats
            .started_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        single_metric(
            &mut out,
            "fcgihost_start_time_seconds",
            "gauge",
            "When the worker pool started, in seconds since the Unix epoch.",
            format!("{started:.3}"),
        );
        single_metric(
            &mut out,
            "fcgihost_requests_accepted_total",
            "counter",
            "Requests that asked the pool for a worker (served or refused).",
            stats.accepted,
        );
        single_metric(
            &mut out,
            "fcgihost_queue_length",
            "gauge",
            "Requests waiting for a worker.",
            stats.queue_len,
        );
        single_metric(
            &mut out,
            "fcgihost_queue_length_max",
            "gauge",
            "The longest the queue has been since the start.",
            stats.max_queue_seen,
        );
        single_metric(
            &mut out,
            "fcgihost_queue_capacity",
            "gauge",
            "Requests that may wait for a worker (max_queue).",
            stats.max_queue,
        );
        single_metric(
            &mut out,
            "fcgihost_pipelined_requests_total",
            "counter",
            "Requests written behind a running one on a busy worker (pipeline_depth).",
            stats.pipelined,
        );
        single_metric(
            &mut out,
            "fcgihost_workers_floor",
            "gauge",
            "Workers the pool keeps at least (workers).",
            stats.workers_floor,
        );
        single_metric(
            &mut out,
            "fcgihost_workers_max",
            "gauge",
            "Workers the pool may grow to (workers_max).",
            stats.workers_max,
        );
        single_metric(
            &mut out,
            "fcgihost_threads_busy",
            "gauge",
            "Worker threads running a request now.",
            workers.iter().map(|w| w.busy_threads).sum::<usize>(),
        );
        single_metric(
            &mut out,
            "fcgihost_threads_total",
            "gauge",
            "Worker threads of the workers in service (workers x threads).",
            workers
                .iter()
                .filter(|w| w.state != "stopped" && w.state != "starting")
                .map(|w| w.threads)
                .sum::<usize>(),
        );
        per_worker_metric(
            &mut out,
            "fcgihost_worker_threads_busy",
            "gauge",
            "Threads of each worker running a request now.",
            workers,
            |w| Some(w.busy_threads as u64),
        );
        metric(&mut out, "fcgihost_workers", "gauge", "Workers by state.");
        for state in STATES {
            let n = workers.iter().filter(|w| w.state == state).count();
            let _ = writeln!(out, "fcgihost_workers{{state=\"{state}\"}} {n}");
        }
        per_worker_metric(
            &mut out,
            "fcgihost_worker_requests_total",
            "counter",
            "Requests served by each worker slot.",
            workers,
            |w| Some(w.requests),
        );
        per_worker_metric(
            &mut out,
            "fcgihost_worker_respawns_total",
            "counter",
            "Worker processes started again in each slot.",
            workers,
            |w| Some(u64::from(w.respawns)),
        );
        per_worker_metric(
            &mut out,
            "fcgihost_worker_rss_bytes",
            "gauge",
            "Resident memory of each worker process.",
            workers,
            |w| w.rss,
        );
        let m = &self.metrics;
        metric(
            &mut out,
            "fcgihost_responses_total",
            "counter",
            "Responses by status class.",
        );
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx", "other"]
            .iter()
            .enumerate()
        {
            let n = m.classes[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "fcgihost_responses_total{{code=\"{class}\"}} {n}");
        }
        single_metric(
            &mut out,
            "fcgihost_slow_requests_total",
            "counter",
            "Requests that ran past slow_request_threshold.",
            m.slow.load(Ordering::Relaxed),
        );
        single_metric(
            &mut out,
            "fcgihost_request_timeouts_total",
            "counter",
            "Requests ended by request_timeout (worker killed).",
            m.timeouts.load(Ordering::Relaxed),
        );
        single_metric(
            &mut out,
            "fcgihost_requests_aborted_total",
            "counter",
            "Requests whose client went away before the response was complete.",
            m.aborted.load(Ordering::Relaxed),
        );
        metric(
            &mut out,
            "fcgihost_request_duration_seconds",
            "histogram",
            "Time from receiving a request to the end of its response.",
        );
        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += m.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "fcgihost_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += m.buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "fcgihost_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = m.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "fcgihost_request_duration_seconds_sum {sum:.6}");
        let _ = writeln!(out, "fcgihost_request_duration_seconds_count {cumulative}");
        out
    }
}

/// Worker states as the page names them.
const STATES: [&str; 5] = ["idle", "busy", "paused", "starting", "stopped"];

/// One worker as the page shows it.
struct WorkerView {
    id: usize,
    pid: Option<u32>,
    state: &'static str,
    requests: u64,
    respawns: u32,
    rss: Option<u64>,
    debuggers: u32,
    /// The oldest running request.
    current: Option<Value>,
    /// Every running request (several with `threads`), oldest first.
    running: Vec<Value>,
    busy_threads: usize,
    threads: usize,
    /// Requests written behind the current one (pipelining).
    pipelined: usize,
}

impl WorkerView {
    fn of(w: &WorkerSnapshot, pool: &Pool, now: Instant) -> Self {
        let state = match w.phase {
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            _ if w.paused => "paused",
            Phase::Busy => "busy",
            Phase::Idle => "idle",
        };
        let view = |c: &CurrentRequest| {
            let running = now.saturating_duration_since(c.started);
            let clock = pool.request_clock(w.id, c.request_id);
            let paused = clock
                .as_ref()
                .map_or(Duration::ZERO, |clock| clock.paused_total(now));
            // The clock starts when the worker is leased (queue time excluded).
            let active = clock.as_ref().map_or(running, |clock| clock.active(now));
            json!({
                "request_id": c.request_id,
                "method": c.method,
                "path": c.path,
                "running_ms": millis(running),
                "active_ms": millis(active),
                "paused_ms": millis(paused),
            })
        };
        let running: Vec<Value> = w.running.iter().map(view).collect();
        Self {
            id: w.id,
            pid: w.pid,
            state,
            requests: w.requests,
            respawns: w.respawns,
            rss: w.pid.and_then(resident_bytes),
            debuggers: w.debuggers,
            current: running.first().cloned(),
            running,
            busy_threads: w.busy_threads,
            threads: w.threads,
            pipelined: w.pipelined,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn status_json(stats: &PoolStats, workers: &[WorkerView]) -> Value {
    let count = |state: &str| workers.iter().filter(|w| w.state == state).count();
    json!({
        "start_time": UtcTime::from(stats.started_at).rfc3339(),
        "start_since_s": stats.uptime.as_secs(),
        "accepted_requests": stats.accepted,
        "queue_length": stats.queue_len,
        "max_queue_length": stats.max_queue_seen,
        "queue_capacity": stats.max_queue,
        "pipelined_requests": stats.pipelined,
        "idle_workers": count("idle"),
        "busy_workers": count("busy"),
        "paused_workers": count("paused"),
        "starting_workers": count("starting"),
        "stopped_workers": count("stopped"),
        "total_workers": workers.len(),
        "workers_current": stats.workers_current,
        "workers_floor": stats.workers_floor,
        "workers_max": stats.workers_max,
        "busy_threads": workers.iter().map(|w| w.busy_threads).sum::<usize>(),
        "total_threads": workers.iter().filter(|w| w.state != "stopped" && w.state != "starting").map(|w| w.threads).sum::<usize>(),
        "workers": workers.iter().map(|w| json!({
            "id": w.id,
            "pid": w.pid,
            "state": w.state,
            "requests": w.requests,
            "respawns": w.respawns,
            "rss_bytes": w.rss,
            "debuggers": w.debuggers,
            "current": w.current,
            "running": w.running,
            "busy_threads": w.busy_threads,
            "threads": w.threads,
            "pipelined": w.pipelined,
        })).collect::<Vec<_>>(),
    })
}

/// The same data as the JSON, as a page (values escaped).
fn status_html(doc: &Value, metrics_path: &str) -> String {
    let field = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => escape_html(s),
        other => escape_html(&other.to_string()),
    };
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>fcgihost status</title>\
<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}\
td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}th{background:#f4f4f4}</style>\
</head><body><h1>fcgihost status</h1><table>",
    );
    if let Value::Object(map) = doc {
        for (key, value) in map.iter().filter(|(k, _)| *k != "workers") {
            let _ = write!(
                out,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape_html(key),
                field(value)
            );
        }
    }
    out.push_str("</table><h2>Workers</h2><table><tr><th>id</th><th>pid</th><th>state</th><th>requests</th><th>respawns</th><th>RSS</th><th>debuggers</th><th>threads busy</th><th>method</th><th>path</th><th>running ms</th><th>paused ms</th><th>pipelined</th></tr>");
    let none = Value::Null;
    for w in doc["workers"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let current = &w["current"];
        let get = |v: &Value, k: &str| field(v.get(k).unwrap_or(&none));
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            get(w, "id"),
            get(w, "pid"),
            get(w, "state"),
            get(w, "requests"),
            get(w, "respawns"),
            w["rss_bytes"].as_u64().map_or_else(|| "-".to_owned(), |b| format!("{} MiB", b >> 20)),
            get(w, "debuggers"),
            get(w, "busy_threads"),
            get(w, "threads"),
            get(current, "method"),
            get(current, "path"),
            get(current, "running_ms"),
            get(current, "paused_ms"),
            get(w, "pipelined"),
        );
    }
    let _ = write!(
        out,
        "</table><p><a href=\"{0}\">Prometheus metrics</a> · add <code>?json</code> for JSON</p></body></html>",
        escape_html(metrics_path)
    );
    out
}

/// A loopback client that did not come through a reverse proxy.
fn is_direct_loopback(remote: SocketAddr, headers: &HeaderMap) -> bool {
    let ip = match remote.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        ip => ip,
    };
    ip.is_loopback() && !PROXY_HEADERS.iter().any(|h| headers.contains_key(*h))
}

/// HTML when asked with `?html` or by a browser (`Accept: text/html`), unless `?json`.
fn wants_html(parts: &http::request::Parts) -> bool {
    let query = parts.uri.query().unwrap_or("");
    let flag = |name: &str| query.split('&').any(|p| p.split('=').next() == Some(name));
    if flag("json") {
        return false;
    }
    if flag("html") {
        return true;
    }
    parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric with one unlabelled series.
fn single_metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl Display) {
    metric(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// One series per worker slot (`name{worker="ID"} value`); workers without a value (no
/// process, or no RSS reading) are left out.
fn per_worker_metric(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    workers: &[WorkerView],
    value: impl Fn(&WorkerView) -> Option<u64>,
) {
    metric(out, name, kind, help);
    for w in workers {
        if let Some(v) = value(w) {
            let _ = writeln!(out, "{name}{{worker=\"{}\"}} {v}", w.id);
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(pages::full_body(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_classes() {
        let m = Metrics::new();
        m.observe(200, Duration::from_millis(3));
        m.observe(404, Duration::from_millis(300));
        m.observe(504, Duration::from_secs(500));
        assert_eq!(m.buckets[0].load(Ordering::Relaxed), 1);
        assert_eq!(m.buckets[6].load(Ordering::Relaxed), 1);
        assert_eq!(m.buckets[DURATION_BUCKETS.len()].load(Ordering::Relaxed), 1);
        assert_eq!(m.classes[1].load(Ordering::Relaxed), 1);
        assert_eq!(m.classes[3].load(Ordering::Relaxed), 1);
        assert_eq!(m.classes[4].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn proxied_loopback_requests_are_not_local() {
        let local = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut headers = HeaderMap::new();
        assert!(is_direct_loopback(local, &headers));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        assert!(!is_direct_loopback(local, &headers));
        assert!(!is_direct_loopback(
            SocketAddr::from(([10, 0, 0, 1], 1)),
            &HeaderMap::new()
        ));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert!(is_direct_loopback(mapped, &HeaderMap::new()));
    }
}

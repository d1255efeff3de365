//! The access log: one line per request in the format `log.access_format` names — `text`
//! (tracing fields, the default), `json` (one JSON object per line), or a gunicorn-style
//! atom string (`%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"`) — and the
//! request-duration metrics that every finished request feeds, logged or not.
//!
//! JSON and atom lines are emitted as tracing events carrying the finished line in the
//! [`LINE_FIELD`] field; [`AccessLineFormat`] (installed by `logging`) prints such an event
//! as the bare line, so JSON lines stay parseable and log.file receives them too.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Version};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use super::status::Metrics;
use crate::pool::observer::{RequestMeta, RequestObserver};

/// The tracing target of access-log events.
pub const TARGET: &str = "fcgihost::access";

/// The field of an access-log event that holds a finished line (JSON and atom formats).
pub const LINE_FIELD: &str = "access_line";

/// How access lines look.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessFormat {
    /// Tracing fields on the host's usual log line (`remote=… method=GET path=/ status=200`).
    Text,
    /// One JSON object per line.
    Json,
    /// A gunicorn-style format string, parsed.
    Atoms(Vec<Piece>),
}

/// One part of a parsed atom format.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Text copied as is.
    Literal(String),
    /// A value of the request, e.g. `%(s)s`.
    Atom(Atom),
}

/// The gunicorn atoms fcgihost knows; any other name prints `-`, as in gunicorn.
#[derive(Debug, Clone, PartialEq)]
pub enum Atom {
    /// `h`: remote address.
    Remote,
    /// `l`: `-`.
    Dash,
    /// `u`: user name of HTTP Basic authentication, or `-`.
    User,
    /// `t`: time of the request, `[24/Nov/2026:16:58:00 +0000]` (UTC).
    Time,
    /// `r`: request line, `GET /path?q HTTP/1.1`.
    RequestLine,
    /// `m`: method.
    Method,
    /// `U`: URL path without the query.
    Path,
    /// `q`: query string.
    Query,
    /// `H`: protocol.
    Protocol,
    /// `s`: status.
    Status,
    /// `b`: response body bytes, `-` for none.
    BytesClf,
    /// `B`: response body bytes.
    Bytes,
    /// `f`: Referer.
    Referer,
    /// `a`: User-Agent.
    UserAgent,
    /// `T`: request time in whole seconds.
    Seconds,
    /// `D`: request time in microseconds.
    Micros,
    /// `M`: request time in milliseconds.
    Millis,
    /// `L`: request time in decimal seconds.
    DecimalSeconds,
    /// `p`: process id of the worker that served the request, `<1234>`.
    Pid,
    /// `{name}i`: a request header (name lower-cased).
    Header(String),
    /// Anything else: `-`.
    Unknown,
}

impl AccessFormat {
    /// Reads `log.access_format`: `text`, `json`, or an atom string.
    pub fn parse(format: &str) -> Self {
        match format.trim().to_ascii_lowercase().as_str() {
            "" | "text" => AccessFormat::Text,
            "json" => AccessFormat::Json,
            _ => AccessFormat::Atoms(parse_atoms(format)),
        }
    }

    /// Whether lines need the request headers (so the front door keeps a copy).
    pub fn needs_headers(&self) -> bool {
        match self {
            AccessFormat::Text => false,
            AccessFormat::Json => true,
            AccessFormat::Atoms(pieces) => pieces.iter().any(|p| {
                matches!(
                    p,
                    Piece::Atom(Atom::User | Atom::Referer | Atom::UserAgent | Atom::Header(_))
                )
            }),
        }
    }
}

/// Splits a gunicorn format into literals and atoms; `%%` is a literal `%`.
fn parse_atoms(format: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = format;
    while let Some(i) = rest.find('%') {
        literal.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('%') {
            literal.push('%');
            rest = tail;
            continue;
        }
        let atom = after.strip_prefix('(').and_then(|inner| {
            inner
                .find(")s")
                .map(|end| (&inner[..end], &inner[end + 2..]))
        });
        match atom {
            Some((name, tail)) => {
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Atom(atom_named(name)));
                rest = tail;
            }
            None => {
                literal.push('%');
                rest = after;
            }
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    pieces
}

fn atom_named(name: &str) -> Atom {
    match name {
        "h" => Atom::Remote,
        "l" => Atom::Dash,
        "u" => Atom::User,
        "t" => Atom::Time,
        "r" => Atom::RequestLine,
        "m" => Atom::Method,
        "U" => Atom::Path,
        "q" => Atom::Query,
        "H" => Atom::Protocol,
        "s" => Atom::Status,
        "b" => Atom::BytesClf,
        "B" => Atom::Bytes,
        "f" => Atom::Referer,
        "a" => Atom::UserAgent,
        "T" => Atom::Seconds,
        "D" => Atom::Micros,
        "M" => Atom::Millis,
        "L" => Atom::DecimalSeconds,
        "p" => Atom::Pid,
        _ => match name.strip_prefix('{').and_then(|n| n.strip_suffix("}i")) {
            Some(header) if !header.is_empty() => Atom::Header(header.to_ascii_lowercase()),
            _ => Atom::Unknown,
        },
    }
}

pub use crate::pool::observer::Outcome;

/// The access log and the request metrics; one per host, shared by every request.
///
/// It exists so the pool can finish a request with one call, whatever the format: it is
/// the front door's [`RequestObserver`].
#[derive(Debug)]
pub struct AccessLog {
    enabled: bool,
    format: AccessFormat,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// An access log in `format` (writing nothing unless `enabled`) feeding `metrics`.
    pub fn new(enabled: bool, format: AccessFormat, metrics: Arc<Metrics>) -> Self {
        Self {
            enabled,
            format,
            metrics,
        }
    }

    /// Whether requests must carry a copy of their headers for this log.
    pub fn needs_headers(&self) -> bool {
        self.enabled && self.format.needs_headers()
    }

    /// Records a finished request: metrics always, a log line when enabled.
    pub fn record(&self, meta: &RequestMeta, outcome: Outcome) {
        let elapsed = meta.received.elapsed();
        self.metrics.observe(outcome.status, elapsed);
        if outcome.client_aborted {
            self.metrics.client_aborted();
        }
        if !self.enabled {
            return;
        }
        match &self.format {
            AccessFormat::Text => tracing::info!(
                target: TARGET,
                remote = %meta.remote,
                method = meta.method,
                path = meta.path,
                status = outcome.status,
                bytes = outcome.bytes,
                duration_ms = %Millis(elapsed),
                aborted = outcome.client_aborted.then_some(true),
                worker = outcome.worker.map(|(id, _)| id),
                request_id = meta.request_id,
            ),
            AccessFormat::Json => {
                let line = json_line(meta, outcome, elapsed);
                tracing::info!(target: TARGET, access_line = line.as_str());
            }
            AccessFormat::Atoms(pieces) => {
                let line = atom_line(pieces, meta, outcome, elapsed);
                tracing::info!(target: TARGET, access_line = line.as_str());
            }
        }
    }
}

impl RequestObserver for AccessLog {
    fn finished(&self, meta: &RequestMeta, outcome: Outcome) {
        self.record(meta, outcome);
    }

    fn slow(&self, _meta: &RequestMeta) {
        self.metrics.slow_request();
    }

    fn timed_out(&self, _meta: &RequestMeta) {
        self.metrics.timed_out();
    }
}

/// A duration in milliseconds with exactly three decimals (`15.635`), from whole
/// microseconds: no float noise in text lines.
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let micros = self.0.as_micros();
        write!(f, "{}.{:03}", micros / 1000, micros % 1000)
    }
}

/// The wall-clock time a request arrived.
fn arrival(elapsed: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(elapsed)
        .unwrap_or_else(SystemTime::now)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The user name of HTTP Basic authentication.
fn basic_user(headers: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = header(headers, "authorization")?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_owned())
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn json_line(meta: &RequestMeta, outcome: Outcome, elapsed: Duration) -> String {
    let value = serde_json::json!({
        "time": UtcTime::from(arrival(elapsed)).rfc3339(),
        "remote": meta.remote.ip().to_string(),
        "method": meta.method,
        "path": meta.path,
        "query": meta.query,
        "protocol": protocol(meta.version),
        "status": outcome.status,
        "bytes": outcome.bytes,
        "duration_ms": (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
        "aborted": outcome.client_aborted,
        "referer": header(&meta.headers, "referer"),
        "user_agent": header(&meta.headers, "user-agent"),
        "worker": outcome.worker.map(|(id, _)| id),
        "pid": outcome.worker.map(|(_, pid)| pid),
        "request_id": meta.request_id,
    });
    value.to_string()
}

fn atom_line(pieces: &[Piece], meta: &RequestMeta, outcome: Outcome, elapsed: Duration) -> String {
    let mut line = String::with_capacity(128);
    for piece in pieces {
        match piece {
            Piece::Literal(text) => line.push_str(text),
            Piece::Atom(atom) => push_atom(&mut line, atom, meta, outcome, elapsed),
        }
    }
    line
}

fn push_atom(line: &mut String, atom: &Atom, meta: &RequestMeta, outcome: Outcome, d: Duration) {
    let or_dash = |line: &mut String, value: Option<&str>| match value {
        Some(v) if !v.is_empty() => push_escaped(line, v),
        _ => line.push('-'),
    };
    match atom {
        Atom::Remote => {
            let _ = write!(line, "{}", meta.remote.ip());
        }
        Atom::Dash | Atom::Unknown => line.push('-'),
        Atom::User => or_dash(line, basic_user(&meta.headers).as_deref()),
        Atom::Time => line.push_str(&UtcTime::from(arrival(d)).clf()),
        Atom::RequestLine => {
            push_escaped(line, &meta.method);
            line.push(' ');
            push_escaped(line, &meta.path);
            if let Some(query) = &meta.query {
                line.push('?');
                push_escaped(line, query);
            }
            line.push(' ');
            line.push_str(protocol(meta.version));
        }
        Atom::Method => push_escaped(line, &meta.method),
        Atom::Path => push_escaped(line, &meta.path),
        Atom::Query => push_escaped(line, meta.query.as_deref().unwrap_or("")),
        Atom::Protocol => line.push_str(protocol(meta.version)),
        Atom::Status => {
            let _ = write!(line, "{}", outcome.status);
        }
        Atom::BytesClf if outcome.bytes == 0 => line.push('-'),
        Atom::BytesClf | Atom::Bytes => {
            let _ = write!(line, "{}", outcome.bytes);
        }
        Atom::Referer => or_dash(line, header(&meta.headers, "referer")),
        Atom::UserAgent => or_dash(line, header(&meta.headers, "user-agent")),
        Atom::Seconds => {
            let _ = write!(line, "{}", d.as_secs());
        }
        Atom::Micros => {
            let _ = write!(line, "{}", d.as_micros());
        }
        Atom::Millis => {
            let _ = write!(line, "{}", d.as_millis());
        }
        Atom::DecimalSeconds => {
            let _ = write!(line, "{:.6}", d.as_secs_f64());
        }
        Atom::Pid => match outcome.worker {
            Some((_, pid)) => {
                let _ = write!(line, "<{pid}>");
            }
            None => line.push('-'),
        },
        Atom::Header(name) => or_dash(line, header(&meta.headers, name)),
    }
}

/// Appends client-controlled text so that it cannot break the line or its quoting:
/// `"` and `\` are backslash-escaped, control characters written as `\xHH`.
fn push_escaped(line: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(line, "\\x{:02x}", u32::from(c));
            }
            c => line.push(c),
        }
    }
}

/// A moment in UTC broken into calendar fields (no time-zone database needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// Year (proleptic Gregorian).
    pub year: i64,
    /// Month, 1-12.
    pub month: u32,
    /// Day of the month, 1-31.
    pub day: u32,
    /// Hour, 0-23.
    pub hour: u32,
    /// Minute, 0-59.
    pub minute: u32,
    /// Second, 0-59.
    pub second: u32,
    /// Millisecond, 0-999.
    pub millis: u32,
}

impl From<SystemTime> for UtcTime {
    fn from(time: SystemTime) -> Self {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let of_day = secs % 86_400;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        UtcTime {
            year,
            month,
            day,
            hour: (of_day / 3600) as u32,
            minute: (of_day % 3600 / 60) as u32,
            second: (of_day % 60) as u32,
            millis: since.subsec_millis(),
        }
    }
}

impl UtcTime {
    /// `2026-11-24T16:58:00.123Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millis
        )
    }

    /// `[24/Nov/2026:16:58:00 +0000]`, the Common Log Format time.
    pub fn clf(&self) -> String {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = MONTHS
            .get(self.month.saturating_sub(1) as usize)
            .copied()
            .unwrap_or("???");
        format!(
            "[{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000]",
            self.day, self.year, self.hour, self.minute, self.second
        )
    }
}

/// The log's event format: access-log events that carry a finished line ([`LINE_FIELD`])
/// print as that bare line; every other event as the wrapped format prints it.
#[derive(Debug, Clone)]
pub struct AccessLineFormat<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for AccessLineFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if event.metadata().fields().field(LINE_FIELD).is_some() {
            let mut line = LineVisitor(None);
            event.record(&mut line);
            if let Some(line) = line.0 {
                return writeln!(writer, "{line}");
            }
        }
        self.0.format_event(ctx, writer, event)
    }
}

/// Picks the [`LINE_FIELD`] out of an event.
struct LineVisitor(Option<String>);

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == LINE_FIELD {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == LINE_FIELD && self.0.is_none() {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Instant;

    fn meta(headers: HeaderMap) -> RequestMeta {
        RequestMeta {
            request_id: 7,
            method: "GET".into(),
            path: "/a \"b\"".into(),
            query: Some("x=1".into()),
            version: Version::HTTP_11,
            headers,
            remote: SocketAddr::from(([10, 0, 0, 9], 5555)),
            received: Instant::now(),
            observer: Arc::new(AccessLog::new(
                true,
                AccessFormat::Text,
                Arc::new(Metrics::new()),
            )),
        }
    }

    #[test]
    fn gunicorn_default_format_renders_every_atom() {
        let format = AccessFormat::parse(
            r#"%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(p)s %({x-id}i)s %(zz)s 100%%"#,
        );
        let mut headers = HeaderMap::new();
        headers.insert("user-agent", "curl/8".parse().unwrap());
        headers.insert("x-id", "abc".parse().unwrap());
        headers.insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
        let AccessFormat::Atoms(pieces) = format else {
            panic!("not atoms")
        };
        let outcome = Outcome {
            worker: Some((0, 42)),
            status: 200,
            bytes: 0,
            client_aborted: false,
        };
        let line = atom_line(&pieces, &meta(headers), outcome, Duration::from_millis(5));
        assert!(line.starts_with("10.0.0.9 - user ["), "line: {line}");
        assert!(
            line.ends_with(r#" "GET /a \"b\"?x=1 HTTP/1.1" 200 - "-" "curl/8" <42> abc - 100%"#),
            "line: {line}"
        );
    }

    #[test]
    fn json_lines_parse_and_carry_the_fields() {
        let mut headers = HeaderMap::new();
        headers.insert("referer", "http://x/".parse().unwrap());
        let outcome = Outcome {
            worker: None,
            status: 503,
            bytes: 12,
            client_aborted: false,
        };
        let line = json_line(&meta(headers), outcome, Duration::from_millis(3));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 503);
        assert_eq!(v["bytes"], 12);
        assert_eq!(v["path"], "/a \"b\"");
        assert_eq!(v["referer"], "http://x/");
        assert!(v["worker"].is_null());
        assert!(!line.contains('\n'));
    }

    #[test]
    fn durations_print_milliseconds_with_three_decimals() {
        assert_eq!(
            Millis(Duration::from_nanos(15_634_727)).to_string(),
            "15.634"
        );
        assert_eq!(
            Millis(Duration::from_micros(2_000_001)).to_string(),
            "2000.001"
        );
        assert_eq!(Millis(Duration::from_micros(7)).to_string(), "0.007");
        assert_eq!(Millis(Duration::ZERO).to_string(), "0.000");
    }

    #[test]
    fn json_lines_say_whether_the_client_aborted() {
        let outcome = |client_aborted| Outcome {
            worker: Some((1, 7)),
            status: 200,
            bytes: 19_267_583,
            client_aborted,
        };
        let line = json_line(
            &meta(HeaderMap::new()),
            outcome(true),
            Duration::from_millis(3),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["aborted"], true);
        assert_eq!(v["status"], 200);
        let line = json_line(
            &meta(HeaderMap::new()),
            outcome(false),
            Duration::from_millis(3),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["aborted"], false);
    }

    #[test]
    fn control_characters_cannot_break_a_line() {
        let mut out = String::new();
        push_escaped(&mut out, "a\nb\"c\\");
        assert_eq!(out, "a\\x0ab\\\"c\\\\");
    }

    #[test]
    fn utc_calendar_fields() {
        let t = UtcTime::from(UNIX_EPOCH + Duration::from_millis(1_795_539_480_123));
        assert_eq!(t.rfc3339(), "2026-11-24T16:58:00.123Z");
        assert_eq!(t.clf(), "[24/Nov/2026:16:58:00 +0000]");
        let leap = UtcTime::from(UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(leap.rfc3339(), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn keywords_and_literal_percent() {
        assert_eq!(AccessFormat::parse("JSON"), AccessFormat::Json);
        assert_eq!(AccessFormat::parse("text"), AccessFormat::Text);
        assert_eq!(
            parse_atoms("%(s)s %d %("),
            vec![Piece::Atom(Atom::Status), Piece::Literal(" %d %(".into())]
        );
    }
}

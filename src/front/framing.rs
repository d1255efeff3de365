//! The framing rules of RFC 9112 and RFC 9110 that hyper's parser lets through, checked at
//! the edge before a request reaches a worker: how the body is delimited (Content-Length
//! and Transfer-Encoding), which request-target form goes with which method, the Host field,
//! tokens and control characters in the head, and the fields a chunked body's trailer may
//! not carry. hyper itself refuses what its parser cannot read (a bad request line, a bad
//! chunk size, a head over the size limit) with 400, 414 or 431; what it accepts and these
//! rules refuse is answered here, with the status the RFC names and the connection closed.
//! The same checks serve the FastCGI front door, whose parameters carry the same fields.
//!
//! hyper keeps one Content-Length of several identical ones and drops it when
//! Transfer-Encoding is present, so those two rules are checked on the raw bytes: a
//! [`StreamScanner`] follows the client's byte stream (heads, Content-Length bodies,
//! chunked bodies and their trailers) as the connection reads it and gives one
//! [`RawVerdict`] per request head, in order, for the router to match with hyper's request.

use std::collections::VecDeque;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// How much of a request-target a [`RawVerdict`] keeps (to match it with hyper's request;
/// `max_request_line` bounds targets, off by default).
pub const MAX_TARGET: usize = 8 * 1024;

/// Why a request is refused: the status it gets and a reason for the log and the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub status: StatusCode,
    pub reason: &'static str,
}

impl Violation {
    const fn bad(reason: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason,
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason)
    }
}

/// The form of a request-target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`
    Origin,
    /// `http://host/path`
    Absolute,
    /// `host:port`, for CONNECT only.
    Authority,
    /// `*`, for OPTIONS only.
    Asterisk,
}

/// The form of `uri` as parsed from a request line.
pub fn target_form(uri: &Uri) -> TargetForm {
    if uri.scheme().is_some() {
        TargetForm::Absolute
    } else if uri.authority().is_some() {
        TargetForm::Authority
    } else if uri.path() == "*" {
        TargetForm::Asterisk
    } else {
        TargetForm::Origin
    }
}

/// What a request whose head passed the checks is: one for the app, or one of the two the
/// host answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Goes to the app (or the debug proxy, or the status page).
    App,
    /// `OPTIONS *`: asks about the server, not a resource.
    ServerOptions,
    /// `CONNECT host:port`: a tunnel request.
    Connect,
}

/// Checks a parsed request head: the target form against the method, the Host field, the
/// message-length fields, the method token and every field value.
pub fn check_head(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<Routing, Violation> {
    if !is_token(method.as_str().as_bytes()) {
        return Err(Violation::bad("method is not a token"));
    }
    for (name, value) in headers {
        check_field(name.as_str().as_bytes(), value.as_bytes())?;
    }
    check_host(version, headers)?;
    check_length(version, headers)?;
    let form = target_form(uri);
    match (form, *method == Method::OPTIONS, *method == Method::CONNECT) {
        (TargetForm::Asterisk, true, _) => Ok(Routing::ServerOptions),
        (TargetForm::Asterisk, false, _) => Err(Violation::bad(
            "asterisk-form target on a method other than OPTIONS",
        )),
        (TargetForm::Authority, _, true) => Ok(Routing::Connect),
        (TargetForm::Authority, _, false) => Err(Violation::bad(
            "authority-form target on a method other than CONNECT",
        )),
        (_, _, true) => Err(Violation::bad("CONNECT without an authority-form target")),
        _ => Ok(Routing::App),
    }
}

/// A field name must be a token, a value visible characters, spaces, tabs and obs-text
/// (RFC 9110 §5.1, §5.5): no control character, no DEL.
fn check_field(name: &[u8], value: &[u8]) -> Result<(), Violation> {
    if !is_token(name) {
        return Err(Violation::bad("field name is not a token"));
    }
    if has_control(value) {
        return Err(Violation::bad("control character in a field value"));
    }
    Ok(())
}

/// HTTP/1.1 needs exactly one Host field, HTTP/1.0 at most one, with a valid
/// `host[:port]` or an empty value (RFC 9112 §3.2, RFC 9110 §7.2).
fn check_host(version: Version, headers: &HeaderMap) -> Result<(), Violation> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Violation::bad("more than one Host field"));
    }
    match host {
        None if version >= Version::HTTP_11 => Err(Violation::bad("HTTP/1.1 request without Host")),
        None => Ok(()),
        Some(value) if is_host(value.as_bytes()) => Ok(()),
        Some(_) => Err(Violation::bad("Host is not a valid host[:port]")),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986 reg-name or IP literal), or empty.
pub fn is_host(value: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (&b""[..], &rest[end + 1..])
    } else {
        match value.iter().position(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &b""[..]),
        }
    };
    let reg_name = host
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    let port_ok = match port.strip_prefix(b":") {
        Some(digits) => digits.iter().all(u8::is_ascii_digit),
        None => port.is_empty(),
    };
    reg_name && port_ok
}

/// How the body is delimited: at most one Content-Length of digits only, never with
/// Transfer-Encoding, and Transfer-Encoding (HTTP/1.1 only) must be exactly `chunked`
/// (RFC 9112 §6.1, §6.3): a list that does not end in chunked is 400, chunked twice is
/// 400, another coding before it is 501 (the host decodes none).
fn check_length(version: Version, headers: &HeaderMap) -> Result<(), Violation> {
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(Violation::bad("more than one Content-Length field"));
    }
    if let Some(value) = length {
        if !is_content_length(value.as_bytes()) {
            return Err(Violation::bad("Content-Length is not a decimal number"));
        }
    }
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
        .filter(|coding| !coding.is_empty())
        .peekable();
    if codings.peek().is_none() {
        return if headers.contains_key(TRANSFER_ENCODING) {
            Err(Violation::bad("empty Transfer-Encoding"))
        } else {
            Ok(())
        };
    }
    if version < Version::HTTP_11 {
        return Err(Violation::bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if length.is_some() {
        return Err(Violation::bad("both Content-Length and Transfer-Encoding"));
    }
    let codings: Vec<&[u8]> = codings.collect();
    let is_chunked = |c: &[u8]| c.eq_ignore_ascii_case(b"chunked");
    if !codings.last().is_some_and(|c| is_chunked(c)) {
        return Err(Violation::bad("Transfer-Encoding does not end in chunked"));
    }
    if codings.iter().filter(|c| is_chunked(c)).count() > 1 {
        return Err(Violation::bad("chunked applied more than once"));
    }
    if codings.len() > 1 {
        return Err(Violation {
            status: StatusCode::NOT_IMPLEMENTED,
            reason: "a transfer coding other than chunked",
        });
    }
    Ok(())
}

/// `1*DIGIT` that fits a u64.
pub fn is_content_length(value: &[u8]) -> bool {
    !value.is_empty()
        && value.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(value).is_ok_and(|s| s.parse::<u64>().is_ok())
}

/// The fields a trailer section may not carry: they frame or route the message,
/// authenticate it, modify or condition the request, or describe the content, and all of
/// them are needed before the body (RFC 9110 §6.5.1).
const FORBIDDEN_TRAILERS: &[&str] = &[
    "transfer-encoding",
    "content-length",
    "host",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "authorization",
    "proxy-authorization",
    "cookie",
    "content-type",
    "content-encoding",
    "content-range",
    "content-location",
    "expect",
    "max-forwards",
    "cache-control",
    "pragma",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "if-range",
];

/// Checks a chunked body's trailer section.
pub fn check_trailers(trailers: &HeaderMap) -> Result<(), Violation> {
    for (name, value) in trailers {
        if FORBIDDEN_TRAILERS.contains(&name.as_str()) {
            return Err(Violation::bad(
                "a trailer field that must be in the header section",
            ));
        }
        check_field(name.as_str().as_bytes(), value.as_bytes())?;
    }
    Ok(())
}

/// The same rules for the CGI parameters a web server sends the FastCGI front door:
/// CONTENT_LENGTH digits only, REQUEST_METHOD a token, HTTP_HOST a valid host, and no
/// control character in REQUEST_URI or any HTTP_* value. Only the last of repeated
/// names counts, as for the worker.
pub fn check_cgi_params<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<(), Violation> {
    for (name, value) in pairs {
        match name {
            b"CONTENT_LENGTH" if !value.is_empty() && !is_content_length(value) => {
                return Err(Violation::bad("CONTENT_LENGTH is not a decimal number"))
            }
            b"REQUEST_METHOD" if !is_token(value) => {
                return Err(Violation::bad("REQUEST_METHOD is not a token"))
            }
            b"HTTP_HOST" if !is_host(value) => {
                return Err(Violation::bad("HTTP_HOST is not a valid host[:port]"))
            }
            b"REQUEST_URI" if value.iter().any(|&b| b < 0x21 || b == 0x7f) => {
                return Err(Violation::bad("control character in REQUEST_URI"))
            }
            _ if name.starts_with(b"HTTP_") && has_control(value) => {
                return Err(Violation::bad("control character in a field value"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn has_control(value: &[u8]) -> bool {
    value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

/// What the raw bytes of one request head said, for the request hyper parses from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawVerdict {
    /// The method as sent (to match the verdict with hyper's request).
    pub method: String,
    /// The request-target as sent, up to [`MAX_TARGET`] bytes.
    pub target: String,
    /// A rule the raw head breaks that hyper's parsed request no longer shows.
    pub violation: Option<Violation>,
}

/// Where the scanner is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Reading a request head.
    Head,
    /// In a Content-Length body: this many bytes to go.
    Length(u64),
    /// In a chunked body.
    Chunk(Chunk),
    /// Stopped: the stream can no longer be followed (a refused head, broken chunked
    /// framing, a head over the limit, or bytes after an upgrade). No more verdicts.
    Stopped,
}

/// The chunked-body states, as hyper's decoder has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the hex size; `digits` so far.
    Size { size: u64, digits: u8 },
    /// Spaces after the size.
    SizeLws { size: u64 },
    /// In a chunk extension.
    Ext { size: u64 },
    /// After the CR of the size line.
    SizeLf { size: u64 },
    /// Chunk data still to come.
    Data(u64),
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// After the CR of the final empty line.
    EndLf,
}

/// Follows one connection's request stream and judges each head's raw framing fields.
#[derive(Debug)]
pub struct StreamScanner {
    scan: Scan,
    head: Vec<u8>,
    max_head: usize,
    max_headers: usize,
    verdicts: VecDeque<RawVerdict>,
}

/// Verdicts not yet taken are capped (a client pipelining heads faster than they are
/// served); past the cap the scanner stops.
const MAX_PENDING_VERDICTS: usize = 256;

impl StreamScanner {
    /// A scanner for heads of at most `max_head` bytes and `max_headers` fields (the
    /// connection's limits: hyper refuses larger ones itself).
    pub fn new(max_head: usize, max_headers: usize) -> Self {
        Self {
            scan: Scan::Head,
            head: Vec::new(),
            max_head,
            max_headers,
            verdicts: VecDeque::new(),
        }
    }

    /// The verdict of the oldest request head not yet taken.
    pub fn next_verdict(&mut self) -> Option<RawVerdict> {
        self.verdicts.pop_front()
    }

    /// Whether the scanner gave up following the stream.
    pub fn stopped(&self) -> bool {
        self.scan == Scan::Stopped
    }

    /// Follows `bytes`, the next bytes read from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match self.scan {
                Scan::Stopped => return,
                Scan::Head => self.feed_head(bytes),
                Scan::Length(left) => {
                    let n = left.min(bytes.len() as u64);
                    self.scan = if left == n {
                        Scan::Head
                    } else {
                        Scan::Length(left - n)
                    };
                    &bytes[n as usize..]
                }
                Scan::Chunk(Chunk::Data(left)) => {
                    let n = left.min(bytes.len() as u64);
                    self.scan = Scan::Chunk(if left == n {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - n)
                    });
                    &bytes[n as usize..]
                }
                Scan::Chunk(state) => {
                    self.scan = chunk_step(state, bytes[0]);
                    &bytes[1..]
                }
            };
        }
    }

    /// Buffers head bytes; at the head's end judges it and returns the bytes after it.
    fn feed_head<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let bytes = self.skip_empty_lines(bytes);
        if bytes.is_empty() {
            return bytes;
        }
        let old = self.head.len();
        let room = (self.max_head + 1).saturating_sub(old);
        let take = bytes.len().min(room);
        self.head.extend_from_slice(&bytes[..take]);
        // Parse only once an end of head (LF CRLF or LF LF) has arrived.
        let from = old.saturating_sub(2);
        let window = &self.head[from..];
        let ended =
            window.windows(3).any(|w| w == b"\n\r\n") || window.windows(2).any(|w| w == b"\n\n");
        if !ended {
            if self.head.len() > self.max_head {
                self.stop();
            }
            return &[];
        }
        let mut fields = vec![httparse::EMPTY_HEADER; self.max_headers];
        let mut request = httparse::Request::new(&mut fields);
        let len = match request.parse(&self.head) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if self.head.len() <= self.max_head => return &[],
            _ => {
                self.stop();
                return &[];
            }
        };
        let (verdict, next) = judge_raw(&request);
        let unused = self.head.len() - len;
        self.head.clear();
        if self.verdicts.len() >= MAX_PENDING_VERDICTS {
            self.stop();
            return &[];
        }
        let refused = verdict.violation.is_some();
        self.verdicts.push_back(verdict);
        self.scan = if refused { Scan::Stopped } else { next };
        // The bytes after the head in this read: `unused` of the buffered ones came from it.
        &bytes[take - unused.min(take)..]
    }

    /// Drops the empty lines a client may send before a request-line (RFC 9112 §2.2; hyper's
    /// parser skips them the same way: CRLF or a bare LF), so that they are not taken for the
    /// end of a head. A lone CR is kept until the next byte says whether an LF follows it.
    fn skip_empty_lines<'a>(&mut self, mut bytes: &'a [u8]) -> &'a [u8] {
        loop {
            match (self.head.as_slice(), bytes) {
                ([], [b'\n', rest @ ..])
                | ([], [b'\r', b'\n', rest @ ..])
                | ([b'\r'], [b'\n', rest @ ..]) => {
                    self.head.clear();
                    bytes = rest;
                }
                ([], [b'\r']) => {
                    self.head.push(b'\r');
                    return &[];
                }
                _ => return bytes,
            }
        }
    }

    fn stop(&mut self) {
        self.scan = Scan::Stopped;
        self.head = Vec::new();
    }
}

/// The raw framing rules of one parsed head, and where its body ends.
fn judge_raw(request: &httparse::Request<'_, '_>) -> (RawVerdict, Scan) {
    let mut lengths = 0usize;
    let mut length = None;
    let mut chunked_last = None;
    for field in request.headers.iter() {
        if field.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = std::str::from_utf8(field.value)
                .ok()
                .filter(|v| is_content_length(v.as_bytes()))
                .and_then(|v| v.parse::<u64>().ok());
        } else if field.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = field
                .value
                .split(|&b| b == b',')
                .map(trim_ows)
                .rfind(|c| !c.is_empty());
            chunked_last = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        }
    }
    let violation = if lengths > 1 {
        Some(Violation::bad("more than one Content-Length field"))
    } else if lengths == 1 && chunked_last.is_some() {
        Some(Violation::bad("both Content-Length and Transfer-Encoding"))
    } else {
        None
    };
    let next = match (chunked_last, length) {
        (Some(true), _) => Scan::Chunk(Chunk::Size { size: 0, digits: 0 }),
        (Some(false), _) => Scan::Stopped,
        (None, Some(0)) => Scan::Head,
        (None, Some(n)) => Scan::Length(n),
        (None, None) if lengths > 0 => Scan::Stopped,
        (None, None) => Scan::Head,
    };
    let target = request.path.unwrap_or_default();
    let verdict = RawVerdict {
        method: request.method.unwrap_or_default().to_owned(),
        target: target[..target.len().min(MAX_TARGET)].to_owned(),
        violation,
    };
    (verdict, next)
}

/// One byte of chunked framing (everything but chunk data).
fn chunk_step(state: Chunk, byte: u8) -> Scan {
    let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
    let next = match (state, byte) {
        (Chunk::Size { size, digits }, b) if hex(b).is_some() => {
            let Some(size) = size
                .checked_mul(16)
                .and_then(|s| s.checked_add(hex(b).unwrap_or(0)))
            else {
                return Scan::Stopped;
            };
            Chunk::Size {
                size,
                digits: digits.saturating_add(1),
            }
        }
        (Chunk::Size { digits: 0, .. }, _) => return Scan::Stopped,
        (Chunk::Size { size, .. } | Chunk::SizeLws { size }, b' ' | b'\t') => {
            Chunk::SizeLws { size }
        }
        (Chunk::Size { size, .. } | Chunk::SizeLws { size }, b';') => Chunk::Ext { size },
        (Chunk::Size { size, .. } | Chunk::SizeLws { size } | Chunk::Ext { size }, b'\r') => {
            Chunk::SizeLf { size }
        }
        (Chunk::Ext { .. }, b'\n') => return Scan::Stopped,
        (Chunk::Ext { size }, _) => Chunk::Ext { size },
        (Chunk::SizeLf { size: 0 }, b'\n') => Chunk::TrailerStart,
        (Chunk::SizeLf { size }, b'\n') => Chunk::Data(size),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
        (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
        (Chunk::TrailerStart | Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
        (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
        (Chunk::EndLf, b'\n') => return Scan::Head,
        _ => return Scan::Stopped,
    };
    Scan::Chunk(next)
}

/// `1*tchar` (RFC 9110 §5.6.2).
pub fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(
        method: &str,
        target: &str,
        version: Version,
        fields: &[(&str, &[u8])],
    ) -> Result<Routing, Violation> {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        check_head(&method, &target.parse().unwrap(), version, &headers)
    }

    fn status(result: Result<Routing, Violation>) -> u16 {
        match result {
            Ok(_) => 200,
            Err(v) => v.status.as_u16(),
        }
    }

    const V11: Version = Version::HTTP_11;

    #[test]
    fn target_forms_go_with_their_methods() {
        let host: &[(&str, &[u8])] = &[("host", b"h")];
        assert_eq!(head("GET", "/a?b", V11, host), Ok(Routing::App));
        assert_eq!(head("GET", "http://h/a", V11, host), Ok(Routing::App));
        assert_eq!(head("OPTIONS", "*", V11, host), Ok(Routing::ServerOptions));
        assert_eq!(head("CONNECT", "h:443", V11, host), Ok(Routing::Connect));
        assert_eq!(status(head("GET", "*", V11, host)), 400);
        assert_eq!(status(head("GET", "h:443", V11, host)), 400);
        assert_eq!(status(head("CONNECT", "/a", V11, host)), 400);
    }

    #[test]
    fn host_rules() {
        assert_eq!(status(head("GET", "/", V11, &[])), 400);
        assert_eq!(status(head("GET", "/", Version::HTTP_10, &[])), 200);
        assert_eq!(
            status(head("GET", "/", V11, &[("host", b"a"), ("host", b"a")])),
            400
        );
        for good in [
            &b""[..],
            b"a",
            b"a.b-c:80",
            b"[::1]:8080",
            b"127.0.0.1",
            b"xn--d1a%41",
        ] {
            assert!(is_host(good), "{good:?}");
        }
        for bad in [
            &b"a b"[..],
            b"a/b",
            b"u@a",
            b"a:8x",
            b"[::1",
            b"[zz]",
            b"a:1:2",
        ] {
            assert!(!is_host(bad), "{bad:?}");
        }
    }

    #[test]
    fn length_rules() {
        let h = |fields: &[(&str, &[u8])]| {
            let mut all: Vec<(&str, &[u8])> = vec![("host", b"h")];
            all.extend_from_slice(fields);
            status(head("POST", "/", V11, &all))
        };
        assert_eq!(h(&[("content-length", b"5")]), 200);
        assert_eq!(h(&[("transfer-encoding", b"chunked")]), 200);
        assert_eq!(h(&[("transfer-encoding", b" Chunked ")]), 200);
        assert_eq!(
            h(&[("content-length", b"5"), ("content-length", b"5")]),
            400
        );
        assert_eq!(h(&[("content-length", b"5, 5")]), 400);
        assert_eq!(h(&[("content-length", b"+5")]), 400);
        assert_eq!(h(&[("content-length", b"99999999999999999999")]), 400);
        assert_eq!(
            h(&[("content-length", b"5"), ("transfer-encoding", b"chunked")]),
            400
        );
        assert_eq!(h(&[("transfer-encoding", b"chunked, gzip")]), 400);
        assert_eq!(h(&[("transfer-encoding", b"identity")]), 400);
        assert_eq!(
            h(&[
                ("transfer-encoding", b"chunked"),
                ("transfer-encoding", b"chunked")
            ]),
            400
        );
        assert_eq!(h(&[("transfer-encoding", b"gzip, chunked")]), 501);
        assert_eq!(h(&[("transfer-encoding", b"chunked;x=1")]), 400);
        assert_eq!(h(&[("transfer-encoding", b",")]), 400);
        let te = &[("transfer-encoding", &b"chunked"[..])];
        assert_eq!(status(head("POST", "/", Version::HTTP_10, te)), 400);
    }

    #[test]
    fn tokens_and_control_characters() {
        let h = |value: &[u8]| status(head("GET", "/", V11, &[("host", b"h"), ("x", value)]));
        assert_eq!(h(b"a\tb \x80\xff"), 200);
        assert!(check_field(b"x", b"a\x01b").is_err());
        assert!(check_field(b"x", b"a\x7fb").is_err());
        assert!(check_field(b"x y", b"a").is_err());
        assert!(is_token(b"PURGE"));
        assert!(!is_token(b"GE(T"));
        assert!(!is_token(b""));
    }

    fn scan(pieces: &[&[u8]]) -> (Vec<RawVerdict>, bool) {
        let mut scanner = StreamScanner::new(64 * 1024, 100);
        for piece in pieces {
            scanner.feed(piece);
        }
        let stopped = scanner.stopped();
        (
            std::iter::from_fn(|| scanner.next_verdict()).collect(),
            stopped,
        )
    }

    #[test]
    fn the_scanner_follows_bodies_to_the_next_head() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
        let (whole, stopped) = scan(&[stream]);
        assert!(!stopped);
        let targets: Vec<&str> = whole.iter().map(|v| v.target.as_str()).collect();
        assert_eq!(targets, ["/a", "/b", "/c"]);
        assert!(whole.iter().all(|v| v.violation.is_none()));
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(scan(&bytes).0, whole);
    }

    #[test]
    fn empty_lines_before_a_request_line_are_not_a_head() {
        // A head after leading empty lines is judged however the stream is split, and one
        // that hyper refuses (a control character in the method) stops the scanner either way.
        let good: &[u8] = b"\r\n\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let bad: &[u8] = b"\r\n\r\nE\x01\x04G / HTTP/1.1\r\n\r\n";
        let unfinished: &[u8] = b"\r\n\r\nE\x01\x04G";
        for stream in [good, bad, unfinished] {
            let whole = scan(&[stream]);
            let pieces: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(scan(&pieces), whole, "{stream:?}");
        }
        let (v, stopped) = scan(&[good]);
        assert!(!stopped);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].method, "GET");
        assert!(v[0].violation.is_none());
        assert!(scan(&[bad]).1);
    }

    #[test]
    fn the_scanner_sees_what_hyper_hides() {
        let (v, stopped) = scan(&[b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"]);
        assert_eq!(
            v[0].violation.map(|v| v.reason),
            Some("both Content-Length and Transfer-Encoding")
        );
        assert!(stopped);
        let (v, _) = scan(&[
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ]);
        assert_eq!(
            v[0].violation.map(|v| v.reason),
            Some("more than one Content-Length field")
        );
        let (_, stopped) = scan(&[
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n",
        ]);
        assert!(stopped);
    }

    #[test]
    fn cgi_param_rules() {
        let check = |pairs: &[(&[u8], &[u8])]| {
            check_cgi_params(pairs.iter().copied()).map_err(|v| v.reason)
        };
        assert_eq!(
            check(&[
                (b"CONTENT_LENGTH", b"12"),
                (b"REQUEST_METHOD", b"POST"),
                (b"HTTP_HOST", b"a:80")
            ]),
            Ok(())
        );
        assert_eq!(check(&[(b"CONTENT_LENGTH", b"")]), Ok(()));
        assert!(check(&[(b"CONTENT_LENGTH", b"12abc")]).is_err());
        assert!(check(&[(b"CONTENT_LENGTH", b"-1")]).is_err());
        assert!(check(&[(b"REQUEST_METHOD", b"GE T")]).is_err());
        assert!(check(&[(b"HTTP_HOST", b"a/b")]).is_err());
        assert!(check(&[(b"HTTP_X", b"a\x01")]).is_err());
        assert!(check(&[(b"REQUEST_URI", b"/a b")]).is_err());
    }

    #[test]
    fn trailer_rules() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
        assert_eq!(check_trailers(&trailers), Ok(()));
        for name in [
            "content-length",
            "host",
            "transfer-encoding",
            "authorization",
        ] {
            let mut bad = trailers.clone();
            bad.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static("1"),
            );
            assert_eq!(
                check_trailers(&bad).map_err(|v| v.status.as_u16()),
                Err(400)
            );
        }
    }
}

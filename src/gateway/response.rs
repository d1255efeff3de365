//! The CGI response head (RFC 3875 section 6) a worker writes at the start of its STDOUT
//! stream, turned into an HTTP status and header map for the front door.
//!
//! Parsing is all-or-nothing: the head is only parsed once its terminating empty line has
//! arrived, so callers can simply retry with more bytes after `Incomplete`.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

/// The error type of streamed response bodies.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the host sends (the app's, streamed, and its own pages).
pub type ResponseBody = http_body_util::combinators::BoxBody<Bytes, BodyError>;

/// Largest response head (including its terminating empty line) a worker may send.
pub const MAX_HEAD: usize = 64 * 1024;

/// How many bytes of an offending line an error message quotes.
const QUOTE_MAX: usize = 200;

/// Hop-by-hop headers a worker must not set; hyper frames the body and manages the connection.
const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
    b"te",
    b"trailer",
];

/// The HTTP view of a CGI response head.
#[derive(Debug, Clone, PartialEq)]
pub struct CgiHead {
    /// From `Status:`; 302 when only `Location:` is given; 200 otherwise.
    pub status: StatusCode,
    /// Every other header line, repeated names kept as separate values, hop-by-hop removed.
    pub headers: HeaderMap,
}

/// Outcome of looking at the start of a STDOUT stream.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadParse {
    /// No empty line yet: read more STDOUT and call again with the longer buffer.
    Incomplete,
    /// The head is complete; the body starts at `body_offset` in the buffer.
    Complete {
        /// The parsed head.
        head: CgiHead,
        /// Offset of the first body byte (just after the empty line).
        body_offset: usize,
    },
}

/// Why a worker's response head is unusable (the front door answers 502 and logs this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgiHeadError {
    /// No empty line within the first `max` bytes.
    #[error("CGI response head exceeds {max} bytes without the empty line that ends it")]
    TooLarge {
        /// The limit, `MAX_HEAD`.
        max: usize,
    },
    /// A line starting with space or tab (obsolete header folding, RFC 9112 5.2).
    #[error(
        "CGI response head line {line}: continuation lines (obs-fold) are not allowed: \"{text}\""
    )]
    ObsFold {
        /// 1-based line number.
        line: usize,
        /// The line, escaped and shortened.
        text: String,
    },
    /// A line without `:`.
    #[error("CGI response head line {line} is not a `Name: value` header: \"{text}\"")]
    MissingColon {
        /// 1-based line number.
        line: usize,
        /// The line, escaped and shortened.
        text: String,
    },
    /// A header name that is not an HTTP token.
    #[error("CGI response head line {line} has an invalid header name: \"{text}\"")]
    InvalidName {
        /// 1-based line number.
        line: usize,
        /// The line, escaped and shortened.
        text: String,
    },
    /// A header value with control characters.
    #[error("CGI response head line {line} has an invalid header value: \"{text}\"")]
    InvalidValue {
        /// 1-based line number.
        line: usize,
        /// The line, escaped and shortened.
        text: String,
    },
    /// A `Status:` that is not `NNN [reason]` with NNN in 200..=999.
    #[error("CGI response head line {line} has an invalid Status (expected `Status: NNN reason`, NNN from 200 to 999): \"{text}\"")]
    InvalidStatus {
        /// 1-based line number.
        line: usize,
        /// The line, escaped and shortened.
        text: String,
    },
    /// A second `Status:` line.
    #[error("CGI response head line {line} repeats the Status header: \"{text}\"")]
    DuplicateStatus {
        /// 1-based line number.
        line: usize,
        /// The line, escaped and shortened.
        text: String,
    },
}

/// Parses the CGI response head at the start of `buf` (the STDOUT stream so far).
///
/// Lines end with `\r\n` or `\n`; the head ends at the first empty line. Returns `Incomplete`
/// until that line has arrived, and an error once `MAX_HEAD` bytes hold no end of head or a
/// line is malformed.
pub fn parse_cgi_head(buf: &[u8]) -> Result<HeadParse, CgiHeadError> {
    let Some((head_end, body_offset)) = find_head_end(buf)? else {
        return Ok(HeadParse::Incomplete);
    };

    let mut headers = HeaderMap::new();
    let mut status = None;
    let mut has_location = false;
    let mut pos = 0;
    let mut line_no = 0;
    while pos < head_end {
        line_no += 1;
        // head_end is the start of the empty line, so every line before it ends with '\n'.
        let nl = buf[pos..head_end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head_end, |i| pos + i);
        let raw = &buf[pos..nl];
        pos = nl + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let err = |make: fn(usize, String) -> CgiHeadError| make(line_no, quote(line));

        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(err(|line, text| CgiHeadError::ObsFold { line, text }));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(err(|line, text| CgiHeadError::MissingColon { line, text }));
        };
        let name = &line[..colon];
        let value = trim_ows(&line[colon + 1..]);

        if name.eq_ignore_ascii_case(b"status") {
            if status.is_some() {
                return Err(err(|line, text| CgiHeadError::DuplicateStatus {
                    line,
                    text,
                }));
            }
            status = Some(
                parse_status(value)
                    .ok_or_else(|| err(|line, text| CgiHeadError::InvalidStatus { line, text }))?,
            );
            continue;
        }
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        let name = HeaderName::from_bytes(name)
            .map_err(|_| err(|line, text| CgiHeadError::InvalidName { line, text }))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| err(|line, text| CgiHeadError::InvalidValue { line, text }))?;
        if name == http::header::LOCATION && !value.is_empty() {
            has_location = true;
        }
        headers.append(name, value);
    }

    // RFC 3875 6.2.3/6.2.4: a redirect without Status is a 302. A local path (6.2.2, a
    // server-side redirect we do not perform) also becomes a 302, which clients follow.
    let status = status.unwrap_or(if has_location {
        StatusCode::FOUND
    } else {
        StatusCode::OK
    });
    Ok(HeadParse::Complete {
        head: CgiHead { status, headers },
        body_offset,
    })
}

/// Finds the empty line ending the head: `(start of the empty line, first body byte)`.
fn find_head_end(buf: &[u8]) -> Result<Option<(usize, usize)>, CgiHeadError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut line_start = 0;
    while let Some(i) = window[line_start..].iter().position(|&b| b == b'\n') {
        let nl = line_start + i;
        if matches!(&window[line_start..nl], b"" | b"\r") {
            return Ok(Some((line_start, nl + 1)));
        }
        line_start = nl + 1;
    }
    if buf.len() >= MAX_HEAD {
        return Err(CgiHeadError::TooLarge { max: MAX_HEAD });
    }
    Ok(None)
}

/// Parses a Status value: three digits, then the end or whitespace and an ignored reason.
fn parse_status(value: &[u8]) -> Option<StatusCode> {
    let code = value.get(..3)?;
    if !matches!(value.get(3), None | Some(b' ' | b'\t')) {
        return None;
    }
    let status = StatusCode::from_bytes(code).ok()?;
    (status.as_u16() >= 200).then_some(status)
}

/// Strips optional whitespace (SP / HTAB) from both ends.
fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// The offending line for an error message: escaped, at most `QUOTE_MAX` input bytes.
fn quote(line: &[u8]) -> String {
    let mut s = line[..line.len().min(QUOTE_MAX)].escape_ascii().to_string();
    if line.len() > QUOTE_MAX {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};

    fn complete(buf: &[u8]) -> (CgiHead, usize) {
        match parse_cgi_head(buf).unwrap() {
            HeadParse::Complete { head, body_offset } => (head, body_offset),
            HeadParse::Incomplete => panic!("incomplete: {buf:?}"),
        }
    }

    #[test]
    fn status_headers_and_body_offset() {
        let buf = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-A:  spaced value \t\r\n\r\nbody";
        let (head, off) = complete(buf);
        assert_eq!(head.status, StatusCode::NOT_FOUND);
        assert_eq!(head.headers[CONTENT_TYPE], "text/plain");
        assert_eq!(head.headers["x-a"], "spaced value");
        assert_eq!(head.headers.len(), 2);
        assert_eq!(&buf[off..], b"body");
    }

    #[test]
    fn status_forms() {
        for (line, code) in [
            ("Status: 201", 201),
            ("status:204 No Content", 204),
            ("STATUS: 599 Custom Thing", 599),
            ("Status:\t302\tFound", 302),
        ] {
            let buf = format!("{line}\n\n");
            assert_eq!(complete(buf.as_bytes()).0.status.as_u16(), code, "{line}");
        }
        for bad in [
            "Status: 99",
            "Status: 2000",
            "Status: abc",
            "Status: 100 Continue",
            "Status: 1000",
            "Status:",
            "Status: 20x",
        ] {
            let buf = format!("X: y\n{bad}\n\n");
            let err = parse_cgi_head(buf.as_bytes()).unwrap_err();
            assert!(
                matches!(err, CgiHeadError::InvalidStatus { line: 2, .. }),
                "{bad}: {err}"
            );
        }
        let err = parse_cgi_head(b"Status: 200\nStatus: 500\n\n").unwrap_err();
        assert!(matches!(err, CgiHeadError::DuplicateStatus { line: 2, .. }));
    }

    #[test]
    fn default_status_and_location_redirect() {
        let (head, _) = complete(b"Content-Type: text/html\n\n");
        assert_eq!(head.status, StatusCode::OK);
        let (head, _) = complete(b"Location: https://example.com/next\r\n\r\n");
        assert_eq!(head.status, StatusCode::FOUND);
        assert_eq!(head.headers[LOCATION], "https://example.com/next");
        let (head, _) = complete(b"Location: /local\r\n\r\n");
        assert_eq!(head.status, StatusCode::FOUND);
        let (head, _) = complete(b"Status: 301 Moved\r\nLocation: https://e.com/\r\n\r\n");
        assert_eq!(head.status, StatusCode::MOVED_PERMANENTLY);
        let (head, _) = complete(b"Location: https://e.com/\r\nStatus: 201 Created\r\n\r\n");
        assert_eq!(head.status, StatusCode::CREATED);
    }

    #[test]
    fn repeated_headers_kept_apart() {
        let (head, _) =
            complete(b"Status: 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2, c=3\r\n\r\n");
        let cookies: Vec<_> = head.headers.get_all(SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2, c=3"]);
    }

    #[test]
    fn lf_only_lines_and_mixed() {
        let buf = b"Status: 200 OK\nContent-Type: text/plain\r\nX-B: 1\n\nhello\n\nworld";
        let (head, off) = complete(buf);
        assert_eq!(head.headers.len(), 2);
        assert_eq!(&buf[off..], b"hello\n\nworld");
        let (head, off) = complete(b"\r\nbody");
        assert_eq!(
            (head.status, head.headers.len(), off),
            (StatusCode::OK, 0, 2)
        );
        let (_, off) = complete(b"\nbody");
        assert_eq!(off, 1);
    }

    #[test]
    fn hop_by_hop_dropped() {
        let (head, _) = complete(
            b"Status: 200 OK\r\nConnection: close\r\nKeep-Alive: timeout=5\r\n\
              Transfer-Encoding: chunked\r\nUpgrade: websocket\r\nTE: trailers\r\n\
              Trailer: X\r\nProxy-Connection: close\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(head.headers.len(), 1);
        assert_eq!(head.headers["content-length"], "5");
    }

    #[test]
    fn incomplete_until_empty_line() {
        let full = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nbody";
        let end = full.len() - 4;
        for cut in 0..end {
            assert_eq!(
                parse_cgi_head(&full[..cut]).unwrap(),
                HeadParse::Incomplete,
                "cut {cut}"
            );
        }
        assert_eq!(complete(&full[..end]).1, end);
    }

    #[test]
    fn too_long_head() {
        let mut buf = Vec::new();
        while buf.len() < MAX_HEAD {
            buf.extend_from_slice(b"X-Filler: 0123456789abcdef0123456789abcdef\r\n");
        }
        assert_eq!(
            parse_cgi_head(&buf).unwrap_err(),
            CgiHeadError::TooLarge { max: MAX_HEAD }
        );
        // Just under the limit, still waiting.
        assert_eq!(
            parse_cgi_head(&buf[..MAX_HEAD - 1]).unwrap(),
            HeadParse::Incomplete
        );
        // A terminator past the limit does not help.
        buf.extend_from_slice(b"\r\n");
        assert!(parse_cgi_head(&buf).is_err());
        // A head ending exactly at the limit is accepted.
        let mut exact = b"X: ".to_vec();
        exact.resize(MAX_HEAD - 2, b'a');
        exact.extend_from_slice(b"\n\n");
        assert_eq!(exact.len(), MAX_HEAD);
        assert_eq!(complete(&exact).1, MAX_HEAD);
    }

    #[test]
    fn invalid_lines_named() {
        type Check = fn(&CgiHeadError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"Status: 200\r\n folded\r\n\r\n", |e| {
                matches!(e, CgiHeadError::ObsFold { line: 2, .. })
            }),
            (b"X: a\r\n\tfolded\r\n\r\n", |e| {
                matches!(e, CgiHeadError::ObsFold { line: 2, .. })
            }),
            (b"no colon here\r\n\r\n", |e| {
                matches!(e, CgiHeadError::MissingColon { line: 1, .. })
            }),
            (b"Bad Name: x\r\n\r\n", |e| {
                matches!(e, CgiHeadError::InvalidName { line: 1, .. })
            }),
            (b": empty name\r\n\r\n", |e| {
                matches!(e, CgiHeadError::InvalidName { line: 1, .. })
            }),
            (b"X-A: 1\r\nX-B: a\x01b\r\n\r\n", |e| {
                matches!(e, CgiHeadError::InvalidValue { line: 2, .. })
            }),
            (b"X-A: a\rb\r\n\r\n", |e| {
                matches!(e, CgiHeadError::InvalidValue { line: 1, .. })
            }),
        ];
        for (buf, check) in cases {
            let err = parse_cgi_head(buf).unwrap_err();
            assert!(check(&err), "{buf:?}: {err:?}");
        }
        let err = parse_cgi_head(b"X-A: 1\r\nX-B: a\x01b\r\n\r\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "CGI response head line 2 has an invalid header value: \"X-B: a\\x01b\""
        );
    }

    #[test]
    fn error_quote_is_bounded() {
        let mut buf = vec![b'x'; 1000];
        buf.extend_from_slice(b"\n\n");
        let err = parse_cgi_head(&buf).unwrap_err();
        let CgiHeadError::MissingColon { line: 1, text } = err else {
            panic!("{err:?}")
        };
        assert_eq!(text.len(), QUOTE_MAX + 3);
    }

    #[test]
    fn obs_text_value_accepted() {
        let (head, _) = complete(b"X-Name: caf\xc3\xa9\r\n\r\n");
        assert_eq!(head.headers["x-name"].as_bytes(), b"caf\xc3\xa9");
    }
}

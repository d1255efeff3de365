//! HTTP request head → CGI/1.1 meta-variables (RFC 3875 section 4.1), written straight into
//! the FastCGI PARAMS stream of a request without intermediate strings.
//!
//! Header-derived variables follow what nginx and gunicorn do: one `HTTP_<NAME>` per header,
//! repeated headers joined, and header names that could be confused with other variables
//! (`Proxy` → `HTTP_PROXY`, names containing `_`) dropped.

use super::fcgi::ParamsWriter;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HOST};
use http::Version;
use percent_encoding::percent_decode;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

/// `SERVER_SOFTWARE`: the product token the application sees.
pub const SERVER_SOFTWARE: &str = concat!("fcgihost/", env!("CARGO_PKG_VERSION"));

/// What the gateway knows about a request beyond its HTTP head: the connection and the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The client's address (`REMOTE_ADDR`, `REMOTE_PORT`).
    pub remote: SocketAddr,
    /// The address the request arrived on (`SERVER_ADDR`; fallback for name and port).
    pub local: SocketAddr,
    /// Whether the client connection is TLS (`HTTPS=on`, `REQUEST_SCHEME=https`).
    pub https: bool,
    /// `SERVER_NAME` override; without it the Host header's host part, else the local IP.
    pub server_name: Option<String>,
    /// Mount prefix split off the path into `SCRIPT_NAME` (e.g. `/app`); "" when mounted at
    /// the root. A trailing `/` is ignored; the match is ASCII case-insensitive (wfastcgi's,
    /// as IIS paths are).
    pub script_name: String,
    /// The host a trusted proxy says the client asked for (`X-Forwarded-Host`, `Forwarded:
    /// host=`): replaces the Host header in `HTTP_HOST`, `SERVER_NAME` and `SERVER_PORT` (443
    /// or 80 by scheme when it names no port).
    pub host: Option<String>,
}

impl RequestContext {
    /// A context for a plain-HTTP connection, mounted at the root, with no name override.
    pub fn new(remote: SocketAddr, local: SocketAddr) -> Self {
        Self {
            remote,
            local,
            https: false,
            server_name: None,
            script_name: String::new(),
            host: None,
        }
    }
}

/// Writes the CGI/1.1 meta-variables of one request into its PARAMS stream.
///
/// `content_length` is the request body length when known (it becomes `CONTENT_LENGTH`; the
/// variable is omitted otherwise). The caller still has to call `finish()` on the writer.
pub fn write_params(
    w: &mut ParamsWriter<'_>,
    parts: &http::request::Parts,
    ctx: &RequestContext,
    content_length: Option<u64>,
) {
    let mut num = StackStr::new();
    // One allocation for the whole stream: fixed variables, path twice, every header.
    w.reserve(
        512 + parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) * 2
            + parts
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 16)
                .sum::<usize>(),
    );

    w.push(b"GATEWAY_INTERFACE", b"CGI/1.1");
    w.push(b"SERVER_SOFTWARE", SERVER_SOFTWARE.as_bytes());
    w.push(b"REQUEST_METHOD", parts.method.as_str().as_bytes());

    write_path(w, parts.uri.path().as_bytes(), ctx.script_name.as_bytes());
    w.push(
        b"QUERY_STRING",
        parts.uri.query().unwrap_or_default().as_bytes(),
    );
    let request_uri = match parts.uri.path_and_query() {
        Some(pq) => pq.as_str(),
        None => parts.uri.path(),
    };
    w.push(b"REQUEST_URI", request_uri.as_bytes());

    if let Some(ct) = parts.headers.get(CONTENT_TYPE) {
        w.push(b"CONTENT_TYPE", ct.as_bytes());
    }
    if let Some(len) = content_length {
        w.push(b"CONTENT_LENGTH", num.format(len));
    }

    // A trusted proxy's host wins; then, per RFC 9112 3.2.2, an absolute-form target's
    // authority wins over the Host header.
    let (host, host_port) = match (&ctx.host, parts.uri.authority()) {
        (Some(forwarded), _) => split_host_port(forwarded.as_bytes()),
        (None, Some(a)) => {
            split_host_port(a.as_str().rsplit('@').next().unwrap_or_default().as_bytes())
        }
        (None, None) => parts
            .headers
            .get(HOST)
            .map_or((&b""[..], None), |h| split_host_port(h.as_bytes())),
    };
    let local_ip = canonical(ctx.local.ip());
    match (&ctx.server_name, host.is_empty()) {
        (Some(name), _) => w.push(b"SERVER_NAME", name.as_bytes()),
        (None, false) => w.push(b"SERVER_NAME", host),
        (None, true) => w.push(b"SERVER_NAME", num.format(UrlHost(local_ip))),
    }
    match host_port {
        Some(port) => w.push(b"SERVER_PORT", port),
        None if ctx.host.is_some() => {
            w.push(b"SERVER_PORT", if ctx.https { b"443" } else { b"80" })
        }
        None => w.push(b"SERVER_PORT", num.format(ctx.local.port())),
    }
    w.push(b"SERVER_PROTOCOL", protocol(parts.version));
    w.push(b"SERVER_ADDR", num.format(local_ip));
    w.push(b"REMOTE_ADDR", num.format(canonical(ctx.remote.ip())));
    // Port 0: a proxy named the client without its port.
    if ctx.remote.port() != 0 {
        w.push(b"REMOTE_PORT", num.format(ctx.remote.port()));
    }
    if ctx.https {
        w.push(b"HTTPS", b"on");
        w.push(b"REQUEST_SCHEME", b"https");
    } else {
        w.push(b"REQUEST_SCHEME", b"http");
    }

    write_headers(w, &parts.headers, ctx.host.as_deref());
}

/// Writes `SCRIPT_NAME` and `PATH_INFO`: the mount prefix is split off when the decoded path
/// starts with it at a segment boundary; `PATH_INFO` is the rest, percent-decoded to raw bytes.
fn write_path(w: &mut ParamsWriter<'_>, raw_path: &[u8], script_name: &[u8]) {
    let prefix = mount_prefix(script_name);
    let encoded = raw_path.contains(&b'%');
    let matched = if encoded {
        mounted_under(percent_decode(raw_path), prefix)
    } else {
        mounted_under(raw_path.iter().copied(), prefix)
    };
    let (script, skip) = if matched {
        (prefix, prefix.len())
    } else {
        (&b""[..], 0)
    };
    w.push(b"SCRIPT_NAME", script);
    if encoded {
        let len = percent_decode(raw_path).count() - skip;
        w.push_with(b"PATH_INFO".len(), len, |s| {
            s.put(b"PATH_INFO");
            s.put_iter(percent_decode(raw_path).skip(skip));
        });
    } else {
        w.push(b"PATH_INFO", &raw_path[skip..]);
    }
}

/// Splits the mount prefix `script_name` off an already decoded path, by the same rule as
/// the HTTP front door: `(SCRIPT_NAME, PATH_INFO)`. The FastCGI front door applies it to
/// the path a web server sent.
pub fn split_script_name<'p>(
    decoded_path: &'p [u8],
    script_name: &'p [u8],
) -> (&'p [u8], &'p [u8]) {
    let prefix = mount_prefix(script_name);
    if mounted_under(decoded_path.iter().copied(), prefix) {
        (prefix, &decoded_path[prefix.len()..])
    } else {
        (b"", decoded_path)
    }
}

/// The mount prefix without its trailing slashes ("" for the root).
fn mount_prefix(script_name: &[u8]) -> &[u8] {
    let mut prefix = script_name;
    while let [rest @ .., b'/'] = prefix {
        prefix = rest;
    }
    prefix
}

/// Whether a decoded path starts with a non-empty `prefix` (ASCII case-insensitive, as IIS
/// and wfastcgi match it) at a segment boundary.
fn mounted_under(mut decoded: impl Iterator<Item = u8>, prefix: &[u8]) -> bool {
    !prefix.is_empty()
        && prefix
            .iter()
            .all(|p| decoded.next().is_some_and(|d| d.eq_ignore_ascii_case(p)))
        && matches!(decoded.next(), None | Some(b'/'))
}

/// Writes one `HTTP_<NAME>` per header name, values joined with ", " (cookies with "; ").
/// `host` (a trusted proxy's) replaces the Host header.
fn write_headers(w: &mut ParamsWriter<'_>, headers: &http::HeaderMap, host: Option<&str>) {
    if let Some(host) = host {
        w.push(b"HTTP_HOST", host.as_bytes());
    }
    for name in headers.keys() {
        let key = name.as_str().as_bytes();
        // CONTENT_* are already set; HTTP_PROXY would poison proxy settings (httpoxy); a name
        // with '_' would collide with its '-' twin after the mapping below.
        if name == CONTENT_TYPE
            || name == CONTENT_LENGTH
            || key == b"proxy"
            || key.contains(&b'_')
            || (name == HOST && host.is_some())
        {
            continue;
        }
        let sep: &[u8] = if name == COOKIE { b"; " } else { b", " };
        let values = headers.get_all(name);
        let mut len = 0;
        for (i, v) in values.iter().enumerate() {
            len += v.len() + if i > 0 { sep.len() } else { 0 };
        }
        w.push_with(b"HTTP_".len() + key.len(), len, |s| {
            s.put(b"HTTP_");
            s.put_mapped(key, |b| match b {
                b'-' => b'_',
                _ => b.to_ascii_uppercase(),
            });
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    s.put(sep);
                }
                s.put(v.as_bytes());
            }
        });
    }
}

/// Splits a Host value into host (IPv6 literals keep their brackets) and a numeric port.
/// A port that is not a decimal `u16` is treated as absent. Public for the FastCGI front door,
/// which derives `SERVER_NAME`/`SERVER_PORT` from a trusted proxy's host the same way.
pub fn split_host_port(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    let (host, port) = if value.first() == Some(&b'[') {
        match value.iter().position(|&b| b == b']') {
            Some(end) => (&value[..=end], value[end + 1..].strip_prefix(b":")),
            None => (value, None),
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let valid = |p: &&[u8]| {
        !p.is_empty()
            && p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= 65535
    };
    (host, port.filter(valid))
}

/// Unwraps IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) that dual-stack sockets report.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// `SERVER_PROTOCOL` for an HTTP version.
fn protocol(version: Version) -> &'static [u8] {
    match version {
        Version::HTTP_09 => b"HTTP/0.9",
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_2 => b"HTTP/2.0",
        Version::HTTP_3 => b"HTTP/3.0",
        _ => b"HTTP/1.1",
    }
}

/// Displays an IP as it appears in a URL host: IPv6 in brackets.
struct UrlHost(IpAddr);

impl fmt::Display for UrlHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => ip.fmt(f),
            IpAddr::V6(ip) => write!(f, "[{ip}]"),
        }
    }
}

/// A small stack buffer to format numbers and addresses without allocating.
struct StackStr {
    buf: [u8; 64],
    len: usize,
}

impl StackStr {
    fn new() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }

    /// Formats `value` into the buffer (replacing what was there) and returns the bytes.
    /// Everything formatted here (IPs, ports, u64) fits; overflow would only truncate.
    fn format(&mut self, value: impl fmt::Display) -> &[u8] {
        self.len = 0;
        let _ = write!(self, "{value}");
        &self.buf[..self.len]
    }
}

impl fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fcgi::{parse_name_values, RecordDecoder, RecordType};
    use super::*;
    use bytes::BytesMut;
    use std::collections::HashMap;

    fn ctx() -> RequestContext {
        RequestContext::new(
            "203.0.113.7:54321".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        )
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &[u8])]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, http::HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap().into_parts().0
    }

    /// Runs write_params and decodes the PARAMS stream back into an ordered list of pairs.
    fn params(
        parts: &http::request::Parts,
        ctx: &RequestContext,
        len: Option<u64>,
    ) -> Vec<(String, Vec<u8>)> {
        let mut buf = BytesMut::new();
        let mut w = ParamsWriter::new(&mut buf, 1);
        write_params(&mut w, parts, ctx, len);
        w.finish();
        let mut dec = RecordDecoder::default();
        let mut content = Vec::new();
        let mut terminated = false;
        while let Some(r) = dec.decode(&mut buf).unwrap() {
            assert_eq!(r.kind, RecordType::Params);
            assert!(!terminated);
            terminated = r.content.is_empty();
            content.extend_from_slice(&r.content);
        }
        assert!(terminated && buf.is_empty());
        let pairs = parse_name_values(&content).unwrap();
        pairs
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n.to_vec()).unwrap(), v.to_vec()))
            .collect()
    }

    fn map(pairs: Vec<(String, Vec<u8>)>) -> HashMap<String, Vec<u8>> {
        let n = pairs.len();
        let m: HashMap<_, _> = pairs.into_iter().collect();
        assert_eq!(m.len(), n, "duplicate variable");
        m
    }

    fn get<'m>(m: &'m HashMap<String, Vec<u8>>, k: &str) -> &'m [u8] {
        m.get(k).unwrap_or_else(|| panic!("{k} missing"))
    }

    #[test]
    fn representative_request() {
        let parts = request(
            "POST",
            "/app/caf%C3%A9/a%2Fb%FF?x=1&y=%20z",
            &[
                ("Host", b"example.com:8443"),
                ("Content-Type", b"application/json"),
                ("Content-Length", b"2"),
                ("Accept", b"text/html"),
                ("Accept", b"application/json"),
                ("Cookie", b"a=1"),
                ("Cookie", b"b=2"),
                ("X-Forwarded-For", b"198.51.100.1"),
                ("X_Forwarded_For", b"evil"),
                ("Proxy", b"http://evil:1"),
                ("User-Agent", b"t\xe9st"),
            ],
        );
        let mut c = ctx();
        c.script_name = "/app".into();
        let m = map(params(&parts, &c, Some(2)));
        let want: &[(&str, &[u8])] = &[
            ("GATEWAY_INTERFACE", b"CGI/1.1"),
            ("SERVER_SOFTWARE", SERVER_SOFTWARE.as_bytes()),
            ("REQUEST_METHOD", b"POST"),
            ("SCRIPT_NAME", b"/app"),
            ("PATH_INFO", b"/caf\xc3\xa9/a/b\xff"),
            ("QUERY_STRING", b"x=1&y=%20z"),
            ("REQUEST_URI", b"/app/caf%C3%A9/a%2Fb%FF?x=1&y=%20z"),
            ("CONTENT_TYPE", b"application/json"),
            ("CONTENT_LENGTH", b"2"),
            ("SERVER_NAME", b"example.com"),
            ("SERVER_PORT", b"8443"),
            ("SERVER_PROTOCOL", b"HTTP/1.1"),
            ("SERVER_ADDR", b"10.0.0.2"),
            ("REMOTE_ADDR", b"203.0.113.7"),
            ("REMOTE_PORT", b"54321"),
            ("REQUEST_SCHEME", b"http"),
            ("HTTP_HOST", b"example.com:8443"),
            ("HTTP_ACCEPT", b"text/html, application/json"),
            ("HTTP_COOKIE", b"a=1; b=2"),
            ("HTTP_X_FORWARDED_FOR", b"198.51.100.1"),
            ("HTTP_USER_AGENT", b"t\xe9st"),
        ];
        for (k, v) in want {
            assert_eq!(get(&m, k), *v, "{k}");
        }
        assert_eq!(m.len(), want.len(), "unexpected extras: {:?}", m.keys());
        for absent in [
            "HTTPS",
            "HTTP_PROXY",
            "HTTP_CONTENT_TYPE",
            "HTTP_CONTENT_LENGTH",
        ] {
            assert!(!m.contains_key(absent), "{absent}");
        }
        assert!(SERVER_SOFTWARE.starts_with("fcgihost/"));
    }

    #[test]
    fn minimal_get_defaults() {
        let parts = request("GET", "/", &[]);
        let pairs = params(&parts, &ctx(), None);
        // The fixed variables come first, in a stable order.
        assert_eq!(pairs[0].0, "GATEWAY_INTERFACE");
        let m = map(pairs);
        assert_eq!(get(&m, "SCRIPT_NAME"), b"");
        assert_eq!(get(&m, "PATH_INFO"), b"/");
        assert_eq!(get(&m, "QUERY_STRING"), b"");
        assert_eq!(get(&m, "REQUEST_URI"), b"/");
        assert_eq!(get(&m, "SERVER_NAME"), b"10.0.0.2");
        assert_eq!(get(&m, "SERVER_PORT"), b"8080");
        assert!(!m.contains_key("CONTENT_TYPE"));
        assert!(!m.contains_key("CONTENT_LENGTH"));
        assert!(!m.contains_key("HTTPS"));
    }

    #[test]
    fn script_name_split_at_segment_boundary() {
        let cases: &[(&str, &str, &[u8], &[u8])] = &[
            ("/app", "/app", b"/app", b""),
            ("/app", "/app/", b"/app", b"/"),
            ("/app", "/app/x/y", b"/app", b"/x/y"),
            ("/app", "/application", b"", b"/application"),
            ("/app", "/application/x", b"", b"/application/x"),
            ("/app", "/ap", b"", b"/ap"),
            ("/app", "/other", b"", b"/other"),
            ("/app/", "/app/x", b"/app", b"/x"),
            ("/app", "/%61pp/x", b"/app", b"/x"),
            ("/app", "/app%2Fx", b"/app", b"/x"),
            ("/app", "/app%20x", b"", b"/app x"),
            ("/", "/x", b"", b"/x"),
            ("", "/x%2fy", b"", b"/x/y"),
            // wfastcgi (and IIS) match the mount case-insensitively; SCRIPT_NAME is the
            // configured one.
            ("/App", "/aPP/x", b"/App", b"/x"),
            ("/app", "/%41PP", b"/app", b""),
        ];
        for (prefix, path, script, info) in cases {
            let mut c = ctx();
            c.script_name = (*prefix).into();
            let m = map(params(&request("GET", path, &[]), &c, None));
            assert_eq!(get(&m, "SCRIPT_NAME"), *script, "{prefix} {path}");
            assert_eq!(get(&m, "PATH_INFO"), *info, "{prefix} {path}");
            assert_eq!(get(&m, "REQUEST_URI"), path.as_bytes());
        }
    }

    #[test]
    fn split_script_name_on_decoded_paths() {
        assert_eq!(
            split_script_name(b"/app/x", b"/app/"),
            (&b"/app"[..], &b"/x"[..])
        );
        assert_eq!(
            split_script_name(b"/APP", b"/app"),
            (&b"/app"[..], &b""[..])
        );
        assert_eq!(
            split_script_name(b"/apps", b"/app"),
            (&b""[..], &b"/apps"[..])
        );
        assert_eq!(split_script_name(b"/x", b""), (&b""[..], &b"/x"[..]));
        assert_eq!(split_script_name(b"", b"/app"), (&b""[..], &b""[..]));
    }

    #[test]
    fn forwarded_host_and_unknown_client_port() {
        let parts = request(
            "GET",
            "/",
            &[("Host", b"127.0.0.1:8000"), ("Accept", b"*/*")],
        );
        let mut c = ctx();
        c.remote = "198.51.100.4:0".parse().unwrap();
        c.host = Some("www.example.com".into());
        c.https = true;
        let m = map(params(&parts, &c, None));
        assert_eq!(get(&m, "HTTP_HOST"), b"www.example.com");
        assert_eq!(get(&m, "SERVER_NAME"), b"www.example.com");
        assert_eq!(get(&m, "SERVER_PORT"), b"443");
        assert_eq!(get(&m, "REMOTE_ADDR"), b"198.51.100.4");
        assert!(!m.contains_key("REMOTE_PORT"));
        assert_eq!(get(&m, "HTTPS"), b"on");

        c.host = Some("[2001:db8::1]:8443".into());
        c.https = false;
        let m = map(params(&parts, &c, None));
        assert_eq!(get(&m, "HTTP_HOST"), b"[2001:db8::1]:8443");
        assert_eq!(get(&m, "SERVER_NAME"), b"[2001:db8::1]");
        assert_eq!(get(&m, "SERVER_PORT"), b"8443");
        c.host = Some("plain.example".into());
        let m = map(params(&parts, &c, None));
        assert_eq!(get(&m, "SERVER_PORT"), b"80");
    }

    #[test]
    fn https_override_and_http10() {
        let mut parts = request("GET", "/", &[("Host", b"[2001:db8::1]:444")]);
        parts.version = Version::HTTP_10;
        let mut c = ctx();
        c.https = true;
        let m = map(params(&parts, &c, Some(0)));
        assert_eq!(get(&m, "HTTPS"), b"on");
        assert_eq!(get(&m, "REQUEST_SCHEME"), b"https");
        assert_eq!(get(&m, "SERVER_PROTOCOL"), b"HTTP/1.0");
        assert_eq!(get(&m, "SERVER_NAME"), b"[2001:db8::1]");
        assert_eq!(get(&m, "SERVER_PORT"), b"444");
        assert_eq!(get(&m, "CONTENT_LENGTH"), b"0");

        c.server_name = Some("canonical.example".into());
        let m = map(params(&parts, &c, None));
        assert_eq!(get(&m, "SERVER_NAME"), b"canonical.example");
        assert_eq!(get(&m, "SERVER_PORT"), b"444");
    }

    #[test]
    fn addresses_ipv6_and_mapped() {
        let c = RequestContext::new(
            "[::ffff:192.0.2.9]:1000".parse().unwrap(),
            "[2001:db8::2]:9000".parse().unwrap(),
        );
        let m = map(params(&request("GET", "/", &[]), &c, None));
        assert_eq!(get(&m, "REMOTE_ADDR"), b"192.0.2.9");
        assert_eq!(get(&m, "REMOTE_PORT"), b"1000");
        assert_eq!(get(&m, "SERVER_ADDR"), b"2001:db8::2");
        assert_eq!(get(&m, "SERVER_NAME"), b"[2001:db8::2]");
        assert_eq!(get(&m, "SERVER_PORT"), b"9000");
    }

    #[test]
    fn host_without_or_with_bad_port() {
        for (host, name, port) in [
            (&b"example.com"[..], &b"example.com"[..], &b"8080"[..]),
            (b"example.com:", b"example.com", b"8080"),
            (b"example.com:99999", b"example.com", b"8080"),
            (b"example.com:8x", b"example.com", b"8080"),
            (b"[::1]", b"[::1]", b"8080"),
            (b"", b"10.0.0.2", b"8080"),
        ] {
            let m = map(params(
                &request("GET", "/", &[("Host", host)]),
                &ctx(),
                None,
            ));
            assert_eq!(get(&m, "SERVER_NAME"), name, "{host:?}");
            assert_eq!(get(&m, "SERVER_PORT"), port, "{host:?}");
        }
    }

    #[test]
    fn absolute_form_target() {
        let parts = request(
            "GET",
            "http://user@target.example:81/p%20q?z",
            &[("Host", b"other")],
        );
        let m = map(params(&parts, &ctx(), None));
        assert_eq!(get(&m, "SERVER_NAME"), b"target.example");
        assert_eq!(get(&m, "SERVER_PORT"), b"81");
        assert_eq!(get(&m, "PATH_INFO"), b"/p q");
        assert_eq!(get(&m, "QUERY_STRING"), b"z");
        assert_eq!(get(&m, "REQUEST_URI"), b"/p%20q?z");
        assert_eq!(get(&m, "HTTP_HOST"), b"other");
    }

    #[test]
    fn asterisk_and_authority_form() {
        let m = map(params(&request("OPTIONS", "*", &[]), &ctx(), None));
        assert_eq!(get(&m, "PATH_INFO"), b"*");
        assert_eq!(get(&m, "REQUEST_URI"), b"*");
        let m = map(params(
            &request("CONNECT", "example.com:443", &[]),
            &ctx(),
            None,
        ));
        assert_eq!(get(&m, "REQUEST_METHOD"), b"CONNECT");
        assert_eq!(get(&m, "SERVER_NAME"), b"example.com");
        assert_eq!(get(&m, "SERVER_PORT"), b"443");
    }

    #[test]
    fn large_header_value_spans_records() {
        let big = vec![b'x'; 100 * 1024];
        let parts = request("GET", "/", &[("X-Big", &big), ("X-Small", b"s")]);
        let m = map(params(&parts, &ctx(), None));
        assert_eq!(get(&m, "HTTP_X_BIG"), &big[..]);
        assert_eq!(get(&m, "HTTP_X_SMALL"), b"s");
    }

    #[test]
    fn long_encoded_path() {
        // http::Uri caps targets below 64 KiB, so a decoded path always fits one record.
        let path = "/%41".repeat(16_000);
        let m = map(params(&request("GET", &path, &[]), &ctx(), None));
        assert_eq!(get(&m, "PATH_INFO"), "/A".repeat(16_000).as_bytes());
    }
}

//! Who the client really is when fcgihost sits behind a proxy: the `trusted_proxies` list, and
//! the proxy headers (`X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`, IIS ARR's
//! `X-ARR-SSL`, RFC 7239 `Forwarded`, and IIS URL Rewrite's `X-Original-URL`) turned into the
//! client address, scheme and host the app should see. Pure: no I/O, no global state.
//!
//! The rules (also in docs/nginx.md):
//! - Nothing is believed unless the peer that sent the request is in `trusted_proxies`.
//! - The client is the rightmost address of `X-Forwarded-For` (else of `Forwarded: for=`) that
//!   is not itself a trusted proxy: entries to its left were written by whoever the client
//!   is and prove nothing. If every entry is trusted, the leftmost one is the client. An entry
//!   that is not an address (`unknown`, an obfuscated name, garbage) stops the walk and the
//!   peer stays the client.
//! - The scheme comes from `X-Forwarded-Proto` (its rightmost value: the one the nearest
//!   proxy wrote), else `X-ARR-SSL` (present means https), else the `proto=` of the
//!   `Forwarded` element that named the client.
//! - The host comes from `X-Forwarded-Host` (rightmost value), else the `host=` of that
//!   `Forwarded` element; like werkzeug's `ProxyFix(x_host=1)` it replaces `HTTP_HOST`,
//!   `SERVER_NAME` and `SERVER_PORT` (the port from the host value, else 443/80 by scheme).
//! - `X-Original-URL` (what IIS URL Rewrite puts the pre-rewrite URL in; wfastcgi served it
//!   as `PATH_INFO`) replaces the request target, also only from a trusted peer.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::HeaderMap;

/// One `trusted_proxies` entry: an address or a CIDR block (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `IP` or `IP/PREFIX`; host bits under the prefix are cleared (`10.1.2.3/8` is
    /// `10.0.0.0/8`).
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let t = text.trim();
        let (ip_text, prefix_text) = match t.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (t, None),
        };
        let bad =
            || format!("invalid address or CIDR block \"{t}\" (e.g. \"10.0.0.0/8\", \"::1\")");
        let ip_text = ip_text
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(ip_text);
        let addr: IpAddr = ip_text.parse().map_err(|_| bad())?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` lies in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix == max {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Clears the bits of `ip` below the first `prefix` bits.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & keep))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & keep))
        }
    }
}

/// The `trusted_proxies` setting: the peers whose proxy headers fcgihost believes.
///
/// It exists because anyone can send `X-Forwarded-For`: only a proxy the operator runs may
/// tell the app who the client is. The default is loopback (a proxy on the same machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    /// `*`: every peer is trusted (a private network where only the proxy can connect).
    all: bool,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self::loopback()
    }
}

impl TrustedProxies {
    /// `127.0.0.0/8` and `::1`: the default.
    pub fn loopback() -> Self {
        Self {
            nets: vec![
                IpNet {
                    addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                    prefix: 8,
                },
                IpNet {
                    addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
            all: false,
        }
    }

    /// Trusts no peer: proxy headers are passed to the app as plain `HTTP_*` only.
    pub fn none() -> Self {
        Self {
            nets: Vec::new(),
            all: false,
        }
    }

    /// Parses a list of addresses and CIDR blocks; `*` trusts every peer. An empty list
    /// trusts none.
    pub fn parse<'s>(items: impl IntoIterator<Item = &'s str>) -> Result<Self, String> {
        let mut out = Self::none();
        for item in items {
            let item = item.trim();
            if item == "*" {
                out.all = true;
            } else if !item.is_empty() {
                out.nets.push(IpNet::parse(item)?);
            }
        }
        Ok(out)
    }

    /// Parses the environment-variable form: entries separated by commas or whitespace.
    pub fn parse_text(text: &str) -> Result<Self, String> {
        Self::parse(text.split(|c: char| c == ',' || c.is_whitespace()))
    }

    /// Whether a peer at `ip` may set the client address, scheme and host.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.all || self.nets.iter().any(|n| n.contains(ip))
    }

    /// Whether no peer is trusted.
    pub fn is_empty(&self) -> bool {
        !self.all && self.nets.is_empty()
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("[] (none)");
        }
        f.write_str("[")?;
        let mut first = true;
        if self.all {
            f.write_str("\"*\"")?;
            first = false;
        }
        for net in &self.nets {
            if !first {
                f.write_str(", ")?;
            }
            write!(f, "\"{net}\"")?;
            first = false;
        }
        f.write_str("]")
    }
}

/// The client a trusted proxy names: its address and, when the proxy said, its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// `REMOTE_ADDR`.
    pub ip: IpAddr,
    /// `REMOTE_PORT`, when known (IIS ARR and `Forwarded` may include it).
    pub port: Option<u16>,
}

impl ClientAddr {
    /// As a socket address; port 0 stands for "unknown" (the gateway then omits
    /// `REMOTE_PORT`).
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port.unwrap_or(0))
    }
}

/// What the proxy headers of one request say, once the peer is known to be trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The client (`REMOTE_ADDR`, `REMOTE_PORT`); `None` keeps the peer.
    pub client: Option<ClientAddr>,
    /// The scheme the client used: `Some(true)` = https; `None` keeps the connection's.
    pub https: Option<bool>,
    /// The host the client asked for (`host[:port]`); `None` keeps the Host header.
    pub host: Option<String>,
    /// The pre-rewrite request target from `X-Original-URL` (origin form: `/path?query`).
    pub original_url: Option<Vec<u8>>,
}

impl Resolved {
    /// Whether the headers change nothing.
    pub fn is_empty(&self) -> bool {
        *self == Resolved::default()
    }
}

/// The proxy headers of one request, borrowed from an HTTP header map or from the
/// `HTTP_*` parameters a web server sent over FastCGI. Repeated headers keep their order.
#[derive(Debug, Clone, Default)]
pub struct ProxyHeaders<'a> {
    x_forwarded_for: Vec<&'a [u8]>,
    x_forwarded_proto: Vec<&'a [u8]>,
    x_forwarded_host: Vec<&'a [u8]>,
    x_arr_ssl: bool,
    forwarded: Vec<&'a [u8]>,
    x_original_url: Option<&'a [u8]>,
}

/// The headers this module reads, as `(header name, CGI variable name)`.
const NAMES: [(&str, &[u8]); 6] = [
    ("x-forwarded-for", b"HTTP_X_FORWARDED_FOR"),
    ("x-forwarded-proto", b"HTTP_X_FORWARDED_PROTO"),
    ("x-forwarded-host", b"HTTP_X_FORWARDED_HOST"),
    ("x-arr-ssl", b"HTTP_X_ARR_SSL"),
    ("forwarded", b"HTTP_FORWARDED"),
    ("x-original-url", b"HTTP_X_ORIGINAL_URL"),
];

impl<'a> ProxyHeaders<'a> {
    /// Collects the proxy headers of an HTTP request.
    pub fn from_headers(headers: &'a HeaderMap) -> Self {
        let mut out = Self::default();
        for (i, (name, _)) in NAMES.iter().enumerate() {
            for value in headers.get_all(*name) {
                out.add(i, value.as_bytes());
            }
        }
        out
    }

    /// Adds one FastCGI parameter if it is one of the proxy headers (`HTTP_X_FORWARDED_FOR`
    /// …); other names are ignored.
    pub fn add_param(&mut self, name: &[u8], value: &'a [u8]) {
        if let Some(i) = NAMES.iter().position(|(_, var)| *var == name) {
            self.add(i, value);
        }
    }

    fn add(&mut self, index: usize, value: &'a [u8]) {
        match index {
            0 => self.x_forwarded_for.push(value),
            1 => self.x_forwarded_proto.push(value),
            2 => self.x_forwarded_host.push(value),
            3 => self.x_arr_ssl |= !trim(value).is_empty(),
            4 => self.forwarded.push(value),
            _ => {
                if !trim(value).is_empty() {
                    self.x_original_url = Some(value);
                }
            }
        }
    }

    /// Whether the request carries none of the headers.
    pub fn is_empty(&self) -> bool {
        self.x_forwarded_for.is_empty()
            && self.x_forwarded_proto.is_empty()
            && self.x_forwarded_host.is_empty()
            && !self.x_arr_ssl
            && self.forwarded.is_empty()
            && self.x_original_url.is_none()
    }

    /// Applies the rules in the module doc for a request from `peer`. An untrusted peer
    /// gets an empty result: its headers reach the app as plain `HTTP_*` variables only.
    pub fn resolve(&self, peer: IpAddr, trusted: &TrustedProxies) -> Resolved {
        let mut out = Resolved::default();
        if self.is_empty() || !trusted.contains(peer) {
            return out;
        }
        let elements = parse_forwarded(&self.forwarded);
        let mut element = None;
        if !self.x_forwarded_for.is_empty() {
            let entries: Vec<Option<ClientAddr>> = list_items(&self.x_forwarded_for)
                .map(|item| parse_node(unquote(item).as_bytes()))
                .collect();
            out.client = pick_client(&entries, trusted).and_then(|i| entries[i]);
        } else if !elements.is_empty() {
            let entries: Vec<Option<ClientAddr>> = elements
                .iter()
                .map(|e| e.for_.as_deref().and_then(|n| parse_node(n.as_bytes())))
                .collect();
            let chosen = if elements.iter().any(|e| e.for_.is_some()) {
                pick_client(&entries, trusted)
            } else {
                None
            };
            out.client = chosen.and_then(|i| entries[i]);
            element = Some(chosen.unwrap_or(elements.len() - 1));
        }
        let element = element
            .or(elements.len().checked_sub(1))
            .map(|i| &elements[i]);

        out.https = match last_item(&self.x_forwarded_proto) {
            Some(proto) => scheme_is_https(proto.as_bytes()),
            None if self.x_arr_ssl => Some(true),
            None => element
                .and_then(|e| e.proto.as_deref())
                .and_then(|p| scheme_is_https(p.as_bytes())),
        };
        out.host = match last_item(&self.x_forwarded_host) {
            Some(host) => valid_host(&host),
            None => element.and_then(|e| e.host.as_deref()).and_then(valid_host),
        };
        out.original_url = self
            .x_original_url
            .map(trim)
            .filter(|v| v.first() == Some(&b'/') && v.iter().all(|&b| b > b' ' && b != 0x7f))
            .map(<[u8]>::to_vec);
        out
    }
}

/// The index of the client among `entries` (left = farthest from us): the rightmost entry
/// that is not a trusted proxy, or the leftmost when all are. `None` when an entry that
/// cannot be checked (not an address) comes first from the right.
fn pick_client(entries: &[Option<ClientAddr>], trusted: &TrustedProxies) -> Option<usize> {
    for (i, entry) in entries.iter().enumerate().rev() {
        let addr = (*entry)?;
        if !trusted.contains(addr.ip) || i == 0 {
            return Some(i);
        }
    }
    None
}

/// Parses a node: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:443`. Anything else (`unknown`, `_hidden`) is `None`.
fn parse_node(text: &[u8]) -> Option<ClientAddr> {
    let text = std::str::from_utf8(trim(text)).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ClientAddr {
            ip: ip.to_canonical(),
            port: None,
        });
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(ClientAddr {
            ip: sa.ip().to_canonical(),
            port: (sa.port() != 0).then_some(sa.port()),
        });
    }
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    let ip: Ipv6Addr = inner.parse().ok()?;
    Some(ClientAddr {
        ip: IpAddr::V6(ip).to_canonical(),
        port: None,
    })
}

/// `https`/`wss` → true, `http`/`ws` → false, anything else → no opinion.
fn scheme_is_https(proto: &[u8]) -> Option<bool> {
    let p = trim(proto);
    if p.eq_ignore_ascii_case(b"https") || p.eq_ignore_ascii_case(b"wss") {
        Some(true)
    } else if p.eq_ignore_ascii_case(b"http") || p.eq_ignore_ascii_case(b"ws") {
        Some(false)
    } else {
        None
    }
}

/// A host value fit for `HTTP_HOST`: a name, IPv4 or bracketed IPv6, optional `:port`.
fn valid_host(host: &str) -> Option<String> {
    let h = host.trim();
    let ok = !h.is_empty()
        && h.len() <= 261
        && h.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
        });
    ok.then(|| h.to_string())
}

/// The comma-separated items of all header lines, in order, trimmed, empty ones dropped.
fn list_items<'v>(values: &'v [&'v [u8]]) -> impl Iterator<Item = &'v [u8]> + 'v {
    values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim)
        .filter(|i| !i.is_empty())
}

/// The last item of a comma-separated header (the value the nearest proxy wrote).
fn last_item(values: &[&[u8]]) -> Option<String> {
    list_items(values)
        .last()
        .map(|i| String::from_utf8_lossy(i).into_owned())
}

/// Strips optional surrounding double quotes (some proxies quote X-Forwarded-For items).
fn unquote(item: &[u8]) -> String {
    let text = String::from_utf8_lossy(item);
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(&text)
        .to_string()
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// One element of a `Forwarded` header (RFC 7239 section 4): the parameters one proxy added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Element {
    for_: Option<String>,
    proto: Option<String>,
    host: Option<String>,
}

/// Parses every `Forwarded` line into its elements, left to right. Quoted strings may hold
/// `,` `;` `=` and backslash escapes; unknown parameters are skipped; an element with no
/// parameter at all is dropped.
fn parse_forwarded(lines: &[&[u8]]) -> Vec<Element> {
    let mut out = Vec::new();
    for line in lines {
        let text = String::from_utf8_lossy(line);
        let mut element = Element::default();
        let mut any = false;
        let mut chars = text.chars().peekable();
        loop {
            // key
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if matches!(c, '=' | ';' | ',') {
                    break;
                }
                key.push(c);
                chars.next();
            }
            let mut value = None;
            if chars.peek() == Some(&'=') {
                chars.next();
                while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                    chars.next();
                }
                let mut v = String::new();
                if chars.peek() == Some(&'"') {
                    chars.next();
                    while let Some(c) = chars.next() {
                        match c {
                            '"' => break,
                            '\\' => {
                                if let Some(e) = chars.next() {
                                    v.push(e);
                                }
                            }
                            c => v.push(c),
                        }
                    }
                    // Skip anything up to the next separator.
                    while chars.peek().is_some_and(|c| *c != ';' && *c != ',') {
                        chars.next();
                    }
                } else {
                    while let Some(&c) = chars.peek() {
                        if c == ';' || c == ',' {
                            break;
                        }
                        v.push(c);
                        chars.next();
                    }
                    v = v.trim().to_string();
                }
                value = Some(v);
            }
            if let Some(v) = value {
                let slot = match key.trim().to_ascii_lowercase().as_str() {
                    "for" => Some(&mut element.for_),
                    "proto" => Some(&mut element.proto),
                    "host" => Some(&mut element.host),
                    _ => None,
                };
                if let Some(slot) = slot {
                    *slot = Some(v);
                    any = true;
                }
            }
            match chars.next() {
                Some(';') => {}
                next => {
                    if any {
                        out.push(std::mem::take(&mut element));
                    }
                    element = Element::default();
                    any = false;
                    if next.is_none() {
                        break;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(s: &str, port: Option<u16>) -> Option<ClientAddr> {
        Some(ClientAddr { ip: ip(s), port })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn resolve(pairs: &[(&str, &str)], peer: &str) -> Resolved {
        let h = headers(pairs);
        ProxyHeaders::from_headers(&h).resolve(ip(peer), &TrustedProxies::default())
    }

    #[test]
    fn ipnet_parse_and_contains() {
        let n = IpNet::parse("10.1.2.3/8").unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains(ip("10.255.0.1")));
        assert!(n.contains(ip("::ffff:10.0.0.1")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(!n.contains(ip("::1")));
        let n = IpNet::parse("fd00::/8").unwrap();
        assert!(n.contains(ip("fdab::1")));
        assert!(!n.contains(ip("fe80::1")));
        let n = IpNet::parse(" [::1] ").unwrap();
        assert_eq!(n.to_string(), "::1");
        assert!(n.contains(ip("::1")));
        let n = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(n.contains(ip("203.0.113.9")));
        assert!(!n.contains(ip("2001:db8::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "host.example",
            "10.0.0.0/x",
            "1.2.3.4:80",
        ] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_proxies_lists() {
        let t = TrustedProxies::default();
        assert!(t.contains(ip("127.0.0.1")) && t.contains(ip("127.9.9.9")));
        assert!(t.contains(ip("::1")) && t.contains(ip("::ffff:127.0.0.1")));
        assert!(!t.contains(ip("10.0.0.1")));
        assert_eq!(t.to_string(), "[\"127.0.0.0/8\", \"::1\"]");
        let t = TrustedProxies::parse_text("10.0.0.0/8, 192.168.1.1 fd00::/8").unwrap();
        assert!(t.contains(ip("10.2.3.4")) && t.contains(ip("192.168.1.1")));
        assert!(!t.contains(ip("127.0.0.1")));
        let t = TrustedProxies::parse(["*"]).unwrap();
        assert!(t.contains(ip("203.0.113.1")));
        let t = TrustedProxies::parse_text("").unwrap();
        assert!(t.is_empty() && !t.contains(ip("127.0.0.1")));
        assert_eq!(t.to_string(), "[] (none)");
        assert!(TrustedProxies::parse_text("10.0.0.0/8,nope").is_err());
    }

    #[test]
    fn untrusted_peer_changes_nothing() {
        let r = resolve(
            &[
                ("X-Forwarded-For", "198.51.100.7"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "evil.example"),
                ("X-ARR-SSL", "yes"),
                ("X-Original-URL", "/admin"),
            ],
            "203.0.113.1",
        );
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn x_forwarded_for_rightmost_untrusted() {
        let r = resolve(&[("X-Forwarded-For", "198.51.100.7")], "127.0.0.1");
        assert_eq!(r.client, client("198.51.100.7", None));
        // A client-supplied entry on the left is ignored.
        let r = resolve(
            &[("X-Forwarded-For", "6.6.6.6, 198.51.100.7, 127.0.0.1")],
            "127.0.0.1",
        );
        assert_eq!(r.client, client("198.51.100.7", None));
        // Several header lines form one list.
        let r = resolve(
            &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("X-Forwarded-For", "198.51.100.8"),
            ],
            "::1",
        );
        assert_eq!(r.client, client("198.51.100.8", None));
        // All trusted: the leftmost.
        let r = resolve(&[("X-Forwarded-For", "127.0.0.5, 127.0.0.1")], "127.0.0.1");
        assert_eq!(r.client, client("127.0.0.5", None));
        // IIS ARR appends the client port; IPv6 forms.
        let r = resolve(&[("X-Forwarded-For", "203.0.113.5:51234")], "127.0.0.1");
        assert_eq!(r.client, client("203.0.113.5", Some(51234)));
        let r = resolve(&[("X-Forwarded-For", "[2001:db8::7]:443")], "127.0.0.1");
        assert_eq!(r.client, client("2001:db8::7", Some(443)));
        let r = resolve(&[("X-Forwarded-For", "2001:db8::8")], "127.0.0.1");
        assert_eq!(r.client, client("2001:db8::8", None));
        let r = resolve(&[("X-Forwarded-For", "\"[2001:db8::9]\"")], "127.0.0.1");
        assert_eq!(r.client, client("2001:db8::9", None));
        // Garbage before an untrusted entry: give up, the peer stays the client.
        let r = resolve(&[("X-Forwarded-For", "1.2.3.4, unknown")], "127.0.0.1");
        assert_eq!(r.client, None);
        // Garbage left of the client does not matter.
        let r = resolve(&[("X-Forwarded-For", "junk, 1.2.3.4")], "127.0.0.1");
        assert_eq!(r.client, client("1.2.3.4", None));
    }

    #[test]
    fn proto_and_arr_ssl() {
        let r = resolve(&[("X-Forwarded-Proto", "https")], "127.0.0.1");
        assert_eq!(r.https, Some(true));
        assert_eq!(r.client, None);
        let r = resolve(&[("X-Forwarded-Proto", "https, http")], "127.0.0.1");
        assert_eq!(r.https, Some(false));
        let r = resolve(&[("X-Forwarded-Proto", "HTTPS")], "127.0.0.1");
        assert_eq!(r.https, Some(true));
        let r = resolve(&[("X-Forwarded-Proto", "gopher")], "127.0.0.1");
        assert_eq!(r.https, None);
        let r = resolve(&[("X-ARR-SSL", "2048|256|C=US|CN=example")], "127.0.0.1");
        assert_eq!(r.https, Some(true));
        // An explicit X-Forwarded-Proto wins over X-ARR-SSL.
        let r = resolve(
            &[("X-ARR-SSL", "x"), ("X-Forwarded-Proto", "http")],
            "127.0.0.1",
        );
        assert_eq!(r.https, Some(false));
    }

    #[test]
    fn forwarded_host() {
        let r = resolve(&[("X-Forwarded-Host", "www.example.com")], "127.0.0.1");
        assert_eq!(r.host.as_deref(), Some("www.example.com"));
        let r = resolve(
            &[("X-Forwarded-Host", "spoofed.example, www.example.com:8443")],
            "127.0.0.1",
        );
        assert_eq!(r.host.as_deref(), Some("www.example.com:8443"));
        let r = resolve(&[("X-Forwarded-Host", "bad host/x")], "127.0.0.1");
        assert_eq!(r.host, None);
    }

    #[test]
    fn rfc7239_forwarded() {
        let r = resolve(
            &[(
                "Forwarded",
                "for=6.6.6.6;proto=http, for=\"[2001:db8:cafe::17]:4711\";proto=https;host=\"app.example\", for=127.0.0.1",
            )],
            "127.0.0.1",
        );
        assert_eq!(r.client, client("2001:db8:cafe::17", Some(4711)));
        assert_eq!(r.https, Some(true));
        assert_eq!(r.host.as_deref(), Some("app.example"));

        let r = resolve(
            &[("Forwarded", "For=192.0.2.60;Proto=HTTPS;By=203.0.113.43")],
            "127.0.0.1",
        );
        assert_eq!(r.client, client("192.0.2.60", None));
        assert_eq!(r.https, Some(true));

        // Obfuscated or unknown nodes: no client, but proto/host of the nearest element.
        let r = resolve(
            &[("Forwarded", "for=_hidden;proto=https;host=h.example")],
            "127.0.0.1",
        );
        assert_eq!(r.client, None);
        assert_eq!(r.https, Some(true));
        assert_eq!(r.host.as_deref(), Some("h.example"));

        // X-Forwarded-* win over Forwarded field by field.
        let r = resolve(
            &[
                ("Forwarded", "for=192.0.2.1;proto=https;host=f.example"),
                ("X-Forwarded-For", "198.51.100.2"),
                ("X-Forwarded-Proto", "http"),
            ],
            "127.0.0.1",
        );
        assert_eq!(r.client, client("198.51.100.2", None));
        assert_eq!(r.https, Some(false));
        assert_eq!(r.host.as_deref(), Some("f.example"));

        // Quoted separators and escapes; empty elements.
        let els = parse_forwarded(&[b"for=\"a,b;c=\\\"d\";proto=https,, ;for=1.2.3.4"]);
        assert_eq!(els.len(), 2, "{els:?}");
        assert_eq!(els[0].for_.as_deref(), Some("a,b;c=\"d"));
        assert_eq!(els[0].proto.as_deref(), Some("https"));
        assert_eq!(els[1].for_.as_deref(), Some("1.2.3.4"));
        assert!(parse_forwarded(&[b""]).is_empty());
        assert!(parse_forwarded(&[b"garbage"]).is_empty());
        assert!(parse_forwarded(&[b"=;=,\"\\"]).is_empty());
    }

    #[test]
    fn original_url_only_from_trusted_and_well_formed() {
        let r = resolve(&[("X-Original-URL", "/app/page?x=1")], "127.0.0.1");
        assert_eq!(r.original_url.as_deref(), Some(&b"/app/page?x=1"[..]));
        let r = resolve(&[("X-Original-URL", "/app/page")], "10.9.9.9");
        assert_eq!(r.original_url, None);
        let r = resolve(&[("X-Original-URL", "http://x/")], "127.0.0.1");
        assert_eq!(r.original_url, None);
    }

    #[test]
    fn from_fastcgi_params() {
        let mut p = ProxyHeaders::default();
        p.add_param(b"HTTP_X_FORWARDED_FOR", b"192.0.2.9");
        p.add_param(b"HTTP_X_FORWARDED_PROTO", b"https");
        p.add_param(b"HTTP_USER_AGENT", b"x");
        p.add_param(b"HTTP_X_ORIGINAL_URL", b"");
        let r = p.resolve(ip("::1"), &TrustedProxies::default());
        assert_eq!(r.client, client("192.0.2.9", None));
        assert_eq!(r.https, Some(true));
        assert_eq!(r.original_url, None);
        assert_eq!(r.client.unwrap().socket_addr().port(), 0);
        assert!(ProxyHeaders::default().is_empty());
    }
}

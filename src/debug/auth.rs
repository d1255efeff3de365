//! The /ptvsd secret check: which secrets a request presents, a constant-time comparison with
//! the configured one, and a per-address limiter against guessing.
//!
//! debugpy has no secret of its own and anyone who reaches its port can run code, so the proxy
//! is the only gate. Clients present the secret in whatever way they can: the URL user-info of
//! `wss://SECRET@host/ptvsd` (sent as HTTP Basic with the secret as user name), Basic with the
//! secret as password, `Authorization: Bearer SECRET`, or `?secret=SECRET`.
//! Everything here is pure; the caller supplies the request head, the peer address and "now".

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use percent_encoding::percent_decode_str;
use subtle::{Choice, ConstantTimeEq};

/// Most candidates taken from one request, so a request stuffed with headers or parameters
/// costs bounded work.
const MAX_CANDIDATES: usize = 16;

/// Default cap on the number of addresses the [`FailureLimiter`] tracks.
pub const DEFAULT_MAX_TRACKED: usize = 10_000;

/// Base64 as sent by clients, with or without padding.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The attach secret (`WSGI_PTVSD_SECRET`). Its `Debug` and `Display` print `<redacted>`, so
/// it cannot reach a log line by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps the configured secret.
    pub fn new(s: String) -> Self {
        Secret(s)
    }

    /// The secret itself, for the few places that must send it (`fcgihost attach`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Every string the request offers as the secret, in this order: from each `Authorization`
/// header the Basic user name and password (each also percent-decoded when that differs, as
/// some clients copy URL user-info verbatim) or the Bearer token, then each `secret` query
/// parameter, percent-decoded (and with `+` read as a space, when that differs). Empty strings
/// are left out; at most 16 candidates are returned.
pub fn presented_secrets(parts: &http::request::Parts) -> Vec<String> {
    let mut out = Vec::new();
    for value in parts.headers.get_all(http::header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        let value = value.trim();
        let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let Ok(decoded) = BASIC_B64.decode(credentials) else {
                continue;
            };
            let Ok(decoded) = String::from_utf8(decoded) else {
                continue;
            };
            let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
            for part in [user, password] {
                push_candidate(&mut out, part);
                if let Ok(unescaped) = percent_decode_str(part).decode_utf8() {
                    push_candidate(&mut out, &unescaped);
                }
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            push_candidate(&mut out, credentials);
        }
    }
    if let Some(query) = parts.uri.query() {
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key != "secret" {
                continue;
            }
            if let Ok(plain) = percent_decode_str(value).decode_utf8() {
                push_candidate(&mut out, &plain);
            }
            let spaced = value.replace('+', " ");
            if let Ok(form) = percent_decode_str(&spaced).decode_utf8() {
                push_candidate(&mut out, &form);
            }
        }
    }
    out.truncate(MAX_CANDIDATES);
    out
}

/// Adds a non-empty candidate not yet present, up to [`MAX_CANDIDATES`].
fn push_candidate(out: &mut Vec<String>, candidate: &str) {
    if !candidate.is_empty()
        && out.len() < MAX_CANDIDATES
        && !out.iter().any(|known| known == candidate)
    {
        out.push(candidate.to_string());
    }
}

/// Whether `presented` equals the secret, in time that depends only on the two lengths (never
/// on how many leading bytes match). An empty secret matches nothing.
pub fn matches(secret: &Secret, presented: &str) -> bool {
    let a = secret.expose().as_bytes();
    let b = presented.as_bytes();
    if a.is_empty() {
        return false;
    }
    let same_len = (a.len() as u64).ct_eq(&(b.len() as u64));
    let mut same_bytes = Choice::from(1u8);
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        same_bytes &= x.ct_eq(&y);
    }
    bool::from(same_len & same_bytes)
}

/// Whether any secret the request presents matches (see [`presented_secrets`]). Every
/// candidate is compared, so the time does not tell which one matched.
pub fn authorize(secret: &Secret, parts: &http::request::Parts) -> bool {
    presented_secrets(parts)
        .iter()
        .fold(false, |ok, candidate| matches(secret, candidate) | ok)
}

/// Failures of one address (or IPv6 /64).
#[derive(Debug, Default)]
struct Record {
    /// Times of recent failures, oldest first, at most `max_failures`.
    failures: VecDeque<Instant>,
    /// When the current ban began.
    banned_at: Option<Instant>,
}

/// Slows down secret guessing: an address that fails `max_failures` times within `window` is
/// answered 429 for `ban`.
///
/// It exists because the secret is the only thing between the internet and code execution in
/// the worker. IPv6 addresses are grouped by /64 (one host usually owns the whole prefix) and
/// IPv4-mapped IPv6 addresses count as IPv4. Memory is bounded: stale records are pruned and at
/// most [`DEFAULT_MAX_TRACKED`] (or [`FailureLimiter::with_max_tracked`]) are kept.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    ban: Duration,
    max_tracked: usize,
    records: HashMap<IpAddr, Record>,
}

impl FailureLimiter {
    /// A limiter banning for `ban` after `max_failures` failures (at least 1) within `window`.
    pub fn new(max_failures: u32, window: Duration, ban: Duration) -> Self {
        FailureLimiter {
            max_failures: max_failures.max(1),
            window,
            ban,
            max_tracked: DEFAULT_MAX_TRACKED,
            records: HashMap::new(),
        }
    }

    /// Changes the cap on tracked addresses (at least 1).
    pub fn with_max_tracked(mut self, max_tracked: usize) -> Self {
        self.max_tracked = max_tracked.max(1);
        self
    }

    /// How many addresses are tracked now (for tests and the status page).
    pub fn tracked(&self) -> usize {
        self.records.len()
    }

    /// Whether requests from `ip` must be refused (429) without checking the secret.
    pub fn is_blocked(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = limiter_key(ip);
        let Some(record) = self.records.get_mut(&key) else {
            return false;
        };
        if let Some(at) = record.banned_at {
            if now.saturating_duration_since(at) < self.ban {
                return true;
            }
            record.banned_at = None;
        }
        prune(record, now, self.window);
        if record.failures.is_empty() {
            self.records.remove(&key);
        }
        false
    }

    /// Counts a wrong or missing secret from `ip`; the failure that reaches `max_failures`
    /// within the window starts a ban. Failures while banned are not counted (they should
    /// not happen, as a banned address is refused first) and do not extend the ban.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        let key = limiter_key(ip);
        if !self.records.contains_key(&key) && self.records.len() >= self.max_tracked {
            self.make_room(now);
        }
        let record = self.records.entry(key).or_default();
        if let Some(at) = record.banned_at {
            if now.saturating_duration_since(at) < self.ban {
                return;
            }
            record.banned_at = None;
        }
        prune(record, now, self.window);
        record.failures.push_back(now);
        if record.failures.len() >= self.max_failures as usize {
            record.failures.clear();
            record.banned_at = Some(now);
        }
    }

    /// Forgets the failures of `ip` after it presented the right secret.
    pub fn record_success(&mut self, ip: IpAddr) {
        self.records.remove(&limiter_key(ip));
    }

    /// Frees at least one slot: drops every stale record, and if none was stale, the record
    /// least worth keeping (an unbanned one with the oldest last failure, else the ban that
    /// ends first).
    fn make_room(&mut self, now: Instant) {
        let (window, ban) = (self.window, self.ban);
        self.records.retain(|_, record| {
            if record
                .banned_at
                .is_some_and(|at| now.saturating_duration_since(at) >= ban)
            {
                record.banned_at = None;
            }
            prune(record, now, window);
            record.banned_at.is_some() || !record.failures.is_empty()
        });
        if self.records.len() < self.max_tracked {
            return;
        }
        let victim = self
            .records
            .iter()
            .min_by_key(|(_, record)| match record.banned_at {
                None => (0u8, record.failures.back().copied()),
                Some(at) => (1u8, Some(at)),
            })
            .map(|(ip, _)| *ip);
        if let Some(ip) = victim {
            self.records.remove(&ip);
        }
    }
}

/// Drops failures older than `window`.
fn prune(record: &mut Record, now: Instant, window: Duration) {
    while record
        .failures
        .front()
        .is_some_and(|&t| now.saturating_duration_since(t) >= window)
    {
        record.failures.pop_front();
    }
}

/// The address the limiter counts for `ip`: IPv4 as is, IPv4-mapped IPv6 as IPv4, other IPv6
/// reduced to its /64 prefix.
fn limiter_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const SECRET: &str = "Zx9-q_Tr4!pL2s@kW0m+aB";

    fn parts(uri: &str, auth: &[&str]) -> http::request::Parts {
        let mut builder = http::Request::builder().uri(uri);
        for value in auth {
            builder = builder.header(http::header::AUTHORIZATION, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    fn secret() -> Secret {
        Secret::new(SECRET.to_string())
    }

    #[test]
    fn basic_with_secret_as_user() {
        // What a client sends for wss://SECRET@host/ptvsd.
        let p = parts("/ptvsd", &[&basic(&format!("{SECRET}:"))]);
        assert_eq!(presented_secrets(&p), vec![SECRET.to_string()]);
        assert!(authorize(&secret(), &p));
    }

    #[test]
    fn basic_with_secret_as_password() {
        let p = parts("/ptvsd", &[&basic(&format!("ptvsd:{SECRET}"))]);
        assert!(presented_secrets(&p).contains(&SECRET.to_string()));
        assert!(authorize(&secret(), &p));
    }

    #[test]
    fn basic_with_percent_encoded_user_info_and_no_padding() {
        let encoded = "Zx9-q_Tr4%21pL2s%40kW0m%2BaB";
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("{encoded}:"));
        let p = parts("/ptvsd", &[&format!("basic  {b64}")]);
        assert!(authorize(&secret(), &p));
    }

    #[test]
    fn bearer_token() {
        let p = parts("/ptvsd", &[&format!("Bearer {SECRET}")]);
        assert_eq!(presented_secrets(&p), vec![SECRET.to_string()]);
        assert!(authorize(&secret(), &p));
    }

    #[test]
    fn query_parameter_percent_decoded() {
        let p = parts("/ptvsd?x=1&secret=Zx9-q_Tr4%21pL2s%40kW0m%2BaB&y", &[]);
        assert!(authorize(&secret(), &p));
        // `+` is kept literally, and also offered as a space.
        let p = parts("/ptvsd?secret=a+b", &[]);
        assert_eq!(
            presented_secrets(&p),
            vec!["a+b".to_string(), "a b".to_string()]
        );
        assert!(authorize(&Secret::new("a b".into()), &p));
        assert!(authorize(&Secret::new("a+b".into()), &p));
    }

    #[test]
    fn wrong_or_missing_secret_is_refused() {
        let s = secret();
        for p in [
            parts("/ptvsd", &[]),
            parts("/ptvsd?secret=", &[]),
            parts("/ptvsd?secret=nope", &[]),
            parts("/ptvsd?Secret=Zx9-q_Tr4%21pL2s%40kW0m%2BaB", &[]),
            parts("/ptvsd", &[&basic("nope:nope")]),
            parts("/ptvsd", &[&basic(&SECRET[..SECRET.len() - 1])]),
            parts("/ptvsd", &[&format!("Bearer {SECRET}x")]),
            parts("/ptvsd", &[&format!("Token {SECRET}")]),
            parts("/ptvsd", &["Basic !!!not-base64!!!"]),
            parts("/ptvsd", &["Basic"]),
        ] {
            assert!(!authorize(&s, &p), "{:?}", p.uri);
        }
    }

    #[test]
    fn any_of_several_headers_may_match() {
        let p = parts(
            "/ptvsd?secret=wrong",
            &["Bearer wrong", &format!("Bearer {SECRET}")],
        );
        assert!(authorize(&secret(), &p));
    }

    #[test]
    fn candidates_are_bounded() {
        let query: Vec<String> = (0..100).map(|i| format!("secret=guess{i}")).collect();
        let p = parts(&format!("/ptvsd?{}", query.join("&")), &[]);
        assert_eq!(presented_secrets(&p).len(), MAX_CANDIDATES);
    }

    #[test]
    fn matches_compares_exactly() {
        let s = Secret::new("abc".into());
        assert!(matches(&s, "abc"));
        assert!(!matches(&s, "abd"));
        assert!(!matches(&s, "ab"));
        assert!(!matches(&s, "abc\0"));
        assert!(!matches(&s, ""));
        assert!(!matches(&Secret::new(String::new()), ""));
    }

    #[test]
    fn secret_is_never_printed() {
        let s = secret();
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert!(!format!("{:?}", Some(s.clone())).contains(SECRET));
        assert_eq!(s.expose(), SECRET);
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, last))
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn limiter_blocks_the_eleventh_attempt_and_unblocks_after_the_ban() {
        let t0 = Instant::now();
        let mut lim = FailureLimiter::new(10, s(60), s(60));
        for i in 0..10 {
            let now = t0 + s(i * 5);
            assert!(!lim.is_blocked(ip(1), now), "attempt {}", i + 1);
            lim.record_failure(ip(1), now);
        }
        assert!(lim.is_blocked(ip(1), t0 + s(46)));
        assert!(!lim.is_blocked(ip(2), t0 + s(46)));
        assert!(lim.is_blocked(ip(1), t0 + s(45 + 59)));
        assert!(!lim.is_blocked(ip(1), t0 + s(45 + 60)));
        // After the ban the count starts afresh.
        lim.record_failure(ip(1), t0 + s(106));
        assert!(!lim.is_blocked(ip(1), t0 + s(107)));
    }

    #[test]
    fn limiter_window_slides() {
        let t0 = Instant::now();
        let mut lim = FailureLimiter::new(10, s(60), s(60));
        // One failure every 7 s: never 10 within a minute.
        for i in 0..100 {
            let now = t0 + s(i * 7);
            assert!(!lim.is_blocked(ip(3), now));
            lim.record_failure(ip(3), now);
        }
        // 9 failures, then the oldest leaves the window before the 10th.
        let t1 = t0 + s(10_000);
        for i in 0..9 {
            lim.record_failure(ip(4), t1 + s(i));
        }
        lim.record_failure(ip(4), t1 + s(60));
        assert!(!lim.is_blocked(ip(4), t1 + s(60)));
        // Ten within the last minute (t1+1 ..= t1+60 and this one): banned.
        lim.record_failure(ip(4), t1 + s(60));
        assert!(lim.is_blocked(ip(4), t1 + s(60)));
    }

    #[test]
    fn limiter_success_forgets_failures() {
        let t0 = Instant::now();
        let mut lim = FailureLimiter::new(3, s(60), s(60));
        lim.record_failure(ip(5), t0);
        lim.record_failure(ip(5), t0);
        lim.record_success(ip(5));
        lim.record_failure(ip(5), t0);
        assert!(!lim.is_blocked(ip(5), t0));
        assert_eq!(lim.tracked(), 1);
        // A stale record disappears when looked at.
        assert!(!lim.is_blocked(ip(5), t0 + s(61)));
        assert_eq!(lim.tracked(), 0);
    }

    #[test]
    fn limiter_table_is_bounded() {
        let t0 = Instant::now();
        let mut lim = FailureLimiter::new(2, s(60), s(600)).with_max_tracked(100);
        // Ban ip 7 first, then flood with other addresses.
        lim.record_failure(ip(7), t0);
        lim.record_failure(ip(7), t0);
        for i in 0..5000u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            lim.record_failure(addr, t0 + Duration::from_millis(u64::from(i)));
            assert!(lim.tracked() <= 100);
        }
        // Unbanned records were evicted first, so the ban survives the flood.
        assert!(lim.is_blocked(ip(7), t0 + s(10)));
        // Stale records are pruned to make room.
        lim.record_failure(ip(8), t0 + s(700));
        assert_eq!(lim.tracked(), 1);
    }

    #[test]
    fn ipv6_is_grouped_by_prefix() {
        let t0 = Instant::now();
        let mut lim = FailureLimiter::new(2, s(60), s(60));
        lim.record_failure("2001:db8:1:2::1".parse().unwrap(), t0);
        lim.record_failure("2001:db8:1:2:ffff::9".parse().unwrap(), t0);
        assert!(lim.is_blocked("2001:db8:1:2::42".parse().unwrap(), t0));
        assert!(!lim.is_blocked("2001:db8:1:3::1".parse().unwrap(), t0));
        lim.record_failure("::ffff:192.0.2.1".parse().unwrap(), t0);
        lim.record_failure("192.0.2.1".parse().unwrap(), t0);
        assert!(lim.is_blocked("192.0.2.1".parse().unwrap(), t0));
    }
}

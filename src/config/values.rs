//! Text-to-value parsers and value-to-text formatters shared by every configuration layer
//! (durations, listen addresses, counts, booleans, log levels, URL prefixes, command words,
//! `%VAR%` expansion) and the "did you mean" suggestion used for unknown keys and variables.
//!
//! Every parser returns `Err(String)` with a message that quotes the offending value; the
//! caller prefixes it with where the value came from (file:line and key, variable, flag).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::{FastcgiListen, LogTarget};

/// The hint appended to every duration error.
const DURATION_HINT: &str = "(use e.g. \"90s\", \"2m\")";

/// Quotes a value for an error message without escaping backslashes (Windows paths stay
/// readable).
pub(super) fn quote(s: &str) -> String {
    format!("\"{s}\"")
}

/// Parses a size with a unit: `"512MiB"`, `"512MB"`, `"2GiB"`, `"1G"`, `"300M"`, `"64K"`
/// (binary multiples; a unit-less number is read as MiB here, but [`parse_byte_size`], the
/// entry point, takes bare numbers as bytes first).
fn parse_unit_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?} (use e.g. \"512MiB\" or \"2GiB\")"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1 << 20,
        "k" | "kb" | "kib" => 1 << 10,
        "g" | "gb" | "gib" => 1 << 30,
        "b" => 1,
        _ => {
            return Err(format!(
                "invalid size {s:?} (use e.g. \"512MiB\" or \"2GiB\")"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses a size in bytes (request limits, `max_worker_rss`): `"64KiB"`, `"1GiB"`,
/// `"100MB"`; a bare number is bytes (as nginx's `client_max_body_size`).
pub(super) fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map_err(|_| format!("size {} is too large", quote(s)));
    }
    parse_unit_size(t)
}

/// Formats a byte count the way [`parse_byte_size`] reads it: `"64KiB"`, `"1GiB"`, `"1000"`.
pub(super) fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Checks an access-log format: `text`, `json`, or a string with at least one
/// gunicorn-style `%(atom)s` (anything else is taken for a typo).
pub(super) fn parse_access_format(s: &str) -> Result<String, String> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "text" | "json" => return Ok(t.to_ascii_lowercase()),
        _ => {}
    }
    if t.contains("%(") && t.contains(")s") {
        Ok(s.to_string())
    } else {
        Err(format!(
            "invalid access-log format {} (use \"text\", \"json\", or atoms such as \"%(h)s %(r)s %(s)s\")",
            quote(s)
        ))
    }
}

/// Parses a duration: `"90s"`, `"500ms"`, `"2m"`, `"1h"`, `"1d"`, combinations such as
/// `"1m30s"`, a bare number of seconds (`"90"`, `"0"`), or IIS's `hh:mm:ss` (`"00:02:00"`).
///
/// The error text is complete (`invalid duration "9x" (use e.g. "90s", "2m")`) so callers only
/// add the key or variable in front.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {} {DURATION_HINT}", quote(s));
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map(Duration::from_secs).map_err(|_| bad());
    }
    if t.contains(':') {
        return parse_hms(t).ok_or_else(bad);
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            _ => None,
        }
        .ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = rest[unit_len..].trim_start();
    }
    Ok(total)
}

/// `hh:mm:ss` as IIS writes `requestTimeout` (`00:02:00`).
fn parse_hms(t: &str) -> Option<Duration> {
    let parts: Vec<&str> = t.split(':').collect();
    let [h, m, s] = parts.as_slice() else {
        return None;
    };
    let num = |p: &str| -> Option<u64> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let (h, m, s) = (num(h)?, num(m)?, num(s)?);
    if m >= 60 || s >= 60 {
        return None;
    }
    h.checked_mul(3600)?
        .checked_add(m * 60 + s)
        .map(Duration::from_secs)
}

/// Formats a duration the way the configuration accepts it: `"1m30s"`, `"500ms"`, `"0s"`.
pub(super) fn format_duration(d: Duration) -> String {
    let ms = d.subsec_millis();
    let mut secs = d.as_secs();
    if secs == 0 && ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// Parses a listen address: `IP:PORT` (`127.0.0.1:8000`, `[::1]:8000`), `localhost:PORT`, or
/// a bare port number (bound on 127.0.0.1).
pub(super) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "invalid listen address {} (use IP:PORT, e.g. \"127.0.0.1:8000\", or a port number)",
            quote(s)
        )
    };
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(port) = t.parse::<u16>() {
        return Ok(loopback(port));
    }
    if let Some(port) = t.strip_prefix("localhost:") {
        return port.parse::<u16>().map(loopback).map_err(|_| bad());
    }
    Err(bad())
}

/// Parses the FastCGI front door's address: empty = off; `unix:PATH` or anything holding a
/// `/` (or `\\`) is a Unix socket path, made absolute against `base`; otherwise a TCP address
/// as [`parse_listen`] takes it.
pub(super) fn parse_fastcgi_listen(s: &str, base: &Path) -> Result<Option<FastcgiListen>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let path = t
        .strip_prefix("unix:")
        .or_else(|| (t.contains('/') || t.contains('\\')).then_some(t));
    match path {
        Some(p) if p.trim().is_empty() => Err(format!(
            "invalid FastCGI address {} (use IP:PORT, a port number, or a socket path)",
            quote(s)
        )),
        Some(p) => Ok(Some(FastcgiListen::Unix(super::absolutize(base, Path::new(p.trim()))))),
        None => parse_listen(t)
            .map(|addr| Some(FastcgiListen::Tcp(addr)))
            .map_err(|_| {
                format!(
                    "invalid FastCGI address {} (use IP:PORT, e.g. \"127.0.0.1:9001\", a port number, \
                     or a Unix socket path such as \"unix:/run/fcgihost.sock\")",
                    quote(s)
                )
            }),
    }
}

/// `127.0.0.1:<port>`.
pub(super) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Parses a TCP port number (`HTTP_PLATFORM_PORT`, `ASPNETCORE_PORT`).
pub(super) fn parse_port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| format!("invalid port {} (expected a number 0-65535)", quote(s)))
}

/// Parses a whole number that must be at least `min`.
pub(super) fn parse_count(s: &str, min: u64) -> Result<u64, String> {
    let n = s
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("invalid number {} (expected a whole number)", quote(s)))?;
    check_min(n, min)
}

/// Checks the lower bound of a count.
pub(super) fn check_min(n: u64, min: u64) -> Result<u64, String> {
    if n < min {
        Err(format!("must be at least {min} (got {n})"))
    } else {
        Ok(n)
    }
}

/// Parses a boolean written in an environment variable or web.config.
pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("invalid boolean {} (use true or false)", quote(s))),
    }
}

/// Validates a log level; `warning` becomes `warn`, case is folded. A value with `=` or `,`
/// is taken as a tracing filter directive (`fcgihost=debug,hyper=info`) and kept as is.
pub(super) fn parse_log_level(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.contains('=') || t.contains(',') {
        return Ok(t.to_string());
    }
    match t.to_ascii_lowercase().as_str() {
        l @ ("trace" | "debug" | "info" | "warn" | "error" | "off") => Ok(l.to_string()),
        "warning" => Ok("warn".to_string()),
        _ => Err(format!(
            "invalid log level {} (use trace, debug, info, warn, error or off)",
            quote(s)
        )),
    }
}

/// Normalises a mount prefix (`script_name`): leading `/` added, trailing `/` removed, `/`
/// alone is the same as empty.
pub(super) fn parse_script_name(s: &str) -> Result<String, String> {
    let t = s.trim().trim_end_matches('/');
    if t.chars().any(char::is_whitespace) || t.contains('?') || t.contains('#') {
        return Err(format!(
            "invalid mount prefix {} (use a URL path such as \"/app\")",
            quote(s)
        ));
    }
    if t.is_empty() || t.starts_with('/') {
        Ok(t.to_string())
    } else {
        Ok(format!("/{t}"))
    }
}

/// Normalises the debug endpoint path: like [`parse_script_name`] but it may not be empty or
/// `/` (that would hand every request to the debugger proxy).
pub(super) fn parse_url_path(s: &str) -> Result<String, String> {
    let p = parse_script_name(s)?;
    if p.is_empty() {
        return Err(format!(
            "invalid path {} (use a URL path such as \"/ptvsd\")",
            quote(s)
        ));
    }
    Ok(p)
}

/// A URL path, or `""` for "off" (`health_path`).
pub(super) fn parse_optional_url_path(s: &str) -> Result<Option<String>, String> {
    if s.trim().is_empty() {
        return Ok(None);
    }
    parse_url_path(s).map(Some)
}

/// Longest `instance_id` (App Service's `WEBSITE_INSTANCE_ID` is 64 hex digits).
const MAX_INSTANCE_ID: usize = 128;

/// An instance id: what a balancer's affinity cookie carries, so only characters a cookie
/// value and a header may hold (letters, digits, `-`, `_`, `.`, `:`); `""` = not set.
pub(super) fn parse_instance_id(s: &str) -> Result<Option<String>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if t.len() > MAX_INSTANCE_ID || !t.chars().all(allowed) {
        return Err(format!(
            "invalid instance id {} (up to {MAX_INSTANCE_ID} letters, digits, `-`, `_`, `.` or `:`)",
            quote(s)
        ));
    }
    Ok(Some(t.to_string()))
}

/// Where a log goes: `-` is standard output (gunicorn's spelling), `""` the main log, any
/// other value a file (relative to `base`).
pub(super) fn parse_log_target(s: &str, base: &Path) -> Option<LogTarget> {
    match s.trim() {
        "" => None,
        "-" => Some(LogTarget::Stdout),
        path => Some(LogTarget::File(super::absolutize(base, Path::new(path)))),
    }
}

/// Splits a command line the simple, shell-like way: whitespace separates words, `"..."` and
/// `'...'` group (quotes removed). Backslashes are literal so Windows paths work unquoted.
pub(super) fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote_char: Option<char> = None;
    for c in s.chars() {
        match quote_char {
            Some(q) if c == q => quote_char = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote_char = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote_char.is_some() {
        return Err(format!("unterminated quote in {}", quote(s)));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Joins words back into a command line, quoting those that need it (for display).
pub(super) fn join_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.is_empty() || w.chars().any(char::is_whitespace) {
                if w.contains('"') {
                    format!("'{w}'")
                } else {
                    format!("\"{w}\"")
                }
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks that a name can be an environment variable name.
pub(super) fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('=') || name.contains('\0') {
        Err(format!("invalid environment variable name {}", quote(name)))
    } else {
        Ok(())
    }
}

/// Parses `NAME=value NAME2="two words"` (FCGIHOST_WORKER_ENV) into pairs.
pub(super) fn parse_env_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    split_words(s)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => check_env_name(k).map(|()| (k.to_string(), v.to_string())),
            None => Err(format!(
                "expected NAME=value pairs, found {} (e.g. \"DJANGO_SETTINGS_MODULE=site.settings\")",
                quote(&w)
            )),
        })
        .collect()
}

/// Expands `%VAR%` the way cmd.exe and wfastcgi did, looking names up case-insensitively (as
/// Windows does). Unknown variables are left as written.
pub(super) fn expand_percent_vars(s: &str, env: &HashMap<String, String>) -> String {
    let lookup = |name: &str| -> Option<&String> {
        env.get(name).or_else(|| {
            env.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    };
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find('%') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('%') {
            Some(end) if end > 0 => match lookup(&after[..end]) {
                Some(value) => {
                    out.push_str(value);
                    rest = &after[end + 1..];
                }
                None => {
                    // Leave `%NAME` and let the closing `%` start the next candidate.
                    out.push('%');
                    out.push_str(&after[..end]);
                    rest = &after[end..];
                }
            },
            _ => {
                out.push('%');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Levenshtein distance on characters (keys are short, so the quadratic table is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known name closest to `unknown`, if it is close enough to be a typo: case and `-`
/// versus `_` are ignored, then at most 2 edits (3 for long names).
pub(super) fn suggest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let u = norm(unknown);
    let limit = if u.chars().count() >= 12 { 3 } else { 2 };
    known
        .iter()
        .map(|k| (edit_distance(&u, &norm(k)), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Most requests `pipeline_depth` may put behind a running one: each waits for the one
/// before it, so a deep pipeline only lengthens the wait behind a slow request.
pub const MAX_PIPELINE_DEPTH: usize = 8;

/// Most threads one worker may run (`threads`).
pub const MAX_THREADS: usize = 256;

/// Checks `threads`: 1..=[`MAX_THREADS`].
pub(super) fn check_threads(n: usize) -> Result<usize, String> {
    match n {
        0 => Err("must be at least 1".into()),
        n if n > MAX_THREADS => Err(format!("must be at most {MAX_THREADS} (got {n})")),
        n => Ok(n),
    }
}

/// Checks `pipeline_depth` against [`MAX_PIPELINE_DEPTH`].
pub(super) fn check_pipeline_depth(n: usize) -> Result<usize, String> {
    if n > MAX_PIPELINE_DEPTH {
        Err(format!("must be at most {MAX_PIPELINE_DEPTH} (got {n})"))
    } else {
        Ok(n)
    }
}

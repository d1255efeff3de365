//! The `fcgihost.toml` layer: parses the file with serde (`deny_unknown_fields`, every value
//! kept with its span), turns toml's errors into `file:line: …` messages with a "did you
//! mean" for unknown keys, and converts each value with the shared parsers. Relative paths in
//! the file are relative to the file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use super::values::{self, quote};
use super::{
    absolutize, non_empty, non_zero, resolve_program, CliSetting, ConfigError, FastcgiListen,
    Partial, Source, TrustedProxies,
};

/// A value as written, with its byte range in the file.
type V = Option<Spanned<Value>>;

/// The top level of the file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileTop {
    app: V,
    app_dir: V,
    python: V,
    pythonpath: V,
    listen: V,
    fastcgi_listen: V,
    trusted_proxies: V,
    workers: V,
    threads: V,
    workers_max: V,
    spawn_after: V,
    idle_timeout: V,
    max_queue: V,
    pipeline_depth: V,
    pipeline_window: V,
    queue_timeout: V,
    request_timeout: V,
    graceful_timeout: V,
    startup_timeout: V,
    rapid_fails_per_minute: V,
    max_requests: V,
    max_requests_jitter: V,
    max_worker_rss: V,
    max_worker_lifetime: V,
    script_name: V,
    restart_file_regex: V,
    status_path: V,
    health_path: V,
    instance_id: V,
    pid_file: V,
    slow_request_threshold: V,
    max_header_size: V,
    max_headers: V,
    max_request_line: V,
    max_header_field_size: V,
    max_body_size: V,
    header_read_timeout: V,
    keep_alive_timeout: V,
    max_connections: V,
    worker: Option<FileWorker>,
    log: Option<FileLog>,
    debug: Option<FileDebug>,
}

/// `[worker]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileWorker {
    command: V,
    env: V,
}

/// `[log]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLog {
    level: V,
    file: V,
    access: V,
    access_format: V,
    access_file: V,
}

/// `[debug]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileDebug {
    secret: V,
    path: V,
    wait_for_attach: V,
    max_pause: V,
}

/// Keys of each table, for suggestions and for naming the table in messages.
const TABLES: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "app",
            "app_dir",
            "python",
            "pythonpath",
            "listen",
            "fastcgi_listen",
            "trusted_proxies",
            "workers",
            "threads",
            "workers_max",
            "spawn_after",
            "idle_timeout",
            "max_queue",
            "pipeline_depth",
            "pipeline_window",
            "queue_timeout",
            "request_timeout",
            "graceful_timeout",
            "startup_timeout",
            "rapid_fails_per_minute",
            "max_requests",
            "max_requests_jitter",
            "max_worker_rss",
            "max_worker_lifetime",
            "script_name",
            "restart_file_regex",
            "status_path",
            "health_path",
            "instance_id",
            "pid_file",
            "slow_request_threshold",
            "max_header_size",
            "max_headers",
            "max_request_line",
            "max_header_field_size",
            "max_body_size",
            "header_read_timeout",
            "keep_alive_timeout",
            "max_connections",
            "worker",
            "log",
            "debug",
        ],
    ),
    ("worker", &["command", "env"]),
    (
        "log",
        &["level", "file", "access", "access_format", "access_file"],
    ),
    ("debug", &["secret", "path", "wait_for_attach", "max_pause"]),
];

/// Names from wfastcgi, gunicorn and env-var habits, and the key that means the same here.
const ALIASES: &[(&str, &str)] = &[
    ("wsgi_handler", "app"),
    ("wsgi_log", "log.file"),
    ("wsgi_ptvsd_secret", "debug.secret"),
    ("wsgi_restart_file_regex", "restart_file_regex"),
    ("bind", "listen"),
    ("timeout", "request_timeout"),
    ("log_level", "log.level"),
    ("log_file", "log.file"),
    ("access_log", "log.access"),
    ("forwarded_allow_ips", "trusted_proxies"),
    ("limit_request_fields", "max_headers"),
    ("limit_request_line", "max_request_line"),
    ("limit_request_field_size", "max_header_field_size"),
    ("pidfile", "pid_file"),
    ("pid", "pid_file"),
    ("chdir", "app_dir"),
    ("accesslog", "log.access_file"),
    ("errorlog", "log.file"),
    ("graceful", "graceful_timeout"),
];

/// Reads and converts the TOML file. `given` is the path as the user wrote it (for messages
/// and [`Source::File`]), `abs` the one to open.
pub(super) fn read(given: &Path, abs: &Path) -> Result<Partial, ConfigError> {
    let text = std::fs::read_to_string(abs).map_err(|source| ConfigError::Read {
        path: given.to_path_buf(),
        source,
    })?;
    parse(given, abs.parent().unwrap_or(abs), &text)
}

/// Parses and converts the text of the TOML file `given` (named in every error); relative
/// paths in it resolve against `base`. No file system access.
pub(super) fn parse(given: &Path, base: &Path, text: &str) -> Result<Partial, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let ctx = Ctx {
        given: given.to_path_buf(),
        text,
        base: base.to_path_buf(),
        source: Source::File(given.to_path_buf()),
        cli_arg: None,
    };
    let top: FileTop = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;
    ctx.convert(top)
}

/// Converts one command-line setting (`--set key=value`, or a flag standing for a key) as
/// if `key = value` were written in `fcgihost.toml`: same keys, same checks, same messages,
/// but naming the argument instead of a file line. Relative paths resolve against `cwd`.
pub(super) fn parse_setting(setting: &CliSetting, cwd: &Path) -> Result<Partial, ConfigError> {
    let fail = |message: String| ConfigError::CliValue {
        arg: setting.arg.clone(),
        message,
    };
    let key = setting.key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    // `worker.env.NAME`: the rest after `worker.env.` is the variable's name, whatever it
    // holds.
    let path: Vec<&str> = match parts.as_slice() {
        ["worker", "env", _, ..] => vec!["worker", "env", &key["worker.env.".len()..]],
        _ => parts,
    };
    if path.iter().any(|p| p.is_empty()) {
        return Err(fail(format!(
            "invalid key {} (use a config key such as `workers` or `debug.path`)",
            quote(key)
        )));
    }
    let value = if setting.text {
        Value::String(setting.value.clone())
    } else {
        guess_value(&setting.value)
    };
    let mut leaf = value;
    for name in path.iter().rev() {
        let mut table = toml::Table::new();
        table.insert((*name).to_string(), leaf);
        leaf = Value::Table(table);
    }
    let Value::Table(top) = leaf else {
        return Err(fail("invalid key".into()));
    };
    let text = toml::to_string(&top).map_err(|e| fail(e.to_string()))?;
    let ctx = Ctx {
        given: PathBuf::from(&setting.arg),
        text: &text,
        base: cwd.to_path_buf(),
        source: Source::Cli,
        cli_arg: Some(setting.arg.clone()),
    };
    let top: FileTop = toml::from_str(&text).map_err(|e| ctx.toml_error(&e))?;
    ctx.convert(top)
}

/// A value typed on the command line: TOML when it reads as one value (`4`, `true`,
/// `["a", "b"]`, `"quoted"`), else the text itself (`90s`, `myapp:app`, `0.0.0.0:8000`).
fn guess_value(raw: &str) -> Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(table) if table.len() == 1 => match table.get("v") {
            Some(v) if !matches!(v, Value::Table(_) | Value::Datetime(_)) => v.clone(),
            _ => Value::String(raw.to_string()),
        },
        _ => Value::String(raw.to_string()),
    }
}

/// What converting needs to know about the file.
struct Ctx<'a> {
    given: PathBuf,
    text: &'a str,
    base: PathBuf,
    source: Source,
    /// The command-line argument this text stands for (errors name it, not a line).
    cli_arg: Option<String>,
}

impl Ctx<'_> {
    /// An error at a byte offset.
    fn at(&self, offset: usize, message: String) -> ConfigError {
        if let Some(arg) = &self.cli_arg {
            return ConfigError::CliValue {
                arg: arg.clone(),
                message,
            };
        }
        ConfigError::At {
            file: self.given.clone(),
            line: values::line_of(self.text, offset),
            message,
        }
    }

    /// Turns a toml/serde error into a `file:line: message` error.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let raw = e.message().trim();
        let message = if let Some(rest) = raw.strip_prefix("unknown field ") {
            unknown_key_message(rest)
        } else if raw == "duplicate key" {
            match e.span().and_then(|s| self.text.get(s)) {
                Some(key) => format!("duplicate key `{}`", key.trim_matches(['"', '\''])),
                None => raw.to_string(),
            }
        } else if let Some(i) = raw.find("expected struct ") {
            // A table key given a non-table value (`debug = 5`).
            format!("{}expected a table", &raw[..i])
        } else {
            raw.lines().next().unwrap_or(raw).to_string()
        };
        match e.span() {
            Some(span) => self.at(span.start, message),
            None if self.cli_arg.is_some() => self.at(0, message),
            None => ConfigError::InFile {
                file: self.given.clone(),
                message,
            },
        }
    }

    /// Converts one value; errors become `file:line: key `k`: …`.
    fn set<T>(
        &self,
        slot: &mut Option<(T, Source)>,
        value: &V,
        key: &str,
        conv: impl Fn(&Value) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        if let Some(v) = value {
            let t = conv(v.get_ref())
                .map_err(|m| self.at(v.span().start, format!("key `{key}`: {m}")))?;
            *slot = Some((t, self.source.clone()));
        }
        Ok(())
    }

    /// All values of the file, converted.
    fn convert(&self, top: FileTop) -> Result<Partial, ConfigError> {
        let mut p = Partial::default();
        let base = self.base.as_path();
        self.set(&mut p.app, &top.app, "app", |v| {
            text(v).map(|s| non_empty(&s))
        })?;
        self.set(&mut p.app_dir, &top.app_dir, "app_dir", |v| {
            nonempty_text(v).map(|s| absolutize(base, Path::new(&s)))
        })?;
        self.set(&mut p.python, &top.python, "python", |v| {
            nonempty_text(v).map(|s| resolve_program(base, &s))
        })?;
        self.set(&mut p.pythonpath, &top.pythonpath, "pythonpath", strings)?;
        self.set(&mut p.listen, &top.listen, "listen", |v| match v {
            Value::Integer(n) => u16::try_from(*n)
                .map(values::loopback)
                .map_err(|_| format!("invalid port {n}")),
            _ => text(v).and_then(|s| values::parse_listen(&s)),
        })?;
        self.set(
            &mut p.fastcgi_listen,
            &top.fastcgi_listen,
            "fastcgi_listen",
            |v| match v {
                Value::Integer(n) => u16::try_from(*n)
                    .map(|port| Some(FastcgiListen::Tcp(values::loopback(port))))
                    .map_err(|_| format!("invalid port {n}")),
                _ => text(v).and_then(|s| values::parse_fastcgi_listen(&s, base)),
            },
        )?;
        self.set(
            &mut p.trusted_proxies,
            &top.trusted_proxies,
            "trusted_proxies",
            |v| match v {
                Value::String(s) => TrustedProxies::parse_text(s),
                _ => strings(v)
                    .and_then(|items| TrustedProxies::parse(items.iter().map(String::as_str))),
            },
        )?;
        self.set(&mut p.workers, &top.workers, "workers", |v| count(v, 1))?;
        self.set(&mut p.threads, &top.threads, "threads", |v| {
            count(v, 1).and_then(values::check_threads)
        })?;
        self.set(&mut p.workers_max, &top.workers_max, "workers_max", |v| {
            count(v, 1).map(Some)
        })?;
        self.set(
            &mut p.spawn_after,
            &top.spawn_after,
            "spawn_after",
            duration,
        )?;
        self.set(
            &mut p.idle_timeout,
            &top.idle_timeout,
            "idle_timeout",
            duration,
        )?;
        self.set(&mut p.max_queue, &top.max_queue, "max_queue", |v| {
            count(v, 0)
        })?;
        self.set(
            &mut p.pipeline_depth,
            &top.pipeline_depth,
            "pipeline_depth",
            |v| count(v, 0).and_then(values::check_pipeline_depth),
        )?;
        self.set(
            &mut p.pipeline_window,
            &top.pipeline_window,
            "pipeline_window",
            duration,
        )?;
        self.set(
            &mut p.queue_timeout,
            &top.queue_timeout,
            "queue_timeout",
            duration,
        )?;
        self.set(
            &mut p.request_timeout,
            &top.request_timeout,
            "request_timeout",
            |v| duration(v).map(non_zero),
        )?;
        self.set(
            &mut p.graceful_timeout,
            &top.graceful_timeout,
            "graceful_timeout",
            duration,
        )?;
        self.set(
            &mut p.startup_timeout,
            &top.startup_timeout,
            "startup_timeout",
            positive_duration,
        )?;
        self.set(
            &mut p.rapid_fails_per_minute,
            &top.rapid_fails_per_minute,
            "rapid_fails_per_minute",
            |v| count(v, 0).and_then(|n| u32::try_from(n).map_err(|_| format!("{n} is too large"))),
        )?;
        self.set(
            &mut p.max_requests,
            &top.max_requests,
            "max_requests",
            |v| count(v, 0).map(|n| n as u64),
        )?;
        self.set(
            &mut p.max_requests_jitter,
            &top.max_requests_jitter,
            "max_requests_jitter",
            |v| count(v, 0).map(|n| n as u64),
        )?;
        self.set(
            &mut p.max_worker_rss,
            &top.max_worker_rss,
            "max_worker_rss",
            |v| {
                let bytes = match v {
                    Value::Integer(n) => {
                        u64::try_from(*n).map_err(|_| format!("{n} is negative"))?
                    }
                    _ => text(v).and_then(|s| values::parse_byte_size(&s))?,
                };
                Ok((bytes > 0).then_some(bytes))
            },
        )?;
        self.set(
            &mut p.max_worker_lifetime,
            &top.max_worker_lifetime,
            "max_worker_lifetime",
            |v| duration(v).map(non_zero),
        )?;
        self.set(&mut p.script_name, &top.script_name, "script_name", |v| {
            text(v).and_then(|s| values::parse_script_name(&s))
        })?;
        self.set(
            &mut p.restart_file_regex,
            &top.restart_file_regex,
            "restart_file_regex",
            |v| text(v).map(|s| (!s.is_empty()).then_some(s)),
        )?;
        self.set(&mut p.status_path, &top.status_path, "status_path", |v| {
            let s = text(v)?;
            if s.trim().is_empty() {
                return Ok(None);
            }
            values::parse_url_path(&s).map(Some)
        })?;
        self.set(&mut p.health_path, &top.health_path, "health_path", |v| {
            text(v).and_then(|s| values::parse_optional_url_path(&s))
        })?;
        self.set(&mut p.instance_id, &top.instance_id, "instance_id", |v| {
            text(v).and_then(|s| values::parse_instance_id(&s))
        })?;
        self.set(&mut p.pid_file, &top.pid_file, "pid_file", |v| {
            text(v).map(|s| non_empty(&s).map(|s| absolutize(base, Path::new(&s))))
        })?;
        self.set(
            &mut p.slow_request_threshold,
            &top.slow_request_threshold,
            "slow_request_threshold",
            |v| duration(v).map(non_zero),
        )?;
        self.set(
            &mut p.max_header_size,
            &top.max_header_size,
            "max_header_size",
            |v| {
                let n = byte_size(v)?;
                values::check_min(n, 1024)
            },
        )?;
        self.set(&mut p.max_headers, &top.max_headers, "max_headers", |v| {
            count(v, 1)
        })?;
        self.set(
            &mut p.max_request_line,
            &top.max_request_line,
            "max_request_line",
            |v| byte_size(v).map(|n| (n > 0).then_some(n)),
        )?;
        self.set(
            &mut p.max_header_field_size,
            &top.max_header_field_size,
            "max_header_field_size",
            |v| byte_size(v).map(|n| (n > 0).then_some(n)),
        )?;
        self.set(
            &mut p.max_body_size,
            &top.max_body_size,
            "max_body_size",
            |v| byte_size(v).map(|n| (n > 0).then_some(n)),
        )?;
        self.set(
            &mut p.header_read_timeout,
            &top.header_read_timeout,
            "header_read_timeout",
            |v| duration(v).map(non_zero),
        )?;
        self.set(
            &mut p.keep_alive_timeout,
            &top.keep_alive_timeout,
            "keep_alive_timeout",
            |v| duration(v).map(non_zero),
        )?;
        self.set(
            &mut p.max_connections,
            &top.max_connections,
            "max_connections",
            |v| count(v, 0).map(|n| (n > 0).then_some(n)),
        )?;

        let worker = top.worker.unwrap_or_default();
        self.set(
            &mut p.worker_command,
            &worker.command,
            "worker.command",
            |v| {
                let words = strings(v)?;
                if words.is_empty() {
                    return Err(
                        "must name a program (remove the key to use the built-in worker)".into(),
                    );
                }
                Ok(Some(words))
            },
        )?;
        let mut env = None;
        self.set(&mut env, &worker.env, "worker.env", env_table)?;
        if let Some((pairs, src)) = env {
            for (k, v) in pairs {
                p.worker_env.insert(k, (v, src.clone()));
            }
        }

        let log = top.log.unwrap_or_default();
        self.set(&mut p.log_level, &log.level, "log.level", |v| {
            text(v).and_then(|s| values::parse_log_level(&s))
        })?;
        self.set(&mut p.log_file, &log.file, "log.file", |v| {
            text(v).map(|s| non_empty(&s).map(|s| absolutize(base, Path::new(&s))))
        })?;
        self.set(&mut p.log_access, &log.access, "log.access", boolean)?;
        self.set(
            &mut p.log_access_format,
            &log.access_format,
            "log.access_format",
            |v| text(v).and_then(|s| values::parse_access_format(&s)),
        )?;
        self.set(
            &mut p.log_access_file,
            &log.access_file,
            "log.access_file",
            |v| text(v).map(|s| values::parse_log_target(&s, base)),
        )?;

        let debug = top.debug.unwrap_or_default();
        self.set(&mut p.debug_secret, &debug.secret, "debug.secret", |v| {
            text(v).map(|s| non_empty(&s))
        })?;
        self.set(&mut p.debug_path, &debug.path, "debug.path", |v| {
            text(v).and_then(|s| values::parse_url_path(&s))
        })?;
        self.set(
            &mut p.debug_wait_for_attach,
            &debug.wait_for_attach,
            "debug.wait_for_attach",
            |v| duration(v).map(non_zero),
        )?;
        self.set(
            &mut p.debug_max_pause,
            &debug.max_pause,
            "debug.max_pause",
            |v| duration(v).map(non_zero),
        )?;
        Ok(p)
    }
}

/// Builds `unknown key `k` [in [table]] (did you mean `x`?)` from serde's
/// "`k`, expected one of `a`, `b`" (the expected list tells which table it was).
fn unknown_key_message(rest: &str) -> String {
    let quoted: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let Some((key, expected)) = quoted.split_first() else {
        return format!("unknown key {rest}");
    };
    let table = TABLES.iter().find(|(_, keys)| {
        keys.len() == expected.len() && expected.iter().all(|e| keys.contains(e))
    });
    let (table_name, known): (&str, &[&str]) = match table {
        Some((name, keys)) => (name, keys),
        None => ("", expected),
    };
    let place = if table_name.is_empty() {
        String::new()
    } else {
        format!(" in [{table_name}]")
    };
    let hint = suggestion(key, table_name, known);
    format!("unknown key `{key}`{place}{hint}")
}

/// ` (did you mean `x`?)`, a pointer to the table the key belongs in, or nothing.
fn suggestion(key: &str, table: &str, known: &[&str]) -> String {
    if let Some(k) = values::suggest(key, known) {
        return format!(" (did you mean `{k}`?)");
    }
    let lower = key.to_ascii_lowercase().replace('-', "_");
    for (other, keys) in TABLES {
        if *other != table && !other.is_empty() && keys.contains(&lower.as_str()) {
            return format!(" (`{lower}` belongs in the [{other}] table)");
        }
    }
    if !table.is_empty() && TABLES[0].1.contains(&lower.as_str()) {
        return format!(" (`{lower}` is a top-level key: put it before any [table])");
    }
    match ALIASES.iter().find(|(a, _)| *a == lower) {
        Some((_, target)) => alias_hint(target, table),
        None => String::new(),
    }
}

/// How to write the key an alias stands for, seen from `table`.
fn alias_hint(target: &str, table: &str) -> String {
    match target.split_once('.') {
        Some((t, k)) if t == table => format!(" (did you mean `{k}`?)"),
        Some((t, k)) => format!(" (did you mean `{k}` in the [{t}] table?)"),
        None if table.is_empty() => format!(" (did you mean `{target}`?)"),
        None => format!(" (did you mean the top-level key `{target}`?)"),
    }
}

/// Names a TOML value's type (and the value, when short) for messages.
fn found(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {}", quote(s)),
        Value::Integer(n) => format!("integer {n}"),
        Value::Float(x) => format!("float {x}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("date-time {d}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

/// A string.
fn text(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(format!("expected a string, found {}", found(v))),
    }
}

/// A string that is not empty.
fn nonempty_text(v: &Value) -> Result<String, String> {
    text(v).and_then(|s| non_empty(&s).ok_or_else(|| "must not be empty".to_string()))
}

/// An array of strings.
fn strings(v: &Value) -> Result<Vec<String>, String> {
    let err = || format!("expected an array of strings, found {}", found(v));
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "expected an array of strings, found {} in it",
                    found(other)
                )),
            })
            .collect(),
        _ => Err(err()),
    }
}

/// A whole number ≥ `min`.
fn count(v: &Value, min: u64) -> Result<usize, String> {
    match v {
        Value::Integer(n) => {
            let n = u64::try_from(*n).map_err(|_| format!("must be at least {min} (got {n})"))?;
            let n = values::check_min(n, min)?;
            usize::try_from(n).map_err(|_| format!("{n} is too large"))
        }
        _ => Err(format!("expected a whole number, found {}", found(v))),
    }
}

/// A duration string or a number of seconds.
fn duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => values::parse_duration(s),
        Value::Integer(n) => u64::try_from(*n)
            .map(Duration::from_secs)
            .map_err(|_| format!("invalid duration {n} (must not be negative)")),
        _ => Err(format!(
            "expected a duration such as \"90s\" or a number of seconds, found {}",
            found(v)
        )),
    }
}

/// A size in bytes: an integer, or a string with a unit (`"64KiB"`, `"1GiB"`).
fn byte_size(v: &Value) -> Result<u64, String> {
    match v {
        Value::Integer(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
        _ => text(v).and_then(|s| values::parse_byte_size(&s)),
    }
}

/// A duration that must not be zero.
fn positive_duration(v: &Value) -> Result<Duration, String> {
    duration(v).and_then(|d| {
        if d.is_zero() {
            Err("must be greater than 0".to_string())
        } else {
            Ok(d)
        }
    })
}

/// `true` or `false`.
fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Boolean(b) => Ok(*b),
        _ => Err(format!("expected true or false, found {}", found(v))),
    }
}

/// `{ NAME = "value" }`; numbers and booleans are taken as their text.
fn env_table(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Table(t) = v else {
        return Err(format!(
            "expected a table such as {{ NAME = \"value\" }}, found {}",
            found(v)
        ));
    };
    t.iter()
        .map(|(k, val)| {
            values::check_env_name(k)?;
            let s = match val {
                Value::String(s) => s.clone(),
                Value::Integer(n) => n.to_string(),
                Value::Float(x) => x.to_string(),
                Value::Boolean(b) => b.to_string(),
                other => return Err(format!("`{k}`: expected a string, found {}", found(other))),
            };
            Ok((k.clone(), s))
        })
        .collect()
}

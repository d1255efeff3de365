//! fcgihost's configuration: the [`Config`] every other part runs from, built from five
//! layers — command line > environment > `fcgihost.toml` > web.config `<appSettings>` (the
//! wfastcgi settings, in the app directory) > defaults — with the source of every effective
//! value remembered for `fcgihost check` ([`Loaded::sources`], [`render_sources`]).
//!
//! This module owns reading and validating those layers and the messages users see when a
//! value is wrong (`fcgihost.toml:3: unknown key `wokers` (did you mean `workers`?)`). It does
//! not act on any value. Submodules: `values` (text parsers), `file` (TOML), `env`
//! (environment variables), `webconfig` (web.config XML).

mod env;
mod file;
#[cfg(test)]
mod tests;
mod values;
mod webconfig;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub use crate::gateway::forwarded::TrustedProxies;
pub use values::{parse_duration, MAX_PIPELINE_DEPTH};

/// Where an effective value came from, so `fcgihost check` can say why a setting has the
/// value it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built-in default.
    Default,
    /// `<appSettings>` of the web.config at this path.
    WebConfig(PathBuf),
    /// The TOML config file, path as given (`fcgihost.toml` when found in the current dir).
    File(PathBuf),
    /// This environment variable.
    Env(String),
    /// A command-line flag.
    Cli,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::WebConfig(_) => f.write_str("web.config"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Cli => f.write_str("command line"),
        }
    }
}

/// The settings the command line can override; `None` means "not given". The CLI parser
/// (clap, in main) fills this so this module does not depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliOverrides {
    /// `--config`: the TOML file to read (an error if it does not exist).
    pub config_file: Option<PathBuf>,
    /// `--app`: the WSGI app spec.
    pub app: Option<String>,
    /// `--app-dir`: the app directory (relative to the current dir).
    pub app_dir: Option<PathBuf>,
    /// `--python`: the interpreter.
    pub python: Option<String>,
    /// `--listen`: address to serve HTTP on.
    pub listen: Option<String>,
    /// `--fastcgi-listen`: address (or Unix socket path) of the FastCGI front door.
    pub fastcgi_listen: Option<String>,
    /// `--workers`: number of worker processes.
    pub workers: Option<usize>,
    /// `--threads`: requests one worker runs at once.
    pub threads: Option<usize>,
    /// `--request-timeout`: duration text, `0` disables.
    pub request_timeout: Option<String>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// Every other setting given on the command line, in order: `--set key=value` and the
    /// gunicorn-style flags (`--max-requests 500` is `max_requests = 500`). Converted and
    /// checked exactly like the same key in `fcgihost.toml`; a later one wins.
    pub settings: Vec<CliSetting>,
    /// `--reload`: restart workers when app files change, even where the config turned it
    /// off (with wfastcgi's default pattern unless one is configured).
    pub reload: bool,
}

/// One `key = value` from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliSetting {
    /// How the user wrote it, for messages: `--set workers=0`, `--max-requests`.
    pub arg: String,
    /// Dotted config key (`max_requests`, `debug.secret`, `worker.env.NAME`).
    pub key: String,
    /// The value as typed.
    pub value: String,
    /// Take the value as text even when it reads as a number or boolean (`--env K=1`).
    pub text: bool,
}

impl CliSetting {
    /// `--set key=value`.
    pub fn parse_set(arg: &str) -> Result<Self, String> {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {}", values::quote(arg)))?;
        Ok(Self {
            arg: format!("--set {arg}"),
            key: key.trim().to_string(),
            value: value.to_string(),
            text: false,
        })
    }

    /// A flag that sets one key (`--max-requests 500`).
    pub fn flag(flag: &str, key: &str, value: impl Into<String>) -> Self {
        Self {
            arg: flag.to_string(),
            key: key.to_string(),
            value: value.into(),
            text: false,
        }
    }

    /// `-e/--env NAME=VALUE`: one worker environment variable, its value always text.
    pub fn worker_env(arg: &str) -> Result<Self, String> {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=VALUE, got {}", values::quote(arg)))?;
        values::check_env_name(name)?;
        Ok(Self {
            arg: format!("--env {name}"),
            key: format!("worker.env.{name}"),
            value: value.to_string(),
            text: true,
        })
    }
}

/// Where a log goes besides (or instead of) the main log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (`-`).
    Stdout,
    /// Appended to this file (absolute).
    File(PathBuf),
}

impl fmt::Display for LogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogTarget::Stdout => f.write_str("- (stdout)"),
            LogTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The effective configuration the host runs from.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// WSGI app spec (`pkg.mod:app`, `pkg.mod.create_app()`); `None` serves the built-in
    /// welcome page.
    pub app: Option<String>,
    /// Absolute app directory: workers chdir here and put it first on `sys.path`.
    pub app_dir: PathBuf,
    /// Interpreter to start workers with; relative paths (`.venv/bin/python`) are already
    /// made absolute against the directory of whatever set them.
    pub python: String,
    /// Extra `sys.path` entries, appended in order (relative ones are relative to `app_dir`).
    pub pythonpath: Vec<String>,
    /// Address the HTTP front door binds.
    pub listen: SocketAddr,
    /// Whether `listen` was set (flag, environment, file, or the IIS port variables) rather
    /// than defaulted: with a FastCGI listening socket on stdin and no `listen`, the host
    /// serves FastCGI only.
    pub listen_configured: bool,
    /// Where the FastCGI front door listens (`fastcgi_listen`); `None` = no FastCGI listener
    /// of its own (stdin may still be one).
    pub fastcgi_listen: Option<FastcgiListen>,
    /// Peers whose proxy headers (`X-Forwarded-*`, `Forwarded`, `X-ARR-SSL`,
    /// `X-Original-URL`) are believed (`trusted_proxies`; default loopback).
    pub trusted_proxies: TrustedProxies,
    /// Number of worker processes (≥ 1); the floor of a dynamic pool.
    pub workers: usize,
    /// Requests one worker runs at once, each on its own thread (1 = one at a time).
    pub threads: usize,
    /// Most worker processes the pool grows to when every slot is busy (= `workers`: a
    /// fixed pool).
    pub workers_max: usize,
    /// A request that waited this long with every slot busy makes the pool grow.
    pub spawn_after: Duration,
    /// A worker above the floor that served nothing for this long is stopped.
    pub idle_timeout: Duration,
    /// Requests that may wait for a worker before the front door answers 503.
    pub max_queue: usize,
    /// Requests written behind the running one on a busy worker's connection when every
    /// worker is busy (0 = off; always off in debug mode and for `worker.command`).
    pub pipeline_depth: usize,
    /// A request is written behind a running one only while that one has run less than
    /// this (a long-running request is likely slow: the next one waits in the queue and
    /// takes whichever worker frees first).
    pub pipeline_window: Duration,
    /// Longest wait in that queue before 503.
    pub queue_timeout: Duration,
    /// Pause-aware per-request limit; `None` = no limit.
    pub request_timeout: Option<Duration>,
    /// Time given to in-flight requests on shutdown or recycle.
    pub graceful_timeout: Duration,
    /// Time a worker has to import the app and report ready (> 0).
    pub startup_timeout: Duration,
    /// Worker start failures per minute after which the supervisor stops respawning.
    pub rapid_fails_per_minute: u32,
    /// Recycle a worker after this many requests (0 = never), plus up to
    /// `max_requests_jitter` more so workers do not all recycle at once.
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    /// Recycle a worker whose resident memory passes this many bytes (checked between
    /// requests).
    pub max_worker_rss: Option<u64>,
    /// Recycle a worker after it has lived this long.
    pub max_worker_lifetime: Option<Duration>,
    /// Mount prefix split off the front of `PATH_INFO` (`""` or `/prefix`, no trailing `/`).
    pub script_name: String,
    /// Restart workers when a file under `app_dir` whose path matches changes; `None` = never.
    pub restart_file_regex: Option<String>,
    /// URL path of the status page (JSON, HTML, and Prometheus text at `<path>/metrics`);
    /// `None` = off.
    pub status_path: Option<String>,
    /// URL path of the health check any client may ask (200 while a worker is ready, 503
    /// while starting, when every worker is down, and from the start of a drain); `None` =
    /// off.
    pub health_path: Option<String>,
    /// This host's name among several behind one balancer: `WEBSITE_INSTANCE_ID` (App
    /// Service), else `instance_id`, else the machine's host name.
    pub instance_id: String,
    /// Write the host's pid here at start and remove it at exit (gunicorn's `--pid`).
    pub pid_file: Option<PathBuf>,
    /// Log the worker's Python stacks when a request's active time passes this; `None` = off.
    pub slow_request_threshold: Option<Duration>,
    /// Limits on what clients may send and hold.
    pub limits: Limits,
    /// Worker process settings.
    pub worker: WorkerConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Remote-debugging settings.
    pub debug: DebugConfig,
}

/// Where the FastCGI front door listens: a TCP address or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastcgiListen {
    /// `127.0.0.1:9001` (a bare port means 127.0.0.1).
    Tcp(SocketAddr),
    /// An absolute socket path (`unix:/run/fcgihost.sock`, or any value with a `/`).
    Unix(PathBuf),
}

impl fmt::Display for FastcgiListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FastcgiListen::Tcp(addr) => write!(f, "{addr}"),
            FastcgiListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `[worker]`: what runs as a worker and what it gets in its environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerConfig {
    /// A FastCGI program to run instead of the shipped Python worker (listening socket on
    /// fd 0); `None` = the shipped worker.
    pub command: Option<Vec<String>>,
    /// Extra environment for workers (web.config appSettings that are not fcgihost's own
    /// arrive here, as wfastcgi put them in `os.environ`).
    pub env: BTreeMap<String, String>,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Level (`trace` … `error`, `off`) or a tracing filter directive.
    pub level: String,
    /// Also append log lines to this file (absolute).
    pub file: Option<PathBuf>,
    /// Write one access-log line per request.
    pub access: bool,
    /// Access-log format: `text` (fields), `json` (JSON lines), or a gunicorn-style atom
    /// string such as `%(h)s "%(r)s" %(s)s %(b)s`.
    pub access_format: String,
    /// Access lines go here instead of the main log; `None` = the main log.
    pub access_file: Option<LogTarget>,
}

/// Limits against oversized requests and clients that hold connections (top-level keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    pub max_header_size: u64,
    /// Most header fields in a request; more gets 431.
    pub max_headers: usize,
    /// Largest request body in bytes; larger gets 413. `None` = no limit.
    pub max_body_size: Option<u64>,
    /// Time a client has to send a complete request head once it started one; `None` = no
    /// limit.
    pub header_read_timeout: Option<Duration>,
    /// How long an idle keep-alive connection stays open; `None` = keep-alive off.
    pub keep_alive_timeout: Option<Duration>,
    /// Most client connections served at once (more wait in the listen backlog); `None` =
    /// no cap.
    pub max_connections: Option<usize>,
    /// Longest request target (path and query) in bytes; longer gets 414. `None` = only
    /// `max_header_size` bounds it.
    pub max_request_line: Option<u64>,
    /// Longest single header field (name and value) in bytes; longer gets 431. `None` =
    /// only `max_header_size` bounds it.
    pub max_header_field_size: Option<u64>,
}

/// `[debug]`: remote debugging through the `/ptvsd` WebSocket proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct DebugConfig {
    /// The attach secret; setting it turns debug mode on. Never printed.
    pub secret: Option<String>,
    /// URL path of the debug proxy endpoint (`/ptvsd`).
    pub path: String,
    /// Hold requests until a debugger attaches, at most this long; `None` = don't wait.
    pub wait_for_attach: Option<Duration>,
    /// Longest time the request clock stays stopped for one pause; `None` = no limit.
    pub max_pause: Option<Duration>,
}

impl fmt::Debug for DebugConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DebugConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("path", &self.path)
            .field("wait_for_attach", &self.wait_for_attach)
            .field("max_pause", &self.max_pause)
            .finish()
    }
}

impl Config {
    /// Debug mode is on exactly when a secret is configured.
    pub fn debug_enabled(&self) -> bool {
        self.debug.secret.is_some()
    }
}

/// The result of [`load`]: the configuration, where each value came from, and the non-fatal
/// problems found on the way (to be logged as warnings).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective configuration.
    pub config: Config,
    /// Every effective setting with its display value and source, in a stable order.
    pub sources: Vec<Setting>,
    /// Warnings: unknown `FCGIHOST_*` variables, wfastcgi settings that no longer apply, …
    pub warnings: Vec<String>,
    /// The TOML file that was read (path as given), if any.
    pub config_file: Option<PathBuf>,
    /// The web.config that was read (absolute), if any.
    pub web_config: Option<PathBuf>,
}

impl Loaded {
    /// Where the effective value of `key` (a dotted key of [`Setting`]) came from, as the
    /// user would look for it: `WSGI_LOG in C:\site\web.config`, `log.file in fcgihost.toml`,
    /// `environment variable WSGI_LOG`, `the command line`, `the default`.
    pub fn origin(&self, key: &str) -> String {
        let source = self
            .sources
            .iter()
            .find(|s| s.key == key)
            .map(|s| &s.source);
        match source {
            Some(Source::WebConfig(path)) => {
                let name = WEB_CONFIG_KEYS
                    .iter()
                    .find(|(dotted, _)| *dotted == key)
                    .map_or(key, |(_, name)| *name);
                format!("{name} in {}", path.display())
            }
            Some(Source::File(path)) => format!("{key} in {}", path.display()),
            Some(Source::Env(var)) => format!("environment variable {var}"),
            Some(Source::Cli) => "the command line".into(),
            Some(Source::Default) | None => format!("the default of {key}"),
        }
    }
}

/// The web.config `<appSettings>` names (wfastcgi's) of the settings read from there.
const WEB_CONFIG_KEYS: &[(&str, &str)] = &[
    ("app", "WSGI_HANDLER"),
    ("pythonpath", "PYTHONPATH"),
    ("log.file", "WSGI_LOG"),
    ("restart_file_regex", "WSGI_RESTART_FILE_REGEX"),
    ("debug.secret", "WSGI_PTVSD_SECRET"),
    ("script_name", "SCRIPT_NAME"),
];

/// One effective setting as `fcgihost check` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Dotted key (`workers`, `debug.secret`, `worker.env.DJANGO_SETTINGS_MODULE`).
    pub key: String,
    /// Display value; secrets are shown as `<set>`, never their value.
    pub value: String,
    /// Where the value came from.
    pub source: Source,
}

/// A configuration problem; `Display` is the message for the user (main exits with code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named by `--config` or `FCGIHOST_CONFIG` does not exist.
    #[error("config file {} (from {origin}) not found", path.display())]
    ConfigNotFound {
        /// The path as given.
        path: PathBuf,
        /// `--config` or `env FCGIHOST_CONFIG`.
        origin: String,
    },
    /// A file exists but could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A problem at a line of a file (TOML or web.config).
    #[error("{}:{line}: {message}", file.display())]
    At {
        /// The file, path as given.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A problem in a file that has no line to point at.
    #[error("{}: {message}", file.display())]
    InFile {
        /// The file, path as given.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An environment variable has a bad value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A command-line setting (`--set key=value` or a flag that stands for a key) is
    /// wrong; the message is the one the same key gets in `fcgihost.toml`.
    #[error("command line {arg}: {message}")]
    CliValue {
        /// How the user wrote it (`--set wokers=4`, `--max-requests`).
        arg: String,
        /// What is wrong.
        message: String,
    },
    /// A command-line flag has a bad value.
    #[error("command line {flag}: {message}")]
    Cli {
        /// The flag (`--workers`).
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The app directory does not exist.
    #[error("app_dir {} (from {origin}) is not a directory", path.display())]
    AppDir {
        /// The absolute path.
        path: PathBuf,
        /// Who set it.
        origin: Source,
    },
    /// The current directory cannot be determined.
    #[error("cannot determine the current directory: {0}")]
    CurrentDir(std::io::Error),
}

/// One value a layer sets, with the source that set it.
type Slot<T> = Option<(T, Source)>;

/// What one layer sets; `None` fields leave the value to lower layers. `Some(None)` in an
/// optional setting is an explicit "off" (an empty string, `0`).
#[derive(Debug, Default)]
struct Partial {
    app: Slot<Option<String>>,
    app_dir: Slot<PathBuf>,
    python: Slot<String>,
    pythonpath: Slot<Vec<String>>,
    listen: Slot<SocketAddr>,
    fastcgi_listen: Slot<Option<FastcgiListen>>,
    trusted_proxies: Slot<TrustedProxies>,
    workers: Slot<usize>,
    threads: Slot<usize>,
    workers_max: Slot<Option<usize>>,
    spawn_after: Slot<Duration>,
    idle_timeout: Slot<Duration>,
    max_queue: Slot<usize>,
    pipeline_depth: Slot<usize>,
    pipeline_window: Slot<Duration>,
    queue_timeout: Slot<Duration>,
    request_timeout: Slot<Option<Duration>>,
    graceful_timeout: Slot<Duration>,
    startup_timeout: Slot<Duration>,
    rapid_fails_per_minute: Slot<u32>,
    max_requests: Slot<u64>,
    max_requests_jitter: Slot<u64>,
    max_worker_rss: Slot<Option<u64>>,
    max_worker_lifetime: Slot<Option<Duration>>,
    script_name: Slot<String>,
    restart_file_regex: Slot<Option<String>>,
    status_path: Slot<Option<String>>,
    health_path: Slot<Option<String>>,
    instance_id: Slot<Option<String>>,
    pid_file: Slot<Option<PathBuf>>,
    slow_request_threshold: Slot<Option<Duration>>,
    max_header_size: Slot<u64>,
    max_headers: Slot<usize>,
    max_body_size: Slot<Option<u64>>,
    header_read_timeout: Slot<Option<Duration>>,
    keep_alive_timeout: Slot<Option<Duration>>,
    max_connections: Slot<Option<usize>>,
    max_request_line: Slot<Option<u64>>,
    max_header_field_size: Slot<Option<u64>>,
    worker_command: Slot<Option<Vec<String>>>,
    /// Merged per variable name across layers.
    worker_env: BTreeMap<String, (String, Source)>,
    log_level: Slot<String>,
    log_file: Slot<Option<PathBuf>>,
    log_access: Slot<bool>,
    log_access_format: Slot<String>,
    log_access_file: Slot<Option<LogTarget>>,
    debug_secret: Slot<Option<String>>,
    debug_path: Slot<String>,
    debug_wait_for_attach: Slot<Option<Duration>>,
    debug_max_pause: Slot<Option<Duration>>,
}

/// Default `spawn_after`: how long a request waits with every slot busy before the pool
/// grows (when `workers_max` allows).
const DEFAULT_SPAWN_AFTER: Duration = Duration::from_millis(100);

/// Default `idle_timeout` (PHP-FPM's `pm.process_idle_timeout`).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `pipeline_depth`: under load a busy worker finds its next requests already in
/// its socket (it never sleeps between them, and one read carries several); measured on 2
/// cores, hello world: about 33k req/s without, 41k with 1, 47k with 2, 51k with 4.
pub const DEFAULT_PIPELINE_DEPTH: usize = 4;

/// Default `pipeline_window`: far above a typical request's service time (tens of µs to a
/// few ms), far below a slow one's.
pub const DEFAULT_PIPELINE_WINDOW: Duration = Duration::from_millis(10);

/// Default `max_header_size`: 64 KiB for the request line and all headers.
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 64 * 1024;
/// Default `max_headers` (hyper's and gunicorn's `limit_request_fields`).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default `max_body_size`: 1 GiB (bodies are streamed to the worker, never buffered).
pub const DEFAULT_MAX_BODY_SIZE: u64 = 1 << 30;
/// Default `header_read_timeout` (hyper's default, half of nginx's `client_header_timeout`).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `keep_alive_timeout` (nginx's `keepalive_timeout`).
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default `max_connections` (gunicorn's `worker_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default `health_path`.
pub const DEFAULT_HEALTH_PATH: &str = "/_fcgihost/health";

/// wfastcgi's default `WSGI_RESTART_FILE_REGEX`.
pub const DEFAULT_RESTART_FILE_REGEX: &str = r".*((\.py)|(\.config))$";

/// The interpreter used when none is configured.
fn default_python() -> &'static str {
    if cfg!(windows) {
        "python"
    } else {
        "python3"
    }
}

/// An empty string means "off".
fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// A zero duration means "off".
fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Makes `p` absolute against `base` and drops `.` components (no symlink resolution, so the
/// path stays the one the user wrote).
fn absolutize(base: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// An interpreter written as a relative path (`.venv/bin/python`) is made absolute against
/// `base`; a bare name (`python3`) is left for the PATH search.
fn resolve_program(base: &Path, s: &str) -> String {
    let looks_like_path = s.contains('/') || s.contains(std::path::MAIN_SEPARATOR);
    if looks_like_path && !Path::new(s).is_absolute() {
        absolutize(base, Path::new(s))
            .to_string_lossy()
            .into_owned()
    } else {
        s.to_string()
    }
}

/// Loads the configuration from the command line, the given environment (pass
/// `std::env::vars().collect()`), the config file and the app's web.config.
pub fn load(cli: &CliOverrides, env: &HashMap<String, String>) -> Result<Loaded, ConfigError> {
    let cwd = std::env::current_dir().map_err(ConfigError::CurrentDir)?;
    load_with_cwd(cli, env, &cwd)
}

/// [`load`] with an explicit current directory (relative paths from the command line and the
/// environment resolve against it; `./fcgihost.toml` is looked for in it). For tests.
pub fn load_with_cwd(
    cli: &CliOverrides,
    env: &HashMap<String, String>,
    cwd: &Path,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();

    let config_file = locate_config_file(cli, env, cwd)?;
    let file_layer = match &config_file {
        Some((given, abs)) => file::read(given, abs)?,
        None => Partial::default(),
    };
    let env_layer = env::read(env, cwd, &mut warnings)?;
    let cli_layer = cli_layer(cli, cwd)?;
    let mut set_layers = cli
        .settings
        .iter()
        .map(|setting| file::parse_setting(setting, cwd))
        .collect::<Result<Vec<Partial>, ConfigError>>()?;
    set_layers.reverse();

    let default_dir = config_file
        .as_ref()
        .and_then(|(_, abs)| abs.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| cwd.to_path_buf());
    let (app_dir, app_dir_src) = std::iter::once(&cli_layer)
        .chain(&set_layers)
        .chain([&env_layer, &file_layer])
        .find_map(|l| l.app_dir.clone())
        .unwrap_or((default_dir, Source::Default));
    if !app_dir.is_dir() {
        return Err(ConfigError::AppDir {
            path: app_dir,
            origin: app_dir_src,
        });
    }
    let (web_layer, web_config) = webconfig::read(&app_dir, env, &mut warnings)?;

    let layers: Vec<&Partial> = std::iter::once(&cli_layer)
        .chain(&set_layers)
        .chain([&env_layer, &file_layer, &web_layer])
        .collect();
    macro_rules! pick {
        ($field:ident, $default:expr) => {
            layers
                .iter()
                .find_map(|l| l.$field.clone())
                .unwrap_or_else(|| ($default, Source::Default))
        };
    }

    let platform_port = platform_port(env)?;
    let listen = match layers.iter().find_map(|l| l.listen.clone()) {
        Some((addr, src)) => {
            if let Some((port, var)) = &platform_port {
                if addr.port() != *port {
                    warnings.push(format!(
                        "listen {addr} (from {src}) differs from {var}={port}: the server in \
                         front forwards to port {port}; remove `listen` to follow it"
                    ));
                }
            }
            (addr, src)
        }
        None => match platform_port {
            Some((port, var)) => (values::loopback(port), Source::Env(var)),
            None => (values::loopback(8000), Source::Default),
        },
    };
    let listen_configured = listen.1 != Source::Default;
    let fastcgi_listen = pick!(fastcgi_listen, None);
    let trusted_proxies = pick!(trusted_proxies, TrustedProxies::default());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut worker_env = BTreeMap::new();
    for layer in layers.iter().rev() {
        worker_env.extend(layer.worker_env.clone());
    }

    let app = pick!(app, None);
    let python = pick!(python, default_python().to_string());
    let pythonpath = pick!(pythonpath, Vec::new());
    let workers = pick!(workers, cpus);
    let threads = pick!(threads, 1);
    let workers_max = pick!(workers_max, None);
    let spawn_after = pick!(spawn_after, DEFAULT_SPAWN_AFTER);
    let idle_timeout = pick!(idle_timeout, DEFAULT_IDLE_TIMEOUT);
    let pool_max = match workers_max.0 {
        Some(max) if max < workers.0 => {
            warnings.push(format!(
                "workers_max {max} (from {}) is below workers {} (from {}): the pool stays at {}",
                workers_max.1, workers.0, workers.1, workers.0
            ));
            workers.0
        }
        Some(max) => max,
        None => workers.0,
    };
    let max_queue = pick!(max_queue, 1000);
    let pipeline_depth = pick!(pipeline_depth, DEFAULT_PIPELINE_DEPTH);
    let pipeline_window = pick!(pipeline_window, DEFAULT_PIPELINE_WINDOW);
    let queue_timeout = pick!(queue_timeout, Duration::from_secs(30));
    let request_timeout = pick!(request_timeout, Some(Duration::from_secs(90)));
    let graceful_timeout = pick!(graceful_timeout, Duration::from_secs(30));
    let startup_timeout = pick!(startup_timeout, Duration::from_secs(60));
    let rapid_fails = pick!(rapid_fails_per_minute, 10);
    let max_requests = pick!(max_requests, 0);
    let max_requests_jitter = pick!(max_requests_jitter, 0);
    let max_worker_rss = pick!(max_worker_rss, None);
    let max_worker_lifetime = pick!(max_worker_lifetime, None);
    let script_name = pick!(script_name, String::new());
    let mut restart = pick!(
        restart_file_regex,
        Some(DEFAULT_RESTART_FILE_REGEX.to_string())
    );
    if cli.reload && restart.0.is_none() {
        restart = (Some(DEFAULT_RESTART_FILE_REGEX.to_string()), Source::Cli);
    }
    let status_path = pick!(status_path, None);
    let health_path = pick!(health_path, Some(DEFAULT_HEALTH_PATH.to_string()));
    let instance_id = match env
        .get("WEBSITE_INSTANCE_ID")
        .map(|v| values::parse_instance_id(v))
    {
        Some(Ok(Some(id))) => (id, Source::Env("WEBSITE_INSTANCE_ID".into())),
        Some(Err(message)) => {
            return Err(ConfigError::Env {
                var: "WEBSITE_INSTANCE_ID".into(),
                message,
            })
        }
        _ => match layers.iter().find_map(|l| l.instance_id.clone()) {
            Some((Some(id), src)) => (id, src),
            _ => (host_name(env), Source::Default),
        },
    };
    let pid_file = pick!(pid_file, None);
    let slow = pick!(slow_request_threshold, None);
    let max_header_size = pick!(max_header_size, DEFAULT_MAX_HEADER_SIZE);
    let max_headers = pick!(max_headers, DEFAULT_MAX_HEADERS);
    let max_body_size = pick!(max_body_size, Some(DEFAULT_MAX_BODY_SIZE));
    let header_read_timeout = pick!(header_read_timeout, Some(DEFAULT_HEADER_READ_TIMEOUT));
    let keep_alive_timeout = pick!(keep_alive_timeout, Some(DEFAULT_KEEP_ALIVE_TIMEOUT));
    let max_connections = pick!(max_connections, Some(DEFAULT_MAX_CONNECTIONS));
    let max_request_line = pick!(max_request_line, None);
    let max_header_field_size = pick!(max_header_field_size, None);
    let command = pick!(worker_command, None);
    let log_level = pick!(log_level, "info".to_string());
    let log_file = pick!(log_file, None);
    let log_access = pick!(log_access, true);
    let access_format = pick!(log_access_format, "text".to_string());
    let access_file = pick!(log_access_file, None);
    let secret = pick!(debug_secret, None);
    let debug_path = pick!(debug_path, "/ptvsd".to_string());
    let wait = pick!(debug_wait_for_attach, None);
    let max_pause = pick!(debug_max_pause, None);

    if let (Some(status), Some(_)) = (&status_path.0, &secret.0) {
        let under_debug = status
            .strip_prefix(debug_path.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if under_debug {
            warnings.push(format!(
                "status_path {status} (from {}) lies under debug.path {}: the debug proxy \
                 answers it, the status page never does",
                status_path.1, debug_path.0
            ));
        }
    }
    if secret.0.is_none() {
        for (key, slot) in [
            ("debug.wait_for_attach", &wait),
            ("debug.max_pause", &max_pause),
        ] {
            if slot.0.is_some() {
                warnings.push(format!(
                    "{key} (from {}) has no effect: debugging is off (no debug.secret)",
                    slot.1
                ));
            }
        }
    }
    if let (Some(s), src) = &secret {
        if s.chars().count() < 16 {
            warnings.push(format!(
                "debug.secret (from {src}) is only {} characters: anyone who guesses it can run \
                 code in the app; use 20 or more random characters",
                s.chars().count()
            ));
        }
    }

    let config = Config {
        app: app.0.clone(),
        app_dir: app_dir.clone(),
        python: python.0.clone(),
        pythonpath: pythonpath.0.clone(),
        listen: listen.0,
        listen_configured,
        fastcgi_listen: fastcgi_listen.0.clone(),
        trusted_proxies: trusted_proxies.0.clone(),
        workers: workers.0,
        threads: threads.0,
        workers_max: pool_max,
        spawn_after: spawn_after.0,
        idle_timeout: idle_timeout.0,
        max_queue: max_queue.0,
        pipeline_depth: pipeline_depth.0,
        pipeline_window: pipeline_window.0,
        queue_timeout: queue_timeout.0,
        request_timeout: request_timeout.0,
        graceful_timeout: graceful_timeout.0,
        startup_timeout: startup_timeout.0,
        rapid_fails_per_minute: rapid_fails.0,
        max_requests: max_requests.0,
        max_requests_jitter: max_requests_jitter.0,
        max_worker_rss: max_worker_rss.0,
        max_worker_lifetime: max_worker_lifetime.0,
        script_name: script_name.0.clone(),
        restart_file_regex: restart.0.clone(),
        status_path: status_path.0.clone(),
        health_path: health_path.0.clone(),
        instance_id: instance_id.0.clone(),
        pid_file: pid_file.0.clone(),
        slow_request_threshold: slow.0,
        limits: Limits {
            max_header_size: max_header_size.0,
            max_headers: max_headers.0,
            max_body_size: max_body_size.0,
            header_read_timeout: header_read_timeout.0,
            keep_alive_timeout: keep_alive_timeout.0,
            max_connections: max_connections.0,
            max_request_line: max_request_line.0,
            max_header_field_size: max_header_field_size.0,
        },
        worker: WorkerConfig {
            command: command.0.clone(),
            env: worker_env
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect(),
        },
        log: LogConfig {
            level: log_level.0.clone(),
            file: log_file.0.clone(),
            access: log_access.0,
            access_format: access_format.0.clone(),
            access_file: access_file.0.clone(),
        },
        debug: DebugConfig {
            secret: secret.0.clone(),
            path: debug_path.0.clone(),
            wait_for_attach: wait.0,
            max_pause: max_pause.0,
        },
    };

    let dur = |d: Duration| values::format_duration(d);
    let off = |d: Option<Duration>, none: &str| d.map_or_else(|| none.to_string(), dur);
    let text = |s: &str| {
        if s.is_empty() {
            "\"\"".to_string()
        } else {
            s.to_string()
        }
    };
    let mut sources = Vec::new();
    let mut add = |key: &str, value: String, source: &Source| {
        sources.push(Setting {
            key: key.to_string(),
            value,
            source: source.clone(),
        });
    };
    add(
        "app",
        app.0
            .clone()
            .unwrap_or_else(|| "(none: built-in welcome page)".into()),
        &app.1,
    );
    add("app_dir", app_dir.display().to_string(), &app_dir_src);
    add("python", python.0, &python.1);
    add("pythonpath", list_text(&pythonpath.0), &pythonpath.1);
    add("listen", listen.0.to_string(), &listen.1);
    add(
        "fastcgi_listen",
        fastcgi_listen
            .0
            .as_ref()
            .map_or_else(|| "\"\" (off)".into(), ToString::to_string),
        &fastcgi_listen.1,
    );
    add(
        "trusted_proxies",
        trusted_proxies.0.to_string(),
        &trusted_proxies.1,
    );
    add("workers", workers.0.to_string(), &workers.1);
    add("threads", threads.0.to_string(), &threads.1);
    add("workers_max", pool_max.to_string(), &workers_max.1);
    add("spawn_after", dur(spawn_after.0), &spawn_after.1);
    add("idle_timeout", dur(idle_timeout.0), &idle_timeout.1);
    add("max_queue", max_queue.0.to_string(), &max_queue.1);
    add(
        "pipeline_depth",
        pipeline_depth.0.to_string(),
        &pipeline_depth.1,
    );
    add(
        "pipeline_window",
        dur(pipeline_window.0),
        &pipeline_window.1,
    );
    add("queue_timeout", dur(queue_timeout.0), &queue_timeout.1);
    add(
        "request_timeout",
        off(request_timeout.0, "0 (off)"),
        &request_timeout.1,
    );
    add(
        "graceful_timeout",
        dur(graceful_timeout.0),
        &graceful_timeout.1,
    );
    add(
        "startup_timeout",
        dur(startup_timeout.0),
        &startup_timeout.1,
    );
    add(
        "rapid_fails_per_minute",
        rapid_fails.0.to_string(),
        &rapid_fails.1,
    );
    add(
        "max_requests",
        if max_requests.0 == 0 {
            "0 (never)".into()
        } else {
            max_requests.0.to_string()
        },
        &max_requests.1,
    );
    add(
        "max_requests_jitter",
        max_requests_jitter.0.to_string(),
        &max_requests_jitter.1,
    );
    add(
        "max_worker_rss",
        max_worker_rss
            .0
            .map_or_else(|| "off".into(), |b| format!("{} MiB", b >> 20)),
        &max_worker_rss.1,
    );
    add(
        "max_worker_lifetime",
        max_worker_lifetime
            .0
            .map_or_else(|| "off".into(), |d| format!("{d:?}")),
        &max_worker_lifetime.1,
    );
    add("script_name", text(&script_name.0), &script_name.1);
    add(
        "restart_file_regex",
        restart.0.unwrap_or_else(|| "\"\" (never)".into()),
        &restart.1,
    );
    add(
        "status_path",
        status_path.0.unwrap_or_else(|| "\"\" (off)".into()),
        &status_path.1,
    );
    add(
        "health_path",
        health_path.0.unwrap_or_else(|| "\"\" (off)".into()),
        &health_path.1,
    );
    add("instance_id", instance_id.0, &instance_id.1);
    add(
        "pid_file",
        pid_file
            .0
            .map_or_else(|| "(none)".into(), |p| p.display().to_string()),
        &pid_file.1,
    );
    add("slow_request_threshold", off(slow.0, "0 (off)"), &slow.1);
    add(
        "max_header_size",
        values::format_size(max_header_size.0),
        &max_header_size.1,
    );
    add("max_headers", max_headers.0.to_string(), &max_headers.1);
    add(
        "max_body_size",
        max_body_size
            .0
            .map_or_else(|| "0 (no limit)".into(), values::format_size),
        &max_body_size.1,
    );
    add(
        "header_read_timeout",
        off(header_read_timeout.0, "0 (no limit)"),
        &header_read_timeout.1,
    );
    add(
        "keep_alive_timeout",
        off(keep_alive_timeout.0, "0 (keep-alive off)"),
        &keep_alive_timeout.1,
    );
    add(
        "max_connections",
        max_connections
            .0
            .map_or_else(|| "0 (no cap)".into(), |n| n.to_string()),
        &max_connections.1,
    );
    let bytes_or =
        |n: Option<u64>| n.map_or_else(|| "0 (max_header_size only)".into(), |n| n.to_string());
    add(
        "max_request_line",
        bytes_or(max_request_line.0),
        &max_request_line.1,
    );
    add(
        "max_header_field_size",
        bytes_or(max_header_field_size.0),
        &max_header_field_size.1,
    );
    add(
        "worker.command",
        command
            .0
            .as_deref()
            .map_or_else(|| "(built-in worker)".into(), values::join_words),
        &command.1,
    );
    if worker_env.is_empty() {
        add("worker.env", "{}".into(), &Source::Default);
    }
    for (name, (value, src)) in &worker_env {
        let shown = if looks_secret(name) {
            "<set>".to_string()
        } else {
            text(value)
        };
        add(&format!("worker.env.{name}"), shown, src);
    }
    add("log.level", log_level.0, &log_level.1);
    add(
        "log.file",
        log_file
            .0
            .map_or_else(|| "(none)".into(), |p| p.display().to_string()),
        &log_file.1,
    );
    add("log.access", log_access.0.to_string(), &log_access.1);
    add("log.access_format", access_format.0, &access_format.1);
    add(
        "log.access_file",
        access_file
            .0
            .map_or_else(|| "(none: the main log)".into(), |t| t.to_string()),
        &access_file.1,
    );
    add(
        "debug.secret",
        if secret.0.is_some() {
            "<set>".into()
        } else {
            "(not set: debugging off)".into()
        },
        &secret.1,
    );
    add("debug.path", debug_path.0, &debug_path.1);
    add("debug.wait_for_attach", off(wait.0, "0 (off)"), &wait.1);
    add(
        "debug.max_pause",
        off(max_pause.0, "0 (no limit)"),
        &max_pause.1,
    );

    Ok(Loaded {
        config,
        sources,
        warnings,
        config_file: config_file.map(|(given, _)| given),
        web_config,
    })
}

/// Checks the text of an `fcgihost.toml` exactly as [`load`] checks the file at `path` (which
/// every error names; relative paths resolve against its directory), without reading it.
/// Exists so the parser can be fuzzed and a file checked before it is written.
pub fn parse_toml_text(path: &Path, text: &str) -> Result<(), ConfigError> {
    file::parse(path, path.parent().unwrap_or(path), text).map(drop)
}

/// Checks the bytes of a web.config exactly as [`load`] checks the one at `path` (which every
/// error and warning names; `%VAR%` expands from `env`), without reading it. Returns the
/// warnings. Exists so the parser can be fuzzed and a file checked before it is written.
pub fn parse_web_config_bytes(
    path: &Path,
    bytes: &[u8],
    env: &HashMap<String, String>,
) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    webconfig::parse(
        path,
        path.parent().unwrap_or(path),
        bytes,
        env,
        &mut warnings,
    )?;
    Ok(warnings)
}

/// `["a", "b"]` without escaping (Windows paths stay readable).
fn list_text(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| values::quote(s)).collect();
    format!("[{}]", inner.join(", "))
}

/// Worker environment variables whose values `fcgihost check` hides.
fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "CONNECTION",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// The machine's host name (the last fallback for the instance id): `gethostname` on Unix,
/// `COMPUTERNAME` on Windows; `localhost` when neither answers.
fn host_name(env: &HashMap<String, String>) -> String {
    #[cfg(unix)]
    {
        let _ = env;
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            if let Ok(Some(name)) = values::parse_instance_id(&String::from_utf8_lossy(&buf[..end]))
            {
                return name;
            }
        }
    }
    #[cfg(not(unix))]
    if let Some(Ok(Some(name))) = env
        .get("COMPUTERNAME")
        .map(|v| values::parse_instance_id(v))
    {
        return name;
    }
    "localhost".to_string()
}

/// The port the server in front expects us on: `HTTP_PLATFORM_PORT` (IIS HttpPlatformHandler)
/// or `ASPNETCORE_PORT` (ASP.NET Core Module).
fn platform_port(env: &HashMap<String, String>) -> Result<Option<(u16, String)>, ConfigError> {
    for var in ["HTTP_PLATFORM_PORT", "ASPNETCORE_PORT"] {
        if let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) {
            let port = values::parse_port(v).map_err(|message| ConfigError::Env {
                var: var.to_string(),
                message,
            })?;
            return Ok(Some((port, var.to_string())));
        }
    }
    Ok(None)
}

/// Finds the TOML file: `--config`, else `FCGIHOST_CONFIG` (both must exist), else
/// `fcgihost.toml` in the current directory if present. Returns (path as given, absolute).
fn locate_config_file(
    cli: &CliOverrides,
    env: &HashMap<String, String>,
    cwd: &Path,
) -> Result<Option<(PathBuf, PathBuf)>, ConfigError> {
    let named = match (&cli.config_file, env.get("FCGIHOST_CONFIG")) {
        (Some(p), _) => Some((p.clone(), "--config".to_string())),
        (None, Some(v)) if !v.trim().is_empty() => {
            Some((PathBuf::from(v), "env FCGIHOST_CONFIG".to_string()))
        }
        _ => None,
    };
    if let Some((given, origin)) = named {
        let abs = absolutize(cwd, &given);
        if !abs.is_file() {
            return Err(ConfigError::ConfigNotFound {
                path: given,
                origin,
            });
        }
        return Ok(Some((given, abs)));
    }
    let local = cwd.join("fcgihost.toml");
    Ok(local
        .is_file()
        .then(|| (PathBuf::from("fcgihost.toml"), local)))
}

/// The command-line layer.
fn cli_layer(cli: &CliOverrides, cwd: &Path) -> Result<Partial, ConfigError> {
    let at = |flag: &'static str| move |message: String| ConfigError::Cli { flag, message };
    let mut p = Partial::default();
    if let Some(app) = &cli.app {
        p.app = Some((non_empty(app), Source::Cli));
    }
    if let Some(dir) = &cli.app_dir {
        p.app_dir = Some((absolutize(cwd, dir), Source::Cli));
    }
    if let Some(python) = &cli.python {
        let python = non_empty(python).ok_or_else(|| at("--python")("must not be empty".into()))?;
        p.python = Some((resolve_program(cwd, &python), Source::Cli));
    }
    if let Some(listen) = &cli.listen {
        let addr = values::parse_listen(listen).map_err(at("--listen"))?;
        p.listen = Some((addr, Source::Cli));
    }
    if let Some(fastcgi) = &cli.fastcgi_listen {
        let addr = values::parse_fastcgi_listen(fastcgi, cwd).map_err(at("--fastcgi-listen"))?;
        p.fastcgi_listen = Some((addr, Source::Cli));
    }
    if let Some(n) = cli.workers {
        values::check_min(n as u64, 1).map_err(at("--workers"))?;
        p.workers = Some((n, Source::Cli));
    }
    if let Some(n) = cli.threads {
        let n = values::check_threads(n).map_err(at("--threads"))?;
        p.threads = Some((n, Source::Cli));
    }
    if let Some(t) = &cli.request_timeout {
        let d = parse_duration(t).map_err(at("--request-timeout"))?;
        p.request_timeout = Some((non_zero(d), Source::Cli));
    }
    if let Some(level) = &cli.log_level {
        let level = values::parse_log_level(level).map_err(at("--log-level"))?;
        p.log_level = Some((level, Source::Cli));
    }
    Ok(p)
}

/// The `key = value   (source)` table `fcgihost check` prints, columns aligned.
pub fn render_sources(loaded: &Loaded) -> String {
    let key_w = loaded
        .sources
        .iter()
        .map(|s| s.key.chars().count())
        .max()
        .unwrap_or(0);
    let val_w = loaded
        .sources
        .iter()
        .map(|s| s.value.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for s in &loaded.sources {
        let line = format!("{:key_w$} = {:val_w$}   ({})", s.key, s.value, s.source,);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

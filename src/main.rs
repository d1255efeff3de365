//! The `fcgihost` command line: parses arguments and calls the library.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fcgihost::config::{self, CliOverrides, CliSetting};

/// Hosts Python WSGI apps in supervised FastCGI workers, with remote debugging.
#[derive(Parser)]
#[command(name = "fcgihost", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host (the built-in welcome app when no app is configured).
    Serve(HostArgs),
    /// Validate the config, show where each value comes from, and import the app once.
    Check(HostArgs),
    /// Ask a running host to re-read its config and replace its workers one by one (what
    /// SIGHUP does; works on Windows too). Needs `status_path`.
    Reload(HostArgs),
    /// Tunnel a local port to a server's /ptvsd debug proxy, for VS Code or Visual Studio.
    Attach(AttachArgs),
    /// Print the IIS web.config (HttpPlatformHandler) for an app, or write it with
    /// Web.Debug.config and Web.Release.config into a directory.
    WebConfig(WebConfigArgs),
    /// Convert a wfastcgi web.config to fcgihost, keeping every appSetting.
    Migrate(MigrateArgs),
}

/// `fcgihost web-config [--debug] [--app X] [--python PATH] [--out DIR] [--force]`.
#[derive(Args)]
struct WebConfigArgs {
    /// Also put a fresh debug secret into web.config itself (remote debugging on).
    #[arg(long)]
    debug: bool,
    /// The WSGI app (WSGI_HANDLER): `pkg.mod.app`, `pkg.mod:app` or `pkg.mod.create_app()`.
    #[arg(long)]
    app: Option<String>,
    /// Python interpreter on the server (passed to `fcgihost serve` as --python).
    #[arg(long)]
    python: Option<String>,
    /// Write web.config, Web.Debug.config and Web.Release.config into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite those files when they exist.
    #[arg(long, requires = "out")]
    force: bool,
}

/// `fcgihost migrate WEB_CONFIG [--write]`.
#[derive(Args)]
struct MigrateArgs {
    /// The wfastcgi-era web.config.
    web_config: PathBuf,
    /// Replace the file (the original goes to <file>.wfastcgi.bak) instead of printing.
    #[arg(long)]
    write: bool,
}

/// Runs `fcgihost web-config`.
fn web_config(args: WebConfigArgs) -> ExitCode {
    let options = fcgihost::iis::WebConfigOptions {
        app: args.app,
        python: args.python,
        debug: args.debug,
    };
    iis_exit(fcgihost::iis::web_config_command(
        &options,
        args.out.as_deref(),
        args.force,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ))
}

/// Runs `fcgihost migrate`.
fn migrate(args: MigrateArgs) -> ExitCode {
    iis_exit(fcgihost::iis::migrate_command(
        &args.web_config,
        args.write,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ))
}

/// The exit code of `web-config` and `migrate`, after printing their error.
fn iis_exit(result: Result<(), fcgihost::iis::IisError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fcgihost: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `fcgihost attach URL [--listen 127.0.0.1:5678] [--insecure]`.
#[derive(Args)]
struct AttachArgs {
    /// The server's debug endpoint: wss://SECRET@mysite.example.com/ptvsd (ws:// for plain HTTP).
    #[arg(env = "FCGIHOST_ATTACH_URL", hide_env_values = true)]
    url: String,
    /// Local address the debugger connects to.
    #[arg(long, default_value = "127.0.0.1:5678")]
    listen: std::net::SocketAddr,
    /// Skip TLS certificate verification (self-signed certificates).
    #[arg(long)]
    insecure: bool,
    /// Reach this instance behind a balancer (sends App Service's ARRAffinity cookies); a
    /// different instance refuses, and attach says which one it reached.
    #[arg(long, value_name = "ID")]
    instance: Option<String>,
}

/// Runs `fcgihost attach` until Ctrl-C.
fn attach(args: AttachArgs) -> ExitCode {
    if let Err(err) = fcgihost::logging::init("info", None) {
        eprintln!("fcgihost: cannot set up logging: {err}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fcgihost: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let options = fcgihost::debug::attach::AttachOptions {
        url: args.url,
        listen: args.listen,
        insecure: args.insecure,
        instance: args.instance,
    };
    match runtime.block_on(fcgihost::debug::attach::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fcgihost attach: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Settings shared by `serve` and `check`; each overrides the environment and config files.
/// gunicorn's spellings (`-b`, `-t`, `--chdir`, `--max-requests`, …) work too; see
/// docs/configuration.md for the table.
#[derive(Args)]
struct HostArgs {
    /// The WSGI app, as gunicorn takes it: `pkg.mod:app`, `pkg.mod.app` or
    /// `pkg.mod.create_app()` (same as --app).
    #[arg(value_name = "APP", conflicts_with = "app")]
    app_positional: Option<String>,
    /// Config file (default: ./fcgihost.toml when present).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// The WSGI app: `pkg.mod:app`, `pkg.mod.app` or `pkg.mod.create_app()`.
    #[arg(long)]
    app: Option<String>,
    /// Directory of the app (working directory and first sys.path entry of workers).
    #[arg(long, visible_alias = "chdir")]
    app_dir: Option<PathBuf>,
    /// Number of worker processes.
    #[arg(long, short = 'w')]
    workers: Option<usize>,
    /// Requests one worker runs at once, each on its own thread (default 1; gunicorn's
    /// `--threads`).
    #[arg(long)]
    threads: Option<usize>,
    /// Address to listen on (default 127.0.0.1:8000, or %HTTP_PLATFORM_PORT%).
    #[arg(long, short = 'l', visible_alias = "bind", visible_short_alias = 'b')]
    listen: Option<String>,
    /// Also accept FastCGI (from nginx, Apache, lighttpd) on IP:PORT or a Unix socket path.
    #[arg(long, value_name = "ADDR")]
    fastcgi_listen: Option<String>,
    /// Python interpreter for workers (a virtualenv's python works).
    #[arg(long)]
    python: Option<String>,
    /// Pause-aware request timeout, e.g. "90s" or seconds; 0 disables.
    #[arg(long, visible_alias = "timeout", short = 't')]
    request_timeout: Option<String>,
    /// fcgihost's log level (error, warn, info, debug, trace) or a filter such as
    /// `info,fcgihost::access=off` (no access lines). The app's output (target
    /// fcgihost::app) is shown at any level unless the filter names that target.
    #[arg(long)]
    log_level: Option<String>,
    /// Time in-flight requests get on shutdown, reload and recycle (graceful_timeout).
    #[arg(long, value_name = "DURATION")]
    graceful_timeout: Option<String>,
    /// Recycle a worker after this many requests (max_requests; 0 = never).
    #[arg(long, value_name = "N")]
    max_requests: Option<String>,
    /// Up to this many extra requests before a recycle, chosen per worker.
    #[arg(long, value_name = "N")]
    max_requests_jitter: Option<String>,
    /// An environment variable for the workers (repeatable).
    #[arg(long, short = 'e', value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Restart workers when an app file changes (on by default; this overrides a config
    /// that turned it off).
    #[arg(long)]
    reload: bool,
    /// Access log: `-` for standard output, or a file (log.access_file).
    #[arg(long, value_name = "FILE")]
    access_logfile: Option<String>,
    /// Access-log format: text, json, or gunicorn's atoms (log.access_format).
    #[arg(long, value_name = "FORMAT")]
    access_logformat: Option<String>,
    /// Where fcgihost's own log goes besides stderr: a file, or `-` for stderr only (log.file).
    #[arg(long, visible_alias = "log-file", value_name = "FILE")]
    error_logfile: Option<String>,
    /// Write the host's pid to this file (removed at exit).
    #[arg(long, visible_alias = "pid-file", value_name = "FILE")]
    pid: Option<String>,
    /// Proxies whose X-Forwarded-* headers are believed, comma-separated; `*` = any
    /// (trusted_proxies).
    #[arg(long, value_name = "IPS")]
    forwarded_allow_ips: Option<String>,
    /// Longest request target in bytes; longer gets 414 (max_request_line; 0 = off).
    #[arg(long, value_name = "BYTES")]
    limit_request_line: Option<String>,
    /// Most header fields in a request; more gets 431 (max_headers).
    #[arg(long, value_name = "N")]
    limit_request_fields: Option<String>,
    /// Longest header field in bytes; longer gets 431 (max_header_field_size; 0 = off).
    #[arg(
        long = "limit-request-field_size",
        visible_alias = "limit-request-field-size",
        value_name = "BYTES"
    )]
    limit_request_field_size: Option<String>,
    /// Seconds an idle keep-alive connection stays open (keep_alive_timeout).
    #[arg(long, value_name = "DURATION")]
    keep_alive: Option<String>,
    /// Most client connections at once (max_connections).
    #[arg(long, value_name = "N")]
    worker_connections: Option<String>,
    /// Any config key: `--set max_queue=200`, `--set debug.path=/dbg` (repeatable; checked
    /// like the same key in fcgihost.toml).
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl HostArgs {
    /// The flags that stand for one config key each, then `--set` and `--env`, in that
    /// order (a later one wins).
    fn settings(&self) -> Result<Vec<CliSetting>, String> {
        let mut out = Vec::new();
        let keyed: [(&str, &str, &Option<String>); 11] = [
            (
                "--graceful-timeout",
                "graceful_timeout",
                &self.graceful_timeout,
            ),
            ("--max-requests", "max_requests", &self.max_requests),
            (
                "--max-requests-jitter",
                "max_requests_jitter",
                &self.max_requests_jitter,
            ),
            (
                "--access-logformat",
                "log.access_format",
                &self.access_logformat,
            ),
            ("--pid", "pid_file", &self.pid),
            (
                "--forwarded-allow-ips",
                "trusted_proxies",
                &self.forwarded_allow_ips,
            ),
            (
                "--limit-request-line",
                "max_request_line",
                &self.limit_request_line,
            ),
            (
                "--limit-request-fields",
                "max_headers",
                &self.limit_request_fields,
            ),
            (
                "--limit-request-field_size",
                "max_header_field_size",
                &self.limit_request_field_size,
            ),
            ("--keep-alive", "keep_alive_timeout", &self.keep_alive),
            (
                "--worker-connections",
                "max_connections",
                &self.worker_connections,
            ),
        ];
        for (flag, key, value) in keyed {
            if let Some(value) = value {
                let mut setting = CliSetting::flag(flag, key, value.clone());
                // Paths and address lists are text even when they look like numbers.
                setting.text = matches!(key, "pid_file" | "trusted_proxies");
                out.push(setting);
            }
        }
        if let Some(target) = &self.access_logfile {
            out.push(CliSetting::flag("--access-logfile", "log.access", "true"));
            let mut file = CliSetting::flag("--access-logfile", "log.access_file", target.clone());
            file.text = true;
            out.push(file);
        }
        if let Some(target) = &self.error_logfile {
            let file = if target.trim() == "-" {
                ""
            } else {
                target.as_str()
            };
            let mut setting = CliSetting::flag("--error-logfile", "log.file", file);
            setting.text = true;
            out.push(setting);
        }
        for set in &self.set {
            out.push(CliSetting::parse_set(set).map_err(|e| format!("--set: {e}"))?);
        }
        for pair in &self.env {
            out.push(CliSetting::worker_env(pair).map_err(|e| format!("--env: {e}"))?);
        }
        Ok(out)
    }

    fn overrides(self) -> Result<CliOverrides, String> {
        let settings = self.settings()?;
        Ok(CliOverrides {
            config_file: self.config,
            app: self.app.or(self.app_positional),
            app_dir: self.app_dir,
            python: self.python,
            listen: self.listen,
            fastcgi_listen: self.fastcgi_listen,
            workers: self.workers,
            threads: self.threads,
            request_timeout: self.request_timeout,
            log_level: self.log_level,
            settings,
            reload: self.reload,
        })
    }
}

fn main() -> ExitCode {
    // While the process has one thread: take systemd's variables out of the environment.
    fcgihost::systemd::init_from_env();
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let (args, is_check) = match cli.command {
        Command::Serve(args) => (args, false),
        Command::Check(args) => (args, true),
        Command::Reload(args) => return reload(args, &env),
        Command::Attach(args) => return attach(args),
        Command::WebConfig(args) => return web_config(args),
        Command::Migrate(args) => return migrate(args),
    };
    let overrides = match args.overrides() {
        Ok(overrides) => overrides,
        Err(err) => {
            eprintln!("fcgihost: command line {err}");
            return ExitCode::from(2);
        }
    };
    let loaded = match config::load(&overrides, &env) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("fcgihost: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = fcgihost::logging::init_with_access(
        &loaded.config.log.level,
        loaded.config.log.file.as_deref(),
        loaded.config.log.access_file.as_ref(),
    ) {
        eprintln!("fcgihost: {}", log_file_error(&loaded, &err));
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fcgihost: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if is_check {
            fcgihost::serve::check(loaded).await
        } else {
            fcgihost::serve::serve(loaded, overrides).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fcgihost: {err}");
            match err {
                fcgihost::Error::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Which log file could not be opened (the main log, else the access log), where its
/// path was set, and why; a missing folder is said so.
fn log_file_error(loaded: &config::Loaded, err: &std::io::Error) -> String {
    let log = &loaded.config.log;
    let access = match &log.access_file {
        Some(config::LogTarget::File(path)) => Some(path.as_path()),
        _ => None,
    };
    let unopenable = |path: &std::path::Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .is_err()
    };
    let (path, key) = match (log.file.as_deref(), access) {
        (Some(file), _) if unopenable(file) => (file, "log.file"),
        (_, Some(file)) => (file, "log.access_file"),
        (Some(file), None) => (file, "log.file"),
        (None, None) => return format!("cannot open the log file: {err}"),
    };
    let hint = if err.kind() == std::io::ErrorKind::NotFound {
        " (does its folder exist?)"
    } else {
        ""
    };
    format!(
        "cannot open the log file {} (set by {}): {err}{hint}",
        path.display(),
        loaded.origin(key)
    )
}

/// `fcgihost reload`: finds the running host from the same config and asks it to reload.
fn reload(args: HostArgs, env: &HashMap<String, String>) -> ExitCode {
    let overrides = match args.overrides() {
        Ok(overrides) => overrides,
        Err(err) => {
            eprintln!("fcgihost: command line {err}");
            return ExitCode::from(2);
        }
    };
    let loaded = match config::load(&overrides, env) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("fcgihost: {err}");
            return ExitCode::from(2);
        }
    };
    match fcgihost::serve::request_reload(&loaded.config) {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fcgihost: {err}");
            ExitCode::FAILURE
        }
    }
}

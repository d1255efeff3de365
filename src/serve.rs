//! Wires the parts together for the `serve` and `check` commands: config → runtime dir →
//! worker pool → front door, and the orderly shutdown on SIGTERM/SIGINT.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use std::collections::HashMap;
use std::path::Path;

use crate::config::{CliOverrides, Config, Loaded};
use crate::debug::auth::Secret;
use crate::debug::proxy::DebugProxy;
use crate::front::access_log::{AccessFormat, AccessLog};
use crate::front::fastcgi;
use crate::front::health::{is_ready, DrainFlag, HealthCheck};
use crate::front::http::{self as front_http, Front, FrontOptions};
use crate::front::limits::ConnLimits;
use crate::front::status::{Metrics, StatusPage};
use crate::pool::process::{self, ControlEvent, WorkerSpec};
use crate::pool::runtime::RuntimeDir;
use crate::pool::watcher;
use crate::pool::{Pool, PoolSettings, RecyclePolicy};
use crate::Error;

/// Runs the host until SIGTERM/SIGINT, then drains in-flight requests (up to
/// `graceful_timeout`) and stops every worker.
pub async fn serve(loaded: Loaded, cli: CliOverrides) -> Result<(), Error> {
    let mut signals = OperatorSignals::register()?;
    let config = loaded.config;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    raise_open_files_limit();
    if config.debug_enabled() && config.worker.command.is_none() {
        ensure_debugpy(&config.python).await?;
    }
    let restart_pattern = match config.restart_file_regex.as_deref() {
        Some(pattern) if !pattern.is_empty() => Some(watcher::compile(pattern)?),
        _ => None,
    };
    let runtime = RuntimeDir::create()?;
    let pid_file = PidFile::write(config.pid_file.as_deref())?;
    let spec = worker_spec(&config, runtime.worker_script());
    let (listener, fastcgi_listeners) = listeners(&config).await?;
    tracing::info!(
        workers = config.workers,
        app = config.app.as_deref().unwrap_or("(built-in welcome app)"),
        python = config.python,
        debug = config.debug_enabled(),
        "starting workers"
    );
    let script = runtime.worker_script().to_owned();
    let pool = Pool::start(pool_settings(&config, spec), runtime);
    let systemd_status =
        crate::systemd::enabled().then(|| tokio::spawn(report_to_systemd(pool.clone())));
    let _watcher = match restart_pattern {
        Some(pattern) => Some(watcher::watch(&config.app_dir, pattern, pool.clone())?),
        None => None,
    };
    let mut front = Front::new(
        pool.clone(),
        FrontOptions {
            script_name: config.script_name.clone(),
            access_log: config.log.access,
            debug: config.debug_enabled(),
            max_body_size: config.limits.max_body_size,
            trusted_proxies: config.trusted_proxies.clone(),
            max_request_line: config.limits.max_request_line,
            max_header_field_size: config.limits.max_header_field_size,
        },
    );
    let draining = DrainFlag::default();
    if let Some(path) = &config.health_path {
        tracing::info!(path, instance = config.instance_id, "health endpoint on");
        front = front.with_health(HealthCheck::new(
            path,
            pool.clone(),
            config.instance_id.clone(),
            draining.clone(),
        ));
    }
    let metrics = Arc::new(Metrics::new());
    front = front.with_access_log(Arc::new(AccessLog::new(
        config.log.access,
        AccessFormat::parse(&config.log.access_format),
        metrics.clone(),
    )));
    if let Some(path) = &config.status_path {
        tracing::info!(
            path,
            "status page on (loopback clients, or the debug secret)"
        );
        let reload_hook: crate::front::status::ReloadHook = {
            let (pool, cli, script) = (pool.clone(), cli.clone(), script.clone());
            Arc::new(move || reload(&pool, &cli, &script))
        };
        let status = StatusPage::new(pool.clone(), path, metrics)
            .with_secret(config.debug.secret.clone().map(Secret::new))
            .with_reload(reload_hook);
        front = front.with_status(status);
    }
    if let Some(secret) = &config.debug.secret {
        let proxy = DebugProxy::new(
            pool.clone(),
            Secret::new(secret.clone()),
            config.debug.path.clone(),
        )
        .with_wait_for_attach(config.debug.wait_for_attach)
        .with_max_pause(config.debug.max_pause)
        .with_instance_id(config.instance_id.clone());
        tracing::info!(
            path = config.debug.path,
            "remote debugging on: the debug proxy answers at this path"
        );
        front = front.with_debug_proxy(Arc::new(proxy));
    }
    // The ASP.NET Core Module (out-of-process) sets ASPNETCORE_TOKEN with ASPNETCORE_PORT.
    if let Some(token) = std::env::var("ASPNETCORE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        tracing::info!("ASPNETCORE_TOKEN is set: only requests carrying it (from the ASP.NET Core Module) are answered");
        front = front.with_pairing_token(&token);
    }
    let front = Arc::new(front);
    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = config.graceful_timeout;
    let mut servers = Vec::new();
    let fastcgi_options = fastcgi::FastcgiOptions {
        max_conns: config.limits.max_connections.unwrap_or(usize::MAX),
        max_reqs: config
            .workers_max
            .saturating_mul(config.threads)
            .saturating_add(config.max_queue),
    };
    for fastcgi_listener in fastcgi_listeners {
        servers.push(tokio::spawn(fastcgi::run(
            fastcgi_listener,
            front.clone(),
            fastcgi_options,
            stop_rx.clone(),
            grace,
        )));
    }
    if let Some(listener) = listener {
        servers.push(tokio::spawn(front_http::run(
            listener,
            front,
            stop_rx,
            grace,
            conn_limits(&config),
        )));
    }

    let signal = signals.run_until_shutdown(&pool, &cli, &script).await;
    // From here health answers 503, so balancers stop sending; the listeners stay open
    // while in-flight requests finish (new requests get 503), then close.
    draining.start();
    if let Some(task) = systemd_status {
        task.abort();
    }
    let busy = busy_workers(&pool);
    crate::systemd::notify(&format!(
        "STOPPING=1\nSTATUS=draining: {busy} in-flight request(s), graceful_timeout {grace:?}"
    ));
    tracing::info!(
        signal,
        "shutting down: finishing in-flight requests (graceful_timeout {:?})",
        grace
    );
    pool.shutdown(grace).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        futures_util::future::join_all(servers),
    )
    .await;
    drop(pid_file);
    tracing::info!("stopped");
    Ok(())
}

/// How often the `STATUS=` line systemd shows is refreshed (when it changed).
const SYSTEMD_STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// How often readiness is looked at until the first worker is ready.
const READY_POLL: Duration = Duration::from_millis(50);

/// Workers serving a request now.
fn busy_workers(pool: &Pool) -> usize {
    pool.snapshot()
        .iter()
        .filter(|w| w.phase == crate::pool::Phase::Busy)
        .count()
}

/// `busy/total` as systemd's `STATUS=` line shows it.
fn systemd_status_line(pool: &Pool) -> String {
    let workers = pool.snapshot();
    let busy = workers
        .iter()
        .filter(|w| w.phase == crate::pool::Phase::Busy)
        .count();
    let ready = workers.iter().filter(|w| is_ready(w)).count();
    format!(
        "STATUS={busy}/{} workers busy, {ready} ready",
        workers.len()
    )
}

/// Tells systemd `READY=1` once the first worker is ready, then keeps its `STATUS=` line
/// (busy/total workers) current until aborted at the drain.
async fn report_to_systemd(pool: Pool) {
    while !pool.snapshot().iter().any(is_ready) {
        tokio::time::sleep(READY_POLL).await;
    }
    let mut last = systemd_status_line(&pool);
    crate::systemd::notify(&format!("READY=1\n{last}"));
    tracing::info!("told systemd the service is ready");
    loop {
        tokio::time::sleep(SYSTEMD_STATUS_INTERVAL).await;
        let now = systemd_status_line(&pool);
        if now != last {
            crate::systemd::notify(&now);
            last = now;
        }
    }
}

/// The HTTP listener (if any) and the FastCGI ones: the sockets systemd handed over (socket
/// activation: by name, `http` and `fastcgi`), else the listening socket on stdin (the
/// FastCGI standard's way), plus what the config asks to bind. With a handed-over or stdin
/// FastCGI socket and no `listen` configured, fcgihost was started by a web server or
/// process manager and serves FastCGI only.
async fn listeners(
    config: &Config,
) -> Result<(Option<tokio::net::TcpListener>, Vec<fastcgi::Listener>), Error> {
    let mut http = None;
    let mut fastcgi_listeners = Vec::new();
    #[cfg(unix)]
    {
        let handed = crate::systemd::take_listeners();
        let names: Vec<&str> = handed.iter().map(|(name, _)| name.as_str()).collect();
        let (http_at, fastcgi_at, unknown) = crate::systemd::assign(&names);
        for i in unknown {
            tracing::warn!(name = names[i], "socket activation: a socket with a name fcgihost does not know (use \"http\" or \"fastcgi\"); ignoring it");
        }
        let mut handed: Vec<Option<std::os::fd::OwnedFd>> =
            handed.into_iter().map(|(_, fd)| Some(fd)).collect();
        if let Some(fd) = http_at.and_then(|i| handed[i].take()) {
            http = Some(front_http::from_listening(fd)?);
        }
        for fd in fastcgi_at.into_iter().filter_map(|i| handed[i].take()) {
            fastcgi_listeners.extend(fastcgi::Listener::from_listening(fd, "socket activation")?);
        }
    }
    let activated_fastcgi = !fastcgi_listeners.is_empty();
    if !activated_fastcgi {
        fastcgi_listeners.extend(fastcgi::Listener::from_stdin()?);
    }
    let fastcgi_only = !fastcgi_listeners.is_empty() && !config.listen_configured;
    if http.is_none() && !fastcgi_only {
        http = Some(front_http::bind(config.listen).await?);
    }
    if let Some(addr) = config
        .fastcgi_listen
        .as_ref()
        .filter(|_| !activated_fastcgi)
    {
        fastcgi_listeners.push(fastcgi::Listener::bind(addr).await?);
    }
    Ok((http, fastcgi_listeners))
}

/// The `pid_file`: written at start, removed when dropped (at exit).
struct PidFile(Option<std::path::PathBuf>);

impl PidFile {
    fn write(path: Option<&Path>) -> Result<Self, Error> {
        let Some(path) = path else {
            return Ok(Self(None));
        };
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|source| {
            Error::PidFile {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(Self(Some(path.to_owned())))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Prints the effective configuration with the source of each value, then imports the app
/// once in a worker and reports what it found.
pub async fn check(loaded: Loaded) -> Result<(), Error> {
    println!("{}", crate::config::render_sources(&loaded));
    for warning in &loaded.warnings {
        println!("warning: {warning}");
    }
    let config = loaded.config;
    if config.worker.command.is_some() {
        println!("worker.command is set: fcgihost cannot import the app itself; it will start that program.");
        return Ok(());
    }
    if config.debug_enabled() {
        ensure_debugpy(&config.python).await?;
    }
    let runtime = RuntimeDir::create()?;
    let spec = worker_spec(&config, runtime.worker_script());
    let socket = runtime.socket_path(0, 0);
    let mut spawned = process::spawn(&spec, 0, socket)
        .await
        .map_err(|e| Error::Spawn(format!("{}: {e}", config.python)))?;
    let outcome = tokio::time::timeout(config.startup_timeout, async {
        loop {
            match spawned.events.recv().await {
                Some(ControlEvent::Ready { python, version }) => return Ok((python, version)),
                Some(ControlEvent::AppError { traceback }) => {
                    return Err(Error::AppLoad(traceback))
                }
                Some(ControlEvent::DebugpyMissing { python, install }) => {
                    return Err(Error::DebugpyMissing { python, install })
                }
                Some(_) => {}
                None => {
                    return Err(Error::AppLoad(
                        "the worker exited before it imported the app (see the lines above)".into(),
                    ))
                }
            }
        }
    })
    .await;
    let _ = spawned.child.kill().await;
    match outcome {
        Ok(Ok((python, version))) => {
            println!(
                "ok: {} imported by {python} (Python {version})",
                config.app.as_deref().unwrap_or("the built-in welcome app")
            );
            Ok(())
        }
        Ok(Err(err)) => Err(err),
        Err(_) => Err(Error::AppLoad(format!(
            "the app did not load within startup_timeout ({:?})",
            config.startup_timeout
        ))),
    }
}

/// The pool's settings for a config.
fn pool_settings(config: &Config, spec: WorkerSpec) -> PoolSettings {
    PoolSettings {
        workers: config.workers,
        threads: config.threads,
        workers_max: config.workers_max,
        spawn_after: config.spawn_after,
        idle_timeout: config.idle_timeout,
        graceful_timeout: config.graceful_timeout,
        max_queue: config.max_queue,
        pipeline_depth: config.pipeline_depth,
        pipeline_window: config.pipeline_window,
        queue_timeout: config.queue_timeout,
        request_timeout: config.request_timeout,
        max_pause: config.debug.max_pause,
        slow_request_threshold: config.slow_request_threshold,
        startup_timeout: config.startup_timeout,
        rapid_fails_per_minute: config.rapid_fails_per_minute,
        recycle: RecyclePolicy {
            max_requests: config.max_requests,
            max_requests_jitter: config.max_requests_jitter,
            max_rss: config.max_worker_rss,
            max_lifetime: config.max_worker_lifetime,
        },
        debug: config.debug_enabled(),
        spec,
    }
}

/// The front door's connection limits for a config.
fn conn_limits(config: &Config) -> ConnLimits {
    let limits = &config.limits;
    ConnLimits {
        max_header_size: usize::try_from(limits.max_header_size).unwrap_or(usize::MAX),
        max_headers: limits.max_headers,
        header_read_timeout: limits.header_read_timeout,
        keep_alive_timeout: limits.keep_alive_timeout,
        max_connections: limits.max_connections,
    }
}

/// How to start workers for this config: the shipped worker under `python`, or the
/// user's `worker.command`.
fn worker_spec(config: &Config, worker_script: &Path) -> WorkerSpec {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PYTHONUNBUFFERED".into(), "1".into()),
        ("FCGIHOST_APP_DIR".into(), config.app_dir.clone().into()),
        (
            "FCGIHOST_WORKER_THREADS".into(),
            config.threads.to_string().into(),
        ),
    ];
    match &config.app {
        Some(app) => env.push(("FCGIHOST_APP".into(), app.into())),
        None => env.push(("FCGIHOST_WELCOME".into(), "1".into())),
    }
    if !config.pythonpath.is_empty() {
        let joined = std::env::join_paths(config.pythonpath.iter())
            .unwrap_or_else(|_| config.pythonpath.join(":").into());
        env.push(("FCGIHOST_PYTHONPATH".into(), joined));
    }
    if config.debug_enabled() {
        env.push(("FCGIHOST_DEBUG".into(), "1".into()));
        env.push(("PYDEVD_DISABLE_FILE_VALIDATION".into(), "1".into()));
    }
    for (key, value) in &config.worker.env {
        env.push((key.into(), value.into()));
    }
    match &config.worker.command {
        Some(command) if !command.is_empty() => WorkerSpec {
            program: command[0].clone().into(),
            args: command[1..].iter().map(OsString::from).collect(),
            env,
            cwd: config.app_dir.clone(),
            speaks_control: false,
        },
        _ => {
            let (program, mut args) = process::interpreter(&config.python);
            if config.debug_enabled() {
                args.push("-X".into());
                args.push("frozen_modules=off".into());
            }
            args.push(worker_script.into());
            WorkerSpec {
                program,
                args,
                env,
                cwd: config.app_dir.clone(),
                speaks_control: true,
            }
        }
    }
}

/// Most open files the host asks for when it raises its own limit.
#[cfg(unix)]
const OPEN_FILES_WANTED: libc::rlim_t = 65_536;

/// Raises the soft limit on open files towards the hard limit: every client connection
/// costs a descriptor, and the usual soft limit of 1,024 would make `accept` fail (and the
/// server stop answering) near 1,000 connections, whatever `max_connections` says.
#[cfg(unix)]
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = limit.rlim_max.min(OPEN_FILES_WANTED);
        if limit.rlim_cur >= wanted {
            return;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = wanted;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::debug!(before, after = wanted, "raised the open-files limit");
        }
    }
}

/// No descriptor limit to raise where there are no rlimits.
#[cfg(not(unix))]
fn raise_open_files_limit() {}

/// Fails start-up with the exact pip command when debug mode is on and the interpreter
/// cannot import debugpy.
async fn ensure_debugpy(python: &str) -> Result<(), Error> {
    let (program, args) = process::interpreter(python);
    let output = tokio::process::Command::new(program)
        .args(args)
        .args(["-c", "import debugpy"])
        .output()
        .await
        .map_err(|e| Error::Spawn(format!("{python}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::DebugpyMissing {
        python: python.to_owned(),
        install: format!("{python} -m pip install debugpy"),
    })
}

/// The signals an operator sends, registered before the host says it is listening (a
/// SIGHUP that arrived before its handler would kill the process).
#[cfg(unix)]
struct OperatorSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    ttin: tokio::signal::unix::Signal,
    ttou: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl OperatorSignals {
    fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            ttin: signal(SignalKind::from_raw(libc::SIGTTIN))?,
            ttou: signal(SignalKind::from_raw(libc::SIGTTOU))?,
        })
    }

    /// Handles operator signals until SIGTERM/SIGINT (returned): SIGHUP re-reads the
    /// config and replaces the workers one by one (a broken config keeps the running
    /// one); SIGTTIN and SIGTTOU add or remove a worker.
    async fn run_until_shutdown(
        &mut self,
        pool: &Pool,
        cli: &CliOverrides,
        script: &Path,
    ) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.hup.recv() => reload(pool, cli, script),
                _ = self.ttin.recv() => pool.resize(pool.settings().workers + 1),
                _ = self.ttou.recv() => pool.resize(pool.settings().workers.saturating_sub(1)),
            }
        }
    }
}

/// Ctrl-C and Ctrl-Break, where there are no Unix signals (Windows); registered before
/// the host says it is listening, like the Unix ones.
#[cfg(windows)]
struct OperatorSignals {
    ctrl_c: tokio::signal::windows::CtrlC,
    ctrl_break: tokio::signal::windows::CtrlBreak,
    /// IIS's FastCGI module: the event it sets to stop the process.
    iis_shutdown: Option<crate::front::iis_pipe::ShutdownEvent>,
}

#[cfg(windows)]
impl OperatorSignals {
    fn register() -> std::io::Result<Self> {
        Ok(Self {
            ctrl_c: tokio::signal::windows::ctrl_c()?,
            ctrl_break: tokio::signal::windows::ctrl_break()?,
            iis_shutdown: crate::front::iis_pipe::shutdown_event(),
        })
    }

    /// Waits for Ctrl-C, Ctrl-Break or IIS's shutdown event (returned); each drains and
    /// stops like SIGTERM.
    async fn run_until_shutdown(
        &mut self,
        _pool: &Pool,
        _cli: &CliOverrides,
        _script: &Path,
    ) -> &'static str {
        let iis = async {
            match self.iis_shutdown.as_mut() {
                Some(event) => event.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.ctrl_c.recv() => "Ctrl-C",
            _ = self.ctrl_break.recv() => "Ctrl-Break",
            () = iis => "IIS shutdown event",
        }
    }
}

/// Re-reads the configuration (same command line, current environment and files) and
/// applies it to the pool; on error the running configuration stays and the log says why.
pub fn reload(pool: &Pool, cli: &CliOverrides, script: &Path) {
    crate::systemd::notify(&crate::systemd::reloading_message());
    let env: HashMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    match crate::config::load(cli, &env) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            let config = loaded.config;
            tracing::info!(workers = config.workers, "configuration reloaded; replacing workers one by one (listen address and debug settings need a restart)");
            let spec = worker_spec(&config, script);
            pool.reconfigure(pool_settings(&config, spec));
            crate::systemd::notify(&format!(
                "READY=1\nSTATUS=configuration reloaded; replacing {} worker(s) one by one",
                config.workers
            ));
        }
        Err(err) => {
            tracing::error!("reload failed; the running configuration stays: {err}");
            crate::systemd::notify(&format!(
                "READY=1\nSTATUS=reload failed, the running configuration stays: {}",
                err.to_string().replace('\n', " ")
            ));
        }
    }
}

/// Asks the host running with `config` to reload (`POST <status_path>/control/reload` on its
/// listen address, from loopback). Returns the host's answer.
pub fn request_reload(config: &Config) -> Result<String, Error> {
    use std::io::{Read, Write};
    let Some(status_path) = config.status_path.as_deref() else {
        return Err(Error::Control(
            "`fcgihost reload` talks to the host's status endpoint: set status_path (e.g. \"/_fcgihost/status\"), or send SIGHUP".into(),
        ));
    };
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let fail = |e: std::io::Error| Error::Control(format!("cannot reach the host at {addr}: {e}"));
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    let path = format!("{}/control/reload", status_path.trim_end_matches('/'));
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(fail)?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim())
        .unwrap_or("");
    if status == "202" {
        Ok(body.to_owned())
    } else {
        Err(Error::Control(format!(
            "the host at {addr} answered {status}: {body}"
        )))
    }
}

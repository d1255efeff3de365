//! winsuite.exe: fcgihost's Windows test suite, run under Wine by scripts/check-windows.sh.
//! `winsuite.exe FCGIHOST_EXE WINWORKER_EXE [NAME...]` runs every test (or those named)
//! against the real `fcgihost.exe`, with `winworker.exe` standing in for `python.exe`,
//! prints `ok NAME` or `FAIL NAME: why` for each, and ends with `N passed, M failed`.
//!
//! Every test checks what a Windows user would see: exit codes, files, HTTP answers, the
//! process list. Waits are for events (a log line, a file, a process ending), each bounded.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fcgihost_wintest::fcgi;
use fcgihost_wintest::http::{self, Response};
use fcgihost_wintest::win;

type Outcome = Result<(), String>;

/// Paths every test uses.
struct Env {
    fcgihost: PathBuf,
    winworker: PathBuf,
    scratch: PathBuf,
}

static ENV: OnceLock<Env> = OnceLock::new();

fn env() -> &'static Env {
    ENV.get().expect("set in main")
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = env().scratch.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Waits until `check` gives something, or fails after `timeout` saying `what`.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `fcgihost.exe ARGS` to its end in `dir`; returns (exit code, stdout, stderr).
fn run(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(&env().fcgihost)
        .args(args)
        .current_dir(dir)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("fcgihost.exe runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `fcgihost.exe serve`, its log in a file; terminated when dropped.
struct Host {
    child: Child,
    log: PathBuf,
    addr: Option<SocketAddr>,
}

/// How a host is started.
#[derive(Default)]
struct HostOpts<'a> {
    args: Vec<&'a str>,
    vars: Vec<(&'a str, String)>,
    /// Wait for `worker ready` in the log this many times before returning.
    workers: usize,
    /// Expect an HTTP listener (false for the FastCGI pipe mode).
    http: bool,
}

impl Host {
    fn start(dir: &Path, opts: HostOpts) -> Result<Host, String> {
        let log = dir.join("host.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&env().fcgihost);
        cmd.arg("serve")
            .arg("--python")
            .arg(&env().winworker)
            .args(&opts.args)
            .current_dir(dir)
            .envs(opts.vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start fcgihost.exe: {e}"))?;
        let mut host = Host {
            child,
            log,
            addr: None,
        };
        if opts.http {
            let addr = wait_for(
                "the `listening on` log line",
                Duration::from_secs(30),
                || {
                    let log = host.log_text();
                    let at = log.find("listening on http://")?;
                    let rest = &log[at + "listening on http://".len()..];
                    rest.split_whitespace().next()?.parse().ok()
                },
            )
            .map_err(|e| format!("{e}; log:\n{}", host.log_text()))?;
            host.addr = Some(addr);
        }
        if opts.workers > 0 {
            wait_for(
                "`worker ready` in the log for every worker",
                Duration::from_secs(30),
                || (host.log_text().matches("worker ready").count() >= opts.workers).then_some(()),
            )
            .map_err(|e| format!("{e}; log:\n{}", host.log_text()))?;
        }
        Ok(host)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn addr(&self) -> SocketAddr {
        self.addr.expect("an HTTP host")
    }

    fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn workers(&self) -> Vec<u32> {
        win::children_named(self.pid(), "winworker.exe")
    }

    fn get(&self, path: &str) -> Result<Response, String> {
        http::get(self.addr(), path).map_err(|e| format!("GET {path}: {e}"))
    }

    /// Waits for the host to exit; its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the host did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let workers = self.workers();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            if win::alive(pid) {
                win::terminate(pid);
            }
        }
    }
}

/// `fcgihost serve` on a free loopback port with `workers` workers (all ready) and
/// `extra` arguments.
fn http_host(dir: &Path, workers: usize, extra: &[&str]) -> Result<Host, String> {
    let count = workers.to_string();
    let mut args = vec!["-l", "127.0.0.1:0", "-w", count.as_str()];
    args.extend_from_slice(extra);
    Host::start(
        dir,
        HostOpts {
            args,
            workers,
            http: true,
            ..HostOpts::default()
        },
    )
}

/// A request sent on a thread, answered later.
fn background(addr: SocketAddr, path: &str) -> std::thread::JoinHandle<Result<Response, String>> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        http::request(addr, "GET", &path, &[], &[], Duration::from_secs(90))
            .map_err(|e| e.to_string())
    })
}

/// Waits for a pid file the stand-in worker writes when a request starts.
fn wait_pidfile(path: &Path) -> Result<u32, String> {
    wait_for(
        &format!("{}", path.display()),
        Duration::from_secs(30),
        || std::fs::read_to_string(path).ok()?.trim().parse().ok(),
    )
}

/// `path` with `\` and `:` escaped for a query string.
fn q(path: &Path) -> String {
    path.display()
        .to_string()
        .replace(':', "%3A")
        .replace('\\', "%5C")
}

/// A web.config as wfastcgi's documentation has it.
fn wfastcgi_config(settings: &[(&str, &str)]) -> String {
    let mut adds = String::new();
    for (k, v) in settings {
        adds.push_str(&format!("    <add key=\"{k}\" value=\"{v}\" />\r\n"));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<configuration>\r\n  <system.webServer>\r\n    <handlers>\r\n      <add name=\"PythonHandler\" path=\"*\" verb=\"*\" modules=\"FastCgiModule\" scriptProcessor=\"C:\\Python312\\python.exe|C:\\Python312\\Lib\\site-packages\\wfastcgi.py\" resourceType=\"Unspecified\" requireAccess=\"Script\" />\r\n    </handlers>\r\n  </system.webServer>\r\n  <appSettings>\r\n{adds}  </appSettings>\r\n</configuration>\r\n"
    )
}

/// A small well-formedness check: tags nest and close, attributes are quoted, comments and
/// declarations end. Returns the element names in document order.
fn well_formed(xml: &str) -> Result<Vec<String>, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut names = Vec::new();
    let mut rest = xml.trim_start_matches('\u{feff}');
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").ok_or("unclosed comment")?;
            rest = &after[end + 3..];
            continue;
        }
        if let Some(after) = rest.strip_prefix("<?") {
            let end = after.find("?>").ok_or("unclosed declaration")?;
            rest = &after[end + 2..];
            continue;
        }
        let mut end = None;
        let mut quote = None;
        for (i, c) in rest.char_indices().skip(1) {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(open), c) if c == open => quote = None,
                (None, '>') => {
                    end = Some(i);
                    break;
                }
                (None, '<') => return Err(format!("`<` inside a tag near {:?}", &rest[..i])),
                _ => {}
            }
        }
        let end = end.ok_or("unclosed tag")?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack
                .pop()
                .ok_or_else(|| format!("</{name}> closes nothing"))?;
            ensure!(open == name.trim(), "<{open}> closed by </{name}>");
        } else {
            let name = tag
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or("")
                .to_owned();
            ensure!(!name.is_empty(), "empty tag name");
            names.push(name.clone());
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
    }
    ensure!(stack.is_empty(), "unclosed elements: {stack:?}");
    Ok(names)
}

/// The value of `<add key="KEY" value="...">` in a web.config.
fn app_setting(xml: &str, key: &str) -> Option<String> {
    let at = xml.find(&format!("key=\"{key}\""))?;
    let tail = &xml[at..];
    let v = tail.find("value=\"")? + "value=\"".len();
    let end = tail[v..].find('"')?;
    Some(tail[v..v + end].to_owned())
}

// --- the tests -------------------------------------------------------------------------

fn help() -> Outcome {
    let (code, out, err) = run(&env().scratch, &["--help"], &[]);
    ensure!(code == 0, "exit {code}: {err}");
    for word in ["serve", "check", "web-config", "migrate", "attach"] {
        ensure!(out.contains(word), "--help does not list `{word}`:\n{out}");
    }
    Ok(())
}

fn web_config_debug_writes_three_files() -> Outcome {
    let dir = scratch("web-config");
    let mut secrets = Vec::new();
    for round in 0..2 {
        let out_dir = dir.join(format!("site{round}"));
        let out_arg = out_dir.display().to_string();
        let (code, _, err) = run(
            &dir,
            &[
                "web-config",
                "--debug",
                "--app",
                "app.application",
                "--out",
                &out_arg,
            ],
            &[],
        );
        ensure!(code == 0, "exit {code}: {err}");
        for name in ["web.config", "Web.Debug.config", "Web.Release.config"] {
            let bytes = std::fs::read(out_dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
            let text = String::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8"))?;
            let names =
                well_formed(&text).map_err(|e| format!("{name} is not well-formed XML: {e}"))?;
            ensure!(
                names.first().map(String::as_str) == Some("configuration"),
                "{name}: root is {:?}",
                names.first()
            );
            let lf = text.matches('\n').count();
            let crlf = text.matches("\r\n").count();
            ensure!(
                lf > 0 && lf == crlf,
                "{name}: {lf} line ends, only {crlf} of them CRLF"
            );
        }
        let web = std::fs::read_to_string(out_dir.join("web.config")).map_err(|e| e.to_string())?;
        ensure!(
            web.contains("httpPlatformHandler"),
            "web.config has no httpPlatformHandler"
        );
        let secret = app_setting(&web, "WSGI_PTVSD_SECRET")
            .ok_or("web.config (--debug) has no WSGI_PTVSD_SECRET")?;
        ensure!(
            secret.len() >= 22 && secret.chars().all(|c| c.is_ascii_alphanumeric()),
            "weak secret {secret:?}"
        );
        let debug =
            std::fs::read_to_string(out_dir.join("Web.Debug.config")).map_err(|e| e.to_string())?;
        ensure!(
            debug.contains(&secret),
            "Web.Debug.config does not carry the secret of web.config"
        );
        ensure!(
            err.contains(&secret),
            "the secret is not shown to the user: {err}"
        );
        secrets.push(secret);
    }
    ensure!(secrets[0] != secrets[1], "two runs wrote the same secret");
    Ok(())
}

const WFASTCGI_SETTINGS: &[(&str, &str)] = &[
    ("WSGI_HANDLER", "app.application"),
    ("PYTHONPATH", "C:\\inetpub\\myapp;%SystemDrive%\\lib"),
    ("WSGI_RESTART_FILE_REGEX", ".*((\\.py)|(\\.config))$"),
    ("SCRIPT_NAME", "/myapp"),
    ("DJANGO_SETTINGS_MODULE", "myproj.settings"),
    ("WSGI_PTVSD_SECRET", "s3cretS3cretS3cretS3cret"),
    ("MY_OWN_SETTING", "kept as it is"),
];

fn migrate_keeps_every_app_setting() -> Outcome {
    let dir = scratch("migrate");
    let config = dir.join("web.config");
    std::fs::write(&config, wfastcgi_config(WFASTCGI_SETTINGS)).map_err(|e| e.to_string())?;
    let (code, out, err) = run(&dir, &["migrate", "web.config"], &[]);
    ensure!(code == 0, "exit {code}: {err}");
    well_formed(&out).map_err(|e| format!("migrated web.config is not well-formed: {e}"))?;
    for (key, value) in WFASTCGI_SETTINGS {
        let got = app_setting(&out, key).ok_or_else(|| format!("{key} lost:\n{out}"))?;
        ensure!(got == *value, "{key} is {got:?}, was {value:?}");
    }
    ensure!(
        out.contains("httpPlatformHandler"),
        "no httpPlatformHandler in:\n{out}"
    );
    ensure!(
        !out.contains("wfastcgi.py"),
        "the wfastcgi handler is still there:\n{out}"
    );
    let (code, _, err) = run(&dir, &["migrate", "web.config", "--write"], &[]);
    ensure!(code == 0, "--write: exit {code}: {err}");
    ensure!(
        dir.join("web.config.wfastcgi.bak").is_file(),
        "no backup written"
    );
    let written = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    ensure!(
        app_setting(&written, "MY_OWN_SETTING").as_deref() == Some("kept as it is"),
        "--write lost a setting"
    );
    Ok(())
}

fn check_in_a_wfastcgi_site() -> Outcome {
    let dir = scratch("check-wfastcgi");
    std::fs::write(
        dir.join("web.config"),
        wfastcgi_config(&[("WSGI_HANDLER", "app.application")]),
    )
    .map_err(|e| e.to_string())?;
    let worker = env().winworker.display().to_string();
    let (code, out, err) = run(&dir, &["check", "--python", &worker], &[]);
    ensure!(code == 0, "exit {code}: {out}{err}");
    let app_line = out.lines().find(|l| l.starts_with("app ")).unwrap_or("");
    ensure!(
        app_line.contains("app.application") && app_line.contains("(web.config)"),
        "check does not say the app came from web.config:\n{out}"
    );
    ensure!(
        out.contains("ok: app.application imported by"),
        "no ok line:\n{out}"
    );
    Ok(())
}

fn check_reports_an_import_error() -> Outcome {
    let dir = scratch("check-broken");
    let worker = env().winworker.display().to_string();
    let (code, out, err) = run(
        &dir,
        &["check", "--python", &worker, "--app", "broken"],
        &[],
    );
    ensure!(code != 0, "check passed with a broken app:\n{out}");
    ensure!(
        err.contains("ModuleNotFoundError: No module named 'missing_module'"),
        "no traceback:\n{out}{err}"
    );
    Ok(())
}

fn bad_config_names_file_line_and_key() -> Outcome {
    let dir = scratch("bad-config");
    std::fs::write(
        dir.join("fcgihost.toml"),
        "# site config\r\napp = \"app.application\"\r\nworkers = \"many\"\r\n",
    )
    .map_err(|e| e.to_string())?;
    let (code, out, err) = run(&dir, &["check", "-c", "fcgihost.toml"], &[]);
    ensure!(code == 2, "exit {code} (expected 2): {out}{err}");
    ensure!(
        err.contains("fcgihost.toml") && err.contains(":3") && err.contains("workers"),
        "the error does not name file, line 3 and key:\n{err}"
    );
    Ok(())
}

fn missing_wsgi_log_folder_is_named() -> Outcome {
    let dir = scratch("wsgi-log");
    let log = dir.join("no-such-folder").join("app.log");
    let log_text = log.display().to_string();
    std::fs::write(
        dir.join("web.config"),
        wfastcgi_config(&[("WSGI_HANDLER", "app.application"), ("WSGI_LOG", &log_text)]),
    )
    .map_err(|e| e.to_string())?;
    let worker = env().winworker.display().to_string();
    let (code, out, err) = run(&dir, &["check", "--python", &worker], &[]);
    ensure!(
        code != 0,
        "check passed with a log file in a missing folder:\n{out}"
    );
    ensure!(
        err.contains(&log_text),
        "the error does not name {log_text}:\n{err}"
    );
    ensure!(
        err.contains("WSGI_LOG"),
        "the error does not name the key WSGI_LOG:\n{err}"
    );
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn serve_on_http_platform_port() -> Outcome {
    let dir = scratch("serve-hpp");
    let port = free_port();
    let host = Host::start(
        &dir,
        HostOpts {
            args: vec!["-w", "2"],
            vars: vec![("HTTP_PLATFORM_PORT", port.to_string())],
            workers: 2,
            http: true,
            ..HostOpts::default()
        },
    )?;
    ensure!(
        host.addr().port() == port,
        "listens on {} instead of %HTTP_PLATFORM_PORT% {port}",
        host.addr()
    );
    let r = host.get("/")?;
    ensure!(
        r.status == 200 && r.text().starts_with("hello from winworker"),
        "GET /: {} {}",
        r.status,
        r.text()
    );
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = http::request(
        host.addr(),
        "POST",
        "/echo",
        &[("Content-Type", "application/x-test")],
        &body,
        Duration::from_secs(60),
    )
    .map_err(|e| e.to_string())?;
    ensure!(r.status == 200, "POST /echo: {}", r.status);
    ensure!(
        r.body == body,
        "1 MiB echoed as {} bytes, not the same",
        r.body.len()
    );
    ensure!(
        r.header("content-type") == Some("application/x-test"),
        "content type {:?}",
        r.header("content-type")
    );
    // Two slow requests at once are served by the two workers.
    let a = background(host.addr(), "/sleep?ms=1500");
    let b = background(host.addr(), "/sleep?ms=1500");
    let (a, b) = (
        a.join().map_err(|_| "panic")??,
        b.join().map_err(|_| "panic")??,
    );
    ensure!(
        a.status == 200 && b.status == 200,
        "sleeps: {} {}",
        a.status,
        b.status
    );
    ensure!(
        a.text() != b.text(),
        "both slow requests ran in one worker: {} / {}",
        a.text(),
        b.text()
    );
    Ok(())
}

fn streamed_response_arrives_whole() -> Outcome {
    let dir = scratch("stream");
    let host = http_host(&dir, 1, &[])?;
    let r = host.get("/stream?n=5&ms=20")?;
    ensure!(r.status == 200, "status {}", r.status);
    ensure!(
        r.text() == "line 0\nline 1\nline 2\nline 3\nline 4\n",
        "body {:?}",
        r.text()
    );
    Ok(())
}

fn app_traceback_is_logged() -> Outcome {
    let dir = scratch("traceback");
    let host = http_host(&dir, 1, &[])?;
    let r = host.get("/error")?;
    ensure!(r.status == 500, "status {}", r.status);
    wait_for(
        "the traceback in the host's log",
        Duration::from_secs(10),
        || {
            host.log_text()
                .contains("ZeroDivisionError: division by zero")
                .then_some(())
        },
    )
    .map_err(|e| format!("{e}:\n{}", host.log_text()))
}

fn terminated_worker_costs_only_its_request() -> Outcome {
    let dir = scratch("kill-worker");
    let host = http_host(&dir, 2, &[])?;
    let pidfile = dir.join("held.pid");
    let held = background(
        host.addr(),
        &format!("/sleep?ms=60000&pidfile={}", q(&pidfile)),
    );
    let victim = wait_pidfile(&pidfile)?;
    ensure!(win::terminate(victim), "TerminateProcess({victim}) failed");
    let r = held.join().map_err(|_| "panic")??;
    ensure!(
        r.status == 502,
        "the killed worker's request got {} (expected 502)",
        r.status
    );
    for _ in 0..5 {
        let r = host.get("/")?;
        ensure!(r.status == 200, "a request after the kill got {}", r.status);
    }
    wait_for("a replacement worker", Duration::from_secs(30), || {
        let now = host.workers();
        (now.len() == 2 && !now.contains(&victim)).then_some(())
    })
    .map_err(|e| format!("{e}; workers {:?}", host.workers()))
}

fn stuck_request_times_out_with_504() -> Outcome {
    let dir = scratch("stuck");
    let host = http_host(&dir, 1, &["--request-timeout", "2s"])?;
    let pidfile = dir.join("stuck.pid");
    let started = Instant::now();
    let stuck = background(
        host.addr(),
        &format!("/sleep?ms=60000&pidfile={}", q(&pidfile)),
    );
    let stuck_pid = wait_pidfile(&pidfile)?;
    let r = stuck.join().map_err(|_| "panic")??;
    ensure!(
        r.status == 504,
        "the stuck request got {} (expected 504)",
        r.status
    );
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "the 504 took {:?}",
        started.elapsed()
    );
    ensure!(
        win::wait_exit(stuck_pid, Duration::from_secs(15)),
        "the stuck worker {stuck_pid} still runs"
    );
    let r = host.get("/pid")?;
    ensure!(
        r.status == 200 && r.text() != stuck_pid.to_string(),
        "after the timeout: {} {}",
        r.status,
        r.text()
    );
    Ok(())
}

/// Ctrl-C at the host's console (CTRL_C_EVENT to every process on it; the suite's own
/// handler swallows its copy) with a request in flight: the request is answered, the host
/// exits 0 and no worker process is left. Ctrl-Break takes the same path in the host (one
/// `select!` arm further), but Wine 10 does not deliver CTRL_BREAK_EVENT to console
/// handlers (the receiving processes just end), so it cannot be tested here.
fn ctrl_c_drains_and_leaves_no_worker() -> Outcome {
    let dir = scratch("ctrl-c");
    let mut host = http_host(&dir, 2, &[])?;
    let workers = host.workers();
    ensure!(workers.len() == 2, "workers before Ctrl-C: {workers:?}");
    let pidfile = dir.join("inflight.pid");
    let inflight = background(
        host.addr(),
        &format!("/sleep?ms=2000&pidfile={}", q(&pidfile)),
    );
    wait_pidfile(&pidfile)?;
    win::console_event(0, 0)?;
    let r = inflight.join().map_err(|_| "panic")??;
    ensure!(
        r.status == 200 && r.text().starts_with("slept"),
        "the in-flight request got {} {}",
        r.status,
        r.text()
    );
    let code = host.wait_exit(Duration::from_secs(30))?;
    let log = host.log_text();
    ensure!(code == 0, "the host exited {code}; log:\n{log}");
    ensure!(
        log.contains("shutting down") && log.contains("Ctrl-C"),
        "no drain in the log:\n{log}"
    );
    for pid in workers {
        ensure!(
            win::wait_exit(pid, Duration::from_secs(10)),
            "worker {pid} still runs after the host stopped"
        );
    }
    let left: Vec<_> = win::processes()
        .into_iter()
        .filter(|p| p.parent == host.pid() && p.exe.eq_ignore_ascii_case("winworker.exe"))
        .collect();
    ensure!(left.is_empty(), "worker processes left: {left:?}");
    Ok(())
}

fn terminated_host_takes_its_workers() -> Outcome {
    let dir = scratch("kill-host");
    let mut host = http_host(&dir, 2, &[])?;
    let workers = host.workers();
    ensure!(win::terminate(host.pid()), "TerminateProcess(host) failed");
    host.wait_exit(Duration::from_secs(10))?;
    for pid in &workers {
        ensure!(
            win::wait_exit(*pid, Duration::from_secs(15)),
            "worker {pid} outlived its host (job object)"
        );
    }
    Ok(())
}

fn ptvsd_refuses_without_the_secret() -> Outcome {
    let dir = scratch("ptvsd");
    let host = Host::start(
        &dir,
        HostOpts {
            args: vec!["-l", "127.0.0.1:0", "-w", "1"],
            vars: vec![("WSGI_PTVSD_SECRET", "TheSecretTheSecretTheSecret12".into())],
            workers: 1,
            http: true,
            ..HostOpts::default()
        },
    )?;
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let r = http::request(
        host.addr(),
        "GET",
        "/ptvsd",
        &upgrade,
        &[],
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())?;
    ensure!(r.status == 401, "/ptvsd without the secret: {}", r.status);
    let mut wrong = upgrade.to_vec();
    wrong.push(("Authorization", "Basic d3Jvbmc6"));
    let r = http::request(
        host.addr(),
        "GET",
        "/ptvsd",
        &wrong,
        &[],
        Duration::from_secs(30),
    )
    .map_err(|e| e.to_string())?;
    ensure!(r.status == 401, "/ptvsd with a wrong secret: {}", r.status);
    ensure!(
        !host.log_text().contains("TheSecretTheSecret"),
        "the secret is in the log"
    );
    let r = host.get("/")?;
    ensure!(r.status == 200, "the app itself: {}", r.status);
    Ok(())
}

fn py_change_restarts_workers() -> Outcome {
    let dir = scratch("restart");
    std::fs::write(dir.join("app.py"), "application = None\n").map_err(|e| e.to_string())?;
    let host = http_host(&dir, 2, &["--app-dir", "."])?;
    let before = host.workers();
    std::fs::write(dir.join("app.py"), "application = 'changed'\n").map_err(|e| e.to_string())?;
    wait_for(
        "workers replaced after the .py change",
        Duration::from_secs(30),
        || {
            let now = host.workers();
            (now.len() == 2 && now.iter().all(|p| !before.contains(p))).then_some(())
        },
    )
    .map_err(|e| {
        format!(
            "{e}; before {before:?}, now {:?}; log:\n{}",
            host.workers(),
            host.log_text()
        )
    })?;
    let r = host.get("/")?;
    ensure!(r.status == 200, "after the restart: {}", r.status);
    Ok(())
}

/// fcgihost started as IIS's FastCGI module starts it (the wfastcgi one-line swap): a named
/// pipe's server end as stdin, `_FCGI_SHUTDOWN_EVENT_` naming an inherited event. The IIS
/// stand-in ([`iis_client`]) talks FastCGI over the pipe; then the event is set and the
/// host must drain, exit 0 and take its workers along.
fn fastcgi_named_pipe_like_iis() -> Outcome {
    let dir = scratch("iis-fastcgi");
    let name = format!(r"\\.\pipe\fcgihost-winsuite-{}", std::process::id());
    let pipe = win::create_pipe_server(&name).map_err(|e| format!("CreateNamedPipe: {e}"))?;
    let event = win::Event::inheritable().map_err(|e| format!("CreateEvent: {e}"))?;
    let log = dir.join("host.log");
    let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = Command::new(&env().fcgihost)
        .arg("serve")
        .arg("--python")
        .arg(&env().winworker)
        .args(["-w", "2"])
        .current_dir(&dir)
        .env("_FCGI_SHUTDOWN_EVENT_", event.number().to_string())
        .stdin(Stdio::from(pipe))
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut host = Host {
        child,
        log,
        addr: None,
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let client_name = name.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(iis_client(&client_name));
    });
    let outcome = done_rx
        .recv_timeout(Duration::from_secs(180))
        .unwrap_or_else(|_| Err("the FastCGI exchange did not finish within 180 s".into()));
    if let Err(why) = outcome {
        return Err(format!("{why}; log:\n{}", host.log_text()));
    }
    let log = host.log_text();
    ensure!(
        !log.contains("listening on http://"),
        "an HTTP listener in FastCGI mode:\n{log}"
    );
    let workers = host.workers();
    ensure!(workers.len() == 2, "workers in FastCGI mode: {workers:?}");
    event.set().map_err(|e| format!("SetEvent: {e}"))?;
    let code = host.wait_exit(Duration::from_secs(30))?;
    let log = host.log_text();
    ensure!(
        code == 0,
        "after IIS's shutdown event the host exited {code}:\n{log}"
    );
    ensure!(
        log.contains("IIS shutdown event"),
        "no drain in the log:\n{log}"
    );
    for pid in workers {
        ensure!(
            win::wait_exit(pid, Duration::from_secs(15)),
            "worker {pid} outlived the host"
        );
    }
    Ok(())
}

/// The CGI parameters IIS's FastCGI module sends for `method path`: the whole path in both
/// SCRIPT_NAME and PATH_INFO, as IIS does for a `path="*"` handler.
fn iis_params<'a>(method: &'a str, path: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("REQUEST_METHOD", method),
        ("SCRIPT_NAME", path),
        ("PATH_INFO", path),
        ("URL", path),
        ("QUERY_STRING", ""),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_SOFTWARE", "Microsoft-IIS/10.0"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("HTTP_HOST", "localhost"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
    ]
}

/// What IIS does once the process runs: connect to the pipe, 100 requests in sequence on
/// the connection it keeps (FCGI_KEEP_CONN), a 1 MiB POST, a request without KEEP_CONN
/// (fcgihost closes, the pipe takes the next connection), and one more after reconnecting.
fn iis_client(name: &str) -> Outcome {
    let mut conn =
        win::connect_pipe(name, Duration::from_secs(30)).map_err(|e| format!("connect: {e}"))?;
    for i in 0..100u16 {
        let answer = fcgi::request(&mut conn, 1, true, &iis_params("GET", "/"), &[])
            .map_err(|e| format!("request {i}: {e}"))?;
        ensure!(answer.status() == 200, "request {i}: {}", answer.head());
        ensure!(
            answer.body().starts_with(b"hello from winworker"),
            "request {i}: {:?}",
            String::from_utf8_lossy(answer.body())
        );
    }
    // The worker sees the path once, as PATH_INFO (not SCRIPT_NAME + PATH_INFO).
    let answer = fcgi::request(&mut conn, 1, true, &iis_params("GET", "/env"), &[])
        .map_err(|e| format!("GET /env: {e}"))?;
    let env_text = String::from_utf8_lossy(answer.body()).into_owned();
    ensure!(
        env_text.contains("\nPATH_INFO=/env\n") && env_text.contains("\nSCRIPT_NAME=\n"),
        "the worker's path parameters:\n{env_text}"
    );
    let body: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 13 % 253) as u8).collect();
    let length = body.len().to_string();
    let mut post: Vec<(&str, &str)> = iis_params("POST", "/echo");
    post.push(("CONTENT_LENGTH", &length));
    post.push(("CONTENT_TYPE", "application/octet-stream"));
    let answer =
        fcgi::request(&mut conn, 1, true, &post, &body).map_err(|e| format!("POST: {e}"))?;
    ensure!(
        answer.status() == 200 && answer.body() == body.as_slice(),
        "1 MiB POST came back as {} bytes ({})",
        answer.body().len(),
        answer.head()
    );
    let answer = fcgi::request(&mut conn, 1, false, &iis_params("GET", "/pid"), &[])
        .map_err(|e| format!("request without KEEP_CONN: {e}"))?;
    ensure!(
        answer.status() == 200,
        "request without KEEP_CONN: {}",
        answer.head()
    );
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    ensure!(rest.is_empty(), "{} bytes after END_REQUEST", rest.len());
    drop(conn);
    let mut again =
        win::connect_pipe(name, Duration::from_secs(30)).map_err(|e| format!("reconnect: {e}"))?;
    let answer = fcgi::request(&mut again, 1, true, &iis_params("GET", "/"), &[])
        .map_err(|e| format!("after reconnecting: {e}"))?;
    ensure!(
        answer.status() == 200,
        "after reconnecting: {}",
        answer.head()
    );
    Ok(())
}

/// A runtime folder in %TEMP% of a host that is gone (its pid is a finished process) is
/// removed when a host starts; the folder of a live process stays.
fn stale_temp_folders_of_dead_hosts_are_removed() -> Outcome {
    let dir = scratch("stale");
    let finished = Command::new(&env().winworker)
        .args(["-c", "pass"])
        .spawn()
        .map_err(|e| e.to_string())?;
    let dead_pid = finished.id();
    let mut finished = finished;
    finished.wait().map_err(|e| e.to_string())?;
    ensure!(!win::alive(dead_pid), "pid {dead_pid} still runs");
    let temp = std::env::temp_dir();
    let stale = temp.join(format!("fcgihost-{dead_pid}-123456"));
    let live = temp.join(format!("fcgihost-{}-654321", std::process::id()));
    for folder in [&stale, &live] {
        std::fs::create_dir_all(folder).map_err(|e| e.to_string())?;
        std::fs::write(folder.join("fcgihost_worker.py"), "").map_err(|e| e.to_string())?;
    }
    let host = http_host(&dir, 1, &[]);
    let stale_left = stale.exists();
    let live_left = live.exists();
    let _ = std::fs::remove_dir_all(&live);
    let _ = std::fs::remove_dir_all(&stale);
    let host = host?;
    ensure!(
        !stale_left,
        "{} (pid {dead_pid} is gone) was not removed; log:\n{}",
        stale.display(),
        host.log_text()
    );
    ensure!(live_left, "{} (a live pid) was removed", live.display());
    Ok(())
}

/// Started as the ASP.NET Core Module (out-of-process) starts it: `ASPNETCORE_PORT` and
/// `ASPNETCORE_TOKEN` set; only requests carrying the token are answered.
fn aspnetcore_module_port_and_token() -> Outcome {
    let dir = scratch("aspnetcore");
    let port = free_port();
    let token = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    let host = Host::start(
        &dir,
        HostOpts {
            args: vec!["-w", "1"],
            vars: vec![
                ("ASPNETCORE_PORT", port.to_string()),
                ("ASPNETCORE_TOKEN", token.to_string()),
            ],
            workers: 1,
            http: true,
        },
    )?;
    ensure!(
        host.addr().port() == port,
        "listens on {} instead of %ASPNETCORE_PORT%",
        host.addr()
    );
    let timeout = Duration::from_secs(30);
    let paired = http::request(
        host.addr(),
        "GET",
        "/env",
        &[("MS-ASPNETCORE-TOKEN", token)],
        &[],
        timeout,
    )
    .map_err(|e| e.to_string())?;
    ensure!(paired.status == 200, "with the token: {}", paired.status);
    ensure!(
        !paired.text().contains(token),
        "the app saw the token:\n{}",
        paired.text()
    );
    let r = http::request(host.addr(), "GET", "/", &[], &[], timeout).map_err(|e| e.to_string())?;
    ensure!(r.status == 400, "without the token: {}", r.status);
    let r = http::request(
        host.addr(),
        "GET",
        "/",
        &[("MS-ASPNETCORE-TOKEN", "wrong")],
        &[],
        timeout,
    )
    .map_err(|e| e.to_string())?;
    ensure!(r.status == 400, "with a wrong token: {}", r.status);
    ensure!(!host.log_text().contains(token), "the token is in the log");
    Ok(())
}

type Test = (&'static str, fn() -> Outcome);

const TESTS: &[Test] = &[
    ("help", help),
    (
        "web_config_debug_writes_three_files",
        web_config_debug_writes_three_files,
    ),
    (
        "migrate_keeps_every_app_setting",
        migrate_keeps_every_app_setting,
    ),
    ("check_in_a_wfastcgi_site", check_in_a_wfastcgi_site),
    (
        "check_reports_an_import_error",
        check_reports_an_import_error,
    ),
    (
        "bad_config_names_file_line_and_key",
        bad_config_names_file_line_and_key,
    ),
    (
        "missing_wsgi_log_folder_is_named",
        missing_wsgi_log_folder_is_named,
    ),
    ("serve_on_http_platform_port", serve_on_http_platform_port),
    (
        "streamed_response_arrives_whole",
        streamed_response_arrives_whole,
    ),
    ("app_traceback_is_logged", app_traceback_is_logged),
    (
        "terminated_worker_costs_only_its_request",
        terminated_worker_costs_only_its_request,
    ),
    (
        "stuck_request_times_out_with_504",
        stuck_request_times_out_with_504,
    ),
    (
        "ctrl_c_drains_and_leaves_no_worker",
        ctrl_c_drains_and_leaves_no_worker,
    ),
    (
        "terminated_host_takes_its_workers",
        terminated_host_takes_its_workers,
    ),
    (
        "ptvsd_refuses_without_the_secret",
        ptvsd_refuses_without_the_secret,
    ),
    ("py_change_restarts_workers", py_change_restarts_workers),
    ("fastcgi_named_pipe_like_iis", fastcgi_named_pipe_like_iis),
    (
        "aspnetcore_module_port_and_token",
        aspnetcore_module_port_and_token,
    ),
    (
        "stale_temp_folders_of_dead_hosts_are_removed",
        stale_temp_folders_of_dead_hosts_are_removed,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: winsuite FCGIHOST_EXE WINWORKER_EXE [TEST...]");
        std::process::exit(2);
    }
    let scratch = std::env::temp_dir().join(format!("fcgihost-winsuite-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let _ = ENV.set(Env {
        fcgihost: std::path::absolute(&args[0]).unwrap_or_else(|_| PathBuf::from(&args[0])),
        winworker: std::path::absolute(&args[1]).unwrap_or_else(|_| PathBuf::from(&args[1])),
        scratch: scratch.clone(),
    });
    win::ensure_console();
    win::ignore_ctrl_c();
    let wanted = &args[2..];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in TESTS {
        if !wanted.is_empty() && !wanted.iter().any(|w| w == name) {
            continue;
        }
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(test).unwrap_or_else(|_| Err("panicked".into()));
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("ok {name} ({:.1} s)", started.elapsed().as_secs_f64());
            }
            Err(why) => {
                failed += 1;
                println!("FAIL {name}: {why}");
            }
        }
        let _ = std::io::stdout().flush();
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

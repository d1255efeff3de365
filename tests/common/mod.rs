//! Harness for fcgihost's integration tests: starts the real `fcgihost` binary with real
//! Python workers in a private temp dir, captures its log, finds its port, and kills it (and
//! anything it left behind) when the test ends. Also: /proc helpers (worker pids, memory),
//! a condition poller, a ureq client that returns 4xx/5xx as values, and a raw HTTP/1.1
//! client for what ureq cannot send (chunked uploads, Expect: 100-continue, HEAD, keep-alive).
//!
//! Every test file does `mod common;` and uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The DAP client and `fcgihost attach` guard of the remote-debugging tests (tests/debug.rs).
pub mod dap;
/// Real nginx and Apache, and the configuration blocks of docs/*.md (tests/proxies.rs).
pub mod fronts;

/// How long a host may take from spawn to its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A generous bound for one ordinary HTTP exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Paths and the interpreter

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/apps/<name>`: the directory of one test app.
pub fn app_dir(name: &str) -> PathBuf {
    repo_root().join("tests").join("apps").join(name)
}

/// The Python the workers run: `$FCGIHOST_TEST_PYTHON` (set by scripts/test), else the
/// repository's `.venv-test/bin/python` when scripts/test has made it, else `python3`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("FCGIHOST_TEST_PYTHON") {
        if !p.is_empty() {
            return p;
        }
    }
    let venv = repo_root().join(".venv-test/bin/python");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    "python3".to_string()
}

/// Panics with a useful message unless `python()` can import `module` (Flask, Django): those
/// come from tests/requirements.txt, which scripts/test installs.
pub fn require_python_module(module: &str) {
    let py = python();
    let ok = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python {py:?} cannot import {module}; run scripts/test (it installs tests/requirements.txt \
         into .venv-test/) or point FCGIHOST_TEST_PYTHON at an interpreter that has it"
    );
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fcgihost")
}

/// A `fcgihost` command with a clean environment: no inherited FCGIHOST_* overrides, no IIS
/// port variables, no RUST_LOG, no colours, and TMPDIR inside the test's own directory.
fn base_command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("FCGIHOST_")
            || k == "HTTP_PLATFORM_PORT"
            || k == "ASPNETCORE_PORT"
            || k == "RUST_LOG"
        {
            cmd.env_remove(&key);
        }
    }
    let tmp = dir.join("tmp");
    let _ = fs::create_dir_all(&tmp);
    cmd.env("NO_COLOR", "1")
        .env("TMPDIR", &tmp)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

// ---------------------------------------------------------------------------------------------
// Captured output

/// Text captured from a child's pipe by a reader thread, line by line, ANSI colour removed.
#[derive(Default)]
pub struct Captured {
    state: Mutex<(String, usize)>, // (text, number of pipes still open)
    changed: Condvar,
}

impl Captured {
    pub fn new(pipes: usize) -> Arc<Self> {
        Arc::new(Captured {
            state: Mutex::new((String::new(), pipes)),
            changed: Condvar::new(),
        })
    }

    pub fn attach<R: Read + Send + 'static>(self: &Arc<Self>, pipe: R) -> thread::JoinHandle<()> {
        let me = Arc::clone(self);
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = strip_ansi(&String::from_utf8_lossy(&line));
                        let mut st = me.state.lock().unwrap();
                        st.0.push_str(&text);
                        if !text.ends_with('\n') {
                            st.0.push('\n');
                        }
                        me.changed.notify_all();
                    }
                }
            }
            let mut st = me.state.lock().unwrap();
            st.1 -= 1;
            me.changed.notify_all();
        })
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.state.lock().unwrap().0.clone()
    }

    /// Waits until `pred(text)` holds or `timeout` passes (or every pipe closed and it still
    /// does not hold). Returns the text when it holds.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap();
        loop {
            if pred(&st.0) {
                return Ok(st.0.clone());
            }
            let now = Instant::now();
            if now >= deadline || st.1 == 0 {
                return Err(st.0.clone());
            }
            st = self.changed.wait_timeout(st, deadline - now).unwrap().0;
        }
    }
}

/// Removes ANSI escape sequences (colours) from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c2 in chars.by_ref() {
                    if ('@'..='~').contains(&c2) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Finds `listening on http://IP:PORT` in a log and returns the address.
pub fn parse_listen_addr(log: &str) -> Option<SocketAddr> {
    const NEEDLE: &str = "listening on http://";
    for line in log.lines() {
        if let Some(i) = line.find(NEEDLE) {
            let rest = &line[i + NEEDLE.len()..];
            let end = rest
                .find(|c: char| {
                    !(c.is_ascii_hexdigit() || c == '.' || c == ':' || c == '[' || c == ']')
                })
                .unwrap_or(rest.len());
            if let Ok(addr) = rest[..end].trim_end_matches(['.', ':']).parse() {
                return Some(addr);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Starting the host

/// What to start: `fcgihost <subcommand> [--config F] ARGS [--listen 127.0.0.1:0] [--python P]`.
#[derive(Clone, Debug)]
pub struct HostOpts {
    subcommand: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    config: Option<String>,
    python_flag: bool,
    listen_flag: bool,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl Default for HostOpts {
    fn default() -> Self {
        Self::new()
    }
}

impl HostOpts {
    /// `fcgihost serve` with no app (the built-in welcome app), `--listen 127.0.0.1:0` and
    /// `--python <test python>`.
    pub fn new() -> Self {
        HostOpts {
            subcommand: "serve".into(),
            args: Vec::new(),
            env: Vec::new(),
            config: None,
            python_flag: true,
            listen_flag: true,
            files: Vec::new(),
        }
    }

    /// `serve --app plainapp.app --app-dir tests/apps/plain`.
    pub fn plain() -> Self {
        Self::new().app("plainapp.app").app_dir(app_dir("plain"))
    }

    /// `serve --app debugapp.app --app-dir tests/apps/debugapp` (the remote-debugging app).
    pub fn debugapp() -> Self {
        Self::new().app("debugapp.app").app_dir(app_dir("debugapp"))
    }

    /// `--app SPEC`.
    pub fn app(self, spec: &str) -> Self {
        self.arg("--app").arg(spec)
    }

    /// `--app-dir DIR`.
    pub fn app_dir(self, dir: impl AsRef<Path>) -> Self {
        self.arg("--app-dir").arg(dir.as_ref())
    }

    /// `--workers N`.
    pub fn workers(self, n: usize) -> Self {
        self.arg("--workers").arg(n.to_string())
    }

    /// One more command-line argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// One more environment variable for the host.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Writes `toml` to `<test dir>/fcgihost.toml` and passes `--config fcgihost.toml`.
    /// `{python}` in the text is replaced by the test interpreter (as a TOML string body).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// Writes an extra file into the test dir before starting (path relative to it).
    pub fn file(mut self, rel: impl Into<PathBuf>, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((rel.into(), contents.into()));
        self
    }

    /// Do not pass `--python` (the config file or the environment chooses it).
    pub fn no_python_flag(mut self) -> Self {
        self.python_flag = false;
        self
    }

    /// Do not pass `--listen 127.0.0.1:0` (the test sets the address another way).
    pub fn no_listen_flag(mut self) -> Self {
        self.listen_flag = false;
        self
    }

    /// Runs another subcommand (e.g. `check`) instead of `serve`.
    pub fn subcommand(mut self, s: &str) -> Self {
        self.subcommand = s.to_string();
        self
    }

    fn command(&self, dir: &Path) -> Command {
        for (rel, contents) in &self.files {
            let p = dir.join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).unwrap();
            }
            fs::write(&p, contents).unwrap();
        }
        let mut cmd = base_command(dir);
        cmd.arg(&self.subcommand);
        if let Some(toml) = &self.config {
            let text = toml.replace("{python}", &toml_escape(&python()));
            fs::write(dir.join("fcgihost.toml"), text).unwrap();
            cmd.arg("--config").arg("fcgihost.toml");
        }
        cmd.args(&self.args);
        if self.listen_flag {
            cmd.arg("--listen").arg("127.0.0.1:0");
        }
        if self.python_flag {
            cmd.arg("--python").arg(python());
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Escapes a string for use inside a TOML basic string.
pub fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A running `fcgihost serve`. Dropping it SIGKILLs the host and every process it started
/// that is still around, and prints the host's log if the test is failing.
pub struct Host {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: Arc<Captured>,
    exit: Option<ExitStatus>,
    dir: tempfile::TempDir,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Host {
    /// Spawns the host and waits for its `listening on http://IP:PORT` line.
    pub fn start(opts: HostOpts) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("fcgihost-test-")
            .tempdir()
            .unwrap();
        Self::start_in(opts, dir)
    }

    /// Like [`Host::start`] in a directory the test already prepared.
    pub fn start_in(opts: HostOpts, dir: tempfile::TempDir) -> Host {
        let mut cmd = opts.command(dir.path());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin()));
        let pid = child.id();
        let log = Captured::new(2);
        let readers = vec![
            log.attach(child.stderr.take().unwrap()),
            log.attach(child.stdout.take().unwrap()),
        ];
        let mut host = Host {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            exit: None,
            dir,
            readers,
        };
        match host
            .log
            .wait(START_TIMEOUT, |t| parse_listen_addr(t).is_some())
        {
            Ok(text) => host.addr = parse_listen_addr(&text).unwrap(),
            Err(text) => {
                let status = host.wait_exit(Duration::from_millis(500));
                panic!(
                    "fcgihost did not log `listening on http://IP:PORT` within {START_TIMEOUT:?} \
                     (exit status: {status:?}); command: {cmd:?}\n--- log ---\n{text}"
                );
            }
        }
        host
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The address the host listens on (always loopback in these tests).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The test's private directory (the host's cwd; TMPDIR is `dir/tmp`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The host's log so far (stderr and stdout, ANSI removed).
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Waits up to 10 s until `pred(log)` holds; the log either way (Err when it does not).
    pub fn log_wait(&self, pred: impl Fn(&str) -> bool) -> Result<String, String> {
        self.log.wait(Duration::from_secs(10), pred)
    }

    /// Waits until the log contains `needle`; panics with the log if it does not in time.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_count(needle, 1, timeout)
    }

    /// Waits until `needle` occurs at least `n` times in the log; panics with the log if not.
    pub fn wait_for_log_count(&self, needle: &str, n: usize, timeout: Duration) -> String {
        match self.log.wait(timeout, |t| t.matches(needle).count() >= n) {
            Ok(t) => t,
            Err(t) => panic!(
                "log did not contain {needle:?} {n} time(s) within {timeout:?}\n--- log ---\n{t}"
            ),
        }
    }

    /// Sends a signal (libc::SIGTERM, SIGINT, SIGKILL...) to the host.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid);
    }

    /// Waits up to `timeout` for the host to exit; its status, or None if still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The host's direct children (its worker processes) that are alive now.
    pub fn worker_pids(&self) -> Vec<u32> {
        worker_pids(self.pid)
    }

    /// Waits until the host has exactly `n` live worker processes; returns their pids.
    pub fn wait_workers(&self, n: usize, timeout: Duration) -> Vec<u32> {
        let mut last = Vec::new();
        let ok = wait_until(timeout, || {
            last = self.worker_pids();
            last.len() == n
        });
        assert!(
            ok,
            "expected {n} worker processes, have {last:?}\n--- log ---\n{}",
            self.log()
        );
        last
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let leftovers = descendants(self.pid);
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for pid in leftovers.iter().chain(descendants(self.pid).iter()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        // The reader threads are not joined: a process that outlived the host could still hold
        // the pipes open. They end by themselves at EOF.
        self.readers.clear();
        if thread::panicking() {
            eprintln!(
                "--- fcgihost log (pid {}) ---\n{}--- end of log ---",
                self.pid,
                self.log.text()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running a CLI command to completion

/// What a finished `fcgihost ...` printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `fcgihost` with `opts` in `dir` to completion (killed after `timeout`).
pub fn run_cli(opts: HostOpts, dir: &Path, timeout: Duration) -> CliOutput {
    let mut cmd = opts.command(dir);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin()));
    let out = Captured::new(1);
    let err = Captured::new(1);
    let t1 = out.attach(child.stdout.take().unwrap());
    let t2 = err.attach(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let pid = child.id();
            for p in descendants(pid) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(p as libc::pid_t, libc::SIGKILL);
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = t1.join();
    let _ = t2.join();
    let result = CliOutput {
        code: status.and_then(|s| s.code()),
        stdout: out.text(),
        stderr: err.text(),
    };
    assert!(
        status.is_some(),
        "{cmd:?} did not finish within {timeout:?}: {result:#?}"
    );
    result
}

// ---------------------------------------------------------------------------------------------
// Processes and memory (/proc)

fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut it = after.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Live (not zombie) processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if let Some((state, ppid)) = stat_fields(p) {
                    if ppid == pid && state != 'Z' && state != 'X' {
                        out.push(p);
                    }
                }
            }
        }
    }
    out.sort_unstable();
    out
}

/// The host's worker processes: its live direct children.
pub fn worker_pids(host_pid: u32) -> Vec<u32> {
    children_of(host_pid)
}

/// All live descendants of `pid` (children, grandchildren, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            if seen.insert(c) {
                todo.push(c);
            }
        }
    }
    seen.into_iter().collect()
}

/// Whether `pid` names a live process (a zombie counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    matches!(stat_fields(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim_end()
                .to_string()
        })
        .unwrap_or_default()
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resident memory of `pid` now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of `pid` since it started (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Kills the listed processes (SIGKILL) on drop if they are still alive: a test that
/// expects processes to vanish by themselves holds one so a failure leaks nothing.
pub struct KillOnDrop(pub Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            if pid_alive(*pid) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    libc::kill(*pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
    }
}

/// Polls `cond` every 10 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(timeout, Duration::from_millis(10), cond)
}

/// Polls `cond` every `interval` until it holds (true) or `timeout` passes (false).
pub fn wait_until_every(
    timeout: Duration,
    interval: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(interval);
    }
}

// ---------------------------------------------------------------------------------------------
// Test data

/// Byte `p` of the /download and /upload?pattern=1 stream is `p % 251` (see plainapp.py).
pub const PATTERN_PERIOD: usize = 251;

/// A 64 KiB + 251 buffer of the pattern: bytes `o..o+n` of the stream are
/// `pattern_buf()[o % 251 ..][..n]` for n ≤ 64 KiB.
pub fn pattern_buf() -> Vec<u8> {
    (0..64 * 1024 + PATTERN_PERIOD)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect()
}

/// CRC-32 (IEEE, as Python's zlib.crc32), computed incrementally.
pub struct Crc32 {
    table: [u32; 256],
    value: u32,
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    pub fn new() -> Self {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        Crc32 {
            table,
            value: 0xFFFF_FFFF,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut v = self.value;
        for &b in data {
            v = self.table[((v ^ b as u32) & 0xFF) as usize] ^ (v >> 8);
        }
        self.value = v;
    }

    pub fn finish(&self) -> u32 {
        self.value ^ 0xFFFF_FFFF
    }

    pub fn of(data: &[u8]) -> u32 {
        let mut c = Crc32::new();
        c.update(data);
        c.finish()
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP through ureq

/// A ureq agent that hands back 4xx/5xx responses as values, follows no redirects, and
/// gives up after [`HTTP_TIMEOUT`].
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(HTTP_TIMEOUT))
        .build()
        .new_agent()
}

/// A finished HTTP response, body read completely.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics with the body if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order (e.g. each Set-Cookie).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Sends one request through `agent` and reads the whole response (up to 64 MiB).
pub fn request_with(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, ureq::Error> {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(body.to_vec()).expect("valid request");
    let mut resp = agent.run(req)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()?;
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Sends one request with a fresh agent; panics on transport errors (not on 4xx/5xx).
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    request_with(&agent(), method, url, headers, body)
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

/// GET `url`.
pub fn get(url: &str) -> Resp {
    request("GET", url, &[], b"")
}

/// POST `body` as `content_type` to `url`.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Resp {
    request("POST", url, &[("Content-Type", content_type)], body)
}

/// Percent-encodes a form (application/x-www-form-urlencoded).
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::new();
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The `name=value` part of each Set-Cookie header, joined as a Cookie request header.
pub fn cookie_header(resp: &Resp) -> String {
    resp.header_all("set-cookie")
        .iter()
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over TcpStream

/// A response read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body arrived whole (chunked: the terminating 0-chunk; Content-Length: all bytes).
    pub complete: bool,
    /// It used Transfer-Encoding: chunked.
    pub chunked: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }
}

/// The status line and headers of a response.
#[derive(Debug, Clone)]
pub struct RawHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl RawHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One client connection, for keep-alive sequences and hand-made requests.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr` with a read timeout of [`HTTP_TIMEOUT`].
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// The client's end of the connection (the address the host logs for it).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    /// Changes the read timeout.
    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// Writes raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Writes raw bytes, reporting errors (the server may close while we send).
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Half-closes the write side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads up to and including the blank line ending a response head.
    pub fn read_head(&mut self) -> std::io::Result<RawHead> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap_or("");
                let status = status_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| io_err(format!("bad status line {status_line:?}")))?;
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                return Ok(RawHead { status, headers });
            }
            if self.fill()? == 0 {
                return Err(io_err(format!(
                    "connection closed before a response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                )));
            }
        }
    }

    /// Reads a body framed as `head` says. For HEAD requests pass `head_request = true`.
    /// A body cut short is returned with `complete = false` rather than as an error.
    pub fn read_body(&mut self, head: &RawHead, head_request: bool) -> RawResponse {
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let mut resp = RawResponse {
            status: head.status,
            headers: head.headers.clone(),
            body: Vec::new(),
            complete: true,
            chunked,
        };
        if head_request || head.status / 100 == 1 || head.status == 204 || head.status == 304 {
            return resp;
        }
        if chunked {
            resp.complete = self.read_chunked(&mut resp.body).is_ok();
        } else if let Some(len) = head
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            while self.buf.len() < len {
                match self.fill() {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let n = len.min(self.buf.len());
            resp.body = self.buf.drain(..n).collect();
            resp.complete = n == len;
        } else {
            loop {
                match self.fill() {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        resp.complete = false;
                        break;
                    }
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    fn read_chunked(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        loop {
            let line = self.read_line()?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| io_err(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    if self.read_line()?.is_empty() {
                        return Ok(());
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if self.fill()? == 0 {
                    out.append(&mut self.buf);
                    return Err(io_err("connection closed inside a chunk".into()));
                }
            }
            out.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io_err("connection closed".into()));
            }
        }
    }

    /// Reads whatever arrives until `needle` has been seen (for streaming checks); returns all
    /// bytes read so far without consuming them.
    pub fn peek_until(&mut self, needle: &[u8]) -> std::io::Result<Vec<u8>> {
        while find(&self.buf, needle).is_none() {
            if self.fill()? == 0 {
                return Err(io_err(format!(
                    "closed before {:?}",
                    String::from_utf8_lossy(needle)
                )));
            }
        }
        Ok(self.buf.clone())
    }

    /// Reads a whole response (head + body).
    pub fn read_response(&mut self, head_request: bool) -> RawResponse {
        let head = self
            .read_head()
            .unwrap_or_else(|e| panic!("reading response head: {e}"));
        self.read_body(&head, head_request)
    }

    /// Whether the server has closed the connection (reads EOF within `wait`).
    pub fn is_closed_by_peer(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let r = matches!(self.fill(), Ok(0));
        self.stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
        r
    }
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `request` on a new connection and reads one response.
pub fn raw_request(addr: SocketAddr, request: &[u8], head_request: bool) -> RawResponse {
    let mut c = RawConn::connect(addr);
    c.send(request);
    c.read_response(head_request)
}

/// The status page at `path` as JSON (asserting a 200).
pub fn status_page(host: &Host, path: &str) -> serde_json::Value {
    let r = get(&host.url(path));
    assert_eq!(r.status, 200, "status page: {}", r.text());
    r.json()
}

/// Waits until the status page at `path` satisfies `pred`; panics with the last page if it
/// never does.
pub fn wait_status_page(
    host: &Host,
    path: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut doc = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            doc = status_page(host, path);
            pred(&doc)
        }),
        "{what}: {doc:#}"
    );
    doc
}

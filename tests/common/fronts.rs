//! Real front-end web servers for the recipe tests: Debian's nginx, Apache and lighttpd, each run in
//! the foreground with its own config, pid file and logs in a temp dir on a free loopback
//! port, killed by pid on drop; and the configuration blocks of `docs/*.md`, read from the
//! Markdown itself so that a documented recipe and its test cannot drift apart.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{repo_root, wait_until, Host};

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The address of the host's FastCGI front door, from its `FastCGI front door listening on`
/// log line.
pub fn fastcgi_addr(host: &Host) -> String {
    let log = host.wait_for_log("FastCGI front door listening on ", Duration::from_secs(30));
    parse_fastcgi_addr(&log).unwrap_or_else(|| panic!("no FastCGI address in log:\n{log}"))
}

/// The address in a `FastCGI front door listening on ADDR` line.
pub fn parse_fastcgi_addr(log: &str) -> Option<String> {
    let rest = log.split("FastCGI front door listening on ").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    Some(addr.to_string())
}

// ---------------------------------------------------------------------------------------------
// Blocks of the documentation

/// The text of the first ```` ```lang ```` block after the line starting with `heading` in
/// `docs/<doc>`; panics, naming the doc, when there is none.
pub fn doc_block(doc: &str, heading: &str, lang: &str) -> String {
    let path = repo_root().join("docs").join(doc);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text.lines().skip_while(|l| !l.starts_with(heading));
    assert!(
        lines.next().is_some(),
        "docs/{doc} has no heading {heading:?}"
    );
    let fence = format!("```{lang}");
    let mut lines = lines.skip_while(|l| l.trim_end() != fence);
    assert!(
        lines.next().is_some(),
        "docs/{doc} has no {fence} block after {heading:?}"
    );
    let block: Vec<&str> = lines.take_while(|l| l.trim_end() != "```").collect();
    block.join("\n") + "\n"
}

/// The first line after the line starting with `heading` in `docs/<doc>` that starts with
/// `prefix` (leading blanks ignored), without the prefix.
pub fn doc_line(doc: &str, heading: &str, prefix: &str) -> String {
    let path = repo_root().join("docs").join(doc);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .skip_while(|l| !l.starts_with(heading))
        .find_map(|l| l.trim_start().strip_prefix(prefix))
        .unwrap_or_else(|| panic!("docs/{doc} has no {prefix:?} line after {heading:?}"))
        .to_string()
}

/// `text` with `from` replaced by `to`; panics when `from` is not in it exactly `count`
/// times (the doc changed: the test must be told what to adapt).
pub fn adapt(text: &str, from: &str, to: &str, count: usize) -> String {
    let found = text.matches(from).count();
    assert_eq!(
        found, count,
        "expected {from:?} {count} time(s) in the documented block, found {found}:\n{text}"
    );
    text.replace(from, to)
}

// ---------------------------------------------------------------------------------------------
// A running front-end server

/// A web server started by one of [`Nginx`], [`Apache`], [`Lighttpd`]: one foreground
/// process with its config and logs in `dir`, listening on `127.0.0.1:port`; killed by pid
/// on drop (its logs printed if the test is failing).
pub struct Front {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    name: &'static str,
}

impl Front {
    /// Writes `conf` to `dir/conf_name`, runs `bin args... <conf path>` with stderr to
    /// `dir/stderr.log`, and waits until `port` accepts connections.
    fn launch(
        name: &'static str,
        bin: &str,
        args: &[&str],
        dir: tempfile::TempDir,
        port: u16,
        conf_name: &str,
        conf: &str,
    ) -> Front {
        let conf_path = dir.path().join(conf_name);
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .args(args)
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let mut front = Front {
            child,
            port,
            dir,
            name,
        };
        let up = wait_until(Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                || matches!(front.child.try_wait(), Ok(Some(_)))
        });
        let exited = front.child.try_wait().ok().flatten();
        assert!(
            up && exited.is_none(),
            "{name} did not start (exit: {exited:?}):\n{}",
            front.logs()
        );
        front
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The server's stderr and error log.
    pub fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} logs ---\n{}", self.name, self.logs());
        }
    }
}

/// A temp dir for one server's files.
fn server_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("fcgihost-{name}-"))
        .tempdir()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// nginx

/// The nginx binary: `$FCGIHOST_TEST_NGINX`, else /usr/sbin/nginx, else `nginx` on PATH.
pub fn nginx_bin() -> String {
    installed_bin(
        "FCGIHOST_TEST_NGINX",
        &["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"],
        "nginx",
        "nginx is not installed; run scripts/test (as root it installs Debian's nginx-light) \
         or point FCGIHOST_TEST_NGINX at an nginx binary",
    )
}

fn installed_bin(var: &str, candidates: &[&str], name: &str, missing: &str) -> String {
    if let Ok(bin) = std::env::var(var) {
        return bin;
    }
    if let Some(found) = candidates.iter().find(|c| Path::new(c).exists()) {
        return found.to_string();
    }
    let on_path = Command::new(name)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(on_path, "{missing}");
    name.to_string()
}

/// A foreground nginx (no daemon, no master) with its config, pid, logs and temp files in a
/// temp dir. The dir also holds Debian's `fastcgi_params`, so a documented
/// `include fastcgi_params;` works as written.
pub struct Nginx;

impl Nginx {
    /// Starts nginx with `http(port)` as the body of its `http { }` block (the `server`
    /// must listen on `127.0.0.1:port`) and waits until it accepts connections.
    pub fn start(http: impl FnOnce(u16) -> String) -> Front {
        let dir = server_dir("nginx");
        let d = dir.path().display().to_string();
        for sub in ["client_body", "fastcgi", "proxy", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::copy(
            "/etc/nginx/fastcgi_params",
            dir.path().join("fastcgi_params"),
        )
        .expect("Debian's /etc/nginx/fastcgi_params");
        let port = free_port();
        let body = http(port);
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    fastcgi_temp_path {d}/fastcgi;
    proxy_temp_path {d}/proxy;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_max_body_size 64m;
{body}
}}
"#
        );
        let prefix = d.clone();
        let error_log = format!("{d}/error.log");
        Front::launch(
            "nginx",
            &nginx_bin(),
            &["-p", &prefix, "-e", &error_log, "-c"],
            dir,
            port,
            "nginx.conf",
            &conf,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Apache

/// Debian's Apache binary: `$FCGIHOST_TEST_APACHE`, else /usr/sbin/apache2.
pub fn apache_bin() -> String {
    installed_bin(
        "FCGIHOST_TEST_APACHE",
        &["/usr/sbin/apache2"],
        "apache2",
        "Apache is not installed; run scripts/test (as root it installs Debian's apache2) \
         or point FCGIHOST_TEST_APACHE at an apache2 binary",
    )
}

/// Apache in one foreground process (`-X`) with its own ServerRoot, PidFile and logs in a
/// temp dir.
pub struct Apache;

impl Apache {
    /// Starts Apache with Debian's default modules (`/etc/apache2/mods-enabled`), the
    /// modules `a2enmod` would enable for `modules` (their `# Depends:` first), `Listen
    /// 127.0.0.1:port` and `site(port)`, and waits until it accepts connections.
    pub fn start(modules: &[&str], site: impl FnOnce(u16) -> String) -> Front {
        let dir = server_dir("apache");
        let d = dir.path().display().to_string();
        let mut loads = Vec::new();
        for module in modules {
            add_module(module, &mut loads);
        }
        let loads: String = loads
            .iter()
            .map(|p| format!("Include {}\n", p.display()))
            .collect();
        let port = free_port();
        let site = site(port);
        // As root, Apache serves as www-data (Debian's user); logs are opened before.
        let user = if is_root() {
            "User www-data\nGroup www-data\n"
        } else {
            ""
        };
        let conf = format!(
            r#"ServerRoot {d}
DefaultRuntimeDir {d}
PidFile {d}/apache.pid
ErrorLog {d}/error.log
LogLevel info
ServerName localhost
{user}Include /etc/apache2/mods-enabled/*.load
Include /etc/apache2/mods-enabled/*.conf
{loads}Listen 127.0.0.1:{port}
{site}"#
        );
        Front::launch(
            "Apache",
            &apache_bin(),
            &["-X", "-f"],
            dir,
            port,
            "httpd.conf",
            &conf,
        )
    }
}

/// Whether the tests run as root (Apache then needs a `User` to switch to).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// `mods-available/<module>.load` after the ones its `# Depends:` line names, as a2enmod
/// does; modules Debian enables by default are skipped.
fn add_module(module: &str, loads: &mut Vec<PathBuf>) {
    let available = Path::new("/etc/apache2/mods-available").join(format!("{module}.load"));
    let enabled = Path::new("/etc/apache2/mods-enabled").join(format!("{module}.load"));
    if enabled.exists() || loads.contains(&available) {
        return;
    }
    let text = std::fs::read_to_string(&available)
        .unwrap_or_else(|e| panic!("a2enmod {module}: cannot read {}: {e}", available.display()));
    for line in text.lines() {
        if let Some(deps) = line.strip_prefix("# Depends:") {
            for dep in deps.split_whitespace() {
                add_module(dep, loads);
            }
        }
    }
    loads.push(available);
    let conf = Path::new("/etc/apache2/mods-available").join(format!("{module}.conf"));
    if conf.exists() {
        loads.push(conf);
    }
}

// ---------------------------------------------------------------------------------------------
// lighttpd

/// Debian's lighttpd binary: `$FCGIHOST_TEST_LIGHTTPD`, else /usr/sbin/lighttpd.
pub fn lighttpd_bin() -> String {
    installed_bin(
        "FCGIHOST_TEST_LIGHTTPD",
        &["/usr/sbin/lighttpd"],
        "lighttpd",
        "lighttpd is not installed; run scripts/test (as root it installs Debian's lighttpd) \
         or point FCGIHOST_TEST_LIGHTTPD at a lighttpd binary",
    )
}

/// lighttpd in the foreground (`-D`) with its config, pid file, error log and upload dir
/// in a temp dir, bound to 127.0.0.1 on a free port.
pub struct Lighttpd;

impl Lighttpd {
    /// Starts lighttpd with `site` after its server settings, and waits until it accepts
    /// connections.
    pub fn start(site: &str) -> Front {
        let dir = server_dir("lighttpd");
        let d = dir.path().display().to_string();
        let port = free_port();
        let conf = format!(
            r#"server.document-root = "{d}"
server.bind = "127.0.0.1"
server.port = {port}
server.pid-file = "{d}/lighttpd.pid"
server.errorlog = "{d}/error.log"
server.upload-dirs = ( "{d}" )
{site}"#
        );
        Front::launch(
            "lighttpd",
            &lighttpd_bin(),
            &["-D", "-f"],
            dir,
            port,
            "lighttpd.conf",
            &conf,
        )
    }
}

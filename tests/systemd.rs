//! systemd integration (issue 13) with systemd's own test launcher: `systemd-socket-activate`
//! binds the HTTP port and a FastCGI Unix socket, names them (`--fdname=http:fastcgi`, as
//! `FileDescriptorName=` in docs/fcgihost.socket) and execs the real binary on the first
//! connection; the test binds the notify socket itself and reads what a `Type=notify`
//! service tells systemd: READY=1 once a worker is ready, RELOADING=1 then READY=1 around
//! SIGHUP, STOPPING=1 at the drain, STATUS= with busy/total workers.
// Unix only: socket activation and sd_notify are Unix interfaces.
#![cfg(unix)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use fcgihost::gateway::fcgi::{self, ParamsWriter, RecordDecoder, RecordType, Role};

const T: Duration = Duration::from_secs(30);
const LAUNCHER: &str = "/usr/bin/systemd-socket-activate";

/// The launcher and the host it became (same pid: it execs), killed with its workers on drop.
struct Activated {
    child: Child,
    log: std::sync::Arc<Captured>,
}

impl Drop for Activated {
    fn drop(&mut self) {
        for pid in descendants(self.child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log ---\n{}", self.log.text());
        }
    }
}

/// Reads notify datagrams until one contains `line`; returns all read on the way.
fn notified_until(socket: &UnixDatagram, line: &str) -> Vec<String> {
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = msg.lines().any(|l| l == line);
                seen.push(msg);
                if done {
                    return seen;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {line:?} from the host within {T:?}; got {seen:?}");
}

/// `GET path` over a fresh connection; (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let r = get(&format!("http://127.0.0.1:{port}{path}"));
    (r.status, r.text())
}

/// One FastCGI request for `path` over the Unix socket; the CGI response as text.
fn fastcgi_get(socket: &Path, path: &str) -> String {
    let mut stream = UnixStream::connect(socket).expect("connect to the FastCGI socket");
    stream.set_read_timeout(Some(T)).unwrap();
    let mut out = BytesMut::new();
    fcgi::put_begin_request(&mut out, 1, Role::Responder, false);
    {
        let mut params = ParamsWriter::new(&mut out, 1);
        for (k, v) in [
            ("REQUEST_METHOD", "GET"),
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", path),
            ("REQUEST_URI", path),
            ("QUERY_STRING", ""),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", "80"),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "127.0.0.1"),
        ] {
            params.push(k.as_bytes(), v.as_bytes());
        }
        params.finish();
    }
    fcgi::put_stream(&mut out, RecordType::Stdin, 1, &[]);
    stream.write_all(&out).unwrap();
    let mut decoder = RecordDecoder::default();
    let mut buf = BytesMut::new();
    let mut stdout = Vec::new();
    loop {
        while let Some(record) = decoder.decode(&mut buf).expect("valid FastCGI") {
            match record.kind {
                RecordType::Stdout => stdout.extend_from_slice(&record.content),
                RecordType::EndRequest => return String::from_utf8_lossy(&stdout).into_owned(),
                _ => {}
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).expect("read FastCGI response");
        assert!(n > 0, "the FastCGI socket closed before END_REQUEST");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn socket_activation_by_name_and_sd_notify_around_start_reload_and_stop() {
    assert!(
        Path::new(LAUNCHER).exists(),
        "{LAUNCHER} is missing: scripts/test installs Debian's systemd package"
    );
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let fastcgi_path = dir.path().join("fcgi.sock");
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    // systemd-socket-activate binds the port itself; a free one is found the usual way.
    let port = common::fronts::free_port();

    let mut cmd = Command::new(LAUNCHER);
    cmd.arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--listen={}", fastcgi_path.display()))
        .arg("--fdname=http:fastcgi")
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(format!(
            "--setenv=TMPDIR={}",
            dir.path().join("tmp").display()
        ))
        .arg("--setenv=NO_COLOR=1")
        .arg(bin())
        .args(["serve", "faultapp:app", "-w", "2", "--python"])
        .arg(python())
        .arg("--chdir")
        .arg(app_dir("faults"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FCGIHOST_") {
            cmd.env_remove(&key);
        }
    }
    let mut child = cmd.spawn().expect("start systemd-socket-activate");
    let log = Captured::new(2);
    log.attach(child.stderr.take().unwrap());
    log.attach(child.stdout.take().unwrap());
    let host = Activated { child, log };
    host.log
        .wait(T, |t| t.contains(&format!("Listening on 127.0.0.1:{port}")))
        .expect("the launcher did not bind the port");

    // The launcher execs fcgihost on the first connection; this request waits in the
    // backlog meanwhile and is answered by the host.
    let mut first = TcpStream::connect(("127.0.0.1", port)).unwrap();
    first.set_read_timeout(Some(T)).unwrap();
    write!(
        first,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let started = notified_until(&notify, "READY=1");
    // READY=1 comes once a worker is ready: health agrees at once.
    let (status, body) = http_get(port, "/_fcgihost/health");
    assert_eq!(status, 200, "health right after READY=1: {body}");
    let ready_msg = started.last().unwrap();
    assert!(
        ready_msg
            .lines()
            // The request sent before READY=1 may already be running: 0 or 1 busy.
            .any(|l| l.starts_with("STATUS=0/2 workers busy")
                || l.starts_with("STATUS=1/2 workers busy")),
        "READY=1 without a busy/total STATUS line: {ready_msg:?}"
    );
    let mut answer = String::new();
    first.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    let text = host.log.text();
    assert!(
        text.contains(&format!(
            "fcgihost listening on http://127.0.0.1:{port} (socket activation)"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "FastCGI front door listening on unix:{} (socket activation)",
            fastcgi_path.display()
        )),
        "{text}"
    );
    let cgi = fastcgi_get(&fastcgi_path, "/");
    assert!(cgi.starts_with("Status: 200"), "{cgi}");
    assert!(cgi.ends_with("ok"), "{cgi}");

    // Workers inherit neither the notify socket nor the activation variables.
    let (_, env) = http_get(
        port,
        "/env?names=NOTIFY_SOCKET,LISTEN_FDS,LISTEN_PID,LISTEN_FDNAMES",
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&env).unwrap()["present"],
        serde_json::json!([]),
        "{env}"
    );

    let pid = host.child.id() as libc::pid_t;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let reload = notified_until(&notify, "READY=1");
    let reloading = reload
        .iter()
        .position(|m| m.lines().next() == Some("RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1 before READY=1: {reload:?}"));
    assert!(
        reload[reloading]
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reload:?}"
    );
    assert!(reloading < reload.len() - 1, "{reload:?}");

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stopping = notified_until(&notify, "STOPPING=1");
    assert!(
        stopping.last().unwrap().contains("STATUS=draining"),
        "{stopping:?}"
    );
    let mut host = host;
    let status = host.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", host.log.text());
}

#[test]
fn the_documented_unit_and_socket_files_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for name in [
        "fcgihost.service",
        "fcgihost.socket",
        "fcgihost-fastcgi.socket",
    ] {
        let text = std::fs::read_to_string(repo_root().join("docs/deploy").join(name)).unwrap();
        assert!(
            name != "fcgihost.service" || text.contains("Type=notify"),
            "{name} is not Type=notify"
        );
        // The unit names the installed binary; verify checks that it exists.
        let text = text.replace("/usr/local/bin/fcgihost", bin());
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        units.push(path);
    }
    let out = Command::new("/usr/bin/systemd-analyze")
        .arg("verify")
        .args(&units)
        .current_dir(dir.path())
        .output()
        .expect("run systemd-analyze (Debian's systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    let about_ours: Vec<&str> = stderr.lines().filter(|l| l.contains("fcgihost")).collect();
    assert!(
        about_ours.is_empty(),
        "systemd-analyze complained:\n{stderr}"
    );
}

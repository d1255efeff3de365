//! systemd integration: the readiness protocol of `Type=notify` services (`sd_notify`:
//! `READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=…` as datagrams to `$NOTIFY_SOCKET`) and
//! socket activation (`$LISTEN_FDS`, `$LISTEN_PID`, `$LISTEN_FDNAMES`: listening sockets
//! handed over from descriptor 3 on, named by the socket unit's `FileDescriptorName=`).
//!
//! Both are small, stable interfaces (systemd's `sd_notify(3)` and `sd_listen_fds(3)`): one
//! `sendto` of a text datagram and three environment variables. They are written here over
//! `std`'s Unix sockets instead of adding a crate for about a hundred lines; everything is a
//! no-op where systemd did not set the variables, and on Windows.
//!
//! [`init_from_env`] must run while the process has one thread (`main` calls it first): it
//! takes the variables out of the environment, so workers never inherit them (a worker that
//! saw `NOTIFY_SOCKET` could tell systemd the service is ready or stopping).

use std::sync::{Mutex, OnceLock};

#[cfg(unix)]
use std::os::fd::OwnedFd;

/// The socket name (`FileDescriptorName=`) of the HTTP listener.
pub const HTTP_NAME: &str = "http";
/// The socket name of the FastCGI listener.
pub const FASTCGI_NAME: &str = "fastcgi";

/// What systemd handed this process.
#[derive(Default)]
struct Handed {
    /// `$NOTIFY_SOCKET`.
    notify_socket: Option<String>,
    /// The listening sockets from socket activation, with their names (`""` = unnamed).
    #[cfg(unix)]
    listeners: Vec<(String, OwnedFd)>,
}

static HANDED: OnceLock<Mutex<Handed>> = OnceLock::new();

/// Takes `NOTIFY_SOCKET` and the socket-activation variables out of the environment and
/// keeps what they name. Call once, first thing in `main` (one thread, nothing reading the
/// environment at the same time).
pub fn init_from_env() {
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut handed = Handed {
        notify_socket: std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|s| !s.is_empty()),
        ..Handed::default()
    };
    #[cfg(unix)]
    {
        handed.listeners = take_listen_fds();
    }
    for var in [
        "NOTIFY_SOCKET",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
    ] {
        std::env::remove_var(var);
    }
    let _ = HANDED.set(Mutex::new(handed));
}

/// The socket-activated listeners, once (later calls get none): name and descriptor.
#[cfg(unix)]
pub fn take_listeners() -> Vec<(String, OwnedFd)> {
    HANDED
        .get()
        .and_then(|h| h.lock().ok().map(|mut h| std::mem::take(&mut h.listeners)))
        .unwrap_or_default()
}

/// Whether systemd asked for notifications (`NOTIFY_SOCKET` was set).
pub fn enabled() -> bool {
    HANDED
        .get()
        .and_then(|h| h.lock().ok().map(|h| h.notify_socket.is_some()))
        .unwrap_or(false)
}

/// Sends `state` (`READY=1`, `STATUS=…`, several lines allowed) to systemd when it asked
/// for notifications; does nothing otherwise. Failures are logged at debug level only: a
/// service manager that went away must not stop the host.
pub fn notify(state: &str) {
    let Some(socket) = HANDED
        .get()
        .and_then(|h| h.lock().ok().and_then(|h| h.notify_socket.clone()))
    else {
        return;
    };
    #[cfg(unix)]
    if let Err(err) = send(&socket, state) {
        tracing::debug!(socket, error = %err, "cannot notify systemd");
    }
    #[cfg(not(unix))]
    let _ = (socket, state);
}

/// `RELOADING=1` with the `MONOTONIC_USEC` that systemd 253+ (`Type=notify-reload`) wants.
pub fn reloading_message() -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec())
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_usec() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the struct passed to it.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0 {
            return (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000;
        }
    }
    0
}

/// One datagram to the notify socket: a path, or `@name` in the abstract namespace.
#[cfg(unix)]
fn send(socket: &str, state: &str) -> std::io::Result<()> {
    let datagram = std::os::unix::net::UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(name) => {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            datagram.send_to_addr(state.as_bytes(), &addr)?;
        }
        _ => {
            datagram.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

/// First descriptor of socket activation (`SD_LISTEN_FDS_START`).
#[cfg(unix)]
const LISTEN_FDS_START: i32 = 3;

/// Most descriptors taken from `LISTEN_FDS` (a guard against a garbage value).
#[cfg(unix)]
const MAX_LISTEN_FDS: i32 = 64;

/// The descriptors of socket activation when `LISTEN_PID` is this process, each marked
/// close-on-exec (workers must not inherit them) and paired with its name.
#[cfg(unix)]
fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    use std::os::fd::FromRawFd;

    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if !for_us || count <= 0 {
        return Vec::new();
    }
    let names = parse_names(
        std::env::var("LISTEN_FDNAMES").ok().as_deref(),
        count.min(MAX_LISTEN_FDS) as usize,
    );
    names
        .into_iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let fd = LISTEN_FDS_START + i as i32;
            // SAFETY: F_SETFD on a descriptor number touches no memory; it fails with
            // EBADF when the descriptor is not open.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
                return None;
            }
            // SAFETY: systemd passed descriptors 3..3+LISTEN_FDS to this process (LISTEN_PID
            // says so) for it to own; nothing else in the process uses them.
            Some((name, unsafe { OwnedFd::from_raw_fd(fd) }))
        })
        .collect()
}

/// The names of `count` descriptors from `LISTEN_FDNAMES` (`:`-separated); missing ones
/// and systemd's placeholder `unknown` are `""`.
#[cfg(unix)]
fn parse_names(names: Option<&str>, count: usize) -> Vec<String> {
    let mut given = names.unwrap_or("").split(':');
    (0..count)
        .map(|_| match given.next() {
            Some("unknown") | None => String::new(),
            Some(name) => name.to_string(),
        })
        .collect()
}

/// Which listener each handed-over socket becomes: the one named `http` (else the first
/// unnamed one) serves HTTP; those named `fastcgi` (and further unnamed ones) serve
/// FastCGI. Returns (index of the HTTP socket, indexes of FastCGI sockets, indexes with a
/// name fcgihost does not know).
pub fn assign(names: &[&str]) -> (Option<usize>, Vec<usize>, Vec<usize>) {
    let mut http = names.iter().position(|n| *n == HTTP_NAME);
    let mut fastcgi = Vec::new();
    let mut unknown = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match *name {
            HTTP_NAME => {}
            FASTCGI_NAME => fastcgi.push(i),
            "" if http.is_none() => http = Some(i),
            "" => fastcgi.push(i),
            _ => unknown.push(i),
        }
    }
    (http, fastcgi, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn names_pad_and_drop_the_unknown_placeholder() {
        assert_eq!(parse_names(Some("http:fastcgi"), 2), ["http", "fastcgi"]);
        assert_eq!(parse_names(Some("unknown"), 2), ["", ""]);
        assert_eq!(parse_names(None, 1), [""]);
    }

    #[test]
    fn named_sockets_go_by_name_unnamed_ones_by_order() {
        assert_eq!(assign(&["fastcgi", "http"]), (Some(1), vec![0], Vec::new()));
        assert_eq!(assign(&["", ""]), (Some(0), vec![1], Vec::new()));
        assert_eq!(assign(&["fastcgi"]), (None, vec![0], Vec::new()));
        assert_eq!(assign(&["metrics", "http"]), (Some(1), vec![], vec![0]));
    }

    #[test]
    fn reloading_carries_a_monotonic_timestamp() {
        let msg = reloading_message();
        let usec: u64 = msg
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|n| n.parse().ok())
            .expect("RELOADING=1 then MONOTONIC_USEC=<n>");
        assert!(usec > 0);
    }
}

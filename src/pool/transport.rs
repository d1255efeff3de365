//! The two channels between the host and one worker process, per platform: the FastCGI
//! data connection and the JSON-lines control channel. Everything above this module sees
//! [`WorkerAddr`], [`ReadHalf`] and [`WriteHalf`] only.
//!
//! * Unix: the worker inherits a listening Unix socket on fd 0 (FastCGI's
//!   FCGI_LISTENSOCK_FILENO), bound in the host's private runtime directory, and one end of
//!   a socketpair on fd 3 as its control channel (`FCGIHOST_CONTROL_FD=3`).
//! * Windows (no descriptor passing): loopback TCP. The host listens on `127.0.0.1:0` and
//!   passes that address as `FCGIHOST_CONTROL_ADDR` with a random `FCGIHOST_CONTROL_TOKEN`.
//!   The worker connects there and sends the token as its first line (that connection is
//!   the control channel), binds its own FastCGI listener on `127.0.0.1:0` and reports it
//!   as `{"event":"listening","port":N}`, before anything else. Every FastCGI connection the
//!   host opens starts with the same token line, so other local users cannot talk to the
//!   worker. A custom `worker.command` must do the same on Windows.
//!
//! The whole protocol, for both platforms, is docs/worker-protocol.md.

#[cfg(unix)]
pub use self::unix::*;
#[cfg(windows)]
pub use self::windows::*;

/// The host's half of a control line read: the worker's JSON events, buffered.
pub type ControlRead = tokio::io::BufReader<ReadHalf>;

/// The channels of a started worker, once it is reachable.
pub struct Established {
    /// Where the host opens FastCGI connections to it.
    pub addr: WorkerAddr,
    /// Its control channel (None for a custom Unix `worker.command`, which has none).
    pub control: Option<(ControlRead, WriteHalf)>,
}

#[cfg(unix)]
mod unix {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::process::Stdio;

    use tokio::io::BufReader;
    use tokio::process::{Child, Command};

    use super::Established;

    /// The read half of a connection to a worker.
    pub type ReadHalf = tokio::net::unix::OwnedReadHalf;
    /// The write half of a connection to a worker.
    pub type WriteHalf = tokio::net::unix::OwnedWriteHalf;

    /// A worker's FastCGI listening socket (a path in the runtime directory).
    #[derive(Debug, Clone)]
    pub struct WorkerAddr(PathBuf);

    impl WorkerAddr {
        /// Opens a FastCGI connection. The socket listens from before the worker starts,
        /// so this succeeds at once even while the app is still importing.
        pub fn connect(&self) -> std::io::Result<(ReadHalf, WriteHalf)> {
            let stream = UnixStream::connect(&self.0)?;
            stream.set_nonblocking(true)?;
            Ok(tokio::net::UnixStream::from_std(stream)?.into_split())
        }

        /// Removes the socket file once its worker is gone.
        pub fn release(&self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The channels of a worker being started: bound before the spawn, handed over after.
    pub struct Pending {
        addr: WorkerAddr,
        host_end: UnixStream,
        worker_end: UnixStream,
        speaks_control: bool,
    }

    /// Binds the worker's listening socket at `socket_path`, makes the control socketpair,
    /// and sets up `cmd` to receive them on fd 0 and fd 3.
    pub fn prepare(
        cmd: &mut Command,
        socket_path: PathBuf,
        speaks_control: bool,
    ) -> std::io::Result<Pending> {
        let _ = std::fs::remove_file(&socket_path);
        let listener = UnixListener::bind(&socket_path)?;
        let (host_end, worker_end) = UnixStream::pair()?;
        cmd.stdin(Stdio::from(OwnedFd::from(listener)));
        if speaks_control {
            cmd.env("FCGIHOST_CONTROL_FD", "3");
        }
        let control_fd = worker_end.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls dup2,
        // which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(control_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Pending {
            addr: WorkerAddr(socket_path),
            host_end,
            worker_end,
            speaks_control,
        })
    }

    impl Pending {
        /// Closes the worker's ends in the host and wraps the host's control end.
        pub async fn establish(self, _child: &mut Child) -> std::io::Result<Established> {
            drop(self.worker_end);
            self.host_end.set_nonblocking(true)?;
            let control = if self.speaks_control {
                let (read, write) = tokio::net::UnixStream::from_std(self.host_end)?.into_split();
                Some((BufReader::new(read), write))
            } else {
                None
            };
            Ok(Established {
                addr: self.addr,
                control,
            })
        }
    }
}

#[cfg(windows)]
mod windows {
    use std::io::Write;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::sync::Arc;
    use std::time::Duration;

    use serde::Deserialize;
    use subtle::ConstantTimeEq;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::process::{Child, Command};

    use super::{ControlRead, Established};

    /// The read half of a connection to a worker.
    pub type ReadHalf = tokio::net::tcp::OwnedReadHalf;
    /// The write half of a connection to a worker.
    pub type WriteHalf = tokio::net::tcp::OwnedWriteHalf;

    /// How long a started worker may take to connect its control channel and report its
    /// FastCGI port (Python's own start-up; the app is imported afterwards).
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

    /// How long one connection to the control listener may take to present the token.
    const TOKEN_TIMEOUT: Duration = Duration::from_secs(5);

    /// A worker's FastCGI listener on loopback, and the token every connection presents.
    #[derive(Debug, Clone)]
    pub struct WorkerAddr {
        addr: SocketAddr,
        token: Arc<str>,
    }

    impl WorkerAddr {
        /// Opens a FastCGI connection and presents the token (a loopback connect is
        /// answered by the kernel's backlog, so this does not wait for the worker).
        pub fn connect(&self) -> std::io::Result<(ReadHalf, WriteHalf)> {
            let mut stream = std::net::TcpStream::connect(self.addr)?;
            stream.set_nodelay(true)?;
            stream.write_all(format!("{}\n", self.token).as_bytes())?;
            stream.set_nonblocking(true)?;
            Ok(tokio::net::TcpStream::from_std(stream)?.into_split())
        }

        /// Nothing to clean up: the port closes with its worker.
        pub fn release(&self) {}
    }

    /// The control listener of a worker being started.
    pub struct Pending {
        listener: TcpListener,
        token: Arc<str>,
    }

    /// Listens for the worker's control connection on a loopback port and passes its
    /// address and a fresh token to `cmd`. `socket_path` is not used on Windows.
    pub fn prepare(
        cmd: &mut Command,
        _socket_path: PathBuf,
        _speaks_control: bool,
    ) -> std::io::Result<Pending> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let token: Arc<str> = new_token()?.into();
        cmd.stdin(Stdio::null())
            .env("FCGIHOST_CONTROL_ADDR", address.to_string())
            .env("FCGIHOST_CONTROL_TOKEN", &*token);
        Ok(Pending {
            listener: TcpListener::from_std(listener)?,
            token,
        })
    }

    /// The worker's first control event.
    #[derive(Deserialize)]
    struct Listening {
        event: String,
        port: u16,
    }

    impl Pending {
        /// Waits until the worker has connected its control channel and reported its
        /// FastCGI port; fails when it exits or takes longer than [`HANDSHAKE_TIMEOUT`].
        pub async fn establish(self, child: &mut Child) -> std::io::Result<Established> {
            tokio::select! {
                done = self.handshake() => done,
                status = child.wait() => Err(std::io::Error::other(format!(
                    "the worker exited before it connected to the host ({})",
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string())
                ))),
                () = tokio::time::sleep(HANDSHAKE_TIMEOUT) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the worker did not connect to the host in time",
                )),
            }
        }

        async fn handshake(&self) -> std::io::Result<Established> {
            let (mut read, write) = loop {
                let (stream, _) = self.listener.accept().await?;
                let (read, write) = stream.into_split();
                let mut read = BufReader::new(read);
                let presented = tokio::time::timeout(TOKEN_TIMEOUT, first_line(&mut read)).await;
                if let Ok(Ok(line)) = presented {
                    if bool::from(line.as_bytes().ct_eq(self.token.as_bytes())) {
                        break (read, write);
                    }
                }
                tracing::warn!("a local connection to a worker's control port did not present the token; closed");
            };
            let mut line = String::new();
            read.read_line(&mut line).await?;
            let listening: Listening = serde_json::from_str(&line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the worker's first control message is not `listening`: {e}"),
                )
            })?;
            if listening.event != "listening" {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the worker's first control event is {:?}, not \"listening\"",
                        listening.event
                    ),
                ));
            }
            Ok(Established {
                addr: WorkerAddr {
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, listening.port)),
                    token: self.token.clone(),
                },
                control: Some((read, write)),
            })
        }
    }

    /// The first line of a connection without its newline (at most 256 bytes).
    async fn first_line(read: &mut ControlRead) -> std::io::Result<String> {
        let mut line = String::new();
        read.take(256).read_line(&mut line).await?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }

    /// 32 hex digits from the system's random source (rustls' ring provider, which the
    /// crate already links).
    fn new_token() -> std::io::Result<String> {
        let mut bytes = [0u8; 16];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| std::io::Error::other("the system random source failed"))?;
        Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

//! The FastCGI front door: fcgihost as a FastCGI *application* for nginx (`fastcgi_pass`),
//! Apache `mod_proxy_fcgi` or lighttpd, on `fastcgi_listen` (TCP or a Unix socket) or on the
//! listening socket the FastCGI standard passes as stdin (`FCGI_LISTENSOCK_FILENO`). Each
//! responder request runs on the same worker pool, request clock and debugger pause
//! tracking as HTTP requests ([`Front::dispatch`]).
//!
//! The web server's parameters go to the worker as they came, except what fcgihost owns:
//! `SCRIPT_NAME`/`PATH_INFO` (the server's `SCRIPT_NAME` + `PATH_INFO` is the full path, as in
//! wfastcgi, and `script_name` is split off it), `X-Original-URL` and the proxy headers of
//! [`crate::gateway::forwarded`] when `REMOTE_ADDR` is a trusted proxy, and `HTTP_PROXY`
//! (dropped, httpoxy). The request body is streamed from STDIN records into the worker and
//! the response streamed back as STDOUT records (a CGI head the web server parses), without
//! buffering either.
//!
//! Protocol: several requests may share a connection (`FCGI_MPXS_CONNS=1`), answered in any
//! order; `FCGI_KEEP_CONN` is honoured; `FCGI_GET_VALUES` is answered; `FCGI_ABORT_REQUEST`
//! (or the connection closing) stops the request, which aborts it on its worker too. A
//! response the app breaks off mid-body closes the connection when no other request shares
//! it (the web server then cuts the client's response, as the HTTP door does), else ends the
//! request with a non-zero application status.
//!
//! tokio-fastcgi 1.3 was not used: it reads a request's whole STDIN into memory before the
//! handler runs (no streaming of uploads), its output path panics when two multiplexed
//! requests write at once (`try_lock().expect`), and it cannot abort a request whose handler
//! is running. The crate's own codec ([`crate::gateway::fcgi`]) does the framing instead.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use percent_encoding::percent_decode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::framing;
use super::http::Front;
use super::ResponseBody;
use crate::config::FastcgiListen;
use crate::gateway::cgi;
use crate::gateway::fcgi::{
    self, BeginRequest, FcgiError, NameValue, NameValues, ParamsWriter, ProtocolStatus, Record,
    RecordDecoder, RecordType, Role, HEADER_LEN, MAX_CONTENT, NULL_REQUEST_ID,
};
use crate::gateway::forwarded::ProxyHeaders;
use crate::pages;
use crate::pool::exchange::{RequestMeta, REQUEST_ID};

/// Largest PARAMS stream accepted for one request (nginx sends a few KiB).
const MAX_PARAMS: usize = 1024 * 1024;
/// STDIN records buffered per request before the connection's reader waits for the worker.
const STDIN_QUEUE: usize = 8;
/// Output messages (whole records) buffered per connection before request tasks wait.
const OUT_QUEUE: usize = 32;
/// Response headers a CGI head must not carry (the web server frames the response).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// What the FastCGI door tells a web server that asks (`FCGI_GET_VALUES`).
#[derive(Debug, Clone, Copy)]
pub struct FastcgiOptions {
    /// `FCGI_MAX_CONNS`: connections the door accepts at once.
    pub max_conns: usize,
    /// `FCGI_MAX_REQS`: requests it takes at once (workers plus the queue).
    pub max_reqs: usize,
}

/// A bound FastCGI listener.
pub enum Listener {
    /// `fastcgi_listen = "IP:PORT"`, or a TCP socket on stdin.
    Tcp(TcpListener),
    /// The named pipe IIS's FastCGI module passes as stdin (Windows).
    #[cfg(windows)]
    Pipe(super::iis_pipe::IisPipe),
    /// `fastcgi_listen = "unix:PATH"`, or a Unix socket on stdin.
    #[cfg(unix)]
    Unix {
        /// The socket.
        listener: tokio::net::UnixListener,
        /// The socket file to remove on shutdown (only one fcgihost created).
        remove: Option<std::path::PathBuf>,
    },
}

/// One accepted connection.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Listener {
    /// Binds `fastcgi_listen` and logs `FastCGI front door listening on ADDR` (the bound
    /// port, also for port 0; `unix:PATH` for a socket path).
    pub async fn bind(addr: &FastcgiListen) -> Result<Listener, crate::Error> {
        let bind_err = |source| crate::Error::Bind {
            addr: addr.to_string(),
            source,
        };
        match addr {
            FastcgiListen::Tcp(tcp) => {
                let listener = TcpListener::bind(tcp).await.map_err(bind_err)?;
                let bound = listener.local_addr()?;
                tracing::info!("FastCGI front door listening on {bound}");
                Ok(Listener::Tcp(listener))
            }
            #[cfg(unix)]
            FastcgiListen::Unix(path) => {
                remove_stale_socket(path).map_err(bind_err)?;
                let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
                tracing::info!("FastCGI front door listening on unix:{}", path.display());
                Ok(Listener::Unix {
                    listener,
                    remove: Some(path.clone()),
                })
            }
            #[cfg(not(unix))]
            FastcgiListen::Unix(_) => Err(bind_err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Unix sockets need a Unix system; use IP:PORT",
            ))),
        }
    }

    /// The FastCGI standard's way to start an application: a listening socket as stdin
    /// (`FCGI_LISTENSOCK_FILENO`, as spawn-fcgi, lighttpd, Apache mod_fcgid and supervisors
    /// pass it). Takes it over (stdin becomes /dev/null) and logs where it listens; `None`
    /// when stdin is not a listening socket.
    #[cfg(unix)]
    pub fn from_stdin() -> io::Result<Option<Listener>> {
        use std::os::fd::{FromRawFd, OwnedFd};

        let mut listening: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `listening`, a c_int we own; on
        // a descriptor that is not a socket it fails with ENOTSOCK and writes nothing.
        let rc = unsafe {
            libc::getsockopt(
                0,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut listening as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 || listening == 0 {
            return Ok(None);
        }
        // SAFETY: F_DUPFD_CLOEXEC on descriptor 0 (a socket, checked above) returns a new
        // descriptor or -1; it touches no memory.
        let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created by fcntl and is owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        release_stdin();
        Self::from_listening(owned, "the listening socket on stdin")
    }

    /// Takes over a listening socket someone else made (`origin` says who, for the log):
    /// stdin's, or one systemd handed over by socket activation. `None` for a socket
    /// family other than TCP or Unix.
    #[cfg(unix)]
    pub fn from_listening(
        owned: std::os::fd::OwnedFd,
        origin: &str,
    ) -> io::Result<Option<Listener>> {
        use std::os::fd::AsRawFd;

        // SAFETY: sockaddr_storage is plain data for which all-zero bytes are valid.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut addr_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: getsockname writes at most `addr_len` bytes into `addr`, which we own.
        let rc = unsafe {
            libc::getsockname(
                owned.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_storage).cast(),
                &mut addr_len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        match libc::c_int::from(addr.ss_family) {
            libc::AF_UNIX => {
                let std_listener = std::os::unix::net::UnixListener::from(owned);
                std_listener.set_nonblocking(true)?;
                let shown = std_listener
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                    .unwrap_or_else(|| "unix:(unnamed)".into());
                let listener = tokio::net::UnixListener::from_std(std_listener)?;
                tracing::info!("FastCGI front door listening on {shown} ({origin})");
                Ok(Some(Listener::Unix {
                    listener,
                    remove: None,
                }))
            }
            libc::AF_INET | libc::AF_INET6 => {
                let std_listener = std::net::TcpListener::from(owned);
                std_listener.set_nonblocking(true)?;
                let listener = TcpListener::from_std(std_listener)?;
                let bound = listener.local_addr()?;
                tracing::info!("FastCGI front door listening on {bound} ({origin})");
                Ok(Some(Listener::Tcp(listener)))
            }
            family => {
                tracing::warn!(
                    family,
                    "{origin}: a listening socket of an unsupported family; ignoring it"
                );
                Ok(None)
            }
        }
    }

    /// On Windows the FastCGI way to start an application is IIS's: a named pipe's server
    /// end as stdin ([`super::iis_pipe`]). `None` when stdin is something else.
    #[cfg(windows)]
    pub fn from_stdin() -> io::Result<Option<Listener>> {
        Ok(super::iis_pipe::IisPipe::from_stdin()?.map(Listener::Pipe))
    }

    /// Neither Unix nor Windows: stdin is never a FastCGI listener.
    #[cfg(not(any(unix, windows)))]
    pub fn from_stdin() -> io::Result<Option<Listener>> {
        Ok(None)
    }

    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok(Accepted::Tcp(stream, peer))
            }
            #[cfg(unix)]
            Listener::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok(Accepted::Unix(stream))
            }
            #[cfg(windows)]
            Listener::Pipe(_) => Err(io::Error::other(
                "the IIS pipe takes one connection at a time (iis_pipe::run)",
            )),
        }
    }

    /// Removes the socket file fcgihost created.
    fn cleanup(self) {
        #[cfg(unix)]
        if let Listener::Unix {
            listener,
            remove: Some(path),
        } = self
        {
            drop(listener);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a socket file left behind by an earlier run; refuses when something still
/// listens on it (another fcgihost) or the path is not a socket.
#[cfg(unix)]
fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on this socket",
        ));
    }
    std::fs::remove_file(path)
}

/// Points descriptor 0 at /dev/null once the listening socket has been taken over, so no
/// child process inherits it.
#[cfg(unix)]
fn release_stdin() {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::File::open("/dev/null") {
        // SAFETY: dup2 onto descriptor 0 with a valid descriptor; no memory is involved.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
        }
    }
}

/// Accepts FastCGI connections until `shutdown` turns true, then lets open connections
/// finish their requests (up to `grace`).
pub async fn run(
    listener: Listener,
    front: Arc<Front>,
    options: FastcgiOptions,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    #[cfg(windows)]
    let listener = match listener {
        Listener::Pipe(pipe) => {
            return super::iis_pipe::run(pipe, front, options, shutdown, grace).await
        }
        other => other,
    };
    let (open, mut closed) = mpsc::channel::<()>(1);
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
        };
        let peer = match &accepted {
            Ok(Accepted::Tcp(stream, peer)) => {
                let _ = stream.set_nodelay(true);
                Some(*peer)
            }
            #[cfg(unix)]
            Ok(Accepted::Unix(_)) => None,
            Err(err) => {
                tracing::warn!(error = %err, "FastCGI accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = Conn::new(
            front.clone(),
            options,
            peer,
            PathFrom::ScriptNameAndPathInfo,
        );
        let open = open.clone();
        let stop = shutdown.clone();
        match accepted {
            Ok(Accepted::Tcp(stream, _)) => {
                let (read, write) = stream.into_split();
                tokio::spawn(async move {
                    serve_conn(conn, read, write, stop).await;
                    drop(open);
                });
            }
            #[cfg(unix)]
            Ok(Accepted::Unix(stream)) => {
                let (read, write) = stream.into_split();
                tokio::spawn(async move {
                    serve_conn(conn, read, write, stop).await;
                    drop(open);
                });
            }
            Err(_) => {}
        }
    }
    listener.cleanup();
    drop(open);
    if tokio::time::timeout(grace, closed.recv()).await.is_err() {
        tracing::warn!("FastCGI connections still open after graceful_timeout");
    }
}

/// What a request task hands the connection's writer.
enum Out {
    /// Whole records, written as they are.
    Records(Bytes),
    /// Close the connection after what was queued before.
    Close,
}

/// Where one request id of a connection stands.
enum SlotState {
    /// BEGIN_REQUEST seen; PARAMS arriving.
    Params(BytesMut),
    /// Running; STDIN records go to the request's body.
    Stdin {
        tx: mpsc::Sender<Bytes>,
        abort: Option<oneshot::Sender<()>>,
    },
    /// Running; STDIN complete.
    Running { abort: Option<oneshot::Sender<()>> },
}

struct Slot {
    keep_conn: bool,
    state: SlotState,
}

/// How a request ended, for its END_REQUEST.
enum End {
    /// The response was sent whole.
    Complete,
    /// The web server aborted it (ABORT_REQUEST or the connection closed).
    Aborted,
    /// The app broke the response off mid-body.
    Cut,
    /// The connection is gone; nothing more can be sent.
    Gone,
}

/// Where a connection's web server puts the request path (without X-Original-URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathFrom {
    /// CGI's rule: `SCRIPT_NAME` + `PATH_INFO` (nginx, Apache, lighttpd).
    ScriptNameAndPathInfo,
    /// IIS's FastCGI module: the whole path in `PATH_INFO` (its `SCRIPT_NAME` repeats it).
    /// Only the Windows named-pipe door uses it (and the unit tests).
    #[cfg_attr(not(windows), allow(dead_code))]
    PathInfo,
}

/// Serves one connection of IIS's FastCGI module (the named pipe, see
/// [`super::iis_pipe`]) until IIS closes it or it closes after a request.
#[cfg(windows)]
pub(super) async fn serve_iis_connection<R, W>(
    front: Arc<Front>,
    options: FastcgiOptions,
    read: R,
    write: W,
    stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn::new(front, options, None, PathFrom::PathInfo);
    serve_conn(conn, read, write, stop).await;
}

/// One web-server connection: its requests by id and its output queue.
struct Conn {
    front: Arc<Front>,
    options: FastcgiOptions,
    peer: Option<SocketAddr>,
    path_from: PathFrom,
    slots: Mutex<HashMap<u16, Slot>>,
    /// Fires when a request ends (a draining connection closes once none is left).
    ended: Notify,
    out: Mutex<Option<mpsc::Sender<Out>>>,
}

impl Conn {
    fn new(
        front: Arc<Front>,
        options: FastcgiOptions,
        peer: Option<SocketAddr>,
        path_from: PathFrom,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            front,
            options,
            peer,
            path_from,
            slots: Mutex::new(HashMap::new()),
            ended: Notify::new(),
            out: Mutex::new(None),
        })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<u16, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn sender(&self) -> Option<mpsc::Sender<Out>> {
        self.out
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    /// Queues output; false when the connection is gone.
    async fn send(&self, out: Out) -> bool {
        match self.sender() {
            Some(tx) => tx.send(out).await.is_ok(),
            None => false,
        }
    }

    /// Queues records, giving up when the request is aborted meanwhile.
    async fn send_or_abort(
        &self,
        records: Bytes,
        abort: &mut oneshot::Receiver<()>,
    ) -> Option<End> {
        let tx = self.sender()?;
        tokio::select! {
            sent = tx.send(Out::Records(records)) => sent.is_err().then_some(End::Gone),
            _ = &mut *abort => Some(End::Aborted),
        }
    }

    /// END_REQUEST for a request that never ran (unknown role, aborted during PARAMS).
    async fn end_unstarted(&self, id: u16, status: ProtocolStatus, close: bool) {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + 8);
        fcgi::put_end_request(&mut buf, id, 0, status);
        self.send(Out::Records(buf.freeze())).await;
        if close {
            self.send(Out::Close).await;
        }
    }

    /// Handles one record from the web server; false ends the connection.
    async fn on_record(self: &Arc<Self>, record: Record) -> bool {
        let id = record.request_id;
        match record.kind {
            RecordType::BeginRequest => {
                let Ok(begin) = BeginRequest::parse(&record.content) else {
                    return false;
                };
                if begin.role != Role::Responder as u16 {
                    tracing::warn!(
                        role = begin.role,
                        "FastCGI request for a role other than responder refused"
                    );
                    self.end_unstarted(id, ProtocolStatus::UnknownRole, !begin.keep_conn)
                        .await;
                    return true;
                }
                let mut slots = self.slots();
                if slots.contains_key(&id) {
                    tracing::debug!(id, "BEGIN_REQUEST for a request id in use ignored");
                    return true;
                }
                slots.insert(
                    id,
                    Slot {
                        keep_conn: begin.keep_conn,
                        state: SlotState::Params(BytesMut::new()),
                    },
                );
            }
            RecordType::Params => return self.on_params(id, record.content).await,
            RecordType::Stdin => {
                let tx = {
                    let mut slots = self.slots();
                    let Some(slot) = slots.get_mut(&id) else {
                        return true;
                    };
                    match &mut slot.state {
                        SlotState::Stdin { tx, abort } => {
                            let tx = tx.clone();
                            if record.content.is_empty() {
                                slot.state = SlotState::Running {
                                    abort: abort.take(),
                                };
                            }
                            tx
                        }
                        _ => return true,
                    }
                };
                // An empty chunk marks the end of the body; a request that no longer reads
                // its body (it finished, or was refused) just drops what follows.
                let _ = tx.send(record.content).await;
            }
            RecordType::AbortRequest => {
                let unstarted = {
                    let mut slots = self.slots();
                    match slots.get_mut(&id).map(|slot| &mut slot.state) {
                        Some(SlotState::Params(_)) => slots.remove(&id),
                        Some(SlotState::Stdin { abort, .. } | SlotState::Running { abort }) => {
                            if let Some(abort) = abort.take() {
                                let _ = abort.send(());
                            }
                            None
                        }
                        None => None,
                    }
                };
                if let Some(slot) = unstarted {
                    self.ended.notify_one();
                    self.end_unstarted(id, ProtocolStatus::RequestComplete, !slot.keep_conn)
                        .await;
                }
            }
            RecordType::GetValues => {
                let max_conns = self.options.max_conns.to_string();
                let max_reqs = self.options.max_reqs.to_string();
                let mut pairs: Vec<(&str, &str)> = Vec::new();
                for (name, _) in NameValues::new(&record.content).filter_map(Result::ok) {
                    match name {
                        b"FCGI_MAX_CONNS" => pairs.push(("FCGI_MAX_CONNS", &max_conns)),
                        b"FCGI_MAX_REQS" => pairs.push(("FCGI_MAX_REQS", &max_reqs)),
                        b"FCGI_MPXS_CONNS" => pairs.push(("FCGI_MPXS_CONNS", "1")),
                        _ => {}
                    }
                }
                let mut buf = BytesMut::new();
                fcgi::put_get_values_result(&mut buf, &pairs);
                self.send(Out::Records(buf.freeze())).await;
            }
            other => {
                tracing::debug!(kind = %other, id, "ignoring a FastCGI record a web server does not send");
            }
        }
        true
    }

    /// PARAMS: collects the stream; its empty record starts the request.
    async fn on_params(self: &Arc<Self>, id: u16, content: Bytes) -> bool {
        let started = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(&id) else {
                return true;
            };
            let SlotState::Params(params) = &mut slot.state else {
                return true;
            };
            if content.is_empty() {
                let params = std::mem::take(params).freeze();
                let (tx, rx) = mpsc::channel(STDIN_QUEUE);
                let (abort_tx, abort_rx) = oneshot::channel();
                slot.state = SlotState::Stdin {
                    tx,
                    abort: Some(abort_tx),
                };
                Ok((params, rx, abort_rx, slot.keep_conn))
            } else if params.len() + content.len() <= MAX_PARAMS {
                params.extend_from_slice(&content);
                return true;
            } else {
                let keep_conn = slot.keep_conn;
                slots.remove(&id);
                Err(keep_conn)
            }
        };
        match started {
            Ok((params, stdin, abort, keep_conn)) => {
                tokio::spawn(
                    self.clone()
                        .run_request(id, keep_conn, params, stdin, abort),
                );
            }
            Err(keep_conn) => {
                tracing::warn!(
                    id,
                    limit = MAX_PARAMS,
                    "FastCGI PARAMS too large; answering 431"
                );
                let response = pages::html(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "Request Header Fields Too Large",
                    "The request's headers are larger than this server accepts.",
                    None,
                );
                let (_never, mut abort) = oneshot::channel();
                let end = self.send_response(id, response, &mut abort).await;
                self.finish(id, end, keep_conn).await;
            }
        }
        true
    }

    /// Runs one request: parameters → worker, STDIN → worker, response → STDOUT.
    async fn run_request(
        self: Arc<Self>,
        id: u16,
        keep_conn: bool,
        params: Bytes,
        stdin: mpsc::Receiver<Bytes>,
        mut abort: oneshot::Receiver<()>,
    ) {
        let refusal = fcgi::parse_name_values(&params)
            .ok()
            .and_then(|pairs| framing::check_cgi_params(pairs).err());
        let prepared = match refusal {
            Some(violation) => Ok(Err(violation)),
            None => prepare(&self.front, &params, self.peer, self.path_from).map(Ok),
        };
        let end = match prepared {
            Ok(Err(violation)) => {
                let client = client_of(&params, self.peer);
                tracing::warn!(
                    client = %client,
                    id,
                    status = violation.status.as_u16(),
                    reason = violation.reason,
                    "malformed request refused (FastCGI parameters)"
                );
                drop(stdin);
                let response = pages::refused(violation.status, violation.reason);
                self.send_response(id, response, &mut abort).await
            }
            Ok(Ok(prepared)) => {
                let body = StdinBody {
                    rx: stdin,
                    done: false,
                };
                let response = tokio::select! {
                    response = self.front.dispatch(prepared.records, Some(body), prepared.meta) => Some(response),
                    _ = &mut abort => None,
                };
                match response {
                    Some(response) => self.send_response(id, response, &mut abort).await,
                    None => End::Aborted,
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "malformed FastCGI PARAMS from the web server (400)");
                drop(stdin);
                let response = pages::html(
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    "The web server sent malformed FastCGI parameters.",
                    None,
                );
                self.send_response(id, response, &mut abort).await
            }
        };
        self.finish(id, end, keep_conn).await;
    }

    /// Streams a response as STDOUT records: the CGI head, then the body as it comes.
    async fn send_response(
        &self,
        id: u16,
        response: Response<ResponseBody>,
        abort: &mut oneshot::Receiver<()>,
    ) -> End {
        let (parts, mut body) = response.into_parts();
        let head = cgi_head(parts.status, &parts.headers);
        let mut buf = BytesMut::with_capacity(head.len() + HEADER_LEN);
        fcgi::put_stream(&mut buf, RecordType::Stdout, id, &head);
        if let Some(end) = self.send_or_abort(buf.freeze(), abort).await {
            return end;
        }
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                _ = &mut *abort => return End::Aborted,
            };
            match frame {
                None => return End::Complete,
                Some(Err(err)) => {
                    tracing::debug!(id, error = %err, "response broken off; cutting it");
                    return End::Cut;
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    let records = data.len().div_ceil(MAX_CONTENT);
                    let mut buf = BytesMut::with_capacity(data.len() + records * HEADER_LEN);
                    fcgi::put_stream(&mut buf, RecordType::Stdout, id, &data);
                    if let Some(end) = self.send_or_abort(buf.freeze(), abort).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Forgets the request and ends it on the wire.
    async fn finish(&self, id: u16, end: End, keep_conn: bool) {
        let others = {
            let mut slots = self.slots();
            slots.remove(&id);
            slots.len()
        };
        self.ended.notify_one();
        let mut buf = BytesMut::with_capacity(2 * HEADER_LEN + 8);
        match end {
            End::Gone => return,
            End::Cut if others == 0 => {
                // Closing without END_REQUEST is how the web server learns that the
                // response is incomplete (it then cuts its client's response too).
                self.send(Out::Close).await;
                return;
            }
            End::Cut => {
                fcgi::put_stream(&mut buf, RecordType::Stdout, id, &[]);
                fcgi::put_end_request(&mut buf, id, 1, ProtocolStatus::RequestComplete);
            }
            End::Complete => {
                fcgi::put_stream(&mut buf, RecordType::Stdout, id, &[]);
                fcgi::put_end_request(&mut buf, id, 0, ProtocolStatus::RequestComplete);
            }
            End::Aborted => {
                fcgi::put_end_request(&mut buf, id, 0, ProtocolStatus::RequestComplete);
            }
        }
        self.send(Out::Records(buf.freeze())).await;
        if !keep_conn {
            self.send(Out::Close).await;
        }
    }

    /// Whether no request is open on the connection.
    fn is_idle(&self) -> bool {
        self.slots().is_empty()
    }

    /// Aborts every open request (the connection is closing): their bodies fail and their
    /// abort signals fire, which aborts them on their workers.
    fn abort_all(&self) {
        let drained: Vec<Slot> = self.slots().drain().map(|(_, slot)| slot).collect();
        drop(drained);
    }
}

/// Reads records until the web server closes the connection (or breaks the protocol, or
/// shutdown finds the connection idle); a writer task sends what the requests produce.
async fn serve_conn<R, W>(conn: Arc<Conn>, mut read: R, write: W, mut stop: watch::Receiver<bool>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let (dead_tx, mut dead_rx) = watch::channel(false);
    *conn.out.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(out_tx);
    let writer = tokio::spawn(write_loop(write, out_rx, dead_tx));
    let peer = conn.peer;

    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut decoder = RecordDecoder::default();
    let mut draining = false;
    'conn: loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(record)) => {
                    if !conn.on_record(record).await {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(FcgiError::UnknownRecordType(kind)) => {
                    // The decoder reports the type once the whole header is there.
                    let Some(&[_, _, id_hi, id_lo, len_hi, len_lo, padding, _]) =
                        buf.get(..HEADER_LEN)
                    else {
                        break 'conn;
                    };
                    let id = u16::from_be_bytes([id_hi, id_lo]);
                    let total = HEADER_LEN
                        + usize::from(u16::from_be_bytes([len_hi, len_lo]))
                        + usize::from(padding);
                    if buf.len() < total {
                        buf.reserve(total - buf.len());
                        break;
                    }
                    buf.advance(total);
                    if id == NULL_REQUEST_ID {
                        let mut reply = BytesMut::with_capacity(HEADER_LEN + 8);
                        fcgi::put_unknown_type(&mut reply, kind);
                        conn.send(Out::Records(reply.freeze())).await;
                    }
                }
                Err(err) => {
                    tracing::warn!(?peer, error = %err, "FastCGI protocol error from the web server; closing the connection");
                    break 'conn;
                }
            }
        }
        if draining && conn.is_idle() {
            break;
        }
        tokio::select! {
            read_result = read.read_buf(&mut buf) => match read_result {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(?peer, error = %err, "FastCGI connection read failed");
                    break;
                }
            },
            _ = async { let _ = stop.wait_for(|stop| *stop).await; }, if !draining => draining = true,
            _ = conn.ended.notified(), if draining => {}
            _ = dead_rx.changed() => break,
        }
    }
    conn.abort_all();
    // The writer ends once every request task has let go of the connection.
    *conn.out.lock().unwrap_or_else(|poison| poison.into_inner()) = None;
    drop(conn);
    let _ = writer.await;
}

/// Writes queued records in order; ends on `Close`, a write error, or when every sender is
/// gone, then shuts the connection down and tells the reader.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut rx: mpsc::Receiver<Out>,
    dead: watch::Sender<bool>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Records(bytes) => {
                if let Err(err) = write.write_all(&bytes).await {
                    tracing::debug!(error = %err, "FastCGI connection write failed");
                    break;
                }
            }
            Out::Close => break,
        }
    }
    let _ = write.shutdown().await;
    let _ = dead.send(true);
}

/// The request body: STDIN records as they arrive; an empty record ends it, and the
/// connection closing before that makes it fail (the exchange then aborts the request).
struct StdinBody {
    rx: mpsc::Receiver<Bytes>,
    done: bool,
}

/// The web server went away before the request body was complete.
#[derive(Debug, thiserror::Error)]
#[error("the web server aborted the request before its body was complete")]
struct StdinAborted;

impl Body for StdinBody {
    type Data = Bytes;
    type Error = StdinAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StdinAborted>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(data)) if data.is_empty() => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(StdinAborted)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// The client a web server names in REMOTE_ADDR and REMOTE_PORT (else the peer), for logs.
fn client_of(params: &[u8], peer: Option<SocketAddr>) -> String {
    let pairs = fcgi::parse_name_values(params).unwrap_or_default();
    let last = |name: &[u8]| {
        pairs
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    match (last(b"REMOTE_ADDR"), last(b"REMOTE_PORT")) {
        (Some(addr), Some(port)) => format!("{addr}:{port}"),
        (Some(addr), None) => addr,
        _ => peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
    }
}

/// A request ready for the pool: its worker-side records and its log identity.
struct Prepared {
    records: BytesMut,
    meta: RequestMeta,
}

/// Turns the web server's parameters into the worker's PARAMS (see the module doc for what
/// changes) and the request's log identity.
fn prepare(
    front: &Front,
    params: &[u8],
    peer: Option<SocketAddr>,
    path_from: PathFrom,
) -> Result<Prepared, FcgiError> {
    let pairs = fcgi::parse_name_values(params)?;
    let last = |name: &[u8]| {
        pairs
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    };
    let text = |name: &[u8]| {
        last(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    };

    // The client as the web server saw it (for a TCP door without REMOTE_ADDR: the peer).
    let unknown = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let mut remote = match text(b"REMOTE_ADDR").and_then(|s| s.parse::<IpAddr>().ok()) {
        Some(ip) => SocketAddr::new(
            ip,
            text(b"REMOTE_PORT")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ),
        None => peer.unwrap_or(unknown),
    };

    let mut proxy = ProxyHeaders::default();
    for (name, value) in &pairs {
        proxy.add_param(name, value);
    }
    let resolved = proxy.resolve(remote.ip(), front.trusted_proxies());

    let mut set: Vec<(&'static [u8], Vec<u8>)> = Vec::new();
    let mut unset: Vec<&'static [u8]> = vec![b"HTTP_PROXY"];
    if let Some(client) = resolved.client {
        remote = client.socket_addr();
        set.push((b"REMOTE_ADDR", client.ip.to_string().into_bytes()));
        match client.port {
            Some(port) => set.push((b"REMOTE_PORT", port.to_string().into_bytes())),
            None => unset.push(b"REMOTE_PORT"),
        }
    }
    let server_https = text(b"HTTPS").is_some_and(|v| v.eq_ignore_ascii_case("on") || v == "1");
    let https = resolved.https.unwrap_or(server_https);
    match resolved.https {
        Some(true) => {
            set.push((b"HTTPS", b"on".to_vec()));
            set.push((b"REQUEST_SCHEME", b"https".to_vec()));
        }
        Some(false) => {
            unset.push(b"HTTPS");
            set.push((b"REQUEST_SCHEME", b"http".to_vec()));
        }
        None => {}
    }
    if let Some(host) = &resolved.host {
        let (name, port) = cgi::split_host_port(host.as_bytes());
        let port = port.map_or_else(
            || {
                if https {
                    b"443".to_vec()
                } else {
                    b"80".to_vec()
                }
            },
            <[u8]>::to_vec,
        );
        set.push((b"HTTP_HOST", host.as_bytes().to_vec()));
        set.push((b"SERVER_NAME", name.to_vec()));
        set.push((b"SERVER_PORT", port));
    }

    // The full path: X-Original-URL's (wfastcgi), else the server's SCRIPT_NAME + PATH_INFO
    // (both already decoded; IIS: PATH_INFO alone), else the decoded path of REQUEST_URI.
    let (full_path, target) = match &resolved.original_url {
        Some(url) => {
            let (path, query) = match url.iter().position(|&b| b == b'?') {
                Some(q) => (&url[..q], &url[q + 1..]),
                None => (&url[..], &b""[..]),
            };
            set.push((b"QUERY_STRING", query.to_vec()));
            set.push((b"REQUEST_URI", url.clone()));
            (percent_decode(path).collect::<Vec<u8>>(), url.clone())
        }
        None => {
            let request_uri = last(b"REQUEST_URI");
            let script_name = match path_from {
                PathFrom::ScriptNameAndPathInfo => last(b"SCRIPT_NAME"),
                PathFrom::PathInfo => None,
            };
            let full = match (script_name, last(b"PATH_INFO")) {
                (None, None) => {
                    let uri = request_uri.unwrap_or(b"/");
                    let path = uri.split(|&b| b == b'?').next().unwrap_or_default();
                    percent_decode(path).collect()
                }
                (script, info) => [script.unwrap_or_default(), info.unwrap_or_default()].concat(),
            };
            let target = match request_uri {
                Some(uri) => uri.to_vec(),
                None => {
                    let query = last(b"QUERY_STRING").unwrap_or_default();
                    let mut t = full.clone();
                    if !query.is_empty() {
                        t.push(b'?');
                        t.extend_from_slice(query);
                    }
                    t
                }
            };
            (full, target)
        }
    };
    let (script_name, path_info) =
        cgi::split_script_name(&full_path, front.script_name().as_bytes());
    set.push((b"SCRIPT_NAME", script_name.to_vec()));
    set.push((b"PATH_INFO", path_info.to_vec()));

    let mut records = BytesMut::with_capacity(params.len() + 512);
    fcgi::put_begin_request(&mut records, REQUEST_ID, Role::Responder, true);
    {
        let mut w = ParamsWriter::new(&mut records, REQUEST_ID);
        for (name, value) in &pairs {
            if unset.contains(name) || set.iter().any(|(n, _)| n == name) {
                continue;
            }
            w.push(name, value);
        }
        for (name, value) in &set {
            w.push(name, value);
        }
        w.finish();
    }

    let parts = request_parts(&pairs, &target, resolved.host.as_deref());
    let meta = front.request_meta(&parts, remote);
    Ok(Prepared { records, meta })
}

/// An HTTP request head rebuilt from the parameters, for the access log and metrics.
fn request_parts(
    pairs: &[NameValue<'_>],
    target: &[u8],
    host: Option<&str>,
) -> http::request::Parts {
    let last = |name: &[u8]| {
        pairs
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    };
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = last(b"REQUEST_METHOD")
        .and_then(|m| Method::from_bytes(m).ok())
        .unwrap_or(Method::GET);
    parts.uri = Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = match last(b"SERVER_PROTOCOL").unwrap_or_default() {
        b"HTTP/1.0" => Version::HTTP_10,
        b"HTTP/2.0" | b"HTTP/2" => Version::HTTP_2,
        b"HTTP/3.0" | b"HTTP/3" => Version::HTTP_3,
        _ => Version::HTTP_11,
    };
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        let Some(header) = name.strip_prefix(b"HTTP_") else {
            continue;
        };
        let header: Vec<u8> = header
            .iter()
            .map(|&b| {
                if b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .collect();
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&header),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    if let Some(value) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(HOST, value);
    }
    parts.headers = headers;
    parts
}

/// The CGI response head for a response: `Status:` line, headers, empty line.
fn cgi_head(status: StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"Status: ");
    head.extend_from_slice(status.as_str().as_bytes());
    if let Some(reason) = status.canonical_reason() {
        head.push(b' ');
        head.extend_from_slice(reason.as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        put_title_case(&mut head, name.as_str());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Appends a (lower-case) header name title-cased, `x-frame-options` → `X-Frame-Options`,
/// as the HTTP front door writes names (hyper's `title_case_headers`).
fn put_title_case(out: &mut Vec<u8>, name: &str) {
    let mut word_start = true;
    for b in name.bytes() {
        out.push(if word_start {
            b.to_ascii_uppercase()
        } else {
            b
        });
        word_start = b == b'-';
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_head_title_cases_names_and_drops_hop_by_hop() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("connection", HeaderValue::from_static("close"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        let head = cgi_head(StatusCode::FOUND, &headers);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "Status: 302 Found\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
        );
    }

    #[test]
    fn request_parts_from_params() {
        let pairs: Vec<NameValue<'_>> = vec![
            (b"REQUEST_METHOD", b"POST"),
            (b"SERVER_PROTOCOL", b"HTTP/1.0"),
            (b"HTTP_USER_AGENT", b"curl/8"),
            (b"HTTP_X_FORWARDED_FOR", b"1.2.3.4"),
            (b"HTTP_HOST", b"internal"),
            (b"CONTENT_TYPE", b"text/plain"),
        ];
        let parts = request_parts(&pairs, b"/a%20b?x=1", Some("www.example.com"));
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.version, Version::HTTP_10);
        assert_eq!(parts.uri.path(), "/a%20b");
        assert_eq!(parts.uri.query(), Some("x=1"));
        assert_eq!(parts.headers["user-agent"], "curl/8");
        assert_eq!(parts.headers["x-forwarded-for"], "1.2.3.4");
        assert_eq!(parts.headers["host"], "www.example.com");
        assert!(!parts.headers.contains_key("content-type"));
        let parts = request_parts(&[], b"not a uri", None);
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.path(), "/");
    }
}

//! The `/ptvsd` endpoint: checks the secret, then either upgrades to a WebSocket relayed
//! byte for byte to one worker's debugpy port, or (plain GET) serves the info page.
//!
//! debugpy listens on 127.0.0.1 only and has no secret of its own, so this proxy is the only
//! way in. Each accepted WebSocket gets its own TCP connection to the chosen worker's debugpy
//! port; binary (or text) frames from the IDE go to debugpy unchanged, and whatever debugpy
//! writes goes back as binary frames. A copy of both directions feeds a [`DapMonitor`]; its
//! pause edges stop and restart the request clock of the worker ([`Pool::set_paused`]). A
//! worker counts as paused while any of its debug connections says so. The monitor is pure and
//! bounded, so garbage in the stream never breaks the relay.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::auth::{authorize, FailureLimiter, Secret};
use super::dap::{DapFramer, DapMonitor, Direction, PauseChange};
use super::info::{self, InfoPage};
use crate::gateway::response::ResponseBody;
use crate::pages;
use crate::pool::{Phase, Pool};

/// Failures from one address within [`FAILURE_WINDOW`] that start a ban.
const MAX_FAILURES: u32 = 10;
/// The window in which failures are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How long a banned address is answered 429.
const BAN: Duration = Duration::from_secs(60);

/// Failures per minute through one TCP peer (e.g. the reverse proxy in front) that start a
/// ban of that peer: clients named by forwarded headers could otherwise claim a fresh
/// address for every guess.
const MAX_PEER_FAILURES: u32 = 100;
/// How often the proxy pings the IDE side (keeps IIS and other proxies from idling it out).
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// An IDE side silent this long (not even a pong) is taken as gone.
const PEER_SILENCE: Duration = Duration::from_secs(65);
/// Longest wait for a worker's debugpy port (the worker may still be starting).
const PORT_WAIT: Duration = Duration::from_secs(20);
/// How often the port wait looks again.
const PORT_POLL: Duration = Duration::from_millis(50);
/// Longest wait to connect to debugpy's port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time given to the WebSocket closing handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a worker's debugpy gets to wind down a closed debug connection before the proxy
/// opens the next one to it. debugpy 1.8.22's adapter finishes a client's session only after
/// a round trip to the debuggee; a client that connects within that window is refused
/// ("already being debugged"), and the adapter's `debugpySockets` event for it goes to the
/// closed client, whose error ends the adapter's accept thread: the worker then accepts no
/// debugger until it restarts. A quick reconnect (an IDE retrying after a dropped network)
/// therefore waits this long.
const SETTLE: Duration = Duration::from_secs(1);
/// Read size on the debugpy side.
const READ_CHUNK: usize = 64 * 1024;
/// Request header with which `fcgihost attach` checks URL and secret without touching
/// debugpy: answered with an upgrade that closes at once.
pub const PROBE_HEADER: &str = "x-fcgihost-probe";
/// Response header of a probe carrying the app directory on the server, so `fcgihost attach`
/// can print the right `remoteRoot` for VS Code's path mappings.
pub const APP_DIR_HEADER: &str = "x-fcgihost-app-dir";
/// Request header of `fcgihost attach --instance ID` naming the instance it wants; every
/// answer of the proxy carries it too, naming this host's instance id. A host whose id
/// differs from the one asked for answers 421 Misdirected Request.
pub const INSTANCE_HEADER: &str = "x-fcgihost-instance";

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// The `/ptvsd` endpoint of the host: secret check, WebSocket relay to debugpy, info page.
///
/// It exists because debugpy has no authentication and listens on loopback only; the proxy
/// brings the debugger to the developer through the site's own URL (and IIS), as Visual
/// Studio's old ptvsd handler did.
pub struct DebugProxy {
    secret: Secret,
    path: String,
    limiter: Mutex<FailureLimiter>,
    /// The same, keyed by the TCP peer (see [`MAX_PEER_FAILURES`]).
    peer_limiter: Mutex<FailureLimiter>,
    book: Arc<Book>,
    wait_for_attach: Option<Duration>,
    max_pause: Option<Duration>,
    /// This host's instance id (see [`DebugProxy::with_instance_id`]).
    instance_id: String,
}

/// State shared by the proxy and its relay tasks.
struct Book {
    pool: Pool,
    /// Per worker: how many of its debug connections report it paused.
    paused: Mutex<Vec<u32>>,
    /// Per worker: when its last debug connection closed (see [`SETTLE`]).
    closed_at: Mutex<Vec<Option<tokio::time::Instant>>>,
    /// How many debug connections have finished DAP configuration (`configurationDone`);
    /// requests held by `debug.wait_for_attach` wait for this to become non-zero.
    configured: watch::Sender<usize>,
}

impl Book {
    fn lock(&self) -> MutexGuard<'_, Vec<u32>> {
        self.paused.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn closed_at(&self) -> MutexGuard<'_, Vec<Option<tokio::time::Instant>>> {
        self.closed_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers that a debug connection to `worker` just closed.
    fn connection_closed(&self, worker: usize) {
        if let Some(slot) = self.closed_at().get_mut(worker) {
            *slot = Some(tokio::time::Instant::now());
        }
    }

    /// Waits until `worker`'s debugpy has had [`SETTLE`] since its last connection closed.
    async fn settle(&self, worker: usize) {
        let closed = self.closed_at().get(worker).copied().flatten();
        if let Some(closed) = closed {
            tokio::time::sleep_until(closed + SETTLE).await;
        }
    }

    /// Applies one connection's pause edge to its worker: the worker is paused while any of
    /// its connections is.
    fn apply(&self, worker: usize, change: PauseChange) {
        let mut paused = self.lock();
        let Some(count) = paused.get_mut(worker) else {
            return;
        };
        match change {
            PauseChange::Paused => {
                *count += 1;
                if *count == 1 {
                    self.pool.set_paused(worker, true);
                }
            }
            PauseChange::Resumed => {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.pool.set_paused(worker, false);
                }
            }
        }
    }
}

impl DebugProxy {
    /// A proxy for `pool`'s workers at `path` (e.g. `/ptvsd`), guarded by `secret`.
    pub fn new(pool: Pool, secret: Secret, path: String) -> Self {
        let workers = pool.settings().workers;
        DebugProxy {
            secret,
            path: path.trim_end_matches('/').to_owned(),
            limiter: Mutex::new(FailureLimiter::new(MAX_FAILURES, FAILURE_WINDOW, BAN)),
            peer_limiter: Mutex::new(FailureLimiter::new(MAX_PEER_FAILURES, FAILURE_WINDOW, BAN)),
            book: Arc::new(Book {
                pool,
                paused: Mutex::new(vec![0; workers]),
                closed_at: Mutex::new(vec![None; workers]),
                configured: watch::channel(0).0,
            }),
            wait_for_attach: None,
            max_pause: None,
            instance_id: String::new(),
        }
    }

    /// This host's instance id (`WEBSITE_INSTANCE_ID`, `instance_id`, or the host name):
    /// shown on the info page, sent with every answer, compared with the one a client asks
    /// for.
    pub fn with_instance_id(mut self, instance_id: String) -> Self {
        self.instance_id = instance_id;
        self
    }

    /// Holds requests up to `wait` until a debugger has attached (`debug.wait_for_attach`),
    /// so the very first request can be debugged.
    pub fn with_wait_for_attach(mut self, wait: Option<Duration>) -> Self {
        self.wait_for_attach = wait;
        self
    }

    /// Records `debug.max_pause` for the info page (the exchange enforces it).
    pub fn with_max_pause(mut self, max_pause: Option<Duration>) -> Self {
        self.max_pause = max_pause;
        self
    }

    /// Whether this request path belongs to the proxy: the endpoint itself, or the endpoint
    /// followed by `/<worker-id>` (or a bare trailing slash).
    pub fn owns(&self, path: &str) -> bool {
        match path.strip_prefix(self.path.as_str()) {
            Some("") => true,
            Some(rest) => rest
                .strip_prefix('/')
                .is_some_and(|segment| !segment.contains('/')),
            None => false,
        }
    }

    /// Waits, when `debug.wait_for_attach` is set and no debugger has attached yet, until
    /// one has finished attaching or the wait ends. The request clock has not started yet,
    /// so the wait does not count against the request.
    pub async fn wait_for_debugger(&self) {
        let Some(limit) = self.wait_for_attach else {
            return;
        };
        let mut configured = self.book.configured.subscribe();
        if *configured.borrow_and_update() > 0 {
            return;
        }
        tracing::info!(
            wait_s = limit.as_secs_f64(),
            "holding the request until a debugger attaches (debug.wait_for_attach)"
        );
        let attached = tokio::time::timeout(limit, configured.wait_for(|n| *n > 0)).await;
        if attached.is_err() {
            tracing::info!(
                "no debugger attached within debug.wait_for_attach; serving the request"
            );
        }
    }

    /// Answers one request to the endpoint (see [`DebugProxy::owns`]). `remote` is the
    /// client (resolved from trusted forwarded headers), `peer` the TCP peer.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let mut response = self.answer(req, remote, peer).await;
        if let Ok(own) = HeaderValue::from_str(&self.instance_id) {
            response.headers_mut().insert(INSTANCE_HEADER, own);
        }
        response
    }

    /// [`DebugProxy::handle`] without the instance header.
    async fn answer(
        &self,
        mut req: Request<Incoming>,
        remote: SocketAddr,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _body) = req.into_parts();
        let path = parts.uri.path().to_owned();

        if let Some(refusal) = self.check_secret(&parts, remote, peer.ip()) {
            return refusal;
        }
        if let Some(wanted) = parts.headers.get(INSTANCE_HEADER) {
            if wanted.as_bytes() != self.instance_id.as_bytes() {
                let wanted = String::from_utf8_lossy(wanted.as_bytes());
                tracing::info!(%remote, wanted = %wanted, instance = self.instance_id, "debug connection for another instance refused (421)");
                return text(
                    StatusCode::MISDIRECTED_REQUEST,
                    &format!(
                        "This is instance {}, not {wanted}: the balancer in front sent this request to another instance than the one asked for.\n",
                        self.instance_id
                    ),
                );
            }
        }

        let segment = path
            .strip_prefix(self.path.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|s| !s.is_empty());

        if !is_websocket_upgrade(&parts.headers) {
            return match parts.method {
                Method::GET | Method::HEAD => self.info_page(&parts.headers),
                _ => {
                    let mut response = text(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "Use GET for the info page or a WebSocket upgrade to attach.\n",
                    );
                    response
                        .headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                    response
                }
            };
        }
        if parts.method != Method::GET {
            return text(
                StatusCode::BAD_REQUEST,
                "A WebSocket upgrade must be a GET.\n",
            );
        }
        let version_ok = parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"13");
        if !version_ok {
            let mut response = text(
                StatusCode::UPGRADE_REQUIRED,
                "Only WebSocket version 13 is supported.\n",
            );
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return response;
        }
        let Some(key) = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .map(|k| k.as_bytes().trim_ascii().to_vec())
            .filter(|k| !k.is_empty())
        else {
            return text(StatusCode::BAD_REQUEST, "Missing Sec-WebSocket-Key.\n");
        };

        if parts.headers.contains_key(PROBE_HEADER) {
            // `fcgihost attach` checking URL and secret: switch and close at once.
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut ws =
                        Ws::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
                    let _ = tokio::time::timeout(
                        CLOSE_GRACE,
                        ws.close(Some(CloseFrame {
                            code: CloseCode::Normal,
                            reason: "fcgihost debug proxy: probe ok".into(),
                        })),
                    )
                    .await;
                }
            });
            let mut response = switching_protocols(&key);
            let app_dir = self.book.pool.settings().spec.cwd.display().to_string();
            if let Ok(value) = HeaderValue::from_str(&app_dir) {
                response.headers_mut().insert(APP_DIR_HEADER, value);
            }
            return response;
        }

        let worker = match segment {
            Some(segment) => match segment.parse::<usize>() {
                Ok(id) if id < self.book.pool.settings().workers => Some(id),
                _ => {
                    return text(
                        StatusCode::NOT_FOUND,
                        &format!(
                            "No worker {segment:?}: worker ids are 0 to {}.\n",
                            self.book.pool.settings().workers.saturating_sub(1)
                        ),
                    )
                }
            },
            None => None,
        };
        let Some((worker, port, pid)) = self.pick_worker(worker).await else {
            tracing::warn!(remote = %remote, "debug attach refused: no worker has a debugpy port yet");
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "No worker is ready for debugging yet (still starting, or failing to start; see the host's log).\n",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return response;
        };
        self.book.settle(worker).await;
        let tcp = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => {
                tracing::warn!(worker, pid, port, remote = %remote, error = %err, "cannot connect to the worker's debugpy");
                return text(StatusCode::BAD_GATEWAY, &format!("Cannot reach debugpy of worker {worker}; it may be restarting. Try again.\n"));
            }
            Err(_) => {
                tracing::warn!(worker, pid, port, remote = %remote, "timed out connecting to the worker's debugpy");
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("debugpy of worker {worker} did not accept the connection.\n"),
                );
            }
        };
        let _ = tcp.set_nodelay(true);
        tracing::info!(worker, pid, remote = %remote, "debugger connecting");
        let book = self.book.clone();
        tokio::spawn(relay(book, on_upgrade, tcp, worker, pid, remote));
        switching_protocols(&key)
    }

    /// Checks the secret (and the failure limiter); `Some(response)` refuses the request.
    fn check_secret(
        &self,
        parts: &http::request::Parts,
        remote: SocketAddr,
        peer: IpAddr,
    ) -> Option<Response<ResponseBody>> {
        let ip: IpAddr = remote.ip();
        let now = Instant::now();
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        let mut peer_limiter = self.peer_limiter.lock().unwrap_or_else(|p| p.into_inner());
        if limiter.is_blocked(ip, now) || peer_limiter.is_blocked(peer, now) {
            tracing::warn!(remote = %remote, path = parts.uri.path(), "debug proxy: too many failed attempts from this address; refusing (429)");
            let mut response = text(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed attempts. Try again later.\n",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(BAN.as_secs()));
            return Some(response);
        }
        if authorize(&self.secret, parts) {
            limiter.record_success(ip);
            return None;
        }
        limiter.record_failure(ip, now);
        peer_limiter.record_failure(peer, now);
        tracing::warn!(remote = %remote, path = parts.uri.path(), "debug proxy: wrong or missing secret (401)");
        let mut response = text(StatusCode::UNAUTHORIZED, "Unauthorized.\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fcgihost debug\""),
        );
        Some(response)
    }

    /// Chooses the worker to attach to and waits (bounded) for its debugpy port: the given
    /// one; else the only one; else the idle worker with the lowest id; else the lowest id
    /// that has a port. Returns `(worker, port, pid)`.
    async fn pick_worker(&self, wanted: Option<usize>) -> Option<(usize, u16, Option<u32>)> {
        let deadline = tokio::time::Instant::now() + PORT_WAIT;
        let only_one = self.book.pool.settings().workers == 1;
        loop {
            let workers = self.book.pool.snapshot();
            let with_port = |w: &&crate::pool::WorkerSnapshot| w.debug_port.is_some();
            let chosen = match wanted {
                Some(id) => workers.iter().find(|w| w.id == id).filter(with_port),
                None if only_one => workers.first().filter(with_port),
                None => workers
                    .iter()
                    .filter(with_port)
                    .filter(|w| w.phase == Phase::Idle)
                    .min_by_key(|w| w.id)
                    .or_else(|| workers.iter().filter(with_port).min_by_key(|w| w.id)),
            };
            if let Some(w) = chosen {
                if let Some(port) = w.debug_port {
                    return Some((w.id, port, w.pid));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(PORT_POLL).await;
        }
    }

    /// The info page for a plain GET.
    fn info_page(&self, headers: &HeaderMap) -> Response<ResponseBody> {
        let pool = &self.book.pool;
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let app_dir = pool.settings().spec.cwd.display().to_string();
        let page = InfoPage {
            host,
            path: &self.path,
            app_dir: &app_dir,
            request_timeout: pool.settings().request_timeout,
            wait_for_attach: self.wait_for_attach,
            max_pause: self.max_pause,
            instance: &self.instance_id,
        };
        let html = info::render(&page, &pool.snapshot(), Instant::now());
        let mut response = Response::new(pages::full_body(html));
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

/// Whether the request asks for a WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(header::CONNECTION, "upgrade") && has_token(header::UPGRADE, "websocket")
}

/// The 101 answer to a valid upgrade request with this `Sec-WebSocket-Key`.
fn switching_protocols(key: &[u8]) -> Response<ResponseBody> {
    let mut response = Response::new(pages::full_body(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// A short plain-text response.
fn text(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(pages::full_body(message.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Why one side of a relay ended.
#[derive(Debug)]
enum End {
    /// The IDE closed the WebSocket (or it broke).
    Client(String),
    /// debugpy closed its TCP connection (or it broke).
    Adapter(String),
    /// The IDE stopped answering pings.
    ClientSilent,
}

/// One debug connection's view: its DAP monitor and its share of the worker's state.
struct Conn {
    book: Arc<Book>,
    worker: usize,
    pid: Option<u32>,
    remote: SocketAddr,
    state: Mutex<ConnState>,
}

struct ConnState {
    monitor: DapMonitor,
    /// Frames the client's messages until its `configurationDone` (then dropped).
    config_framer: Option<DapFramer>,
    last_heard: Instant,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds a copy of a relayed chunk to the monitor and acts on its pause edge.
    fn observe(&self, dir: Direction, chunk: &[u8]) {
        let mut state = self.lock();
        let change = state.monitor.feed(dir, chunk);
        let mut now_configured = false;
        if dir == Direction::ClientToAdapter {
            if let Some(framer) = state.config_framer.as_mut() {
                let mut messages = Vec::new();
                framer.push(chunk, &mut messages);
                now_configured = messages.iter().any(|m| {
                    m.get("type").and_then(|t| t.as_str()) == Some("request")
                        && m.get("command").and_then(|c| c.as_str()) == Some("configurationDone")
                });
                if now_configured {
                    state.config_framer = None;
                }
            }
        }
        let client = state.monitor.client_id().unwrap_or("").to_owned();
        drop(state);
        if now_configured {
            self.book.configured.send_modify(|n| *n += 1);
            tracing::info!(worker = self.worker, pid = self.pid, remote = %self.remote, client, "debugger attached");
        }
        self.act(change, &client);
    }

    fn act(&self, change: Option<PauseChange>, client: &str) {
        let Some(change) = change else {
            return;
        };
        match change {
            PauseChange::Paused => {
                tracing::info!(worker = self.worker, pid = self.pid, remote = %self.remote, client, "debugger paused the worker; request clock stopped")
            }
            PauseChange::Resumed => {
                tracing::info!(worker = self.worker, pid = self.pid, remote = %self.remote, client, "worker resumed; request clock running")
            }
        }
        self.book.apply(self.worker, change);
    }

    fn heard(&self) {
        self.lock().last_heard = Instant::now();
    }

    fn silent_for(&self) -> Duration {
        self.lock().last_heard.elapsed()
    }

    /// The connection is over: resume if it held the worker, and forget it.
    fn closed(&self) {
        let mut state = self.lock();
        let change = state.monitor.connection_closed();
        let was_configured = state.config_framer.is_none();
        let client = state.monitor.client_id().unwrap_or("").to_owned();
        drop(state);
        self.act(change, &client);
        if was_configured {
            self.book
                .configured
                .send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

/// Runs one debug connection: completes the upgrade, relays until either side ends, closes
/// the other cleanly, and undoes the connection's effect on the worker.
async fn relay(
    book: Arc<Book>,
    on_upgrade: OnUpgrade,
    tcp: TcpStream,
    worker: usize,
    pid: Option<u32>,
    remote: SocketAddr,
) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::warn!(worker, pid, remote = %remote, error = %err, "WebSocket upgrade failed");
            return;
        }
    };
    let ws = Ws::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    book.pool.debugger_attached(worker, true);
    let conn = Conn {
        book: book.clone(),
        worker,
        pid,
        remote,
        state: Mutex::new(ConnState {
            monitor: DapMonitor::new(),
            config_framer: Some(DapFramer::new()),
            last_heard: Instant::now(),
        }),
    };
    let started = Instant::now();
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut tcp_rx, mut tcp_tx) = tcp.into_split();

    let end = {
        let to_adapter = client_to_adapter(&mut ws_rx, &mut tcp_tx, &conn);
        let to_client = adapter_to_client(&mut tcp_rx, &mut ws_tx, &conn);
        tokio::pin!(to_adapter, to_client);
        tokio::select! {
            end = &mut to_adapter => end,
            end = &mut to_client => end,
        }
    };

    match &end {
        End::Client(_) => {
            // debugpy's adapter sees the disconnect and resumes the debuggee.
            let _ = tcp_tx.shutdown().await;
            drop(tcp_tx);
            drop(tcp_rx);
            let _ = tokio::time::timeout(CLOSE_GRACE, ws_tx.close()).await;
        }
        End::Adapter(_) | End::ClientSilent => {
            drop(tcp_tx);
            drop(tcp_rx);
            let reason = match end {
                End::ClientSilent => "no answer to pings",
                _ => "the debug adapter closed the connection",
            };
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                if ws_tx.send(close).await.is_ok() {
                    // Wait for the IDE's closing frame, ignoring anything still in flight.
                    while let Some(Ok(msg)) = ws_rx.next().await {
                        if msg.is_close() {
                            break;
                        }
                    }
                }
            })
            .await;
        }
    }
    conn.closed();
    book.connection_closed(worker);
    book.pool.debugger_attached(worker, false);
    let reason = match end {
        End::Client(r) => format!("debugger side: {r}"),
        End::Adapter(r) => format!("debugpy side: {r}"),
        End::ClientSilent => "debugger stopped answering pings".to_owned(),
    };
    tracing::info!(
        worker,
        pid,
        remote = %remote,
        client = conn.lock().monitor.client_id().unwrap_or(""),
        duration_s = started.elapsed().as_secs(),
        reason,
        "debugger detached"
    );
}

/// IDE → debugpy: frames in, bytes out (text frames are accepted too).
async fn client_to_adapter(
    ws_rx: &mut SplitStream<Ws>,
    tcp_tx: &mut OwnedWriteHalf,
    conn: &Conn,
) -> End {
    loop {
        let msg = match ws_rx.next().await {
            Some(Ok(msg)) => msg,
            Some(Err(err)) => return End::Client(err.to_string()),
            None => return End::Client("connection closed".into()),
        };
        conn.heard();
        let data: Bytes = match msg {
            Message::Binary(data) => data,
            Message::Text(text) => text.into(),
            Message::Close(frame) => {
                return End::Client(match frame {
                    Some(f) => format!("closed ({})", f.code),
                    None => "closed".into(),
                })
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        if data.is_empty() {
            continue;
        }
        conn.observe(Direction::ClientToAdapter, &data);
        if let Err(err) = tcp_tx.write_all(&data).await {
            return End::Adapter(err.to_string());
        }
    }
}

/// debugpy → IDE: bytes in, binary frames out, plus the keep-alive pings.
async fn adapter_to_client(
    tcp_rx: &mut OwnedReadHalf,
    ws_tx: &mut SplitSink<Ws, Message>,
    conn: &Conn,
) -> End {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tokio::select! {
            read = tcp_rx.read_buf(&mut buf) => {
                match read {
                    Ok(0) => return End::Adapter("connection closed".into()),
                    Ok(_) => {}
                    Err(err) => return End::Adapter(err.to_string()),
                }
                let chunk = buf.split().freeze();
                buf.reserve(READ_CHUNK);
                conn.observe(Direction::AdapterToClient, &chunk);
                if let Err(err) = ws_tx.send(Message::Binary(chunk)).await {
                    return End::Client(err.to_string());
                }
            }
            _ = ping.tick() => {
                if conn.silent_for() > PEER_SILENCE {
                    return End::ClientSilent;
                }
                if let Err(err) = ws_tx.send(Message::Ping(Bytes::new())).await {
                    return End::Client(err.to_string());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_websocket_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_websocket_upgrade(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&h));
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let response = switching_protocols(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            response.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}

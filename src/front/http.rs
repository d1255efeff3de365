//! The HTTP listener: accepts connections (at most `max_connections` at once), serves
//! HTTP/1.1 on each with hyper under the limits of [`super::limits`], and routes every
//! request to a worker through the pool (the debug proxy and the status page hook in ahead
//! of the app). A body announced larger than `max_body_size` is refused with 413 before a
//! worker is involved; a chunked one is cut by the exchange when it passes the limit.
//! From a peer in `trusted_proxies`, the proxy headers ([`crate::gateway::forwarded`]) set
//! the client, scheme, host and (IIS's `X-Original-URL`) target the app sees.
//! Every request head first passes the framing rules of [`super::framing`]: a malformed
//! one is refused with its 4xx and the connection closed, `OPTIONS *` is answered 200 with
//! `Allow` and `CONNECT` 405, both by the host; a chunked body is checked as it streams
//! (its trailer fields too), and a malformed one is answered 400 while its request is
//! aborted on the worker. What hyper refuses itself (400/431) gets the same WARN line.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::access_log::{AccessFormat, AccessLog};
use super::framing::{self, RawVerdict, Routing, Violation};
use super::health::HealthCheck;
use super::limits::{Activity, ConnLimits, TrackedBody, WatchedIo};
use super::status::{Metrics, StatusPage};
use super::ResponseBody;
use crate::debug::proxy::DebugProxy;
use crate::gateway::cgi::{self, RequestContext};
use crate::gateway::fcgi::{self, ParamsWriter, RecordType, Role};
use crate::gateway::forwarded::{ProxyHeaders, TrustedProxies};
use crate::pages;
use crate::pool::exchange::{self, Failure, RequestBody, RequestMeta, REQUEST_ID};
use crate::pool::{Pool, Refusal};

/// How requests are mapped and answered (from the config).
#[derive(Debug, Clone)]
pub struct FrontOptions {
    /// Mount prefix split off PATH_INFO into SCRIPT_NAME.
    pub script_name: String,
    /// One access-log line per request.
    pub access_log: bool,
    /// Debug mode: tracebacks on error pages for everyone, not only loopback.
    pub debug: bool,
    /// `max_body_size`: larger request bodies get 413; `None` = no limit.
    pub max_body_size: Option<u64>,
    /// `trusted_proxies`: peers whose `X-Forwarded-*`, `Forwarded`, `X-ARR-SSL` and
    /// `X-Original-URL` headers set the client, scheme, host and target the app sees.
    pub trusted_proxies: TrustedProxies,
    /// `max_request_line`: a longer request target gets 414; `None` = no limit of its own.
    pub max_request_line: Option<u64>,
    /// `max_header_field_size`: a longer header field (name and value) gets 431.
    pub max_header_field_size: Option<u64>,
}

/// Routes requests; shared by every connection.
pub struct Front {
    pool: Pool,
    options: FrontOptions,
    next_request: AtomicU64,
    /// The `/ptvsd` proxy, only in debug mode (otherwise that path belongs to the app).
    debug: Option<Arc<DebugProxy>>,
    /// The status page (`status_path`), when configured.
    status: Option<StatusPage>,
    /// The health endpoint (`health_path`), when configured.
    health: Option<HealthCheck>,
    /// The access log and request metrics.
    access: Arc<AccessLog>,
    /// The ASP.NET Core Module's pairing token (`ASPNETCORE_TOKEN`): only requests whose
    /// `MS-ASPNETCORE-TOKEN` header matches are answered.
    pairing_token: Option<Arc<[u8]>>,
}

/// The header that carries the ASP.NET Core Module's pairing token.
const PAIRING_HEADER: &str = "ms-aspnetcore-token";

impl Front {
    /// Creates the router over `pool`.
    pub fn new(pool: Pool, options: FrontOptions) -> Self {
        let access = Arc::new(AccessLog::new(
            options.access_log,
            AccessFormat::Text,
            Arc::new(Metrics::new()),
        ));
        Self {
            pool,
            options,
            next_request: AtomicU64::new(1),
            debug: None,
            status: None,
            health: None,
            access,
            pairing_token: None,
        }
    }

    /// Answers only requests carrying `token` in `MS-ASPNETCORE-TOKEN` (what Kestrel does
    /// behind the ASP.NET Core Module: nothing but IIS can reach the host); the header is
    /// removed before the request goes on.
    pub fn with_pairing_token(mut self, token: &str) -> Self {
        self.pairing_token = Some(Arc::from(token.as_bytes()));
        self
    }

    /// 400 when a pairing token is set and the request does not carry it (compared in
    /// constant time; the log names the client, never a token).
    fn unpaired(
        &self,
        req: &Request<Incoming>,
        remote: SocketAddr,
    ) -> Option<Response<ResponseBody>> {
        use subtle::ConstantTimeEq;
        let token = self.pairing_token.as_ref()?;
        let presented = req.headers().get(PAIRING_HEADER).map(HeaderValue::as_bytes);
        if presented.is_some_and(|p| bool::from(p.ct_eq(token))) {
            return None;
        }
        tracing::warn!(
            %remote,
            path = req.uri().path(),
            present = presented.is_some(),
            "request without the ASP.NET Core Module's pairing token refused (400)"
        );
        Some(pages::refused(
            StatusCode::BAD_REQUEST,
            "the MS-ASPNETCORE-TOKEN header is missing or does not match",
        ))
    }

    /// Uses `access` for the access log and the request metrics (its `log.access` setting
    /// replaces [`FrontOptions::access_log`]).
    pub fn with_access_log(mut self, access: Arc<AccessLog>) -> Self {
        self.access = access;
        self
    }

    /// Serves the status page and its metrics ahead of the app.
    pub fn with_status(mut self, status: StatusPage) -> Self {
        self.status = Some(status);
        self
    }

    /// Answers the health endpoint ahead of everything else.
    pub fn with_health(mut self, health: HealthCheck) -> Self {
        self.health = Some(health);
        self
    }

    /// Routes the debug proxy's paths to `proxy` ahead of the app (debug mode only).
    pub fn with_debug_proxy(mut self, proxy: Arc<DebugProxy>) -> Self {
        self.debug = Some(proxy);
        self
    }

    /// Answers one request; `raw` is the connection scanner's verdict on its head.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
        raw: Option<RawVerdict>,
    ) -> Response<ResponseBody> {
        // From a trusted proxy, the proxy headers name the real client, scheme and host (and
        // IIS URL Rewrite's X-Original-URL the real target); `remote` is that client.
        let resolved = ProxyHeaders::from_headers(req.headers())
            .resolve(peer.ip(), &self.options.trusted_proxies);
        let remote = resolved.client.map_or(peer, |client| client.socket_addr());
        if let Some(violation) = raw.and_then(|raw| raw_violation(&req, raw)) {
            return self.refuse(req, remote, peer, violation);
        }
        match framing::check_head(req.method(), req.uri(), req.version(), req.headers()) {
            Ok(Routing::App) => {}
            Ok(routing) => return self.answer_itself(req, remote, routing),
            Err(violation) => return self.refuse(req, remote, peer, violation),
        }
        if let Some(response) = self.unpaired(&req, remote) {
            return response;
        }
        let mut req = req;
        req.headers_mut().remove(PAIRING_HEADER);
        if let Some(health) = self.health.as_ref().filter(|h| h.owns(req.uri().path())) {
            return health.handle();
        }
        if let Some(response) = self.over_field_limits(&req, remote) {
            return response;
        }
        if let Some(proxy) = self.debug.as_ref().filter(|p| p.owns(req.uri().path())) {
            return proxy.handle(req, remote, peer).await;
        }
        if let Some(status) = self.status.as_ref().filter(|s| s.owns(req.uri().path())) {
            let (parts, _body) = req.into_parts();
            return status.handle(&parts, remote);
        }
        let (mut parts, body) = req.into_parts();
        if let Some(url) = resolved.original_url.as_deref() {
            // wfastcgi served X-Original-URL as PATH_INFO (and its query as QUERY_STRING).
            match http::Uri::try_from(url) {
                Ok(uri) => parts.uri = uri,
                Err(err) => {
                    tracing::debug!(%remote, error = %err, "X-Original-URL ignored: not a valid request target")
                }
            }
        }
        let meta = self.request_meta(&parts, remote);

        let ctx = RequestContext {
            remote,
            local,
            https: resolved.https.unwrap_or(false),
            server_name: None,
            script_name: self.options.script_name.clone(),
            host: resolved.host,
        };
        let content_length = body.size_hint().exact();
        let has_body = !body.is_end_stream();
        if let (Some(limit), Some(length)) = (self.options.max_body_size, content_length) {
            if has_body && length > limit {
                tracing::warn!(%remote, method = meta.method, path = meta.path, length, limit, "request body larger than max_body_size (413)");
                let response = body_too_large(limit);
                meta.finish(None, response.status().as_u16(), 0);
                return response;
            }
        }
        let mut records = BytesMut::with_capacity(2048);
        fcgi::put_begin_request(&mut records, REQUEST_ID, Role::Responder, true);
        {
            let mut params = ParamsWriter::new(&mut records, REQUEST_ID);
            cgi::write_params(
                &mut params,
                &parts,
                &ctx,
                content_length.filter(|_| has_body),
            );
            params.finish();
        }
        if !has_body {
            fcgi::put_stream(&mut records, RecordType::Stdin, REQUEST_ID, &[]);
        }
        let body = CheckedBody { inner: body, peer };
        self.dispatch(records, has_body.then_some(body), meta).await
    }

    /// 414 or 431 for a request over `max_request_line` or `max_header_field_size`
    /// (gunicorn's `limit_request_line` and `limit_request_field_size`).
    fn over_field_limits(
        &self,
        req: &Request<Incoming>,
        remote: SocketAddr,
    ) -> Option<Response<ResponseBody>> {
        let over = |len: usize, limit: Option<u64>| limit.is_some_and(|l| len as u64 > l);
        let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if over(target, self.options.max_request_line) {
            tracing::warn!(%remote, length = target, limit = self.options.max_request_line, "request target longer than max_request_line (414)");
            return Some(pages::refused(
                http::StatusCode::URI_TOO_LONG,
                "the request target is longer than this server accepts (max_request_line)",
            ));
        }
        let field = req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .max()
            .unwrap_or(0);
        if over(field, self.options.max_header_field_size) {
            tracing::warn!(%remote, length = field, limit = self.options.max_header_field_size, "header field longer than max_header_field_size (431)");
            return Some(pages::refused(
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "a header field is longer than this server accepts (max_header_field_size)",
            ));
        }
        None
    }

    /// A malformed request head: its 4xx, `Connection: close`, a WARN naming the client.
    fn refuse(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        peer: SocketAddr,
        violation: Violation,
    ) -> Response<ResponseBody> {
        let (parts, _body) = req.into_parts();
        let status = violation.status.as_u16();
        tracing::warn!(client = %remote, %peer, status, reason = violation.reason, "malformed request refused; closing the connection");
        let response = pages::refused(violation.status, violation.reason);
        self.request_meta(&parts, remote).finish(None, status, 0);
        response
    }

    /// `OPTIONS *` (200, what the server allows) and `CONNECT` (405: the host is no proxy,
    /// so it opens no tunnel; the connection closes, as the client may already be sending
    /// tunnel bytes).
    fn answer_itself(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        routing: Routing,
    ) -> Response<ResponseBody> {
        let (parts, _body) = req.into_parts();
        let mut response = if routing == Routing::Connect {
            tracing::info!(client = %remote, target = %parts.uri, "CONNECT refused (405): fcgihost opens no tunnels");
            let mut response = pages::html(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "This server is not a proxy: it does not open CONNECT tunnels.",
                None,
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        } else {
            let mut response = Response::new(pages::full_body(Bytes::new()));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            response
        };
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        let status = response.status().as_u16();
        self.request_meta(&parts, remote).finish(None, status, 0);
        response
    }

    /// The proxies whose headers are believed (the FastCGI front door applies them too).
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.options.trusted_proxies
    }

    /// The mount prefix (`script_name`) split off request paths.
    pub fn script_name(&self) -> &str {
        &self.options.script_name
    }

    /// A request's identity for logs, the access log and the worker table: a fresh request
    /// id, its line, and its headers when the access-log format uses them.
    pub fn request_meta(&self, parts: &http::request::Parts, remote: SocketAddr) -> RequestMeta {
        RequestMeta {
            request_id: self.next_request.fetch_add(1, Ordering::Relaxed),
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            version: parts.version,
            headers: if self.access.needs_headers() {
                parts.headers.clone()
            } else {
                http::HeaderMap::new()
            },
            remote,
            received: Instant::now(),
            observer: self.access.clone(),
        }
    }

    /// Runs a request whose worker records are built (BEGIN_REQUEST, PARAMS, and the empty
    /// STDIN when there is no `body`) on a worker: waits for a debugger when
    /// `debug.wait_for_attach` asks, takes a worker (or answers why not), and starts the
    /// exchange. Both front doors (HTTP and FastCGI) end here.
    pub async fn dispatch<B: RequestBody>(
        &self,
        records: BytesMut,
        body: Option<B>,
        meta: RequestMeta,
    ) -> Response<ResponseBody> {
        let remote = meta.remote;
        let current = meta.current();
        if let Some(proxy) = &self.debug {
            // debug.wait_for_attach: hold the request (clock not started) until a debugger
            // has attached, so the first request can be debugged.
            proxy.wait_for_debugger().await;
        }
        let records = records.freeze();
        let pipelinable = body.is_none().then_some(&records);
        let lease = match self.pool.acquire(current, pipelinable).await {
            Ok(lease) => lease,
            Err(refusal) => {
                let response = self.refusal_page(&refusal, remote);
                meta.finish(None, response.status().as_u16(), 0);
                return response;
            }
        };
        let limit = self.pool.settings().request_timeout;
        let body_limit = self.options.max_body_size;
        match exchange::start(lease, records, body, meta, limit, body_limit).await {
            Ok(start) => {
                let mut response = Response::new(start.body.boxed());
                *response.status_mut() = start.head.status;
                *response.headers_mut() = start.head.headers;
                response
            }
            Err(Failure::BadGateway) => pages::bad_gateway(),
            Err(Failure::NoResponse) => pages::no_response(),
            Err(Failure::BadRequest) => {
                pages::refused(StatusCode::BAD_REQUEST, "the request body is malformed")
            }
            Err(Failure::Timeout) => pages::gateway_timeout(),
            Err(Failure::BodyTooLarge) => body_too_large(body_limit.unwrap_or(0)),
            Err(Failure::Unavailable) => pages::busy(
                "The worker serving this request was lost and no other worker became free.",
            ),
        }
    }

    fn refusal_page(&self, refusal: &Refusal, remote: SocketAddr) -> Response<ResponseBody> {
        match refusal {
            Refusal::QueueFull => pages::busy(
                "All workers are busy and the queue is full (max_queue). Try again shortly.",
            ),
            Refusal::QueueTimeout => {
                pages::busy("No worker became free within queue_timeout. Try again shortly.")
            }
            Refusal::ShuttingDown => pages::busy("The server is shutting down."),
            Refusal::AppBroken(failure) => pages::app_broken(
                &failure.traceback,
                failure.gave_up,
                self.options.debug || remote.ip().is_loopback(),
            ),
        }
    }
}

/// The raw head's violation, if `raw` is the verdict on `req`'s head (method and target
/// match; a scanner that lost the stream's thread gives none).
fn raw_violation(req: &Request<Incoming>, raw: RawVerdict) -> Option<Violation> {
    let same = raw.method == req.method().as_str() && raw.target == req.uri().to_string();
    if !same {
        tracing::debug!(
            method = raw.method,
            target = raw.target,
            "raw head verdict does not match the request; ignored"
        );
    }
    raw.violation.filter(|_| same)
}

/// What `OPTIONS *` and a CONNECT's 405 list in `Allow`: the methods the host passes to the
/// app (any other token method is passed on too; CONNECT is the one it never serves).
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

/// A request body from hyper as the exchange streams it: hyper's chunked decoder refuses
/// malformed chunk sizes and data, and this also refuses forbidden trailer fields; either
/// is logged here (WARN, naming the client) and fails the body, which the exchange answers
/// with 400.
struct CheckedBody {
    inner: Incoming,
    peer: SocketAddr,
}

/// The client's request body failed: malformed, or cut short by the client.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BodyFault(String);

impl Body for CheckedBody {
    type Data = Bytes;
    type Error = BodyFault;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyFault>>> {
        let peer = self.peer;
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Err(violation) = framing::check_trailers(trailers) {
                        tracing::warn!(client = %peer, status = 400, reason = violation.reason, "malformed request body refused; closing the connection");
                        return Poll::Ready(Some(Err(BodyFault(violation.reason.to_owned()))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                let reason = match std::error::Error::source(&err) {
                    Some(source) => format!("{err}: {source}"),
                    None => err.to_string(),
                };
                if err.is_incomplete_message() {
                    tracing::info!(client = %peer, reason, "the client left before its request body was complete");
                } else {
                    tracing::warn!(client = %peer, status = 400, reason, "malformed request body refused; closing the connection");
                }
                Poll::Ready(Some(Err(BodyFault(reason))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// 413 for a body over `max_body_size`; the connection closes (the rest of the body is
/// not read).
fn body_too_large(limit: u64) -> Response<ResponseBody> {
    let mut response = pages::html(
        http::StatusCode::PAYLOAD_TOO_LARGE,
        "Payload Too Large",
        &format!(
            "The request body is larger than this server accepts ({limit} bytes, max_body_size)."
        ),
        None,
    );
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// Binds the listen address and logs the bound address (`listening on http://…`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| crate::Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener.local_addr()?;
    tracing::info!("fcgihost listening on http://{bound}");
    Ok(listener)
}

/// Serves HTTP on a listening TCP socket that systemd handed over (socket activation) and
/// logs its address like [`bind`] does.
#[cfg(unix)]
pub fn from_listening(owned: std::os::fd::OwnedFd) -> Result<TcpListener, crate::Error> {
    let std_listener = std::net::TcpListener::from(owned);
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let bound = listener.local_addr()?;
    tracing::info!("fcgihost listening on http://{bound} (socket activation)");
    Ok(listener)
}

/// Least time between two "connection cap reached" warnings.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Accepts connections until `shutdown` turns true, then lets open connections finish
/// their current request (up to `grace`). At most `limits.max_connections` are served at
/// once: further ones are not accepted until one closes (they wait in the listen backlog).
pub async fn run(
    listener: TcpListener,
    front: Arc<Front>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    limits: ConnLimits,
) {
    // Every connection task holds a clone of `open`; `closed` sees None when all are done.
    let (open, mut closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut stop = shutdown.clone();
    let limits = Arc::new(limits);
    let slots = limits
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
    let mut warned_at: Option<Instant> = None;
    loop {
        let permit = match &slots {
            Some(slots) => {
                let quiet = warned_at.is_some_and(|t| t.elapsed() < CAP_WARNING_INTERVAL);
                if slots.available_permits() == 0 && !quiet {
                    warned_at = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached (max_connections); new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => Some(permit),
                        Err(_) => break,
                    },
                    _ = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
                }
            }
            None => None,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let local = stream.local_addr().unwrap_or(remote);
                let front = front.clone();
                let activity = Activity::for_limits(&limits);
                let service = {
                    let activity = activity.clone();
                    service_fn(move |req| {
                        let guard = activity.request_started();
                        let raw = activity.next_verdict();
                        let front = front.clone();
                        async move {
                            let response = front.handle(req, remote, local, raw).await;
                            Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, guard)))
                        }
                    })
                };
                let open = open.clone();
                let mut conn_stop = shutdown.clone();
                let limits = limits.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(WatchedIo::new(stream, activity.clone()));
                    let conn = limits
                        .builder()
                        .serve_connection(io, service)
                        .with_upgrades();
                    tokio::pin!(conn);
                    let stopping = async {
                        let _ = conn_stop.wait_for(|stop| *stop).await;
                    };
                    let result = tokio::select! {
                        result = conn.as_mut() => result,
                        () = stopping => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                        expired = activity.watchdog(&limits) => {
                            tracing::debug!(%remote, ?expired, "closing connection (header_read_timeout / keep_alive_timeout)");
                            Ok(())
                        }
                    };
                    match result {
                        Err(err) if err.is_parse() || err.is_parse_too_large() => {
                            // hyper answered it (400, or 431 for a head over the limit).
                            let status = if err.is_parse_too_large() { 431 } else { 400 };
                            tracing::warn!(client = %remote, status, reason = %err, "malformed request refused; closing the connection");
                        }
                        Err(err) => {
                            tracing::debug!(%remote, error = %err, "connection ended with an error");
                        }
                        Ok(()) => {}
                    }
                    drop(permit);
                    drop(open);
                });
            }
            _ = async { let _ = stop.wait_for(|stop| *stop).await; } => break,
        }
    }
    drop(listener);
    drop(open);
    if tokio::time::timeout(grace, closed.recv()).await.is_err() {
        tracing::warn!("connections still open after graceful_timeout");
    }
}

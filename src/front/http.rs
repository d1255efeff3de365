//! The HTTP listener: accepts connections, serves HTTP/1.1 on each with hyper, and routes
//! every request to a worker through the pool (the debug proxy hooks in ahead of the app).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::ResponseBody;
use crate::debug::proxy::DebugProxy;
use crate::gateway::cgi::{self, RequestContext};
use crate::gateway::fcgi::{self, ParamsWriter, RecordType, Role};
use crate::pages;
use crate::pool::exchange::{self, Failure, RequestMeta, REQUEST_ID};
use crate::pool::{CurrentRequest, Pool, Refusal};

/// How requests are mapped and answered (from the config).
#[derive(Debug, Clone)]
pub struct FrontOptions {
    /// Mount prefix split off PATH_INFO into SCRIPT_NAME.
    pub script_name: String,
    /// One access-log line per request.
    pub access_log: bool,
    /// Debug mode: tracebacks on error pages for everyone, not only loopback.
    pub debug: bool,
}

/// Routes requests; shared by every connection.
pub struct Front {
    pool: Pool,
    options: FrontOptions,
    next_request: AtomicU64,
    /// The `/ptvsd` proxy, only in debug mode (otherwise that path belongs to the app).
    debug: Option<Arc<DebugProxy>>,
}

impl Front {
    /// Creates the router over `pool`.
    pub fn new(pool: Pool, options: FrontOptions) -> Self {
        Self {
            pool,
            options,
            next_request: AtomicU64::new(1),
            debug: None,
        }
    }

    /// Routes the debug proxy's paths to `proxy` ahead of the app (debug mode only).
    pub fn with_debug_proxy(mut self, proxy: Arc<DebugProxy>) -> Self {
        self.debug = Some(proxy);
        self
    }

    /// Answers one request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Response<ResponseBody> {
        if let Some(proxy) = self.debug.as_ref().filter(|p| p.owns(req.uri().path())) {
            return proxy.handle(req, remote).await;
        }
        let received = Instant::now();
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let meta = RequestMeta {
            request_id,
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            remote,
            received,
            access_log: self.options.access_log,
        };

        let ctx = RequestContext {
            remote,
            local,
            https: false,
            server_name: None,
            script_name: self.options.script_name.clone(),
        };
        let content_length = body.size_hint().exact();
        let has_body = !body.is_end_stream();
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

        let current = CurrentRequest {
            request_id,
            method: meta.method.clone(),
            path: meta.path.clone(),
            started: received,
        };
        if let Some(proxy) = &self.debug {
            // debug.wait_for_attach: hold the request (clock not started) until a debugger
            // has attached, so the first request can be debugged.
            proxy.wait_for_debugger().await;
        }
        let lease = match self.pool.acquire(current).await {
            Ok(lease) => lease,
            Err(refusal) => {
                let response = self.refusal_page(&refusal, remote);
                exchange::log_access(&meta, usize::MAX, response.status().as_u16(), 0);
                return response;
            }
        };
        let limit = self.pool.settings().request_timeout;
        match exchange::start(lease, records, has_body.then_some(body), meta, limit).await {
            Ok(start) => {
                let mut response = Response::new(start.body.boxed());
                *response.status_mut() = start.head.status;
                *response.headers_mut() = start.head.headers;
                response
            }
            Err(Failure::BadGateway) => pages::bad_gateway(),
            Err(Failure::Timeout) => pages::gateway_timeout(),
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

/// Accepts connections until `shutdown` turns true, then lets open connections finish
/// their current request (up to `grace`).
pub async fn run(
    listener: TcpListener,
    front: Arc<Front>,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    // Every connection task holds a clone of `open`; `closed` sees None when all are done.
    let (open, mut closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut stop = shutdown.clone();
    loop {
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
                let service = service_fn(move |req| {
                    let front = front.clone();
                    async move { Ok::<_, Infallible>(front.handle(req, remote, local).await) }
                });
                let open = open.clone();
                let mut conn_stop = shutdown.clone();
                tokio::spawn(async move {
                    let conn = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
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
                    };
                    if let Err(err) = result {
                        tracing::debug!(%remote, error = %err, "connection ended with an error");
                    }
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

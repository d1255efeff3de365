//! Connection limits of the front door against oversized requests and clients that hold
//! connections open: the request-head size and header-count limits (hyper answers 431),
//! the header read timeout (slowloris), the idle keep-alive timeout, and the cap on
//! concurrent connections (applied by the accept loop in `http`).
//!
//! hyper's own `header_read_timeout` starts as soon as a connection is ready for its next
//! request, so it would also end idle keep-alive connections at the same moment; the two
//! timeouts are therefore kept here, by a per-connection watchdog that sees the connection's
//! reads ([`WatchedIo`]) and its requests in flight ([`TrackedBody`]): while no request is
//! in flight, a connection that has sent nothing since its last response is closed after
//! `keep_alive_timeout` (`header_read_timeout` before its first request), and one that has
//! started a request head must complete it within `header_read_timeout`. A request in
//! flight (body upload or response included) is never cut by either.
//!
//! The same read side feeds the connection's [`StreamScanner`], whose verdicts on the raw
//! request heads the router takes, one per request ([`Activity::next_verdict`]).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::framing::{RawVerdict, StreamScanner};

/// The smallest read-buffer cap hyper accepts (it asserts on less).
const HYPER_MIN_MAX_BUF: usize = 8192;

/// Room beyond the largest request head in a connection's read buffer. hyper keeps reading
/// a connection whose response is pending (to notice the client leaving), so a queued
/// upload fills its buffer up to the cap: hyper's own cap (408 KiB) made 30 queued 1 MiB
/// uploads hold 12 MiB; the head limit plus this holds about 2 MiB.
const READ_BUF_SLACK: usize = 8192;

/// hyper's default number of headers (above it, hyper allocates the parser's table per
/// request, so it is only set when different).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The limits of one listener, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    /// Largest request head in bytes (431 above).
    pub max_header_size: usize,
    /// Most header fields per request (431 above).
    pub max_headers: usize,
    /// Time to complete a request head once started (and to start the first one).
    pub header_read_timeout: Option<Duration>,
    /// Idle time allowed between requests; `None` turns keep-alive off.
    pub keep_alive_timeout: Option<Duration>,
    /// Most connections served at once; more wait in the listen backlog.
    pub max_connections: Option<usize>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_header_size: 64 * 1024,
            max_headers: HYPER_DEFAULT_MAX_HEADERS,
            header_read_timeout: Some(Duration::from_secs(30)),
            keep_alive_timeout: Some(Duration::from_secs(75)),
            max_connections: Some(1000),
        }
    }
}

impl ConnLimits {
    /// A hyper HTTP/1 connection builder with these limits.
    pub fn builder(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .keep_alive(self.keep_alive_timeout.is_some())
            .max_header_size(self.max_header_size)
            // The watchdog keeps the header read timeout (see the module docs).
            .header_read_timeout(None)
            // Response header names as apps write them (`X-Frame-Options`, `Set-Cookie`),
            // not lower-cased: hyper cannot keep an app's own spelling, so title case.
            .title_case_headers(true);
        builder.max_buf_size(
            self.max_header_size
                .saturating_add(READ_BUF_SLACK)
                .max(HYPER_MIN_MAX_BUF),
        );
        if self.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            builder.max_headers(self.max_headers);
        }
        builder
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head was not complete within `header_read_timeout`.
    HeaderRead,
    /// The connection sat idle past `keep_alive_timeout`.
    Idle,
}

#[derive(Debug)]
struct ActivityState {
    /// Requests whose head was read and whose response body is not finished.
    in_flight: usize,
    /// When the connection last became idle (opened, or a response finished).
    idle_since: Instant,
    /// When the first byte of the next request head arrived.
    head_started: Option<Instant>,
    /// No request has been read yet.
    first: bool,
}

/// What a connection is doing, shared by its I/O wrapper, its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<ActivityState>,
    changed: Notify,
    /// Follows the raw request stream (see [`super::framing`]).
    scanner: Mutex<StreamScanner>,
}

impl Activity {
    /// A fresh connection: idle since now, no request yet, its raw heads scanned under
    /// `limits`.
    pub fn for_limits(limits: &ConnLimits) -> Arc<Self> {
        let activity = Self::new();
        *activity.scanner() = StreamScanner::new(limits.max_header_size, limits.max_headers);
        activity
    }

    /// A fresh connection under the default limits.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                idle_since: Instant::now(),
                head_started: None,
                first: true,
            }),
            changed: Notify::new(),
            scanner: Mutex::new(StreamScanner::new(
                ConnLimits::default().max_header_size,
                HYPER_DEFAULT_MAX_HEADERS,
            )),
        })
    }

    fn scanner(&self) -> MutexGuard<'_, StreamScanner> {
        self.scanner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The raw verdict on the oldest request head hyper has not yet handed over.
    pub fn next_verdict(&self) -> Option<RawVerdict> {
        self.scanner().next_verdict()
    }

    fn lock(&self) -> MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bytes_read(&self, bytes: &[u8]) {
        self.scanner().feed(bytes);
        let mut state = self.lock();
        if state.in_flight == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Marks a request in flight until the returned guard drops (put it in the response
    /// body with [`TrackedBody`]).
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        {
            let mut state = self.lock();
            state.in_flight += 1;
            state.head_started = None;
            state.first = false;
        }
        self.changed.notify_one();
        RequestGuard(self.clone())
    }

    fn request_finished(&self) {
        {
            let mut state = self.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.idle_since = Instant::now();
            }
        }
        self.changed.notify_one();
    }

    /// The moment the connection should be closed in its current state, and why.
    fn deadline(&self, limits: &ConnLimits) -> Option<(Instant, Expired)> {
        let state = self.lock();
        if state.in_flight > 0 {
            return None;
        }
        if let Some(started) = state.head_started {
            return limits
                .header_read_timeout
                .map(|d| (started + d, Expired::HeaderRead));
        }
        let idle = if state.first {
            limits.header_read_timeout
        } else {
            limits.keep_alive_timeout
        };
        idle.map(|d| (state.idle_since + d, Expired::Idle))
    }

    /// Resolves when the connection has broken a time limit (never while a request is in
    /// flight).
    pub async fn watchdog(&self, limits: &ConnLimits) -> Expired {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.deadline(limits) {
                None => changed.await,
                Some((at, why)) => {
                    tokio::select! {
                        biased;
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(at) => {
                            if self.deadline(limits).is_some_and(|(now_at, _)| now_at <= Instant::now()) {
                                return why;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Ends a request's time "in flight" when dropped (with the response body).
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A client socket that reports its reads to the connection's [`Activity`].
#[derive(Debug)]
pub struct WatchedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> WatchedIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read(&buf.filled()[before..]);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request "in flight" until hyper is done with it.
pub struct TrackedBody<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> TrackedBody<B> {
    /// Wraps a response body with the guard of its request.
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits() -> ConnLimits {
        ConnLimits {
            header_read_timeout: Some(MS * 100),
            keep_alive_timeout: Some(MS * 300),
            ..ConnLimits::default()
        }
    }

    #[tokio::test]
    async fn a_silent_new_connection_gets_the_header_timeout() {
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(activity.watchdog(&limits()).await, Expired::Idle);
        let took = start.elapsed();
        assert!(took >= MS * 100 && took < MS * 290, "{took:?}");
    }

    #[tokio::test]
    async fn a_request_in_flight_is_never_cut_and_idle_gets_keep_alive() {
        let activity = Activity::new();
        let guard = activity.request_started();
        let limits = limits();
        let watch = activity.watchdog(&limits);
        tokio::pin!(watch);
        assert!(tokio::time::timeout(MS * 500, &mut watch).await.is_err());
        let idle = Instant::now();
        drop(guard);
        assert_eq!(watch.await, Expired::Idle);
        let took = idle.elapsed();
        assert!(took >= MS * 300 && took < MS * 1000, "{took:?}");
    }

    #[tokio::test]
    async fn a_started_head_must_finish_within_the_header_timeout() {
        let activity = Activity::new();
        drop(activity.request_started());
        activity.bytes_read(b"G");
        let started = Instant::now();
        assert_eq!(activity.watchdog(&limits()).await, Expired::HeaderRead);
        let took = started.elapsed();
        assert!(took >= MS * 100 && took < MS * 290, "{took:?}");
    }
}

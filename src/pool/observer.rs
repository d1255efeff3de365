//! What the pool reports about the requests it runs, to whoever owns them: the front door
//! hands each request an observer (its access log and metrics) in [`RequestMeta`], and the
//! exchange tells it how the request ended, and when it turned slow or timed out. The pool
//! formats nothing and counts nothing itself; it knows no log format and no metrics
//! endpoint.

use std::sync::Arc;
use std::time::Instant;

use super::CurrentRequest;

/// Identity of a request for logs: what the worker table shows, and what the observer may
/// want to record about it (the HTTP view: query, version, headers, remote address).
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: u64,
    pub method: String,
    pub path: String,
    /// The query string, if the URL had one.
    pub query: Option<String>,
    /// The client's HTTP version.
    pub version: http::Version,
    /// A copy of the request headers when the observer asked for them (else empty).
    pub headers: http::HeaderMap,
    pub remote: std::net::SocketAddr,
    pub received: Instant,
    /// Where the finished request is reported.
    pub observer: Arc<dyn RequestObserver>,
}

impl RequestMeta {
    /// The request as the worker table shows it while it runs.
    pub fn current(&self) -> CurrentRequest {
        CurrentRequest {
            request_id: self.request_id,
            method: self.method.clone(),
            path: self.path.clone(),
            started: self.received,
        }
    }

    /// Reports the end of the request to its observer; `worker` is the id and pid that
    /// served it, if any.
    pub fn finish(&self, worker: Option<(usize, u32)>, status: u16, bytes: u64) {
        self.finish_with(Outcome {
            worker,
            status,
            bytes,
            client_aborted: false,
        });
    }

    /// Reports the end of the request with every detail of [`Outcome`].
    pub fn finish_with(&self, outcome: Outcome) {
        self.observer.finished(self, outcome);
    }
}

/// How a request ended, as its observer learns it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The worker id and pid that served it (none when it was refused or answered at the
    /// door).
    pub worker: Option<(usize, u32)>,
    /// The response status sent (or the one intended when the client left).
    pub status: u16,
    /// Response body bytes handed to the client.
    pub bytes: u64,
    /// The client went away before the response was complete.
    pub client_aborted: bool,
}

/// Receives what the pool learns about a request; one per host, shared by every request.
pub trait RequestObserver: Send + Sync + std::fmt::Debug {
    /// The request ended (served, failed, or refused): called once per request.
    fn finished(&self, meta: &RequestMeta, outcome: Outcome);
    /// The request's active time passed `slow_request_threshold`.
    fn slow(&self, meta: &RequestMeta);
    /// The request ran out of `request_timeout`; its worker is killed.
    fn timed_out(&self, meta: &RequestMeta);
}

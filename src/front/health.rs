//! The health endpoint (`health_path`, default `/_fcgihost/health`) that balancers, systemd
//! watchers and Kubernetes probes ask: any client, no secret, nothing revealed beyond the
//! worker counts and the instance id.
//!
//! It answers 200 while at least one worker is ready (idle or busy) and 503 while the first
//! workers are still starting, when every worker is down, and from the first moment of a
//! drain (SIGTERM/SIGINT), so a balancer stops sending before the host stops serving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};

use super::ResponseBody;
use crate::pages;
use crate::pool::{Phase, Pool, WorkerSnapshot};

/// What the health endpoint reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// At least one worker is ready.
    Ok,
    /// No worker has been ready yet.
    Starting,
    /// Workers were ready before, none is now (crashed, app broken, respawning).
    Down,
    /// The host is draining for shutdown.
    Draining,
}

impl Health {
    /// The word in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Starting => "starting",
            Health::Down => "down",
            Health::Draining => "draining",
        }
    }
}

/// Whether a worker can take a request now.
pub fn is_ready(worker: &WorkerSnapshot) -> bool {
    matches!(worker.phase, Phase::Idle | Phase::Busy)
}

/// The host's drain flag, shared by the health endpoint and whoever starts the drain.
#[derive(Debug, Clone, Default)]
pub struct DrainFlag(Arc<AtomicBool>);

impl DrainFlag {
    /// Marks the host as draining: from now on health answers 503.
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the drain has started.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The endpoint.
pub struct HealthCheck {
    path: String,
    pool: Pool,
    instance_id: String,
    draining: DrainFlag,
    was_ready: AtomicBool,
}

impl HealthCheck {
    /// Health at `path` for `pool`; `draining` turns it to 503 when set.
    pub fn new(path: &str, pool: Pool, instance_id: String, draining: DrainFlag) -> Self {
        Self {
            path: path.trim_end_matches('/').to_owned(),
            pool,
            instance_id,
            draining,
            was_ready: AtomicBool::new(false),
        }
    }

    /// Whether a request path is the health endpoint.
    pub fn owns(&self, path: &str) -> bool {
        path.strip_suffix('/').unwrap_or(path) == self.path
    }

    /// The state now, and the ready and total worker counts.
    pub fn state(&self) -> (Health, usize, usize) {
        let workers = self.pool.snapshot();
        let ready = workers.iter().filter(|w| is_ready(w)).count();
        if ready > 0 {
            self.was_ready.store(true, Ordering::Relaxed);
        }
        let health = if self.draining.is_set() {
            Health::Draining
        } else if ready > 0 {
            Health::Ok
        } else if self.was_ready.load(Ordering::Relaxed) {
            Health::Down
        } else {
            Health::Starting
        };
        (health, ready, workers.len())
    }

    /// Answers a health request (any method; HEAD gets the status without a body).
    pub fn handle(&self) -> Response<ResponseBody> {
        let (health, ready, total) = self.state();
        let body = serde_json::json!({
            "status": health.as_str(),
            "ready_workers": ready,
            "workers": total,
            "instance": self.instance_id,
        });
        let mut response = Response::new(pages::full_body(format!("{body}\n")));
        *response.status_mut() = if health == Health::Ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if health == Health::Draining {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

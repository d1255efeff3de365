//! The lease: one request's exclusive use of one worker, and what its end does to the
//! worker (counted, recycled, connection reused or replaced).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::conn::WorkerConn;
use super::control::Control;
use super::dispatch::hand_on;
use super::process;
use super::worker::SlotSignals;
use super::{CurrentRequest, Phase, Pool, Refusal, Shared};
use crate::deadline::RequestClock;

/// Exclusive use of one worker for one request. Dropping it without [`Lease::release`]
/// discards the connection (its state is unknown) and opens a fresh one. A request
/// written behind a running one (pipelining) gets the connection from its predecessor
/// ([`Lease::connection`]).
pub struct Lease {
    /// The host's id of the request (worker table, clocks).
    pub(super) request_id: u64,
    /// Threads of the worker process (requests it runs at once).
    pub(super) threads: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) signals: Arc<SlotSignals>,
    pub(super) worker: usize,
    pub(super) generation: u64,
    pub(super) pid: u32,
    /// The FastCGI request id of this request on the connection.
    pub(super) fcgi_id: u16,
    pub(super) conn: Option<WorkerConn>,
    /// For a request written behind a running one: where the connection arrives.
    pub(super) relay: Option<oneshot::Receiver<WorkerConn>>,
    /// The request was written behind a running one (its records are in the outbox).
    pub(super) behind: bool,
    /// The request has the connection (it runs, or ran): its end is accounted.
    pub(super) started: bool,
    pub(super) reusable: bool,
    /// The worker was killed (or broke its connection): no new connection is opened to it;
    /// its supervisor respawns it.
    pub(super) killed: bool,
    /// The request timed out on a worker with other requests running: its connection is
    /// dropped and no new one is opened (the worker is drained, then killed).
    pub(super) draining: bool,
}

impl Lease {
    /// The worker's id.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The FastCGI request id this request's records must carry.
    pub fn fcgi_id(&self) -> u16 {
        self.fcgi_id
    }

    /// True when the request's records were written behind a running request (they are
    /// on their way; the exchange must not write them again).
    pub fn written_behind(&self) -> bool {
        self.behind
    }

    /// Takes the connection for the exchange, once this request's turn comes: at once on
    /// an idle worker; behind a running request, when the requests before it end.
    /// [`Lease::restore_conn`] gives it back clean. None when the worker was lost before
    /// this request started (it never ran: [`Lease::requeue`] finds it another worker).
    pub async fn take_conn(&mut self) -> Option<WorkerConn> {
        if let Some(relay) = self.relay.take() {
            let conn = relay.await.ok()?;
            self.started = true;
            return Some(conn);
        }
        self.conn.take()
    }

    /// Sends a request whose worker was lost before it started back to the dispatcher,
    /// at the front of the queue; `records` are its records as built (no body).
    pub async fn requeue(self, current: CurrentRequest, records: &Bytes) -> Result<Lease, Refusal> {
        let pool = Pool {
            shared: self.shared.clone(),
        };
        drop(self);
        pool.acquire_at(current, Some(records), true).await
    }

    /// Takes the records of the requests written behind this one that are not yet on
    /// the connection (the holder of the connection writes them, in order).
    pub fn take_outbox(&self) -> Option<Bytes> {
        let mut state = self.shared.lock();
        let worker = &mut state.workers[self.worker];
        if worker.generation != self.generation || worker.outbox.is_empty() {
            return None;
        }
        Some(worker.outbox.split().freeze())
    }

    /// Resolves when records may be waiting in the outbox ([`Lease::take_outbox`]).
    pub async fn outbox_filled(&self) {
        self.signals.outbox.notified().await;
    }

    /// Returns the connection after a complete request (END_REQUEST seen, STDIN done),
    /// so the next request reuses it.
    pub fn restore_conn(&mut self, conn: WorkerConn) {
        self.conn = Some(conn);
        self.reusable = true;
    }

    /// Kills the worker (timeout, protocol violation, or it dropped the connection
    /// mid-request); its supervisor respawns it.
    pub fn kill_worker(&mut self) {
        self.killed = true;
        process::kill(self.pid);
    }

    /// True when the worker runs requests on several threads (a timeout then drains it
    /// instead of killing it at once).
    pub fn shares_worker(&self) -> bool {
        self.threads > 1
    }

    /// The timed-out request's end on a worker that runs other requests too (`threads`):
    /// the worker takes no new request, the others may finish within `grace`
    /// (`graceful_timeout`), then it is killed and its supervisor replaces it. With nothing
    /// else running it is killed at once.
    pub fn drain_then_kill(&mut self, grace: std::time::Duration) {
        self.draining = true;
        let shared = self.shared.clone();
        let (id, generation, pid) = (self.worker, self.generation, self.pid);
        {
            let mut state = shared.lock();
            let worker = &mut state.workers[id];
            if worker.generation == generation {
                worker.retiring = true;
            }
        }
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + grace;
            loop {
                let notified = shared.idle_changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let others = {
                    let state = shared.lock();
                    let worker = &state.workers[id];
                    if worker.generation != generation || !worker.in_service() {
                        return;
                    }
                    worker.in_flight
                };
                if others == 0 {
                    tracing::info!(worker = id, pid, "timed-out worker drained; killing it");
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    tracing::warn!(
                        worker = id,
                        pid,
                        running = others,
                        "timed-out worker still busy after graceful_timeout; killing it"
                    );
                    break;
                }
            }
            process::kill(pid);
        });
    }

    /// Follows the debugger's hold on this worker.
    pub fn pause_signal(&self) -> watch::Receiver<bool> {
        self.signals.paused.subscribe()
    }

    /// Publishes the request's clock (after it starts, pauses or resumes) for the status
    /// page.
    pub fn publish_clock(&self, clock: &RequestClock) {
        self.signals
            .publish_clock(self.generation, self.request_id, clock);
    }

    /// The control channel of this lease's worker process (None for a custom
    /// `worker.command`, or once the process is gone).
    pub fn control(&self) -> Option<Arc<Control>> {
        self.signals.control(self.generation)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.started {
            if let Some(relay) = self.relay.take() {
                self.shared
                    .abandon_behind(self.worker, self.generation, relay);
            }
            return;
        }
        self.signals.drop_clock(self.generation, self.request_id);
        let conn = self.conn.take();
        let mut state = self.shared.lock();
        let worker = &mut state.workers[self.worker];
        if worker.generation != self.generation || worker.phase != Phase::Busy {
            // The worker was replaced or died meanwhile; its successor is already in service.
            return;
        }
        worker.forget(self.request_id);
        worker.requests += 1;
        worker.served += 1;
        if !worker.retiring && self.shared.due_for_recycling(worker) {
            worker.retiring = true;
            worker.signals.recycle.notify_one();
        }
        if self.draining && !self.killed {
            drop(conn);
            worker.end_slot(None);
            self.shared.settle(state);
            return;
        }
        let conn = match conn {
            Some(conn) if self.reusable && !self.killed => Some(conn),
            // A dying process may still accept on its socket: never reconnect (hand_on
            // sends what was written behind this request elsewhere).
            other => {
                drop(other);
                if self.killed {
                    None
                } else {
                    worker.fresh_conn()
                }
            }
        };
        hand_on(worker, conn);
        self.shared.settle(state);
    }
}

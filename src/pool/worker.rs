//! One worker slot's state: its process, connections, counters and signals, shared
//! between its supervisor, the dispatcher and the pages.
//!
//! A worker with `threads = N` runs up to N requests at once, **one FastCGI connection per
//! thread** (each carries one request at a time; the worker answers `FCGI_MPXS_CONNS` 0).
//! Multiplexed request ids on one connection were the other choice; a connection per
//! thread was taken because FastCGI has no per-request flow control: on a shared
//! connection a client that reads its response slowly would either stall every other
//! response behind it or make the host buffer without bound, while with its own connection
//! the socket's backpressure reaches exactly the thread that writes. It also keeps one
//! exchange per connection (the single-request code, pipelining and abort handling stay as
//! they are), lets a lost or timed-out request's connection be dropped without touching its
//! neighbours', and keeps the Python worker a plain accept loop per thread. The cost, a
//! socket per thread, is small next to a thread's stack.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use bytes::BytesMut;
use tokio::sync::{watch, Notify};

use super::conn::WorkerConn;
use super::control::Control;
use super::pipeline::Follower;
use super::transport::WorkerAddr;
use super::{CurrentRequest, Phase};
use crate::deadline::RequestClock;

/// One worker's state, shared between its supervisor, the dispatcher and the pages.
#[derive(Debug)]
pub struct WorkerState {
    pub id: usize,
    pub pid: Option<u32>,
    pub phase: Phase,
    pub debug_port: Option<u16>,
    /// Number of debugger connections open to this worker.
    pub debuggers: u32,
    pub requests: u64,
    pub respawns: u32,
    /// The requests running on it now (several with `threads`), oldest first.
    pub running: Vec<CurrentRequest>,
    /// Requests this process runs at once (`threads` when it started).
    pub threads: usize,
    /// Connections (slots) in use: at most `threads` (with pipelining, a chain of
    /// requests on one connection counts once).
    pub(super) in_flight: usize,
    pub(super) generation: u64,
    /// Idle connections, one per free thread.
    pub(super) conns: Vec<WorkerConn>,
    /// When it last finished a request or came into service (dynamic pool: idle workers
    /// above the floor stop after `idle_timeout`).
    pub(super) idle_since: Instant,
    pub(super) signals: Arc<SlotSignals>,
    /// A supervisor task runs this slot (false once the slot was removed by a resize).
    pub(super) supervised: bool,
    /// Set once the worker is due for recycling: it takes no new request while its
    /// replacement starts.
    pub(super) retiring: bool,
    /// Requests served by the current process, and the count at which it is recycled.
    pub(super) served: u64,
    pub(super) recycle_after: u64,
    /// Where its FastCGI connections go (None while no worker is in service).
    pub(super) addr: Option<WorkerAddr>,
    /// Requests written behind the running one (pipelining), in order.
    pub(super) followers: VecDeque<Follower>,
    /// Followers' records not yet written to the connection: the exchange holding the
    /// connection writes them, in order, when `signals.outbox` wakes it.
    pub(super) outbox: BytesMut,
    /// The running request has no body, so followers may be written behind it.
    pub(super) pipelinable: bool,
    /// The FastCGI request id of the running request (followers take the next ones).
    pub(super) running_fcgi_id: u16,
    /// When the running request got the connection (followers only within
    /// `pipeline_window` of it).
    pub(super) running_since: Instant,
}

impl WorkerState {
    /// A slot with no process yet; `supervised` says whether a supervisor is being started
    /// for it.
    pub(super) fn new(id: usize, supervised: bool) -> Self {
        WorkerState {
            id,
            pid: None,
            phase: Phase::Starting,
            debug_port: None,
            debuggers: 0,
            requests: 0,
            respawns: 0,
            running: Vec::new(),
            threads: 1,
            in_flight: 0,
            generation: 0,
            conns: Vec::new(),
            idle_since: Instant::now(),
            addr: None,
            signals: SlotSignals::new(),
            supervised,
            retiring: false,
            served: 0,
            recycle_after: u64::MAX,
            followers: VecDeque::new(),
            outbox: BytesMut::new(),
            pipelinable: false,
            running_fcgi_id: FIRST_FCGI_ID,
            running_since: Instant::now(),
        }
    }

    /// Sends every follower back to the dispatcher: the connection they were written on
    /// is gone before they started (dropping a relay tells its exchange).
    pub(super) fn drop_followers(&mut self) {
        self.followers.clear();
        self.outbox.clear();
    }

    /// Ready or serving: its process is in service.
    pub(super) fn in_service(&self) -> bool {
        matches!(self.phase, Phase::Idle | Phase::Busy)
    }

    /// In service, not retiring, with a free thread and a connection for it.
    pub(super) fn has_free_slot(&self) -> bool {
        self.in_service()
            && !self.retiring
            && self.in_flight < self.threads
            && !self.conns.is_empty()
    }

    /// Takes the worker out of service (its process is gone or going): no connection, no
    /// request counted on it.
    pub(super) fn out_of_service(&mut self) {
        self.conns.clear();
        self.drop_followers();
        self.running.clear();
        self.in_flight = 0;
    }

    /// One slot (connection) comes back or is given up: the worker is idle again when it
    /// was the last one in use.
    pub(super) fn end_slot(&mut self, conn: Option<WorkerConn>) {
        self.conns.extend(conn);
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.phase = Phase::Idle;
            self.idle_since = Instant::now();
        } else {
            self.phase = Phase::Busy;
        }
    }

    /// Forgets a request that ended (it leaves the worker table).
    pub(super) fn forget(&mut self, request_id: u64) {
        if let Some(at) = self.running.iter().position(|r| r.request_id == request_id) {
            self.running.remove(at);
        }
    }

    /// Opens a fresh connection in place of one whose state is unknown; the requests
    /// written behind on the old one go back to the dispatcher. None when the worker does
    /// not accept (its supervisor respawns it).
    pub(super) fn fresh_conn(&mut self) -> Option<WorkerConn> {
        self.drop_followers();
        self.addr
            .as_ref()
            .and_then(|addr| WorkerConn::connect(addr).ok())
    }
}

/// The FastCGI request id of a request on an idle worker.
pub(super) const FIRST_FCGI_ID: u16 = 1;

/// Per-worker signals, shared outside the lock with the supervisor and leases.
#[derive(Debug)]
pub(super) struct SlotSignals {
    /// True while a debugger holds the worker paused.
    pub(super) paused: watch::Sender<bool>,
    /// Asks the supervisor to replace its worker (recycling).
    pub(super) recycle: Notify,
    /// The clocks of the requests in progress (kept up to date by their exchanges), for
    /// the status page's running and paused times: (generation of the worker process,
    /// request id, clock).
    pub(super) clocks: Mutex<Vec<(u64, u64, RequestClock)>>,
    /// Control channels of this slot's live worker processes by generation (a replaced
    /// worker may still finish a request while its successor serves).
    pub(super) controls: Mutex<Vec<(u64, Weak<Control>)>>,
    /// Wakes the exchange holding the connection: followers' records wait in the outbox.
    pub(super) outbox: Notify,
}

impl SlotSignals {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            paused: watch::channel(false).0,
            recycle: Notify::new(),
            clocks: Mutex::new(Vec::new()),
            controls: Mutex::new(Vec::new()),
            outbox: Notify::new(),
        })
    }

    /// Records the control channel of the worker process of `generation` (the supervisor
    /// keeps the only strong reference; the entry dies with the process).
    pub(super) fn register_control(&self, generation: u64, control: &Arc<Control>) {
        let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        controls.retain(|(_, c)| c.strong_count() > 0);
        controls.push((generation, Arc::downgrade(control)));
    }

    /// The control channel of the worker process of `generation`, while it lives.
    pub(super) fn control(&self, generation: u64) -> Option<Arc<Control>> {
        self.controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(g, _)| *g == generation)
            .and_then(|(_, c)| c.upgrade())
    }

    pub(super) fn clocks(&self) -> MutexGuard<'_, Vec<(u64, u64, RequestClock)>> {
        self.clocks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes (or replaces) the clock of request `request_id` on process `generation`.
    pub(super) fn publish_clock(&self, generation: u64, request_id: u64, clock: &RequestClock) {
        let mut clocks = self.clocks();
        match clocks
            .iter_mut()
            .find(|(g, r, _)| *g == generation && *r == request_id)
        {
            Some(entry) => entry.2 = clock.clone(),
            None => clocks.push((generation, request_id, clock.clone())),
        }
    }

    /// Removes the clock of a request that ended.
    pub(super) fn drop_clock(&self, generation: u64, request_id: u64) {
        self.clocks()
            .retain(|(g, r, _)| !(*g == generation && *r == request_id));
    }
}

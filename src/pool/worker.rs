//! One worker slot's state: its process, connection, counters and signals, shared between
//! its supervisor, the dispatcher and the pages.

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
    pub current: Option<CurrentRequest>,
    pub(super) generation: u64,
    pub(super) conn: Option<WorkerConn>,
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
            current: None,
            generation: 0,
            conn: None,
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
    /// The clock of the request in progress (kept up to date by the exchange), for the
    /// status page's running and paused times, with the generation of its worker process.
    pub(super) clock: Mutex<Option<(u64, RequestClock)>>,
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
            clock: Mutex::new(None),
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

    pub(super) fn clock(&self) -> MutexGuard<'_, Option<(u64, RequestClock)>> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

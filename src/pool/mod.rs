//! The worker pool: a set of worker slots, each supervised by its own task
//! ([`supervisor`]), and the dispatcher that hands each request to an idle worker or
//! parks it in a bounded queue. A worker serves one request at a time, so pause, timeout
//! and kill act on exactly one request.
//!
//! Pipelining (`pipeline_depth`): when every worker is busy, a request without a body may
//! be written behind the running one on a busy worker's connection, so the worker finds
//! it waiting instead of sleeping until the host sends it. It still runs strictly after
//! the one before it; its request clock starts only then. If the worker dies, is killed
//! or its connection is dropped before the request starts, the request goes back to the
//! front of the queue and runs elsewhere. Off in debug mode (a paused request would hold
//! the ones behind it) and for a custom `worker.command`.

pub mod conn;
pub mod control;
pub mod exchange;
pub mod process;
pub mod runtime;
pub mod supervisor;
pub mod transport;
pub mod watcher;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::sync::{oneshot, watch, Notify};

use crate::deadline::RequestClock;
use conn::WorkerConn;
use control::Control;
pub use process::resident_bytes;
use process::WorkerSpec;
use runtime::RuntimeDir;
use transport::WorkerAddr;

/// Pool-wide settings; replaced as a whole on reload (SIGHUP).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub workers: usize,
    pub max_queue: usize,
    /// Requests that may wait behind the running one on a busy worker's connection.
    pub pipeline_depth: usize,
    /// ...only while the running one has run less than this.
    pub pipeline_window: Duration,
    pub queue_timeout: Duration,
    pub request_timeout: Option<Duration>,
    /// `debug.max_pause`: longest time one debugger pause stops a request's clock.
    pub max_pause: Option<Duration>,
    /// `slow_request_threshold`: active (unpaused) time after which a request's worker is
    /// asked for its Python stacks, which are logged (PHP-FPM's slowlog).
    pub slow_request_threshold: Option<Duration>,
    pub startup_timeout: Duration,
    pub rapid_fails_per_minute: u32,
    pub recycle: RecyclePolicy,
    pub debug: bool,
    pub spec: WorkerSpec,
}

/// When a worker is replaced by a fresh one (gracefully: the replacement starts first, the
/// old one finishes its request). IIS `instanceMaxRequests`, gunicorn `--max-requests`.
#[derive(Debug, Clone, Default)]
pub struct RecyclePolicy {
    /// After this many requests (0 = never)...
    pub max_requests: u64,
    /// ...plus a random 0..=jitter more, so workers do not all recycle together.
    pub max_requests_jitter: u64,
    /// When resident memory passes this many bytes (checked between requests).
    pub max_rss: Option<u64>,
    /// When the worker has lived this long.
    pub max_lifetime: Option<Duration>,
}

impl RecyclePolicy {
    /// The request count after which a new worker process is recycled.
    fn request_limit(&self) -> u64 {
        if self.max_requests == 0 {
            return u64::MAX;
        }
        let jitter = if self.max_requests_jitter == 0 {
            0
        } else {
            use std::hash::{BuildHasher, Hasher};
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            random % (self.max_requests_jitter + 1)
        };
        self.max_requests.saturating_add(jitter)
    }
}

/// Why a request got no worker.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The queue is full (503 with Retry-After).
    QueueFull,
    /// The request waited `queue_timeout` without a worker (503).
    QueueTimeout,
    /// The app does not load; carries the failure (503 with the traceback where allowed).
    AppBroken(AppFailure),
    /// The host is shutting down.
    ShuttingDown,
}

/// The last failure to load the app, kept for the 503 page and the log.
#[derive(Debug, Clone)]
pub struct AppFailure {
    pub traceback: String,
    /// True once `rapid_fails_per_minute` was reached and respawning stopped.
    pub gave_up: bool,
}

/// What a worker is doing, for routing and for the status and info pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Spawned, importing the app (or waiting to be respawned).
    Starting,
    /// Ready and waiting for a request.
    Idle,
    /// Serving a request.
    Busy,
    /// Not running and not coming back (given up, or shutting down).
    Stopped,
}

/// The request a busy worker is serving.
#[derive(Debug, Clone)]
pub struct CurrentRequest {
    pub request_id: u64,
    pub method: String,
    pub path: String,
    pub started: Instant,
}

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
    generation: u64,
    conn: Option<WorkerConn>,
    signals: Arc<SlotSignals>,
    /// A supervisor task runs this slot (false once the slot was removed by a resize).
    supervised: bool,
    /// Set once the worker is due for recycling: it takes no new request while its
    /// replacement starts.
    retiring: bool,
    /// Requests served by the current process, and the count at which it is recycled.
    served: u64,
    recycle_after: u64,
    /// Where its FastCGI connections go (None while no worker is in service).
    addr: Option<WorkerAddr>,
    /// Requests written behind the running one (pipelining), in order.
    followers: VecDeque<Follower>,
    /// Followers' records not yet written to the connection: the exchange holding the
    /// connection writes them, in order, when `signals.outbox` wakes it.
    outbox: BytesMut,
    /// The running request has no body, so followers may be written behind it.
    pipelinable: bool,
    /// The FastCGI request id of the running request (followers take the next ones).
    running_fcgi_id: u16,
    /// When the running request got the connection (followers only within
    /// `pipeline_window` of it).
    running_since: Instant,
}

impl WorkerState {
    /// A slot with no process yet; `supervised` says whether a supervisor is being started
    /// for it.
    fn new(id: usize, supervised: bool) -> Self {
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
    fn drop_followers(&mut self) {
        self.followers.clear();
        self.outbox.clear();
    }

    /// Opens a fresh connection in place of one whose state is unknown; the requests
    /// written behind on the old one go back to the dispatcher. None when the worker does
    /// not accept (its supervisor respawns it).
    fn fresh_conn(&mut self) -> Option<WorkerConn> {
        self.drop_followers();
        self.addr
            .as_ref()
            .and_then(|addr| WorkerConn::connect(addr).ok())
    }

    /// The FastCGI id for a request written behind the last one in flight. Ids run
    /// 1..=MAX_PIPELINE_DEPTH+1 in a cycle, so the at most `depth + 1` requests in flight
    /// on a connection always carry different ids.
    fn next_fcgi_id(&self) -> u16 {
        let last = self
            .followers
            .back()
            .map_or(self.running_fcgi_id, |f| f.fcgi_id);
        last % FCGI_ID_CYCLE + 1
    }
}

/// The FastCGI request id of a request on an idle worker.
const FIRST_FCGI_ID: u16 = 1;

/// Length of the cycle of FastCGI request ids on one worker connection.
const FCGI_ID_CYCLE: u16 = crate::config::MAX_PIPELINE_DEPTH as u16 + 1;

/// A read-only copy of a worker's state for pages and logs.
#[derive(Debug, Clone)]
pub struct WorkerSnapshot {
    pub id: usize,
    pub pid: Option<u32>,
    pub phase: Phase,
    pub paused: bool,
    pub debug_port: Option<u16>,
    pub debuggers: u32,
    pub requests: u64,
    pub respawns: u32,
    pub current: Option<CurrentRequest>,
    /// Requests written behind the current one (pipelining), waiting their turn.
    pub pipelined: usize,
}

/// A request waiting in the queue. If the request is abandoned (the client went away and
/// its handler was dropped) while a worker is already on its way to it, dropping this
/// returns that worker to the pool — otherwise the worker would stay "busy" forever.
struct QueuedWait {
    shared: Arc<Shared>,
    id: u64,
    rx: oneshot::Receiver<Result<Grant, Refusal>>,
}

impl QueuedWait {
    /// Leaves the queue; returns what was sent before leaving, if anything.
    fn withdraw(&mut self) -> Option<Result<Grant, Refusal>> {
        self.rx.close();
        self.shared.lock().waiters.retain(|w| w.id != self.id);
        self.rx.try_recv().ok()
    }
}

impl Drop for QueuedWait {
    fn drop(&mut self) {
        let Some(Ok(grant)) = self.withdraw() else {
            return;
        };
        let conn = match grant.place {
            Place::Running(conn) => conn,
            Place::Behind(relay) => {
                self.shared
                    .abandon_behind(grant.worker, grant.generation, relay);
                return;
            }
        };
        let mut state = self.shared.lock();
        let worker = &mut state.workers[grant.worker];
        if worker.generation == grant.generation && worker.phase == Phase::Busy {
            // Nothing was written on the connection for this request: it is clean, and
            // requests written behind it meanwhile run next.
            hand_on(worker, Some(conn));
        }
        self.shared.settle(state);
    }
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Result<Grant, Refusal>>,
    /// The request's records when it has no body (it may then wait behind a busy
    /// worker's running request), with its identity for the worker table.
    pipelinable: Option<(Bytes, CurrentRequest)>,
}

/// A worker handed to one request (plain data: no Drop, so it can bounce back safely).
struct Grant {
    worker: usize,
    generation: u64,
    pid: u32,
    /// The FastCGI request id the request's records carry on this connection.
    fcgi_id: u16,
    place: Place,
}

/// Where a granted request stands on its worker's connection.
enum Place {
    /// The worker was idle: the request runs now, on this connection.
    Running(WorkerConn),
    /// The request was written behind the running one (pipelining); the connection comes
    /// here when the requests before it end, or the sender is dropped when the worker is
    /// lost first.
    Behind(oneshot::Receiver<WorkerConn>),
}

/// A request written behind the running one on a worker's connection.
#[derive(Debug)]
struct Follower {
    /// Receives the connection when the request before it ends.
    relay: oneshot::Sender<WorkerConn>,
    fcgi_id: u16,
    current: CurrentRequest,
}

struct State {
    workers: Vec<WorkerState>,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    failure: Option<AppFailure>,
    recent_failures: VecDeque<Instant>,
    closing: bool,
    /// Generations are unique across slots (a socket path never repeats).
    next_generation: u64,
    /// debugpy ports of workers that are ready but not yet installed.
    pending_debug_ports: std::collections::HashMap<usize, u16>,
    /// The restart epoch whose new code failed to load (the roll stops there).
    roll_failed_epoch: Option<u64>,
}

/// Per-worker signals, shared outside the lock with the supervisor and leases.
#[derive(Debug)]
struct SlotSignals {
    /// True while a debugger holds the worker paused.
    paused: watch::Sender<bool>,
    /// Asks the supervisor to replace its worker (recycling).
    recycle: Notify,
    /// The clock of the request in progress (kept up to date by the exchange), for the
    /// status page's running and paused times, with the generation of its worker process.
    clock: Mutex<Option<(u64, RequestClock)>>,
    /// Control channels of this slot's live worker processes by generation (a replaced
    /// worker may still finish a request while its successor serves).
    controls: Mutex<Vec<(u64, Weak<Control>)>>,
    /// Wakes the exchange holding the connection: followers' records wait in the outbox.
    outbox: Notify,
}

impl SlotSignals {
    fn new() -> Arc<Self> {
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
    fn register_control(&self, generation: u64, control: &Arc<Control>) {
        let mut controls = self.controls.lock().unwrap_or_else(|p| p.into_inner());
        controls.retain(|(_, c)| c.strong_count() > 0);
        controls.push((generation, Arc::downgrade(control)));
    }

    /// The control channel of the worker process of `generation`, while it lives.
    fn control(&self, generation: u64) -> Option<Arc<Control>> {
        self.controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(g, _)| *g == generation)
            .and_then(|(_, c)| c.upgrade())
    }

    fn clock(&self) -> MutexGuard<'_, Option<(u64, RequestClock)>> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Pool-wide counters for the status page and the metrics endpoint.
#[derive(Debug)]
struct Counters {
    /// When the pool started (wall clock, for display) ...
    started_at: SystemTime,
    /// ... and the same moment on the monotonic clock (for the uptime).
    started: Instant,
    /// Requests that asked the pool for a worker (served or refused).
    accepted: AtomicU64,
    /// The longest the wait queue has been.
    max_queue_seen: AtomicUsize,
    /// Requests written behind a running one (pipelining).
    pipelined: AtomicU64,
}

/// Pool-wide figures for the status page and the metrics endpoint.
#[derive(Debug, Clone)]
pub struct PoolStats {
    /// When the pool started (wall clock).
    pub started_at: SystemTime,
    /// How long ago it started.
    pub uptime: Duration,
    /// Requests that asked for a worker since the start (served or refused).
    pub accepted: u64,
    /// Requests waiting for a worker now.
    pub queue_len: usize,
    /// The longest the queue has been since the start.
    pub max_queue_seen: usize,
    /// The queue's capacity (`max_queue`).
    pub max_queue: usize,
    /// Requests written behind a running one since the start (pipelining).
    pub pipelined: u64,
}

pub(crate) struct Shared {
    settings: std::sync::RwLock<Arc<PoolSettings>>,
    runtime: RuntimeDir,
    state: Mutex<State>,
    /// Wakes supervisors (shutdown, or a reset after the app changed).
    wake: Notify,
    /// Signalled whenever a worker becomes idle (used by drain).
    idle_changed: Notify,
    /// Bumped to ask every supervisor to replace its worker (rolling restart).
    restart_epoch: watch::Sender<u64>,
    /// One slot at a time starts its replacement, so capacity never drops by more than one.
    roll_turn: Arc<tokio::sync::Semaphore>,
    /// The number of worker slots wanted; slots at or above it wind down.
    target: watch::Sender<usize>,
    /// Counters for the status page and metrics.
    counters: Counters,
}

/// The worker pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// Creates the pool and starts one supervisor per worker.
    pub fn start(settings: PoolSettings, runtime: RuntimeDir) -> Self {
        let target = watch::channel(settings.workers).0;
        let workers = (0..settings.workers)
            .map(|id| WorkerState::new(id, true))
            .collect();
        let shared = Arc::new(Shared {
            settings: std::sync::RwLock::new(Arc::new(settings)),
            runtime,
            state: Mutex::new(State {
                workers,
                waiters: VecDeque::new(),
                next_waiter: 0,
                failure: None,
                recent_failures: VecDeque::new(),
                closing: false,
                next_generation: 0,
                pending_debug_ports: std::collections::HashMap::new(),
                roll_failed_epoch: None,
            }),
            wake: Notify::new(),
            idle_changed: Notify::new(),
            restart_epoch: watch::channel(0).0,
            roll_turn: Arc::new(tokio::sync::Semaphore::new(1)),
            target,
            counters: Counters {
                started_at: SystemTime::now(),
                started: Instant::now(),
                accepted: AtomicU64::new(0),
                max_queue_seen: AtomicUsize::new(0),
                pipelined: AtomicU64::new(0),
            },
        });
        for id in 0..shared.settings().workers {
            tokio::spawn(supervisor::supervise(shared.clone(), id));
        }
        Self { shared }
    }

    /// The pool's current settings.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.shared.settings()
    }

    /// Waits for an idle worker (bounded queue, `queue_timeout`) and leases it. `records`
    /// are the request's FastCGI records when it has no body: with `pipeline_depth`, it may
    /// then be written behind the running request of a busy worker instead of waiting.
    pub async fn acquire(
        &self,
        current: CurrentRequest,
        records: Option<&Bytes>,
    ) -> Result<Lease, Refusal> {
        self.shared
            .counters
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        self.acquire_at(current, records, false).await
    }

    /// [`Pool::acquire`]; `again` puts a request whose worker was lost before it started
    /// at the front of the queue (it has waited its turn already) and past `max_queue`.
    async fn acquire_at(
        &self,
        current: CurrentRequest,
        records: Option<&Bytes>,
        again: bool,
    ) -> Result<Lease, Refusal> {
        let waiting = {
            let mut state = self.shared.lock();
            if state.closing {
                return Err(Refusal::ShuttingDown);
            }
            if let Some(grant) = take_idle(&mut state, records.is_some()) {
                return Ok(self.lease(&mut state, grant, current));
            }
            // Behind a busy worker's request, but never ahead of a queued request.
            if let Some(records) = records.filter(|_| again || state.waiters.is_empty()) {
                if let Some(grant) = self.shared.place_behind(&mut state, records, &current) {
                    return Ok(self.lease(&mut state, grant, current));
                }
            }
            if let Some(failure) = state.failure.clone() {
                if !state.workers.iter().any(|w| w.phase == Phase::Busy) {
                    return Err(Refusal::AppBroken(failure));
                }
            }
            if !again && state.waiters.len() >= self.shared.settings().max_queue {
                return Err(Refusal::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_waiter;
            state.next_waiter += 1;
            let waiter = Waiter {
                id,
                grant: tx,
                pipelinable: records.map(|r| (r.clone(), current.clone())),
            };
            if again {
                state.waiters.push_front(waiter);
            } else {
                state.waiters.push_back(waiter);
            }
            self.shared
                .counters
                .max_queue_seen
                .fetch_max(state.waiters.len(), Ordering::Relaxed);
            (id, rx)
        };
        let (id, rx) = waiting;
        let mut wait = QueuedWait {
            shared: self.shared.clone(),
            id,
            rx,
        };
        let outcome =
            tokio::time::timeout(self.shared.settings().queue_timeout, &mut wait.rx).await;
        let granted = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Refusal::ShuttingDown),
            Err(_) => wait.withdraw().unwrap_or(Err(Refusal::QueueTimeout)),
        };
        let grant = granted?;
        let mut state = self.shared.lock();
        Ok(self.lease(&mut state, grant, current))
    }

    fn lease(&self, state: &mut State, grant: Grant, current: CurrentRequest) -> Lease {
        let worker = &mut state.workers[grant.worker];
        let (conn, relay) = match grant.place {
            Place::Running(conn) => {
                worker.current = Some(current);
                (Some(conn), None)
            }
            Place::Behind(relay) => (None, Some(relay)),
        };
        Lease {
            shared: self.shared.clone(),
            signals: worker.signals.clone(),
            worker: grant.worker,
            generation: grant.generation,
            pid: grant.pid,
            fcgi_id: grant.fcgi_id,
            started: relay.is_none(),
            behind: relay.is_some(),
            conn,
            relay,
            reusable: false,
            killed: false,
        }
    }

    /// Applies reloaded settings: new requests and workers use them, every worker is
    /// replaced one by one (interpreter, app and environment may have changed), and the
    /// pool grows or shrinks to the new `workers`.
    pub fn reconfigure(&self, settings: PoolSettings) {
        let workers = settings.workers;
        *self
            .shared
            .settings
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(settings);
        self.resize(workers);
        self.restart_all("configuration reloaded");
    }

    /// Changes the number of workers (SIGTTIN/SIGTTOU, reload). New slots start at once;
    /// removed ones finish their current request first.
    pub fn resize(&self, workers: usize) {
        let workers = workers.max(1);
        {
            let mut guard = self
                .shared
                .settings
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut settings = PoolSettings::clone(&guard);
            settings.workers = workers;
            *guard = Arc::new(settings);
        }
        let before = self.shared.target.send_replace(workers);
        if before != workers {
            tracing::info!(
                from = before,
                to = workers,
                "changing the number of workers"
            );
        }
        let mut state = self.shared.lock();
        for id in 0..workers {
            if id == state.workers.len() {
                state.workers.push(WorkerState::new(id, false));
            }
            let worker = &mut state.workers[id];
            if !worker.supervised {
                worker.supervised = true;
                worker.phase = Phase::Starting;
                tokio::spawn(supervisor::supervise(self.shared.clone(), id));
            }
        }
    }

    /// Replaces every worker, one at a time, without refusing or cutting a request (the
    /// app's files changed). When the app had failed to load, respawning resumes at once.
    pub fn restart_all(&self, reason: &str) {
        let mut state = self.shared.lock();
        if state.closing {
            return;
        }
        let broken = state.failure.take().is_some();
        state.recent_failures.clear();
        drop(state);
        tracing::info!(reason, "restarting workers one by one");
        self.shared.restart_epoch.send_modify(|epoch| *epoch += 1);
        if broken {
            self.shared.wake.notify_waiters();
        }
    }

    /// Copies every worker's state (for the status and info pages).
    pub fn snapshot(&self) -> Vec<WorkerSnapshot> {
        let state = self.shared.lock();
        state
            .workers
            .iter()
            .map(|w| WorkerSnapshot {
                id: w.id,
                pid: w.pid,
                phase: w.phase,
                paused: *w.signals.paused.borrow(),
                debug_port: w.debug_port,
                debuggers: w.debuggers,
                requests: w.requests,
                respawns: w.respawns,
                current: w.current.clone(),
                pipelined: w.followers.len(),
            })
            .collect()
    }

    /// Number of requests waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.shared.lock().waiters.len()
    }

    /// Pool-wide figures (start time, accepted requests, queue) for the status page.
    pub fn stats(&self) -> PoolStats {
        let counters = &self.shared.counters;
        PoolStats {
            started_at: counters.started_at,
            uptime: counters.started.elapsed(),
            accepted: counters.accepted.load(Ordering::Relaxed),
            queue_len: self.queue_len(),
            max_queue_seen: counters.max_queue_seen.load(Ordering::Relaxed),
            max_queue: self.settings().max_queue,
            pipelined: counters.pipelined.load(Ordering::Relaxed),
        }
    }

    /// The clock of the request worker `worker` is serving (running and paused time).
    pub fn request_clock(&self, worker: usize) -> Option<RequestClock> {
        let (signals, generation) = self
            .shared
            .lock()
            .workers
            .get(worker)
            .map(|w| (w.signals.clone(), w.generation))?;
        let clock = signals.clock();
        clock
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, c)| c.clone())
    }

    /// Asks worker `worker` for its Python stacks (logged as "Python stacks of the
    /// worker"). Returns false when it has no control channel (starting, stopped, or a
    /// custom `worker.command`) or the command could not be sent.
    pub async fn dump_stacks(&self, worker: usize) -> bool {
        let control = {
            let state = self.shared.lock();
            state
                .workers
                .get(worker)
                .and_then(|w| w.signals.control(w.generation))
        };
        match control {
            Some(control) => control.request_stacks().await,
            None => false,
        }
    }

    /// Marks a worker paused or running (from the debug proxy's DAP monitor).
    pub fn set_paused(&self, worker: usize, paused: bool) {
        let signals = self
            .shared
            .lock()
            .workers
            .get(worker)
            .map(|w| w.signals.clone());
        if let Some(signals) = signals {
            signals
                .paused
                .send_if_modified(|p| std::mem::replace(p, paused) != paused);
        }
    }

    /// Counts a debugger connection opening (+1) or closing (-1) on a worker; requests
    /// prefer workers with a debugger attached.
    pub fn debugger_attached(&self, worker: usize, attached: bool) {
        let mut state = self.shared.lock();
        if let Some(w) = state.workers.get_mut(worker) {
            if attached {
                w.debuggers += 1;
            } else {
                w.debuggers = w.debuggers.saturating_sub(1);
            }
        }
    }

    /// The debugpy port of a worker, when it is running in debug mode.
    pub fn debug_port(&self, worker: usize) -> Option<u16> {
        self.shared
            .lock()
            .workers
            .get(worker)
            .and_then(|w| w.debug_port)
    }

    /// Stops accepting requests, waits up to `grace` for busy workers to finish, then
    /// stops every worker ([`process::terminate`], then [`process::kill`]).
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        {
            let mut state = self.shared.lock();
            state.closing = true;
            for waiter in state.waiters.drain(..) {
                let _ = waiter.grant.send(Err(Refusal::ShuttingDown));
            }
        }
        loop {
            let notified = self.shared.idle_changed.notified();
            let busy = self
                .shared
                .lock()
                .workers
                .iter()
                .filter(|w| w.phase == Phase::Busy)
                .count();
            if busy == 0 {
                break;
            }
            tracing::info!(busy, "waiting for in-flight requests to finish");
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(busy, "graceful timeout reached; stopping busy workers");
                break;
            }
        }
        let targets: Vec<(u32, Option<Arc<Control>>)> = {
            let mut state = self.shared.lock();
            state
                .workers
                .iter_mut()
                .filter_map(|w| {
                    w.conn = None;
                    w.drop_followers();
                    w.pid.map(|pid| (pid, w.signals.control(w.generation)))
                })
                .collect()
        };
        let pids: Vec<u32> = targets.iter().map(|(pid, _)| *pid).collect();
        self.shared.wake.notify_waiters();
        for (pid, control) in targets {
            process::terminate(pid, control.as_deref()).await;
        }
        let stop_deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < stop_deadline && pids.iter().any(|p| process::alive(*p)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pid in &pids {
            if process::alive(*pid) {
                process::kill(*pid);
            }
        }
    }
}

/// Picks an idle worker: one with a debugger attached first, else the lowest id.
/// `pipelinable`: the request has no body, so others may be written behind it.
fn take_idle(state: &mut State, pipelinable: bool) -> Option<Grant> {
    let pick = state
        .workers
        .iter()
        .filter(|w| w.phase == Phase::Idle && !w.retiring && w.conn.is_some())
        .min_by_key(|w| (w.debuggers == 0, w.id))
        .map(|w| w.id)?;
    let worker = &mut state.workers[pick];
    let conn = worker.conn.take()?;
    worker.phase = Phase::Busy;
    worker.pipelinable = pipelinable;
    worker.running_fcgi_id = FIRST_FCGI_ID;
    worker.running_since = Instant::now();
    Some(Grant {
        worker: pick,
        generation: worker.generation,
        pid: worker.pid.unwrap_or(0),
        fcgi_id: FIRST_FCGI_ID,
        place: Place::Running(conn),
    })
}

/// Passes a clean connection of a busy worker on: to the first request written behind the
/// one that ended (the worker stays busy), else back to the pool (idle). `None` (the
/// connection is gone) sends the followers back to the dispatcher and leaves the worker
/// to its supervisor.
fn hand_on(worker: &mut WorkerState, conn: Option<WorkerConn>) {
    let mut conn = conn;
    if let Some(held) = conn.take() {
        match worker.followers.pop_front() {
            None => conn = Some(held),
            Some(next) => {
                worker.running_fcgi_id = next.fcgi_id;
                let request_id = next.current.request_id;
                match next.relay.send(held) {
                    Ok(()) => {
                        tracing::debug!(
                            worker = worker.id,
                            request_id,
                            fcgi_id = next.fcgi_id,
                            "connection handed to the request written behind"
                        );
                        worker.running_since = Instant::now();
                        worker.current = Some(next.current);
                        return;
                    }
                    Err(orphaned) => {
                        // Its exchange is gone while its request is on the connection:
                        // the connection cannot be reused, nor the requests behind it.
                        tracing::debug!(
                            worker = worker.id,
                            request_id,
                            "the request written behind is gone; reconnecting"
                        );
                        drop(orphaned);
                        conn = worker.fresh_conn();
                    }
                }
            }
        }
    }
    match conn {
        Some(conn) => {
            worker.conn = Some(conn);
            worker.phase = Phase::Idle;
        }
        None => {
            worker.drop_followers();
            worker.phase = Phase::Starting;
        }
    }
}

/// A grant behind the last request in flight on `worker`, and the relay that will
/// hand it the connection.
fn behind_grant(worker: &WorkerState) -> (oneshot::Sender<WorkerConn>, Grant) {
    let (relay, rx) = oneshot::channel();
    let grant = Grant {
        worker: worker.id,
        generation: worker.generation,
        pid: worker.pid.unwrap_or(0),
        fcgi_id: worker.next_fcgi_id(),
        place: Place::Behind(rx),
    };
    (relay, grant)
}

impl Shared {
    /// The current settings (a cheap snapshot; a reload swaps them whole).
    fn settings(&self) -> Arc<PoolSettings> {
        self.settings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// True when a worker has served its `max_requests` (plus jitter) or passed
    /// `max_worker_rss`; checked after each request.
    fn due_for_recycling(&self, worker: &WorkerState) -> bool {
        if worker.served >= worker.recycle_after {
            tracing::info!(
                worker = worker.id,
                pid = worker.pid,
                served = worker.served,
                "recycling worker: max_requests reached"
            );
            return true;
        }
        let (Some(limit), Some(pid)) = (self.settings().recycle.max_rss, worker.pid) else {
            return false;
        };
        match resident_bytes(pid) {
            Some(rss) if rss > limit => {
                tracing::info!(
                    worker = worker.id,
                    pid,
                    rss_mib = rss >> 20,
                    limit_mib = limit >> 20,
                    "recycling worker: max_worker_rss passed"
                );
                true
            }
            _ => false,
        }
    }

    /// True (and the slot marked unsupervised) when slot `id` is beyond the wanted worker
    /// count; decided under the lock so a concurrent resize cannot strand a slot.
    fn slot_removed(&self, id: usize) -> bool {
        let mut state = self.lock();
        if id < *self.target.borrow() {
            return false;
        }
        let worker = &mut state.workers[id];
        worker.supervised = false;
        worker.phase = Phase::Stopped;
        worker.conn = None;
        worker.drop_followers();
        worker.pid = None;
        true
    }

    /// The signals of worker slot `id`.
    fn signals(&self, id: usize) -> Arc<SlotSignals> {
        self.lock().workers[id].signals.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The busy worker a bodiless request may be written behind (pipelining): one whose
    /// running request has no body and started within `pipeline_window`, that is not
    /// retiring and has room before `max_requests`, with the fewest followers below
    /// `pipeline_depth`.
    fn behind_target(&self, state: &State) -> Option<usize> {
        let settings = self.settings();
        if settings.pipeline_depth == 0 || settings.debug || !settings.spec.speaks_control {
            return None;
        }
        let now = Instant::now();
        state
            .workers
            .iter()
            .filter(|w| {
                w.phase == Phase::Busy
                    && w.pipelinable
                    && !w.retiring
                    && w.followers.len() < settings.pipeline_depth
                    // max_requests stays exact: the running request, those behind it and
                    // this one must all fit in what the worker may still serve.
                    && w.served.saturating_add(w.followers.len() as u64 + 2) <= w.recycle_after
                    && now.saturating_duration_since(w.running_since) < settings.pipeline_window
            })
            .min_by_key(|w| (w.followers.len(), w.id))
            .map(|w| w.id)
    }

    /// A grant behind a busy worker's running request, registered at once.
    fn place_behind(
        &self,
        state: &mut State,
        records: &[u8],
        current: &CurrentRequest,
    ) -> Option<Grant> {
        let id = self.behind_target(state)?;
        let (relay, grant) = behind_grant(&state.workers[id]);
        self.follow(state, id, records, current.clone(), relay, grant.fcgi_id);
        Some(grant)
    }

    /// Writes a request's records behind the last one in flight on worker `id` (into the
    /// outbox the connection's holder writes) and registers its relay.
    fn follow(
        &self,
        state: &mut State,
        id: usize,
        records: &[u8],
        current: CurrentRequest,
        relay: oneshot::Sender<WorkerConn>,
        fcgi_id: u16,
    ) {
        self.counters.pipelined.fetch_add(1, Ordering::Relaxed);
        let worker = &mut state.workers[id];
        let start = worker.outbox.len();
        worker.outbox.extend_from_slice(records);
        crate::gateway::fcgi::set_request_id(&mut worker.outbox[start..], fcgi_id);
        worker.followers.push_back(Follower {
            relay,
            fcgi_id,
            current,
        });
        worker.signals.outbox.notify_one();
    }

    /// Gives up a place behind a running request that will never run its exchange (its
    /// client left while the grant was on its way). Its records are on the connection, so
    /// the worker will answer it: if the connection has already been handed to it, it is
    /// dropped, the requests behind it go back to the dispatcher, and a fresh connection
    /// is opened; otherwise closing the relay makes the hand-off do the same later.
    fn abandon_behind(&self, id: usize, generation: u64, mut relay: oneshot::Receiver<WorkerConn>) {
        let mut state = self.lock();
        relay.close();
        let Ok(orphaned) = relay.try_recv() else {
            return;
        };
        drop(orphaned);
        let worker = &mut state.workers[id];
        if worker.generation != generation || worker.phase != Phase::Busy {
            return;
        }
        tracing::debug!(
            worker = id,
            "a request written behind was abandoned; reconnecting"
        );
        worker.current = None;
        let conn = worker.fresh_conn();
        hand_on(worker, conn);
        self.settle(state);
    }

    /// After a worker changed hands: gives idle workers and free places behind busy ones
    /// to waiting requests, then wakes whoever waits for a worker to leave `Busy` (drain,
    /// replacement).
    fn settle(&self, mut state: MutexGuard<'_, State>) {
        self.serve_waiters(&mut state);
        drop(state);
        self.idle_changed.notify_waiters();
    }

    /// Hands idle workers to waiting requests, skipping waiters that gave up; with no
    /// idle worker, a bodiless request at the front of the queue may go behind a busy
    /// one. The queue stays in order: a request with a body at its front waits for an
    /// idle worker, and the ones after it wait too.
    fn serve_waiters(&self, state: &mut State) {
        while let Some(front) = state.waiters.front() {
            let pipelinable = front.pipelinable.is_some();
            if let Some(mut grant) = take_idle(state, pipelinable) {
                loop {
                    let Some(waiter) = state.waiters.pop_front() else {
                        // Every waiter had gone: the worker is idle again.
                        let worker = &mut state.workers[grant.worker];
                        if let Place::Running(conn) = grant.place {
                            worker.phase = Phase::Idle;
                            worker.conn = Some(conn);
                        }
                        return;
                    };
                    let id = grant.worker;
                    let pipelinable = waiter.pipelinable.is_some();
                    match waiter.grant.send(Ok(grant)) {
                        Ok(()) => {
                            state.workers[id].pipelinable = pipelinable;
                            break;
                        }
                        Err(Ok(back)) => grant = back,
                        // Only `Ok` is sent above, so only `Ok` can come back.
                        Err(Err(_)) => return,
                    }
                }
                continue;
            }
            if !pipelinable {
                return;
            }
            let Some(id) = self.behind_target(state) else {
                return;
            };
            let Some(waiter) = state.waiters.pop_front() else {
                return;
            };
            let Some((records, current)) = waiter.pipelinable else {
                return;
            };
            let (relay, grant) = behind_grant(&state.workers[id]);
            let fcgi_id = grant.fcgi_id;
            if waiter.grant.send(Ok(grant)).is_ok() {
                self.follow(state, id, &records, current, relay, fcgi_id);
            }
        }
    }

    /// Refuses every queued request (the app cannot load).
    fn refuse_waiters(&self, state: &mut State, refusal: Refusal) {
        for waiter in state.waiters.drain(..) {
            let _ = waiter.grant.send(Err(refusal.clone()));
        }
    }
}

/// Exclusive use of one worker for one request. Dropping it without [`Lease::release`]
/// discards the connection (its state is unknown) and opens a fresh one. A request
/// written behind a running one (pipelining) gets the connection from its predecessor
/// ([`Lease::connection`]).
pub struct Lease {
    shared: Arc<Shared>,
    signals: Arc<SlotSignals>,
    worker: usize,
    generation: u64,
    pid: u32,
    /// The FastCGI request id of this request on the connection.
    fcgi_id: u16,
    conn: Option<WorkerConn>,
    /// For a request written behind a running one: where the connection arrives.
    relay: Option<oneshot::Receiver<WorkerConn>>,
    /// The request was written behind a running one (its records are in the outbox).
    behind: bool,
    /// The request has the connection (it runs, or ran): its end is accounted.
    started: bool,
    reusable: bool,
    /// The worker was killed (or broke its connection): no new connection is opened to it;
    /// its supervisor respawns it.
    killed: bool,
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

    /// Follows the debugger's hold on this worker.
    pub fn pause_signal(&self) -> watch::Receiver<bool> {
        self.signals.paused.subscribe()
    }

    /// Publishes the request's clock (after it starts, pauses or resumes) for the status
    /// page.
    pub fn publish_clock(&self, clock: &RequestClock) {
        *self.signals.clock() = Some((self.generation, clock.clone()));
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
        {
            let mut clock = self.signals.clock();
            if clock.as_ref().is_some_and(|(g, _)| *g == self.generation) {
                *clock = None;
            }
        }
        let conn = self.conn.take();
        let mut state = self.shared.lock();
        let worker = &mut state.workers[self.worker];
        if worker.generation != self.generation || worker.phase != Phase::Busy {
            // The worker was replaced or died meanwhile; its successor is already in service.
            return;
        }
        worker.current = None;
        worker.requests += 1;
        worker.served += 1;
        if !worker.retiring && self.shared.due_for_recycling(worker) {
            worker.retiring = true;
            worker.signals.recycle.notify_one();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(fcgi_id: u16) -> (Follower, oneshot::Receiver<WorkerConn>) {
        let (relay, rx) = oneshot::channel();
        let current = CurrentRequest {
            request_id: u64::from(fcgi_id),
            method: "GET".into(),
            path: "/".into(),
            started: Instant::now(),
        };
        (
            Follower {
                relay,
                fcgi_id,
                current,
            },
            rx,
        )
    }

    #[test]
    fn request_ids_in_flight_on_one_connection_never_repeat() {
        let mut worker = WorkerState::new(0, false);
        let mut relays = Vec::new();
        // Every depth up to the maximum, and every running id in the cycle.
        for depth in 0..=crate::config::MAX_PIPELINE_DEPTH {
            for running in 1..=FCGI_ID_CYCLE {
                worker.running_fcgi_id = running;
                worker.followers.clear();
                let mut in_flight = vec![running];
                for _ in 0..depth {
                    let id = worker.next_fcgi_id();
                    assert!((1..=FCGI_ID_CYCLE).contains(&id), "id {id} out of range");
                    assert!(
                        !in_flight.contains(&id),
                        "id {id} reused while in flight: {in_flight:?}"
                    );
                    in_flight.push(id);
                    let (f, rx) = follower(id);
                    worker.followers.push_back(f);
                    relays.push(rx);
                }
            }
        }
    }

    #[test]
    fn dropping_the_followers_tells_each_of_them_and_empties_the_outbox() {
        let mut worker = WorkerState::new(0, false);
        let (a, mut rx_a) = follower(2);
        let (b, mut rx_b) = follower(3);
        worker.followers.extend([a, b]);
        worker.outbox.extend_from_slice(b"records");
        worker.drop_followers();
        assert!(worker.outbox.is_empty());
        assert!(worker.followers.is_empty());
        for rx in [&mut rx_a, &mut rx_b] {
            assert!(
                matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
                "a follower must learn its connection is gone (and be dispatched again)"
            );
        }
    }
}

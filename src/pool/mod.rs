//! The worker pool: a set of worker slots, each supervised by its own task
//! ([`supervisor`]), and the dispatcher that hands each request to an idle worker or
//! parks it in a bounded queue. A worker serves one request at a time, so pause, timeout
//! and kill act on exactly one request.

pub mod conn;
pub mod exchange;
pub mod process;
pub mod runtime;
pub mod supervisor;
pub mod watcher;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify};

use conn::WorkerConn;
use process::WorkerSpec;
use runtime::RuntimeDir;

/// Pool-wide settings, fixed for the life of the pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub workers: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
    pub request_timeout: Option<Duration>,
    /// `debug.max_pause`: longest time one debugger pause stops a request's clock.
    pub max_pause: Option<Duration>,
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
    /// Set once the worker is due for recycling: it takes no new request while its
    /// replacement starts.
    retiring: bool,
    /// Requests served by the current process, and the count at which it is recycled.
    served: u64,
    recycle_after: u64,
    socket_path: Option<std::path::PathBuf>,
}

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
}

struct Waiter {
    id: u64,
    grant: oneshot::Sender<Result<Grant, Refusal>>,
}

/// A worker handed to one request (plain data: no Drop, so it can bounce back safely).
struct Grant {
    worker: usize,
    generation: u64,
    pid: u32,
    conn: WorkerConn,
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
}

impl SlotSignals {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            paused: watch::channel(false).0,
            recycle: Notify::new(),
        })
    }
}

pub(crate) struct Shared {
    settings: PoolSettings,
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
}

/// The worker pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// Creates the pool and starts one supervisor per worker.
    pub fn start(settings: PoolSettings, runtime: RuntimeDir) -> Self {
        let workers = (0..settings.workers)
            .map(|id| WorkerState {
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
                socket_path: None,
                signals: SlotSignals::new(),
                retiring: false,
                served: 0,
                recycle_after: u64::MAX,
            })
            .collect();
        let shared = Arc::new(Shared {
            settings,
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
        });
        for id in 0..shared.settings.workers {
            tokio::spawn(supervisor::supervise(shared.clone(), id));
        }
        Self { shared }
    }

    /// The pool's settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.shared.settings
    }

    /// Waits for an idle worker (bounded queue, `queue_timeout`) and leases it.
    pub async fn acquire(&self, current: CurrentRequest) -> Result<Lease, Refusal> {
        let waiting = {
            let mut state = self.shared.lock();
            if state.closing {
                return Err(Refusal::ShuttingDown);
            }
            if let Some(grant) = take_idle(&mut state) {
                return Ok(self.lease(&mut state, grant, current));
            }
            if let Some(failure) = state.failure.clone() {
                if !state.workers.iter().any(|w| w.phase == Phase::Busy) {
                    return Err(Refusal::AppBroken(failure));
                }
            }
            if state.waiters.len() >= self.shared.settings.max_queue {
                return Err(Refusal::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_waiter;
            state.next_waiter += 1;
            state.waiters.push_back(Waiter { id, grant: tx });
            (id, rx)
        };
        let (waiter_id, mut rx) = waiting;
        let outcome = tokio::time::timeout(self.shared.settings.queue_timeout, &mut rx).await;
        let granted = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Refusal::ShuttingDown),
            Err(_) => {
                let mut state = self.shared.lock();
                state.waiters.retain(|w| w.id != waiter_id);
                drop(state);
                match rx.try_recv() {
                    Ok(result) => result,
                    Err(_) => Err(Refusal::QueueTimeout),
                }
            }
        };
        let grant = granted?;
        let mut state = self.shared.lock();
        Ok(self.lease(&mut state, grant, current))
    }

    fn lease(&self, state: &mut State, grant: Grant, current: CurrentRequest) -> Lease {
        let worker = &mut state.workers[grant.worker];
        worker.current = Some(current);
        Lease {
            shared: self.shared.clone(),
            signals: worker.signals.clone(),
            worker: grant.worker,
            generation: grant.generation,
            pid: grant.pid,
            conn: Some(grant.conn),
            reusable: false,
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
            })
            .collect()
    }

    /// Number of requests waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.shared.lock().waiters.len()
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
    /// stops every worker (SIGTERM, then SIGKILL).
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
        let pids: Vec<u32> = {
            let mut state = self.shared.lock();
            state
                .workers
                .iter_mut()
                .filter_map(|w| {
                    w.conn = None;
                    w.pid
                })
                .collect()
        };
        self.shared.wake.notify_waiters();
        for pid in &pids {
            process::signal(*pid, libc::SIGTERM);
        }
        let stop_deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < stop_deadline && pids.iter().any(|p| process_alive(*p)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for pid in &pids {
            if process_alive(*pid) {
                process::signal(*pid, libc::SIGKILL);
            }
        }
    }
}

/// Resident memory of a process (Linux: /proc/<pid>/statm); None where unknown.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

/// True while a process with this pid exists and is not a zombie of ours.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Picks an idle worker: one with a debugger attached first, else the lowest id.
fn take_idle(state: &mut State) -> Option<Grant> {
    let pick = state
        .workers
        .iter()
        .filter(|w| w.phase == Phase::Idle && !w.retiring && w.conn.is_some())
        .min_by_key(|w| (w.debuggers == 0, w.id))
        .map(|w| w.id)?;
    let worker = &mut state.workers[pick];
    worker.phase = Phase::Busy;
    Some(Grant {
        worker: pick,
        generation: worker.generation,
        pid: worker.pid.unwrap_or(0),
        conn: worker.conn.take()?,
    })
}

impl Shared {
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
        let (Some(limit), Some(pid)) = (self.settings.recycle.max_rss, worker.pid) else {
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

    /// The signals of worker slot `id`.
    fn signals(&self, id: usize) -> Arc<SlotSignals> {
        self.lock().workers[id].signals.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands an idle worker to the first live waiter, if any.
    fn serve_waiters(&self, state: &mut State) {
        while !state.waiters.is_empty() {
            let Some(grant) = take_idle(state) else {
                return;
            };
            let mut grant = Some(grant);
            while let Some(waiter) = state.waiters.pop_front() {
                match waiter.grant.send(Ok(grant.take().expect("grant present"))) {
                    Ok(()) => break,
                    Err(Ok(back)) => grant = Some(back),
                    Err(Err(_)) => {}
                }
            }
            if let Some(back) = grant {
                let worker = &mut state.workers[back.worker];
                worker.phase = Phase::Idle;
                worker.conn = Some(back.conn);
                return;
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
/// discards the connection (its state is unknown) and opens a fresh one.
pub struct Lease {
    shared: Arc<Shared>,
    signals: Arc<SlotSignals>,
    worker: usize,
    generation: u64,
    pid: u32,
    conn: Option<WorkerConn>,
    reusable: bool,
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

    /// Takes the connection for the exchange; [`Lease::restore_conn`] gives it back
    /// clean. A lease dropped without it opens a fresh connection instead.
    pub fn take_conn(&mut self) -> Option<WorkerConn> {
        self.conn.take()
    }

    /// Returns the connection after a complete request (END_REQUEST seen, STDIN done),
    /// so the next request reuses it.
    pub fn restore_conn(&mut self, conn: WorkerConn) {
        self.conn = Some(conn);
        self.reusable = true;
    }

    /// Follows the debugger's hold on this worker.
    pub fn pause_signal(&self) -> watch::Receiver<bool> {
        self.signals.paused.subscribe()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
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
        let conn = if self.reusable && conn.is_some() {
            conn
        } else {
            drop(conn);
            worker
                .socket_path
                .as_deref()
                .and_then(|path| WorkerConn::connect(path).ok())
        };
        match conn {
            Some(conn) => {
                worker.conn = Some(conn);
                worker.phase = Phase::Idle;
            }
            None => worker.phase = Phase::Starting,
        }
        let shared = self.shared.clone();
        shared.serve_waiters(&mut state);
        drop(state);
        shared.idle_changed.notify_waiters();
    }
}

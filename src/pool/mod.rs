//! The worker pool: a set of worker slots, each supervised by its own task
//! ([`supervisor`]), and the dispatcher that hands each request to an idle worker or
//! parks it in a bounded queue. By default a worker serves one request at a time, so pause,
//! timeout and kill act on exactly one request; with `threads = N` it serves up to N, one
//! connection per thread (why: [`worker`]), dispatch picks the least loaded free slot, and a
//! timeout drains the worker before killing it. [`scaling`] grows the pool between
//! `workers` and `workers_max`.
//!
//! Pipelining (`pipeline_depth`): when every worker is busy, a request without a body may
//! be written behind the running one on a busy worker's connection, so the worker finds
//! it waiting instead of sleeping until the host sends it. It still runs strictly after
//! the one before it; its request clock starts only then. If the worker dies, is killed
//! or its connection is dropped before the request starts, the request goes back to the
//! front of the queue and runs elsewhere. Off in debug mode (a paused request would hold
//! the ones behind it) and for a custom `worker.command`.
//!
//! Files by concern: [`worker`] (one slot's state and signals), [`dispatch`] (idle pick,
//! queue, hand-on), [`pipeline`] (requests written behind a running one), [`lease`] (one
//! request's use of a worker), [`exchange`] (running it), [`observer`] (what the pool
//! reports to the front door about each request), [`supervisor`] (process lifecycle).

pub mod app_output;
pub mod conn;
pub mod control;
mod dispatch;
pub mod exchange;
mod lease;
pub mod observer;
mod pipeline;
pub mod process;
pub mod runtime;
mod scaling;
pub mod supervisor;
pub mod transport;
pub mod watcher;
mod worker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};

use crate::deadline::RequestClock;
use control::Control;
use dispatch::Waiter;
pub use lease::Lease;
pub use process::resident_bytes;
use process::WorkerSpec;
use runtime::RuntimeDir;
use worker::{SlotSignals, WorkerState};

/// Pool-wide settings; replaced as a whole on reload (SIGHUP).
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Worker processes wanted (the floor of a dynamic pool).
    pub workers: usize,
    /// Requests one worker runs at once, one connection and thread each.
    pub threads: usize,
    /// Most worker processes a dynamic pool grows to (= `workers`: fixed).
    pub workers_max: usize,
    /// How long a request waits with every slot busy before the pool grows.
    pub spawn_after: Duration,
    /// How long a worker above the floor may stay idle before it is stopped.
    pub idle_timeout: Duration,
    /// How long the other requests of a timed-out worker may run before it is killed.
    pub graceful_timeout: Duration,
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
    /// The oldest request running on it.
    pub current: Option<CurrentRequest>,
    /// Every request running on it (several with `threads`), oldest first.
    pub running: Vec<CurrentRequest>,
    /// Threads of this worker busy with a request, and its thread count.
    pub busy_threads: usize,
    pub threads: usize,
    /// Requests written behind the current one (pipelining), waiting their turn.
    pub pipelined: usize,
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
    /// Worker slots in the pool now, the floor (`workers`) and the ceiling
    /// (`workers_max`).
    pub workers_current: usize,
    pub workers_floor: usize,
    pub workers_max: usize,
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
        tokio::spawn(scaling::shrink_idle(shared.clone()));
        Self { shared }
    }

    /// The pool's current settings.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.shared.settings()
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

    /// Changes the number of workers (SIGTTIN/SIGTTOU, reload): the floor of a dynamic
    /// pool, and the pool is set to it. New slots start at once; removed ones finish their
    /// current requests first.
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
            settings.workers_max = settings.workers_max.max(workers);
            *guard = Arc::new(settings);
        }
        self.shared.set_target(workers, "workers changed");
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
                current: w.running.first().cloned(),
                running: w.running.clone(),
                busy_threads: w.in_flight,
                threads: w.threads,
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
            workers_current: *self.shared.target.borrow(),
            workers_floor: self.settings().workers,
            workers_max: self.settings().workers_max,
        }
    }

    /// The clock of request `request_id` on worker `worker` (running and paused time).
    pub fn request_clock(&self, worker: usize, request_id: u64) -> Option<RequestClock> {
        let (signals, generation) = self
            .shared
            .lock()
            .workers
            .get(worker)
            .map(|w| (w.signals.clone(), w.generation))?;
        let clocks = signals.clocks();
        clocks
            .iter()
            .find(|(g, r, _)| *g == generation && *r == request_id)
            .map(|(_, _, c)| c.clone())
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
            Some(control) => control.request_stacks(None).await,
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
                    w.conns.clear();
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
        worker.out_of_service();
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
}

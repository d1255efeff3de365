//! One supervisor task per worker slot: spawns the worker, waits for it to import the
//! app, puts it in service, notices when it exits, and respawns it with backoff.
//!
//! It also replaces its worker without losing a request (a *rolling restart*, asked for
//! through [`super::Pool::restart_all`] after the app's files change): the replacement is
//! started and must import the app before the old worker leaves; the old one finishes its
//! current request first. A replacement that fails to import (a syntax error in the new
//! code) is discarded and the old worker keeps serving.
//!
//! App load failures are counted pool-wide; at `rapid_fails_per_minute` respawning stops
//! (as IIS does) until the app changes or the host restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;
use tokio::sync::mpsc;

use super::conn::WorkerConn;
use super::control::Control;
use super::process::{self, ControlEvent, Spawned};
use super::transport::WorkerAddr;
use super::{AppFailure, Phase, Refusal, Shared};

/// Shortest and longest wait before respawning a worker that failed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How long a replaced worker may take to finish its request before it is killed.
const RETIRE_GRACE: Duration = Duration::from_secs(30);

/// A worker process that imported the app, with what the supervisor needs to run it.
struct Running {
    child: Child,
    pid: u32,
    addr: WorkerAddr,
    events: mpsc::Receiver<ControlEvent>,
    /// The control channel (stack dumps); the only strong reference, so it dies with this.
    control: Option<Arc<Control>>,
    started: Instant,
    generation: u64,
    /// A recycling replacement failed to load: keep this worker, stop trying.
    recycle_failed: bool,
}

/// Why a worker is being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The app changed (rolling restart, one slot at a time).
    Restart,
    /// The worker reached a recycling limit.
    Recycle,
}

/// How a worker's start ended.
enum Start {
    Ready(Box<Running>),
    /// The app failed to load (message for the log and the 503 page).
    Failed(Option<String>),
    Shutdown,
}

/// Runs worker slot `id` until the pool closes.
pub(crate) async fn supervise(shared: Arc<Shared>, id: usize) {
    let mut failures_in_row: u32 = 0;
    let mut restarts = shared.restart_epoch.subscribe();
    let mut target = shared.target.subscribe();
    loop {
        if shared.lock().closing {
            mark_stopped(&shared, id);
            return;
        }
        if shared.slot_removed(id) {
            tracing::info!(worker = id, "worker slot removed");
            return;
        }
        if failures_in_row > 0 {
            let delay = BACKOFF_MIN
                .saturating_mul(1 << failures_in_row.min(8).saturating_sub(1))
                .min(BACKOFF_MAX);
            if wait_or_wake(&shared, delay).await {
                failures_in_row = failures_in_row.min(1);
                continue;
            }
        }
        if given_up(&shared) {
            mark_stopped(&shared, id);
            let woken = shared.wake.notified();
            if given_up(&shared) {
                woken.await;
            }
            continue;
        }
        restarts.borrow_and_update();
        let mut running = match start_worker(&shared, id).await {
            Start::Ready(running) => *running,
            Start::Shutdown => {
                mark_stopped(&shared, id);
                return;
            }
            Start::Failed(message) => {
                if let Some(message) = message {
                    record_failure(&shared, message);
                }
                failures_in_row += 1;
                continue;
            }
        };
        if !install(&shared, id, &running) {
            stop_child(&mut running.child, running.pid, running.control.as_deref()).await;
            failures_in_row += 1;
            continue;
        }
        failures_in_row = 0;

        let signals = shared.signals(id);
        let status = loop {
            let expires = shared
                .settings()
                .recycle
                .max_lifetime
                .filter(|_| !running.recycle_failed)
                .map(|lifetime| tokio::time::Instant::from_std(running.started + lifetime));
            tokio::select! {
                status = running.child.wait() => break status,
                event = running.events.recv() => match event {
                    Some(event) => log_event(id, running.pid, event, running.control.as_deref()),
                    // The control channel closed: the worker is exiting.
                    None => break running.child.wait().await,
                },
                changed = restarts.changed() => {
                    if changed.is_err() || shared.lock().closing {
                        continue;
                    }
                    restarts.borrow_and_update();
                    running = replace(&shared, id, running, Why::Restart).await;
                }
                changed = target.changed() => {
                    if changed.is_err() || id < *target.borrow_and_update() {
                        continue;
                    }
                    if wind_down(&shared, id, &mut running).await {
                        return;
                    }
                }
                () = signals.recycle.notified() => {
                    running = replace(&shared, id, running, Why::Recycle).await;
                }
                () = sleep_until_some(expires) => {
                    tracing::info!(worker = id, pid = running.pid, "recycling worker: max_worker_lifetime reached");
                    shared.lock().workers[id].retiring = true;
                    running = replace(&shared, id, running, Why::Recycle).await;
                }
            }
        };
        running.addr.release();
        let closing = {
            let mut state = shared.lock();
            let worker = &mut state.workers[id];
            if worker.generation == running.generation {
                worker.pid = None;
                worker.out_of_service();
                worker.debug_port = None;
                worker.addr = None;
                worker.phase = Phase::Starting;
            }
            worker.respawns += 1;
            state.closing
        };
        shared.signals(id).paused.send_replace(false);
        shared.idle_changed.notify_waiters();
        if closing {
            mark_stopped(&shared, id);
            return;
        }
        let pid = running.pid;
        let lived_s = running.started.elapsed().as_secs();
        match status {
            Ok(status) => {
                tracing::warn!(worker = id, pid, %status, lived_s, "worker exited; respawning")
            }
            Err(err) => tracing::warn!(worker = id, pid, error = %err, "worker lost; respawning"),
        }
        if running.started.elapsed() < Duration::from_secs(1) {
            failures_in_row += 1;
        }
    }
}

/// Spawns the next incarnation of worker `id` and waits until it has imported the app.
async fn start_worker(shared: &Shared, id: usize) -> Start {
    let generation = {
        let mut state = shared.lock();
        state.next_generation += 1;
        state.next_generation
    };
    let socket_path = shared.runtime.socket_path(id, generation);
    let spawned = match process::spawn(&shared.settings().spec, id, socket_path).await {
        Ok(spawned) => spawned,
        Err(err) => {
            let program = shared
                .settings()
                .spec
                .program
                .to_string_lossy()
                .into_owned();
            tracing::error!(worker = id, program = %program, error = %err, "cannot start worker");
            return Start::Failed(Some(format!("cannot start worker {program}: {err}")));
        }
    };
    let Spawned {
        mut child,
        pid,
        addr,
        mut events,
        control,
    } = spawned;
    tracing::debug!(worker = id, pid, generation, "worker spawned");
    let started = Instant::now();
    let control = control.map(|write| Arc::new(Control::new(write)));
    match wait_ready(shared, id, pid, &mut child, &mut events).await {
        Ok(debug_port) => Start::Ready(Box::new(Running {
            child,
            pid,
            addr,
            events,
            control,
            started,
            generation,
            recycle_failed: false,
        }))
        .with_debug_port(shared, id, debug_port),
        Err(outcome) => {
            stop_child(&mut child, pid, control.as_deref()).await;
            addr.release();
            outcome
        }
    }
}

impl Start {
    /// Records a fresh worker's debugpy port once it is the slot's worker.
    fn with_debug_port(self, shared: &Shared, id: usize, port: Option<u16>) -> Self {
        if let (Start::Ready(_), Some(port)) = (&self, port) {
            shared.lock().pending_debug_ports.insert(id, port);
        }
        self
    }
}

/// Puts a ready worker in service: connects, publishes it, and hands it to a waiter.
fn install(shared: &Shared, id: usize, running: &Running) -> bool {
    // One connection per thread: each of the worker's threads serves one of them.
    let threads = shared.settings().threads.max(1);
    let conns = match (0..threads)
        .map(|_| WorkerConn::connect(&running.addr))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(conns) => conns,
        Err(err) => {
            tracing::error!(worker = id, pid = running.pid, error = %err, "cannot connect to worker");
            return false;
        }
    };
    {
        let mut state = shared.lock();
        state.failure = None;
        let debug_port = state.pending_debug_ports.remove(&id);
        let recycle_after = shared.settings().recycle.request_limit();
        let worker = &mut state.workers[id];
        worker.retiring = false;
        worker.served = 0;
        worker.recycle_after = recycle_after;
        worker.generation = running.generation;
        if let Some(control) = &running.control {
            worker.signals.register_control(running.generation, control);
        }
        worker.pid = Some(running.pid);
        worker.out_of_service();
        worker.conns = conns;
        worker.threads = threads;
        worker.idle_since = Instant::now();
        worker.addr = Some(running.addr.clone());
        worker.debug_port = debug_port;
        worker.phase = Phase::Idle;
        shared.serve_waiters(&mut state);
    }
    shared.signals(id).paused.send_replace(false);
    shared.idle_changed.notify_waiters();
    tracing::info!(
        worker = id,
        pid = running.pid,
        startup_ms = running.started.elapsed().as_millis() as u64,
        "worker ready"
    );
    true
}

/// Replaces the running worker with a fresh one that imported the (changed) app, one slot
/// at a time. Returns the worker that is in service afterwards.
async fn replace(shared: &Arc<Shared>, id: usize, mut old: Running, why: Why) -> Running {
    let Ok(_turn) = shared.roll_turn.clone().acquire_owned().await else {
        return old;
    };
    if why == Why::Restart
        && shared.lock().roll_failed_epoch == Some(*shared.restart_epoch.borrow())
    {
        return old;
    }
    let new = match start_worker(shared, id).await {
        Start::Ready(new) => *new,
        Start::Failed(message) if why == Why::Recycle => {
            tracing::error!(
                worker = id,
                pid = old.pid,
                "the recycling replacement failed to load; keeping the current worker:\n{}",
                message.unwrap_or_default()
            );
            old.recycle_failed = true;
            let mut state = shared.lock();
            let worker = &mut state.workers[id];
            worker.retiring = false;
            worker.recycle_after = u64::MAX;
            shared.serve_waiters(&mut state);
            return old;
        }
        Start::Failed(message) => {
            let epoch = *shared.restart_epoch.borrow();
            shared.lock().roll_failed_epoch = Some(epoch);
            tracing::error!(
                worker = id,
                "the changed app failed to load; the old workers keep serving:\n{}",
                message.unwrap_or_default()
            );
            return old;
        }
        Start::Shutdown => return old,
    };
    // The old worker takes no new request; once its current one is done (from the host's
    // side: the lease is back, so no request sits unread in its socket) the new one takes
    // over and the old one is told to leave.
    shared.lock().workers[id].retiring = true;
    wait_not_busy(shared, id).await;
    if !install(shared, id, &new) {
        let mut new = new;
        stop_child(&mut new.child, new.pid, new.control.as_deref()).await;
        let mut state = shared.lock();
        state.workers[id].retiring = false;
        shared.serve_waiters(&mut state);
        return old;
    }
    tracing::info!(
        worker = id,
        old_pid = old.pid,
        new_pid = new.pid,
        "worker replaced"
    );
    process::terminate(old.pid, old.control.as_deref()).await;
    tokio::spawn(async move {
        if tokio::time::timeout(RETIRE_GRACE, old.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = id,
                pid = old.pid,
                "replaced worker still busy after 30 s; killing it"
            );
            let _ = old.child.kill().await;
        }
        old.addr.release();
    });
    new
}

/// Removes this slot's worker after the pool shrank: no new requests, the current one
/// finishes, then the worker stops. Returns false when the pool grew back meanwhile.
async fn wind_down(shared: &Shared, id: usize, running: &mut Running) -> bool {
    shared.lock().workers[id].retiring = true;
    wait_not_busy(shared, id).await;
    if !shared.slot_removed(id) {
        let mut state = shared.lock();
        state.workers[id].retiring = false;
        shared.serve_waiters(&mut state);
        return false;
    }
    stop_child(&mut running.child, running.pid, running.control.as_deref()).await;
    running.addr.release();
    shared.signals(id).paused.send_replace(false);
    tracing::info!(
        worker = id,
        pid = running.pid,
        "worker removed (fewer workers wanted)"
    );
    true
}

/// Waits until worker `id` has no request in flight (its lease is back).
async fn wait_not_busy(shared: &Shared, id: usize) {
    loop {
        let idle = shared.idle_changed.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        if shared.lock().workers[id].phase != Phase::Busy {
            return;
        }
        idle.await;
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn log_event(id: usize, pid: u32, event: ControlEvent, control: Option<&Control>) {
    if let ControlEvent::Stacks { text } = event {
        tracing::warn!(worker = id, pid, "Python stacks of the worker:\n{text}");
        if let Some(control) = control {
            control.stacks_logged();
        }
    }
}

/// Waits for the shipped worker's `ready` (or takes a custom worker as ready at once).
/// Returns the debugpy port when the worker reported one.
async fn wait_ready(
    shared: &Shared,
    id: usize,
    pid: u32,
    child: &mut Child,
    events: &mut mpsc::Receiver<ControlEvent>,
) -> Result<Option<u16>, Start> {
    if !shared.settings().spec.speaks_control {
        return Ok(None);
    }
    let deadline = tokio::time::Instant::now() + shared.settings().startup_timeout;
    let mut debug_port = None;
    loop {
        let shutdown = shared.wake.notified();
        tokio::select! {
            event = events.recv() => match event {
                Some(ControlEvent::Ready { python, version }) => {
                    tracing::debug!(worker = id, pid, python, version, "app imported");
                    return Ok(debug_port);
                }
                Some(ControlEvent::DebugListening { port }) => {
                    tracing::info!(worker = id, pid, debug_port = port, "debugpy listening on 127.0.0.1");
                    debug_port = Some(port);
                }
                Some(ControlEvent::AppError { traceback }) => {
                    tracing::error!(worker = id, pid, "the app failed to load:\n{traceback}");
                    return Err(Start::Failed(Some(traceback)));
                }
                Some(ControlEvent::DebugpyMissing { python, install }) => {
                    let message = format!("debug mode needs debugpy, which {python} cannot import; install it with:\n    {install}");
                    tracing::error!(worker = id, pid, "{message}");
                    return Err(Start::Failed(Some(message)));
                }
                Some(ControlEvent::Stacks { .. }) => {}
                None => {
                    let status = child
                        .wait()
                        .await
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    tracing::error!(worker = id, pid, status, "worker exited before it was ready");
                    return Err(Start::Failed(Some(format!("the worker exited before it was ready ({status})"))));
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                let message = format!("the worker did not import the app within {:?} (startup_timeout)", shared.settings().startup_timeout);
                tracing::error!(worker = id, pid, "{message}");
                return Err(Start::Failed(Some(message)));
            }
            _ = shutdown => {
                if shared.lock().closing {
                    return Err(Start::Shutdown);
                }
            }
        }
    }
}

/// Records an app load failure; refuses queued requests; gives up at the rapid-fail limit.
fn record_failure(shared: &Shared, traceback: String) {
    let limit = shared.settings().rapid_fails_per_minute;
    let mut state = shared.lock();
    let now = Instant::now();
    state.recent_failures.push_back(now);
    while state
        .recent_failures
        .front()
        .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
    {
        state.recent_failures.pop_front();
    }
    let gave_up = limit > 0 && state.recent_failures.len() >= limit as usize;
    if gave_up && !state.failure.as_ref().is_some_and(|f| f.gave_up) {
        tracing::error!(
            failures = state.recent_failures.len(),
            "the app failed {limit} times within a minute (rapid_fails_per_minute); not restarting workers until the app changes or the host restarts"
        );
    }
    let failure = AppFailure { traceback, gave_up };
    state.failure = Some(failure.clone());
    if !state
        .workers
        .iter()
        .any(|w| w.phase == Phase::Idle || w.phase == Phase::Busy)
    {
        shared.refuse_waiters(&mut state, Refusal::AppBroken(failure));
    }
}

fn given_up(shared: &Shared) -> bool {
    shared.lock().failure.as_ref().is_some_and(|f| f.gave_up)
}

fn mark_stopped(shared: &Shared, id: usize) {
    shared.lock().workers[id].phase = Phase::Stopped;
}

/// Sleeps for `delay`; returns true when woken early (shutdown, or the app changed).
async fn wait_or_wake(shared: &Shared, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = shared.wake.notified() => true,
    }
}

/// Ends a worker that is not in service: [`process::terminate`] (SIGTERM), then a kill
/// after a short grace.
async fn stop_child(child: &mut Child, pid: u32, control: Option<&Control>) {
    process::terminate(pid, control).await;
    if tokio::time::timeout(Duration::from_secs(2), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

//! One supervisor task per worker slot: spawns the worker, waits for it to import the
//! app, puts it in service, notices when it exits, and respawns it with backoff. App load
//! failures are counted pool-wide; at `rapid_fails_per_minute` respawning stops (as IIS
//! does) until the host restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Child;

use super::conn::WorkerConn;
use super::process::{self, ControlEvent, Spawned};
use super::{AppFailure, Phase, Refusal, Shared};

/// Shortest and longest wait before respawning a worker that failed.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How a worker's start ended.
enum Start {
    Ready,
    /// The app failed to load (traceback), or the worker died or hung before it was ready.
    Failed(Option<String>),
    Shutdown,
}

/// Runs worker slot `id` until the pool closes.
pub(crate) async fn supervise(shared: Arc<Shared>, id: usize) {
    let mut failures_in_row: u32 = 0;
    loop {
        if shared.lock().closing {
            mark_stopped(&shared, id);
            return;
        }
        if failures_in_row > 0 {
            let delay = BACKOFF_MIN
                .saturating_mul(1 << failures_in_row.min(8).saturating_sub(1))
                .min(BACKOFF_MAX);
            if wait_or_wake(&shared, delay).await {
                continue;
            }
        }
        if given_up(&shared) {
            mark_stopped(&shared, id);
            shared.wake.notified().await;
            continue;
        }
        let generation = {
            let mut state = shared.lock();
            let worker = &mut state.workers[id];
            worker.generation += 1;
            worker.phase = Phase::Starting;
            worker.generation
        };
        let socket_path = shared.runtime.socket_path(id, generation);
        let spawned = match process::spawn(&shared.settings.spec, id, socket_path.clone()) {
            Ok(spawned) => spawned,
            Err(err) => {
                tracing::error!(worker = id, program = ?shared.settings.spec.program, error = %err, "cannot start worker");
                record_failure(&shared, format!("cannot start worker: {err}"));
                failures_in_row += 1;
                continue;
            }
        };
        let Spawned {
            mut child,
            pid,
            mut events,
            control,
            ..
        } = spawned;
        tracing::debug!(worker = id, pid, "worker spawned");
        let started = Instant::now();

        let start = wait_ready(&shared, id, pid, &mut child, &mut events).await;
        match start {
            Start::Ready => {}
            Start::Shutdown => {
                stop_child(&mut child, pid).await;
                let _ = std::fs::remove_file(&socket_path);
                mark_stopped(&shared, id);
                return;
            }
            Start::Failed(traceback) => {
                stop_child(&mut child, pid).await;
                let _ = std::fs::remove_file(&socket_path);
                if let Some(tb) = traceback {
                    record_failure(&shared, tb);
                }
                failures_in_row += 1;
                continue;
            }
        }
        let conn = match WorkerConn::connect(&socket_path) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::error!(worker = id, pid, error = %err, "cannot connect to worker");
                stop_child(&mut child, pid).await;
                failures_in_row += 1;
                continue;
            }
        };
        {
            let mut state = shared.lock();
            state.failure = None;
            let worker = &mut state.workers[id];
            worker.pid = Some(pid);
            worker.conn = Some(conn);
            worker.socket_path = Some(socket_path.clone());
            worker.phase = Phase::Idle;
            let shared2 = shared.clone();
            shared2.serve_waiters(&mut state);
        }
        shared.idle_changed.notify_waiters();
        tracing::info!(
            worker = id,
            pid,
            startup_ms = started.elapsed().as_millis() as u64,
            "worker ready"
        );
        failures_in_row = 0;

        let _control = control;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                event = events.recv() => match event {
                    Some(ControlEvent::Stacks { text }) => {
                        tracing::warn!(worker = id, pid, "Python stacks of worker:\n{text}");
                    }
                    Some(_) => {}
                    None => {
                        // Control channel closed: the worker is exiting; wait for it.
                        break child.wait().await;
                    }
                },
            }
        };
        let _ = std::fs::remove_file(&socket_path);
        let closing = {
            let mut state = shared.lock();
            let worker = &mut state.workers[id];
            worker.pid = None;
            worker.conn = None;
            worker.debug_port = None;
            worker.socket_path = None;
            worker.phase = Phase::Starting;
            worker.respawns += 1;
            state.closing
        };
        shared.slots[id].paused.send_replace(false);
        shared.idle_changed.notify_waiters();
        if closing {
            mark_stopped(&shared, id);
            return;
        }
        match status {
            Ok(status) => {
                tracing::warn!(worker = id, pid, %status, lived_s = started.elapsed().as_secs(), "worker exited; respawning")
            }
            Err(err) => tracing::warn!(worker = id, pid, error = %err, "worker lost; respawning"),
        }
        if started.elapsed() < Duration::from_secs(1) {
            failures_in_row += 1;
        }
    }
}

/// Waits for the shipped worker's `ready` (or takes a custom worker as ready at once).
async fn wait_ready(
    shared: &Shared,
    id: usize,
    pid: u32,
    child: &mut Child,
    events: &mut tokio::sync::mpsc::Receiver<ControlEvent>,
) -> Start {
    if !shared.settings.spec.speaks_control {
        return Start::Ready;
    }
    let deadline = tokio::time::Instant::now() + shared.settings.startup_timeout;
    loop {
        let shutdown = shared.wake.notified();
        tokio::select! {
            event = events.recv() => match event {
                Some(ControlEvent::Ready { python, version }) => {
                    tracing::debug!(worker = id, pid, python, version, "app imported");
                    return Start::Ready;
                }
                Some(ControlEvent::DebugListening { port }) => {
                    tracing::info!(worker = id, pid, debug_port = port, "debugpy listening on 127.0.0.1");
                    shared.lock().workers[id].debug_port = Some(port);
                }
                Some(ControlEvent::AppError { traceback }) => {
                    tracing::error!(worker = id, pid, "the app failed to load:\n{traceback}");
                    return Start::Failed(Some(traceback));
                }
                Some(ControlEvent::DebugpyMissing { python, install }) => {
                    let message = format!("debug mode needs debugpy, which {python} cannot import; install it with:\n    {install}");
                    tracing::error!(worker = id, pid, "{message}");
                    return Start::Failed(Some(message));
                }
                Some(ControlEvent::Stacks { .. }) => {}
                None => {
                    let status = child
                        .wait()
                        .await
                        .map(|s| s.to_string())
                        .unwrap_or_else(|e| e.to_string());
                    tracing::error!(worker = id, pid, status, "worker exited before it was ready");
                    return Start::Failed(Some(format!("the worker exited before it was ready ({status})")));
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                let message = format!("the worker did not import the app within {:?} (startup_timeout)", shared.settings.startup_timeout);
                tracing::error!(worker = id, pid, "{message}");
                return Start::Failed(Some(message));
            }
            _ = shutdown => {
                if shared.lock().closing {
                    return Start::Shutdown;
                }
            }
        }
    }
}

/// Records an app load failure; refuses queued requests; gives up at the rapid-fail limit.
fn record_failure(shared: &Shared, traceback: String) {
    let limit = shared.settings.rapid_fails_per_minute;
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
    shared.refuse_waiters(&mut state, Refusal::AppBroken(failure));
}

fn given_up(shared: &Shared) -> bool {
    shared.lock().failure.as_ref().is_some_and(|f| f.gave_up)
}

fn mark_stopped(shared: &Shared, id: usize) {
    shared.lock().workers[id].phase = Phase::Stopped;
}

/// Sleeps for `delay`; returns true when woken early (shutdown or reset).
async fn wait_or_wake(shared: &Shared, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = shared.wake.notified() => true,
    }
}

/// Ends a worker that is not in service: SIGTERM, then SIGKILL after a short grace.
async fn stop_child(child: &mut Child, pid: u32) {
    process::signal(pid, libc::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(2), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

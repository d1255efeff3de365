//! The dynamic pool (`workers_max`, `spawn_after`, `idle_timeout`): `workers` is the floor;
//! when every slot is busy and a request has waited `spawn_after` in the queue, one more
//! worker is started (one at a time, up to `workers_max`); the highest worker above the
//! floor that has been idle for `idle_timeout` is stopped. PHP-FPM's `pm = dynamic`
//! (`pm.max_children`, `pm.process_idle_timeout`), uWSGI's cheaper, IIS's `maxInstances`.
//! SIGTTIN/SIGTTOU (and a reload) set the floor, and the pool to it.

use std::sync::Arc;
use std::time::Instant;

use super::worker::WorkerState;
use super::{supervisor, Phase, Shared};

impl Shared {
    /// Sets the number of worker slots wanted: new slots start at once; slots at or above
    /// it finish their requests, then stop.
    pub(super) fn set_target(self: &Arc<Self>, workers: usize, reason: &str) {
        let workers = workers.max(1);
        let before = self.target.send_replace(workers);
        if before != workers {
            tracing::info!(
                from = before,
                to = workers,
                reason,
                "changing the number of workers"
            );
        }
        let mut state = self.lock();
        for id in 0..workers {
            if id == state.workers.len() {
                state.workers.push(WorkerState::new(id, false));
            }
            let worker = &mut state.workers[id];
            if !worker.supervised {
                worker.supervised = true;
                worker.phase = Phase::Starting;
                tokio::spawn(supervisor::supervise(self.clone(), id));
            }
        }
    }

    /// A request waited `spawn_after` with every slot busy: one more worker, unless the
    /// pool is at `workers_max` or a worker is starting already (it will take the queue).
    pub(super) fn grow(self: &Arc<Self>) {
        let settings = self.settings();
        let target = *self.target.borrow();
        if target >= settings.workers_max {
            return;
        }
        {
            let state = self.lock();
            if state.closing
                || state.failure.is_some()
                || state.workers[..target.min(state.workers.len())]
                    .iter()
                    .any(|w| w.phase == Phase::Starting)
            {
                return;
            }
        }
        self.set_target(target + 1, "every slot busy for spawn_after");
    }
}

/// Stops the highest worker above the floor once it has been idle for `idle_timeout`; runs
/// for the life of the pool.
pub(super) async fn shrink_idle(shared: Arc<Shared>) {
    let mut target_changed = shared.target.subscribe();
    loop {
        let changed = shared.idle_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let settings = shared.settings();
        let target = *target_changed.borrow_and_update();
        let due = {
            let state = shared.lock();
            if state.closing {
                return;
            }
            match state.workers.get(target.wrapping_sub(1)) {
                Some(top) if target > settings.workers && top.phase == Phase::Idle => {
                    Some(top.idle_since + settings.idle_timeout)
                }
                _ => None,
            }
        };
        match due {
            Some(at) if at <= Instant::now() => {
                shared.set_target(target - 1, "idle for idle_timeout");
                continue;
            }
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    () = &mut changed => {}
                    _ = target_changed.changed() => {}
                }
            }
            None => {
                tokio::select! {
                    () = &mut changed => {}
                    _ = target_changed.changed() => {}
                    () = shared.wake.notified() => {}
                }
            }
        }
    }
}

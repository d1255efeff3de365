//! Dispatch: hands each request an idle worker or parks it in the bounded queue
//! (`max_queue`, `queue_timeout`), and passes a worker on when its request ends.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::conn::WorkerConn;
use super::lease::Lease;
use super::pipeline::behind_grant;
use super::worker::{WorkerState, FIRST_FCGI_ID};
use super::{CurrentRequest, Phase, Pool, Refusal, Shared, State};

/// A request waiting in the queue. If the request is abandoned (the client went away and
/// its handler was dropped) while a worker is already on its way to it, dropping this
/// returns that worker to the pool — otherwise the worker would stay "busy" forever.
pub(super) struct QueuedWait {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) rx: oneshot::Receiver<Result<Grant, Refusal>>,
}

impl QueuedWait {
    /// Leaves the queue; returns what was sent before leaving, if anything.
    pub(super) fn withdraw(&mut self) -> Option<Result<Grant, Refusal>> {
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

pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) grant: oneshot::Sender<Result<Grant, Refusal>>,
    /// The request's records when it has no body (it may then wait behind a busy
    /// worker's running request), with its identity for the worker table.
    pub(super) pipelinable: Option<(Bytes, CurrentRequest)>,
}

/// A worker handed to one request (plain data: no Drop, so it can bounce back safely).
pub(super) struct Grant {
    pub(super) worker: usize,
    pub(super) generation: u64,
    pub(super) pid: u32,
    /// The FastCGI request id the request's records carry on this connection.
    pub(super) fcgi_id: u16,
    pub(super) place: Place,
}

/// Where a granted request stands on its worker's connection.
pub(super) enum Place {
    /// The worker was idle: the request runs now, on this connection.
    Running(WorkerConn),
    /// The request was written behind the running one (pipelining); the connection comes
    /// here when the requests before it end, or the sender is dropped when the worker is
    /// lost first.
    Behind(oneshot::Receiver<WorkerConn>),
}

impl Pool {
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
    pub(super) async fn acquire_at(
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
        let settings = self.shared.settings();
        let deadline = tokio::time::Instant::now() + settings.queue_timeout;
        let mut early = None;
        if settings.workers_max > settings.workers && settings.spawn_after < settings.queue_timeout
        {
            // Dynamic pool: a request that waited spawn_after with every slot busy grows it.
            let grow_at = tokio::time::Instant::now() + settings.spawn_after;
            match tokio::time::timeout_at(grow_at, &mut wait.rx).await {
                Ok(result) => early = Some(result),
                Err(_) => self.shared.grow(),
            }
        }
        let outcome = match early {
            Some(result) => Ok(result),
            None => tokio::time::timeout_at(deadline, &mut wait.rx).await,
        };
        let granted = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Refusal::ShuttingDown),
            Err(_) => wait.withdraw().unwrap_or(Err(Refusal::QueueTimeout)),
        };
        let grant = granted?;
        let mut state = self.shared.lock();
        Ok(self.lease(&mut state, grant, current))
    }

    pub(super) fn lease(&self, state: &mut State, grant: Grant, current: CurrentRequest) -> Lease {
        let worker = &mut state.workers[grant.worker];
        let request_id = current.request_id;
        let (conn, relay) = match grant.place {
            Place::Running(conn) => {
                worker.running.push(current);
                (Some(conn), None)
            }
            Place::Behind(relay) => (None, Some(relay)),
        };
        Lease {
            request_id,
            threads: worker.threads,
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
            draining: false,
        }
    }
}

/// Picks a free slot (a worker thread with its connection): on a worker with a debugger
/// attached first (affinity: the developer's requests reach the process they debug, even
/// while it is paused), then on one that is not paused, then the least loaded, then the
/// lowest id. A paused worker without a debugger (it was just detached) is passed over.
/// `pipelinable`: the request has no body, so others may be written behind it.
pub(super) fn take_idle(state: &mut State, pipelinable: bool) -> Option<Grant> {
    let pick = state
        .workers
        .iter()
        .filter(|w| w.has_free_slot())
        .map(|w| (w, *w.signals.paused.borrow()))
        .filter(|(w, paused)| !paused || w.debuggers > 0)
        .min_by_key(|(w, paused)| (w.debuggers == 0, *paused, w.in_flight, w.id))
        .map(|(w, _)| w.id)?;
    let worker = &mut state.workers[pick];
    let conn = worker.conns.pop()?;
    worker.in_flight += 1;
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
pub(super) fn hand_on(worker: &mut WorkerState, conn: Option<WorkerConn>) {
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
                        worker.running.push(next.current);
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
        Some(conn) => worker.end_slot(Some(conn)),
        None => {
            // The worker does not accept connections any more: it is gone or going, and
            // its supervisor respawns it.
            worker.out_of_service();
            worker.phase = Phase::Starting;
        }
    }
}

impl Shared {
    /// After a worker changed hands: gives idle workers and free places behind busy ones
    /// to waiting requests, then wakes whoever waits for a worker to leave `Busy` (drain,
    /// replacement).
    pub(super) fn settle(&self, mut state: MutexGuard<'_, State>) {
        self.serve_waiters(&mut state);
        drop(state);
        self.idle_changed.notify_waiters();
    }

    /// Hands idle workers to waiting requests, skipping waiters that gave up; with no
    /// idle worker, a bodiless request at the front of the queue may go behind a busy
    /// one. The queue stays in order: a request with a body at its front waits for an
    /// idle worker, and the ones after it wait too.
    pub(super) fn serve_waiters(&self, state: &mut State) {
        while let Some(front) = state.waiters.front() {
            let pipelinable = front.pipelinable.is_some();
            if let Some(mut grant) = take_idle(state, pipelinable) {
                loop {
                    let Some(waiter) = state.waiters.pop_front() else {
                        // Every waiter had gone: the worker is idle again.
                        let worker = &mut state.workers[grant.worker];
                        if let Place::Running(conn) = grant.place {
                            worker.end_slot(Some(conn));
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
    pub(super) fn refuse_waiters(&self, state: &mut State, refusal: Refusal) {
        for waiter in state.waiters.drain(..) {
            let _ = waiter.grant.send(Err(refusal.clone()));
        }
    }
}

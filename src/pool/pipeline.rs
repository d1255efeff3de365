//! Pipelining (`pipeline_depth`, `pipeline_window`): bodiless requests written behind the
//! running one on a busy worker's connection, the ids they carry, and their hand-off.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;

use super::conn::WorkerConn;
use super::dispatch::{hand_on, Grant, Place};
use super::worker::WorkerState;
use super::{CurrentRequest, Phase, Shared, State};

/// A request written behind the running one on a worker's connection.
#[derive(Debug)]
pub(super) struct Follower {
    /// Receives the connection when the request before it ends.
    pub(super) relay: oneshot::Sender<WorkerConn>,
    pub(super) fcgi_id: u16,
    pub(super) current: CurrentRequest,
}

/// Length of the cycle of FastCGI request ids on one worker connection.
const FCGI_ID_CYCLE: u16 = crate::config::MAX_PIPELINE_DEPTH as u16 + 1;

impl WorkerState {
    /// The FastCGI id for a request written behind the last one in flight. Ids run
    /// 1..=MAX_PIPELINE_DEPTH+1 in a cycle, so the at most `depth + 1` requests in flight
    /// on a connection always carry different ids.
    pub(super) fn next_fcgi_id(&self) -> u16 {
        let last = self
            .followers
            .back()
            .map_or(self.running_fcgi_id, |f| f.fcgi_id);
        last % FCGI_ID_CYCLE + 1
    }
}

/// A grant behind the last request in flight on `worker`, and the relay that will
/// hand it the connection.
pub(super) fn behind_grant(worker: &WorkerState) -> (oneshot::Sender<WorkerConn>, Grant) {
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
    /// The busy worker a bodiless request may be written behind (pipelining): one whose
    /// running request has no body and started within `pipeline_window`, that is not
    /// retiring and has room before `max_requests`, with the fewest followers below
    /// `pipeline_depth`.
    pub(super) fn behind_target(&self, state: &State) -> Option<usize> {
        let settings = self.settings();
        if settings.pipeline_depth == 0 || settings.debug || !settings.spec.speaks_control {
            return None;
        }
        if *self.target.borrow() < settings.workers_max {
            // A dynamic pool that may still grow starts a worker instead (spawn_after).
            return None;
        }
        let now = Instant::now();
        state
            .workers
            .iter()
            .filter(|w| {
                w.phase == Phase::Busy
                    // One request at a time per worker: with threads, a free thread
                    // takes the request instead.
                    && w.threads == 1
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
    pub(super) fn place_behind(
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
    pub(super) fn follow(
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
    pub(super) fn abandon_behind(
        &self,
        id: usize,
        generation: u64,
        mut relay: oneshot::Receiver<WorkerConn>,
    ) {
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
        // Pipelining runs only on single-threaded workers: the abandoned request was the
        // only one running.
        worker.running.clear();
        let conn = worker.fresh_conn();
        hand_on(worker, conn);
        self.settle(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn follower(fcgi_id: u16) -> (Follower, oneshot::Receiver<WorkerConn>) {
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
    pub(super) fn request_ids_in_flight_on_one_connection_never_repeat() {
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
    pub(super) fn dropping_the_followers_tells_each_of_them_and_empties_the_outbox() {
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

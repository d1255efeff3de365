//! The pause-aware request clock: how long a request has really been running.
//!
//! IIS's FastCGI module kills a process whose request runs past `requestTimeout` (90 s by
//! default), and its peers do the same (gunicorn `--timeout`, uWSGI `harakiri`, PHP-FPM
//! `request_terminate_timeout`). A request stopped at a breakpoint is such a request, so under
//! those hosts a debugging session dies after a minute and a half and users switch the timeout
//! off altogether. fcgihost owns the timeout instead, and its clock stops while the debugger
//! holds the request's worker paused: only time in which the worker could make progress counts
//! towards the limit.
//!
//! This module is pure: every method takes the current [`Instant`] explicitly, so the caller
//! decides what "now" is and tests can use synthetic instants.

use std::time::{Duration, Instant};

/// The clock of one request: elapsed time minus the time its worker spent paused in the
/// debugger, compared against an optional limit.
///
/// It exists so the supervisor can kill runaway requests (504) without ever killing one that a
/// developer is stepping through.
#[derive(Debug, Clone)]
pub struct RequestClock {
    started: Instant,
    limit: Option<Duration>,
    paused_before: Duration,
    paused_since: Option<Instant>,
    pauses: u32,
}

impl RequestClock {
    /// Starts the clock of a request that began at `now`; `limit` is the active-time budget
    /// (`None` = no limit).
    pub fn start(now: Instant, limit: Option<Duration>) -> Self {
        RequestClock {
            started: now,
            limit,
            paused_before: Duration::ZERO,
            paused_since: None,
            pauses: 0,
        }
    }

    /// Stops the clock because the debugger paused the worker; a no-op when already paused.
    pub fn pause(&mut self, now: Instant) {
        if self.paused_since.is_none() {
            self.paused_since = Some(now.max(self.started));
            self.pauses = self.pauses.saturating_add(1);
        }
    }

    /// Restarts the clock because the worker runs again; a no-op when not paused.
    pub fn resume(&mut self, now: Instant) {
        if let Some(since) = self.paused_since.take() {
            self.paused_before = self
                .paused_before
                .saturating_add(now.saturating_duration_since(since));
        }
    }

    /// Whether the clock is stopped (the worker is held by the debugger).
    pub fn is_paused(&self) -> bool {
        self.paused_since.is_some()
    }

    /// The limit the clock was started with, for messages such as "exceeded 90 s".
    pub fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// How many times the clock was paused, for the log line of a killed or slow request.
    pub fn pause_count(&self) -> u32 {
        self.pauses
    }

    /// Wall-clock time since the request started, pauses included.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Time the request has been running: elapsed time minus paused time.
    pub fn active(&self, now: Instant) -> Duration {
        self.elapsed(now).saturating_sub(self.paused_total(now))
    }

    /// Total time spent paused, the current pause included.
    pub fn paused_total(&self, now: Instant) -> Duration {
        self.paused_before
            .saturating_add(self.current_pause(now).unwrap_or(Duration::ZERO))
    }

    /// How long the current pause has lasted, or `None` when running.
    pub fn current_pause(&self, now: Instant) -> Option<Duration> {
        self.paused_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// Active time left before the limit: `None` without a limit, `Some(0)` once expired.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.limit
            .map(|limit| limit.saturating_sub(self.active(now)))
    }

    /// Whether the request has used up its active-time budget (never without a limit).
    pub fn expired(&self, now: Instant) -> bool {
        self.remaining(now) == Some(Duration::ZERO)
    }

    /// When to wake up next to check for expiry: `None` while paused (a resume will arrive
    /// first) or without a limit, and also when the deadline lies beyond what an [`Instant`]
    /// can represent. Once expired this is `now`.
    pub fn next_check(&self, now: Instant) -> Option<Instant> {
        if self.is_paused() {
            return None;
        }
        self.remaining(now)
            .and_then(|remaining| now.checked_add(remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn unlimited_clock_never_expires() {
        let t0 = Instant::now();
        let clock = RequestClock::start(t0, None);
        assert_eq!(clock.remaining(t0 + s(10_000)), None);
        assert!(!clock.expired(t0 + s(10_000)));
        assert_eq!(clock.next_check(t0 + s(5)), None);
        assert_eq!(clock.active(t0 + s(7)), s(7));
        assert_eq!(clock.limit(), None);
    }

    #[test]
    fn running_clock_counts_elapsed_time() {
        let t0 = Instant::now();
        let clock = RequestClock::start(t0, Some(s(90)));
        assert_eq!(clock.active(t0 + s(30)), s(30));
        assert_eq!(clock.remaining(t0 + s(30)), Some(s(60)));
        assert_eq!(clock.next_check(t0 + s(30)), Some(t0 + s(90)));
        assert!(!clock.expired(t0 + s(89)));
        assert!(clock.expired(t0 + s(90)));
        assert_eq!(clock.remaining(t0 + s(200)), Some(Duration::ZERO));
        assert_eq!(clock.next_check(t0 + s(200)), Some(t0 + s(200)));
    }

    #[test]
    fn pause_stops_the_clock() {
        let t0 = Instant::now();
        let mut clock = RequestClock::start(t0, Some(s(90)));
        clock.pause(t0 + s(10));
        assert!(clock.is_paused());
        // A breakpoint held for an hour does not expire the request.
        let later = t0 + s(3_600);
        assert_eq!(clock.active(later), s(10));
        assert_eq!(clock.current_pause(later), Some(s(3_590)));
        assert_eq!(clock.paused_total(later), s(3_590));
        assert_eq!(clock.remaining(later), Some(s(80)));
        assert!(!clock.expired(later));
        assert_eq!(clock.next_check(later), None);
        assert_eq!(clock.elapsed(later), s(3_600));

        clock.resume(later);
        assert!(!clock.is_paused());
        assert_eq!(clock.current_pause(later), None);
        assert_eq!(clock.next_check(later), Some(later + s(80)));
        assert!(!clock.expired(later + s(79)));
        assert!(clock.expired(later + s(80)));
        assert_eq!(clock.paused_total(later + s(80)), s(3_590));
    }

    #[test]
    fn pause_and_resume_are_idempotent() {
        let t0 = Instant::now();
        let mut clock = RequestClock::start(t0, Some(s(60)));
        clock.resume(t0 + s(1));
        assert_eq!(clock.active(t0 + s(2)), s(2));
        clock.pause(t0 + s(5));
        clock.pause(t0 + s(20));
        assert_eq!(clock.current_pause(t0 + s(25)), Some(s(20)));
        clock.resume(t0 + s(25));
        clock.resume(t0 + s(40));
        assert_eq!(clock.paused_total(t0 + s(50)), s(20));
        assert_eq!(clock.active(t0 + s(50)), s(30));
        assert_eq!(clock.pause_count(), 1);
    }

    #[test]
    fn several_pauses_accumulate() {
        let t0 = Instant::now();
        let mut clock = RequestClock::start(t0, Some(s(30)));
        clock.pause(t0 + s(10));
        clock.resume(t0 + s(100));
        clock.pause(t0 + s(110));
        clock.resume(t0 + s(500));
        assert_eq!(clock.pause_count(), 2);
        assert_eq!(clock.paused_total(t0 + s(505)), s(480));
        assert_eq!(clock.active(t0 + s(505)), s(25));
        assert_eq!(clock.remaining(t0 + s(505)), Some(s(5)));
        assert!(clock.expired(t0 + s(510)));
    }

    #[test]
    fn instants_out_of_order_do_not_panic() {
        let t0 = Instant::now() + s(100);
        let mut clock = RequestClock::start(t0, Some(s(10)));
        let earlier = t0 - s(50);
        assert_eq!(clock.active(earlier), Duration::ZERO);
        clock.pause(earlier);
        clock.resume(earlier);
        assert_eq!(clock.paused_total(t0 + s(5)), Duration::ZERO);
        assert_eq!(clock.remaining(t0 + s(5)), Some(s(5)));
    }

    #[test]
    fn huge_limit_has_no_representable_wake_up() {
        let t0 = Instant::now();
        let clock = RequestClock::start(t0, Some(Duration::MAX));
        assert!(!clock.expired(t0 + s(1)));
        assert_eq!(clock.next_check(t0 + s(1)), None);
    }
}

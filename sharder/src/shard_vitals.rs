//! What the status page shows of one shard besides its state: guilds,
//! heartbeat RTT, events, when it last identified and resumed, and how its
//! last connection ended.
//!
//! The shard's own task writes these as it goes (relaxed atomics, a few per
//! burst of messages, never per event); the status board reads them once a
//! publish interval ([`crate::status`]). Times are unix milliseconds, so
//! processes on different nodes report times a page can compare against
//! the serving process's clock.

use crate::clock::now_ms;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// "Not yet" in the time and RTT slots.
const NONE: u64 = 0;

/// How a shard's last connection ended (`None` code: no close frame, such
/// as a dropped socket, a zombie or op 7).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastClose {
    pub code: Option<u16>,
    pub reason: String,
    pub at_ms: u64,
}

/// One shard's figures for the status page. Shared by the shard's task (the
/// writer) and its [`crate::ShardHandle`].
#[derive(Debug, Default)]
pub struct ShardVitals {
    events: AtomicU64,
    guilds: AtomicU32,
    /// The last heartbeat's round trip, in microseconds plus one (0: none yet).
    rtt_us: AtomicU64,
    state_since_ms: AtomicU64,
    /// Since when the shard waits for a new session (waiting for its
    /// identify turn, then identifying); [`NONE`] outside that queue.
    queued_since_ms: AtomicU64,
    last_identify_ms: AtomicU64,
    last_resume_ms: AtomicU64,
    last_close: Mutex<Option<LastClose>>,
}

/// A copy of [`ShardVitals`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct VitalsSnapshot {
    /// Events forwarded since the shard started.
    pub events: u64,
    pub guilds: u32,
    pub rtt_ms: Option<f64>,
    pub state_since_ms: u64,
    /// Since when it waits for a new session, while it does.
    pub queued_since_ms: Option<u64>,
    pub last_identify_ms: Option<u64>,
    pub last_resume_ms: Option<u64>,
    pub last_close: Option<LastClose>,
}

impl ShardVitals {
    pub(crate) fn new() -> Self {
        let v = Self::default();
        v.state_since_ms.store(now_ms(), Ordering::Relaxed);
        v
    }

    pub(crate) fn add_events(&self, n: u64) {
        self.events.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_guilds(&self, n: usize) {
        self.guilds
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Guilds the shard's session knows.
    pub fn guilds(&self) -> u32 {
        self.guilds.load(Ordering::Relaxed)
    }

    pub(crate) fn heartbeat_acked(&self, rtt: std::time::Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX - 1);
        self.rtt_us.store(us + 1, Ordering::Relaxed);
    }

    /// The shard entered a new state; `queued`: one of the identify
    /// queue's (waiting for its turn, identifying). The queue's wait runs
    /// from the first of them to the last: a shard that goes from waiting
    /// to identifying, or back after a failed attempt, has not waited less.
    pub(crate) fn state_changed(&self, queued: bool) {
        let now = now_ms();
        self.state_since_ms.store(now, Ordering::Relaxed);
        if queued {
            // Only the writer (the shard's task) stores here.
            if self.queued_since_ms.load(Ordering::Relaxed) == NONE {
                self.queued_since_ms.store(now, Ordering::Relaxed);
            }
        } else {
            self.queued_since_ms.store(NONE, Ordering::Relaxed);
        }
    }

    pub(crate) fn identify_sent(&self) {
        self.last_identify_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn resume_sent(&self) {
        self.last_resume_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, code: Option<u16>, reason: &str) {
        let close = LastClose {
            code,
            reason: reason.chars().take(200).collect(),
            at_ms: now_ms(),
        };
        *self.last_close.lock().unwrap_or_else(|e| e.into_inner()) = Some(close);
    }

    /// The figures now.
    pub fn snapshot(&self) -> VitalsSnapshot {
        let at = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&v| v != NONE);
        VitalsSnapshot {
            events: self.events.load(Ordering::Relaxed),
            guilds: self.guilds.load(Ordering::Relaxed),
            rtt_ms: at(&self.rtt_us).map(|us| (us - 1) as f64 / 1000.0),
            state_since_ms: self.state_since_ms.load(Ordering::Relaxed),
            queued_since_ms: at(&self.queued_since_ms),
            last_identify_ms: at(&self.last_identify_ms),
            last_resume_ms: at(&self.last_resume_ms),
            last_close: self
                .last_close
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_new_shard_has_no_rtt_no_identify_and_no_close() {
        let v = ShardVitals::new();
        let s = v.snapshot();
        assert_eq!(s.rtt_ms, None);
        assert_eq!(s.last_identify_ms, None);
        assert_eq!(s.last_resume_ms, None);
        assert_eq!(s.last_close, None);
        assert!(s.state_since_ms > 0);
        assert_eq!(s.queued_since_ms, None);
    }

    #[test]
    fn the_identify_queue_wait_spans_waiting_and_identifying() {
        let v = ShardVitals::new();
        v.state_changed(false);
        assert_eq!(v.snapshot().queued_since_ms, None);
        v.state_changed(true);
        let since = v.snapshot().queued_since_ms.unwrap();
        // As if queued 5 s ago: the next queue state keeps that start.
        v.queued_since_ms.store(since - 5_000, Ordering::Relaxed);
        v.state_changed(true);
        let s = v.snapshot();
        assert_eq!(s.queued_since_ms, Some(since - 5_000));
        assert!(s.state_since_ms >= since, "the state's own time moves on");
        v.state_changed(false);
        assert_eq!(v.snapshot().queued_since_ms, None);
    }

    #[test]
    fn records_what_the_shard_reports() {
        let v = ShardVitals::new();
        v.add_events(3);
        v.add_events(4);
        v.set_guilds(12);
        v.heartbeat_acked(Duration::ZERO);
        assert_eq!(v.snapshot().rtt_ms, Some(0.0), "a 0 µs RTT is a value");
        v.heartbeat_acked(Duration::from_micros(12_500));
        v.identify_sent();
        v.closed(Some(4000), &"x".repeat(500));
        let s = v.snapshot();
        assert_eq!(s.events, 7);
        assert_eq!(s.guilds, 12);
        assert_eq!(s.rtt_ms, Some(12.5));
        assert!(s.last_identify_ms.is_some());
        let close = s.last_close.unwrap();
        assert_eq!(close.code, Some(4000));
        assert_eq!(close.reason.len(), 200, "a reason is bounded");
    }
}

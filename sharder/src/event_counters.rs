//! The sharder's per-event counters (`sharder_events_total`,
//! `sharder_events_by_type_total`), labelled by the closed set of names in
//! [`gateway_protocol::KNOWN_EVENTS`] so the label set cannot grow.

use crate::shard_vitals::ShardVitals;
use gateway_protocol::{EventName, KNOWN_EVENTS, OTHER_EVENT};
use std::sync::{Arc, OnceLock};

/// Per-shard handles of the event counters, resolved once instead of a
/// registry lookup (hash, lock, label set) for every event.
pub(crate) struct EventCounters {
    total: metrics::Counter,
    /// Counts not yet added to the shared counters: (name index, count).
    /// The shared counters are atomics that every shard's thread writes, so
    /// a burst of events adds to them once per name, not once per event.
    pending: [(u16, u32); PENDING_NAMES],
    pending_len: usize,
    /// The shard's own count, for the status page's events per second.
    shard: Arc<ShardVitals>,
}

/// Distinct names a burst collects before it adds them up.
const PENDING_NAMES: usize = 8;

/// Slots of the by-type counters: every known name, then "OTHER".
const COUNTER_SLOTS: usize = KNOWN_EVENTS.len() + 1;

/// The `sharder_events_by_type_total` handle of name index `at`, shared by
/// every shard (the series has no shard label, so a table per shard would
/// be 1.2 KiB of identical handles per idle shard). A series appears on
/// its name's first event, as with `metrics::counter!`; `run_with`
/// installs the recorder before any shard starts.
fn by_type(at: usize) -> Option<&'static metrics::Counter> {
    static SLOTS: [OnceLock<metrics::Counter>; COUNTER_SLOTS] =
        [const { OnceLock::new() }; COUNTER_SLOTS];
    let label = KNOWN_EVENTS.get(at).copied().unwrap_or(OTHER_EVENT);
    Some(
        SLOTS
            .get(at)?
            .get_or_init(|| metrics::counter!("sharder_events_by_type_total", "event" => label)),
    )
}

impl EventCounters {
    pub(crate) fn new(shard: Arc<ShardVitals>) -> Self {
        Self {
            shard,
            total: metrics::counter!("sharder_events_total"),
            pending: [(0, 0); PENDING_NAMES],
            pending_len: 0,
        }
    }

    /// Counts one forwarded event (visible after the next [`Self::flush`]).
    pub(crate) fn count(&mut self, event: &EventName) {
        let at = u16::try_from(event.known().unwrap_or(KNOWN_EVENTS.len())).unwrap_or(u16::MAX);
        if let Some(slot) = self.pending[..self.pending_len]
            .iter_mut()
            .find(|(i, _)| *i == at)
        {
            slot.1 += 1;
            return;
        }
        if self.pending_len == PENDING_NAMES {
            self.flush();
        }
        self.pending[self.pending_len] = (at, 1);
        self.pending_len += 1;
    }

    /// Adds the pending counts to the shared counters.
    pub(crate) fn flush(&mut self) {
        let mut total = 0;
        for &(at, n) in &self.pending[..self.pending_len] {
            total += u64::from(n);
            if let Some(counter) = by_type(usize::from(at)) {
                counter.increment(u64::from(n));
            }
        }
        self.pending_len = 0;
        if total > 0 {
            self.total.increment(total);
            self.shard.add_events(total);
        }
    }
}

impl std::fmt::Debug for EventCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCounters").finish_non_exhaustive()
    }
}

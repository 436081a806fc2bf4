//! What the demo watches while the pipeline runs, without reaching into it.
//!
//! Two sources, both the components' own:
//! - the worker's clean events, through the handlers of its embedding API
//!   ([`Observation::attach`]): when each shard's READY reached the cache
//!   (the cold-boot timing), which guilds each session's READY listed
//!   (to tell real joins in the simulator's ledger), every `GUILD_JOINED`,
//!   and a tally of lifecycle events;
//! - the process's Prometheus registry, which the sharder and the worker
//!   both record into ([`Counters::read`]): events forwarded by the shards,
//!   events processed by the worker, identify grants and their waits.
//!
//! The registry is process-wide, so [`Counters`] are taken relative to a
//! baseline read at the start of the run; two demos in one process at the
//! same time would mix their counts (the demo binary runs one).

use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use worker::{CleanEvent, CleanKind, Store, Worker};

/// Clean events as the worker announced them.
#[derive(Debug)]
pub struct Observation {
    inner: Mutex<Seen>,
    available: AtomicU64,
    /// GUILD_AVAILABLE announcements of a guild loading after READY
    /// (`initial`), as opposed to one back from an outage.
    initial: AtomicU64,
    unavailable: AtomicU64,
    removed: AtomicU64,
}

#[derive(Debug, Default)]
struct Seen {
    /// First READY per shard, as the worker processed it.
    /// Each shard's first READY, as the sharder received it (ms since
    /// the epoch): the worker sees it later, behind whatever the queue
    /// holds, which would shrink or stretch the span.
    ready_at: HashMap<u32, u64>,
    /// The guild ids each session's READY listed, by session id.
    ready_guilds: HashMap<String, HashSet<u64>>,
    /// Every `GUILD_JOINED`'s guild, in order (repeats kept).
    joins: Vec<u64>,
    /// Clean events per guild and gateway name, READY-time loads left out
    /// ([`crate::verdict::check_stream`]).
    guild_events: HashMap<(u64, String), u64>,
}

#[derive(Deserialize)]
struct Ready {
    session_id: String,
    guilds: Vec<Stub>,
}

#[derive(Deserialize)]
struct Stub {
    id: String,
}

impl Default for Observation {
    fn default() -> Self {
        Self::new()
    }
}

impl Observation {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Seen::default()),
            available: AtomicU64::new(0),
            initial: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            removed: AtomicU64::new(0),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the handlers on `worker`.
    pub fn attach<S: Store>(self: &std::sync::Arc<Self>, worker: Worker<S>) -> Worker<S> {
        let (ready, joined, any) = (self.clone(), self.clone(), self.clone());
        worker
            .on("READY", move |ev| ready.on_ready(ev))
            .on("GUILD_JOINED", move |ev| {
                if let Some(g) = ev.guild_id {
                    joined.seen().joins.push(g);
                }
            })
            .on_any(move |ev| {
                if ev.kind == (CleanKind::GuildAvailable { initial: true }) {
                    any.initial.fetch_add(1, Ordering::Relaxed);
                } else if let Some(g) = ev.guild_id
                    && !matches!(ev.kind, CleanKind::Reshard { .. })
                {
                    *any.seen()
                        .guild_events
                        .entry((g, ev.t.to_owned()))
                        .or_default() += 1;
                }
                let counter = match ev.kind {
                    CleanKind::GuildAvailable { .. } => &any.available,
                    CleanKind::GuildUnavailable => &any.unavailable,
                    CleanKind::GuildRemoved => &any.removed,
                    CleanKind::GuildJoined | CleanKind::Dispatch | CleanKind::Reshard { .. } => {
                        return;
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
            })
    }

    fn on_ready(&self, ev: &CleanEvent<'_>) {
        let parsed: Result<Ready, _> = serde_json::from_slice(ev.d);
        let mut seen = self.seen();
        seen.ready_at.entry(ev.shard_id).or_insert(ev.received_at);
        match parsed {
            Ok(r) => {
                let ids = r.guilds.iter().filter_map(|g| g.id.parse().ok()).collect();
                seen.ready_guilds.insert(r.session_id, ids);
            }
            Err(e) => tracing::warn!(shard_id = ev.shard_id, error = %e, "unreadable READY"),
        }
    }

    /// Shards whose READY reached the worker.
    pub fn ready_shards(&self) -> HashSet<u32> {
        self.seen().ready_at.keys().copied().collect()
    }

    /// From the first READY to the last, by the sharder's receive times,
    /// once at least one arrived.
    pub fn ready_span(&self) -> Option<Duration> {
        let seen = self.seen();
        let first = seen.ready_at.values().min()?;
        let last = seen.ready_at.values().max()?;
        Some(Duration::from_millis(last.saturating_sub(*first)))
    }

    /// The guilds each session's READY listed.
    pub fn ready_guilds(&self) -> HashMap<String, HashSet<u64>> {
        self.seen().ready_guilds.clone()
    }

    /// Every announced join, repeats included.
    pub fn joins(&self) -> Vec<u64> {
        self.seen().joins.clone()
    }

    /// GUILD_AVAILABLE announcements with `initial` so far: one per guild
    /// a session loaded after READY that the bot did not have.
    pub fn initial_loads(&self) -> u64 {
        self.initial.load(Ordering::Relaxed)
    }

    /// Clean events per guild and gateway event name so far.
    pub fn guild_events(&self) -> HashMap<(u64, String), u64> {
        self.seen().guild_events.clone()
    }

    /// (available, unavailable, removed) announcements so far.
    pub fn lifecycle(&self) -> (u64, u64, u64) {
        (
            self.available.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
            self.removed.load(Ordering::Relaxed),
        )
    }
}

/// Pipeline counters from the process's metrics registry.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Dispatches the shards handed to the queue (`sharder_events_total`).
    pub forwarded: f64,
    /// Events the worker processed: announced, deduplicated or invalid,
    /// and during a live reshard the twins dropped and the hand-overs.
    pub processed: f64,
    /// Events whose writes changed the cache.
    pub applied: f64,
    /// Identifies granted by the scheduler.
    pub identifies: f64,
    /// Sum of the identify waits, seconds.
    pub identify_wait_sum: f64,
}

impl Counters {
    /// The counters now (the recorder is installed on first use).
    pub fn read() -> Self {
        Self::parse(&sharder::prometheus().render())
    }

    /// Reads the counters from Prometheus text.
    pub fn parse(text: &str) -> Self {
        let m = |name| metric(text, name);
        Self {
            forwarded: m("sharder_events_total"),
            processed: m("worker_events_emitted_total")
                + m("worker_events_dropped_total")
                + m("worker_events_invalid_total")
                + m("worker_reshard_twins_dropped_total")
                + m("worker_reshard_handovers_total"),
            applied: m("worker_events_applied_total"),
            identifies: m("sharder_identify_wait_seconds_count"),
            identify_wait_sum: m("sharder_identify_wait_seconds_sum"),
        }
    }

    /// `self - base`, field by field.
    pub fn since(&self, base: &Self) -> Self {
        Self {
            forwarded: self.forwarded - base.forwarded,
            processed: self.processed - base.processed,
            applied: self.applied - base.applied,
            identifies: self.identifies - base.identifies,
            identify_wait_sum: self.identify_wait_sum - base.identify_wait_sum,
        }
    }
}

/// The sum of every series of `name` (any labels) in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.chars().next()? {
                ' ' => rest,
                '{' => &rest[rest.find('}')? + 1..],
                _ => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters_and_summaries_from_prometheus_text() {
        let text = "# TYPE sharder_events_total counter\nsharder_events_total 12\n\
                    sharder_events_total_other 99\n\
                    worker_events_emitted_total 7\nworker_events_dropped_total 2\n\
                    worker_events_invalid_total{x=\"a b\"} 1\n\
                    sharder_identify_wait_seconds{quantile=\"1\"} 4.5\n\
                    sharder_identify_wait_seconds_sum 6.25\n\
                    sharder_identify_wait_seconds_count 3\n";
        let c = Counters::parse(text);
        assert_eq!(c.forwarded, 12.0);
        assert_eq!(c.processed, 10.0);
        assert_eq!((c.identifies, c.identify_wait_sum), (3.0, 6.25));
        assert_eq!(c.since(&c), Counters::default());
        assert_eq!(Counters::parse("garbage\n{}\n"), Counters::default());
    }
}

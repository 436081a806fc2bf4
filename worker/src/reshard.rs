//! The reshard window: one clean stream while two shard totals publish.
//!
//! During a live reshard from `from` to `to` shards, Discord sends every
//! event of a guild to the guild's shard in *each* connected total. The two
//! copies are one logical event with two provenances: different shards,
//! different session epochs, different `seq`s. The versioned cache is
//! immune to that (it keeps the newest write; the new generation's epochs
//! are newer), but the clean stream is not: `first_delivery(shard,
//! version)` sees two first deliveries and would emit both.
//!
//! # Algorithm
//!
//! *Pairing by content.* The copies of one event carry the same `t` and
//! byte-identical `d` (the gateway serialises an event once per intent
//! set). For the duration of the window, every guild event records a
//! fingerprint `xxh3(t, d)` per guild with the total it came from, as a
//! multiset:
//!
//! * a copy whose fingerprint has an unmatched count from the *other*
//!   total pairs with it (the count goes down): it is the second copy, and
//!   is not emitted (its writes still apply);
//! * otherwise its own total's count goes up, and it is emitted (when the
//!   usual rules let it).
//!
//! This is order independent (either generation may be ahead in the
//! queue), and correct when two distinct events of a guild happen to have
//! identical payloads (each copy of each pairs with one of the other
//! total). An event only one generation saw (before the new shard's READY,
//! after the old shard closed) stays unmatched and ages out after
//! [`PAIR_TTL_MS`] of event time.
//!
//! *The window.* The sharder publishes a [`ReshardMarker`] to every
//! partition: `Started` before the new total's first IDENTIFY, `Completed`
//! after the old total closed and flushed (see `envelope::reshard`). Queue
//! order puts every event that can have a copy behind `Started`, so a
//! partition's consumer pairs from the marker on, and until
//! [`PAIR_TTL_MS`] after `Completed` (a new-generation copy may trail the
//! old one by that much). Outside the window nothing is recorded: the
//! steady state pays nothing. A worker that takes a partition over reads
//! the window from the store (`WindowCache` refreshes every
//! [`REFRESH`]).
//!
//! *Stale is not duplicate in the window.* Outside a reshard an event whose
//! every write is older than the cache is dropped. In the window, an
//! old-generation event that happened before the new shard's GUILD_CREATE
//! snapshot is stale (the snapshot includes it) yet it is the only copy
//! the new generation will never send: it is emitted.
//!
//! *Lifecycle events are announced by the copy that pairs first.* Outside
//! the window a GUILD_DELETE or GUILD_CREATE is announced by its newest
//! write (a state change). In the window the old total's copy of an
//! outage usually loses its write to the new total's newer snapshot, and
//! the new total's copy, whose write applies, pairs with it: so the copy
//! that pairs first announces it, whatever its write did (a redelivery of
//! it is told apart by its first delivery, as for any dispatch).
//!
//! *The limit of pairing by content.* Two distinct events of one guild
//! with identical payloads (a guild removed, rejoined and removed again
//! inside the window; two TYPING_STARTs of one user in one second), of
//! which an earlier one reached only one generation, can pair across:
//! the later event's first copy pairs with the earlier unmatched one and
//! its other copy is then the only one left. The sharder narrows this by
//! forwarding what a retired connection received up to its close
//! (`connection_loop.rs`); what remains is measured, not assumed away (the
//! `reshard-live` scenario and the demo's `--reshard-to` count every
//! logical event).
//!
//! *Hand-over, not arrival.* The new total's GUILD_CREATEs listed by its
//! READY (`initial`) load guilds the bot already has: in the window they
//! update the cache and are counted as hand-overs, never announced as
//! GUILD_AVAILABLE. Joins are paired like any event, so a guild joined
//! during the overlap is announced once.

use envelope::{ReshardMarker, ReshardPhase};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long (event time, milliseconds) an unmatched copy waits for its
/// twin from the other generation.
pub const PAIR_TTL_MS: u64 = 120_000;

/// How often a worker re-reads the window from the store.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The fingerprint that pairs the two copies of one event.
pub fn fingerprint(t: &str, d: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    h.update(t.as_bytes());
    h.update(&[0]);
    h.update(d);
    h.digest()
}

/// Whether events received at `at_ms` are paired under `marker`.
pub fn pairing(marker: Option<&ReshardMarker>, at_ms: u64) -> bool {
    match marker {
        None => false,
        Some(m) if m.phase == ReshardPhase::Started => true,
        Some(m) => at_ms <= m.at_ms.saturating_add(PAIR_TTL_MS),
    }
}

/// Whether an `initial` GUILD_CREATE of `total` at `at_ms` is a hand-over
/// (the new generation loading a guild the old one serves).
pub fn handover(marker: Option<&ReshardMarker>, total: u32, at_ms: u64) -> bool {
    marker.is_some_and(|m| m.to == total && m.from != total) && pairing(marker, at_ms)
}

/// The multiset of unmatched copies, in memory (the
/// [`MemoryStore`](crate::MemoryStore)'s; the Redis store keeps the same
/// per guild in a hash).
#[derive(Debug, Default)]
pub(crate) struct Pairs {
    /// `(guild, fingerprint)` → `(total, unmatched count, last at_ms)`.
    open: HashMap<(u64, u64), (u32, u32, u64)>,
    /// Newest event time seen, for expiry.
    now_ms: u64,
    inserts: usize,
}

impl Pairs {
    /// `true` when this copy is the first (emit), `false` when it pairs
    /// with an unmatched copy of another total.
    pub(crate) fn pair(&mut self, guild: u64, total: u32, fp: u64, at_ms: u64) -> bool {
        self.now_ms = self.now_ms.max(at_ms);
        let fresh = |at: u64| at_ms.saturating_sub(at) <= PAIR_TTL_MS;
        match self.open.get_mut(&(guild, fp)) {
            Some((t, n, at)) if *t != total && *n > 0 && fresh(*at) => {
                *n -= 1;
                if *n == 0 {
                    self.open.remove(&(guild, fp));
                }
                return false;
            }
            Some((t, n, at)) if *t == total && fresh(*at) => {
                *n += 1;
                *at = (*at).max(at_ms);
                return true;
            }
            _ => {}
        }
        self.open.insert((guild, fp), (total, 1, at_ms));
        self.inserts += 1;
        if self.inserts >= 4096 {
            self.inserts = 0;
            let now = self.now_ms;
            self.open
                .retain(|_, (_, _, at)| now.saturating_sub(*at) <= PAIR_TTL_MS);
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }
}

/// A worker's view of the reshard window: the newest marker it processed
/// or read from the store, re-read every [`REFRESH`].
#[derive(Debug, Default)]
pub(crate) struct WindowCache {
    marker: Option<ReshardMarker>,
    read_at: Option<Instant>,
}

impl WindowCache {
    /// The marker, or `None` when it must be re-read from the store first.
    pub(crate) fn current(&self, now: Instant) -> Option<Option<ReshardMarker>> {
        self.read_at
            .filter(|t| now.saturating_duration_since(*t) < REFRESH)
            .map(|_| self.marker)
    }

    /// Keeps `marker` when it is newer than the one held.
    pub(crate) fn update(&mut self, marker: Option<ReshardMarker>, now: Instant) {
        let key = |m: &ReshardMarker| (m.id, m.phase);
        if marker.as_ref().map(key) >= self.marker.as_ref().map(key) {
            self.marker = marker;
        }
        self.read_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(phase: ReshardPhase, at_ms: u64) -> ReshardMarker {
        ReshardMarker {
            id: 1,
            phase,
            from: 2,
            to: 4,
            at_ms,
        }
    }

    #[test]
    fn copies_pair_across_totals_in_either_order() {
        let mut p = Pairs::default();
        assert!(p.pair(1, 2, 10, 100));
        assert!(!p.pair(1, 4, 10, 101));
        assert!(p.pair(1, 4, 11, 102));
        assert!(!p.pair(1, 2, 11, 103));
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn identical_payloads_of_distinct_events_pair_one_to_one() {
        let mut p = Pairs::default();
        assert!(p.pair(1, 2, 10, 100));
        assert!(p.pair(1, 2, 10, 101));
        assert!(!p.pair(1, 4, 10, 102));
        assert!(!p.pair(1, 4, 10, 103));
        // A third copy from the new total is a third event.
        assert!(p.pair(1, 4, 10, 104));
    }

    #[test]
    fn other_guilds_and_expired_copies_do_not_pair() {
        let mut p = Pairs::default();
        assert!(p.pair(1, 2, 10, 100));
        assert!(p.pair(2, 4, 10, 100));
        assert!(p.pair(1, 4, 10, 100 + PAIR_TTL_MS + 1));
    }

    #[test]
    fn the_window_opens_at_started_and_closes_a_ttl_after_completed() {
        assert!(!pairing(None, 5));
        assert!(pairing(Some(&marker(ReshardPhase::Started, 10)), u64::MAX));
        let done = marker(ReshardPhase::Completed, 1_000);
        assert!(pairing(Some(&done), 1_000 + PAIR_TTL_MS));
        assert!(!pairing(Some(&done), 1_001 + PAIR_TTL_MS));
        assert!(handover(Some(&marker(ReshardPhase::Started, 0)), 4, 5));
        assert!(!handover(Some(&marker(ReshardPhase::Started, 0)), 2, 5));
    }

    #[test]
    fn fingerprints_separate_name_and_payload() {
        assert_ne!(fingerprint("AB", b"C"), fingerprint("A", b"BC"));
        assert_eq!(fingerprint("A", b"{}"), fingerprint("A", b"{}"));
    }

    #[test]
    fn the_cache_keeps_the_newest_marker_and_expires() {
        let now = Instant::now();
        let mut c = WindowCache::default();
        assert_eq!(c.current(now), None);
        c.update(Some(marker(ReshardPhase::Completed, 5)), now);
        c.update(Some(marker(ReshardPhase::Started, 1)), now);
        assert_eq!(
            c.current(now).flatten().map(|m| m.phase),
            Some(ReshardPhase::Completed)
        );
        assert_eq!(c.current(now + REFRESH), None);
    }
}

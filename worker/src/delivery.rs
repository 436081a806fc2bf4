//! Per-shard record of delivered event versions, to emit each event once.
//!
//! # Algorithm
//!
//! For each `(shard, epoch)` a window keeps `low` (every seq at or below it
//! counts as delivered) and the set of delivered seqs above it. A seq is new
//! if it is above `low` and not in the set. When the set outgrows its
//! capacity its smallest seq is evicted and becomes `low`, so memory stays
//! bounded even when the sharder sheds events and leaves gaps that never
//! fill; a redelivery older than the window is treated as a duplicate
//! (dropped), which is what "stale versions are dropped" means. Only the
//! newest few epochs of a shard are kept; anything older is stale.

use envelope::{ShardRef, Version};
use std::collections::{HashMap, VecDeque};

/// Epochs remembered per shard.
const EPOCHS_KEPT: usize = 4;

/// The seqs above `low` are kept sorted in a ring buffer: events arrive
/// nearly in order, so an insert is almost always a push at the back and an
/// eviction a pop at the front (a B-tree insert per event cost about a
/// twelfth of a simple event's processing).
#[derive(Debug, Default)]
struct Window {
    low: u64,
    above: VecDeque<u64>,
}

impl Window {
    fn insert(&mut self, seq: u64, cap: usize) -> bool {
        if seq <= self.low {
            return false;
        }
        match self.above.back() {
            Some(&last) if seq <= last => match self.above.binary_search(&seq) {
                Ok(_) => return false,
                Err(at) => self.above.insert(at, seq),
            },
            _ => self.above.push_back(seq),
        }
        while self.above.len() > cap {
            if let Some(min) = self.above.pop_front() {
                self.low = min;
            }
        }
        true
    }
}

/// Delivered versions of every shard.
#[derive(Debug)]
pub(crate) struct Deliveries {
    cap: usize,
    shards: HashMap<ShardRef, Vec<(u64, Window)>>,
}

impl Deliveries {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            shards: HashMap::new(),
        }
    }

    /// `true` the first time `version` of `shard` is seen.
    pub(crate) fn first(&mut self, shard: ShardRef, version: Version) -> bool {
        let epochs = self.shards.entry(shard).or_default();
        if let Some((_, w)) = epochs.iter_mut().find(|(e, _)| *e == version.epoch) {
            return w.insert(version.seq, self.cap);
        }
        if epochs.len() >= EPOCHS_KEPT && epochs.iter().all(|(e, _)| *e > version.epoch) {
            return false;
        }
        epochs.push((version.epoch, Window::default()));
        epochs.sort_unstable_by_key(|(e, _)| std::cmp::Reverse(*e));
        epochs.truncate(EPOCHS_KEPT);
        match epochs.iter_mut().find(|(e, _)| *e == version.epoch) {
            Some((_, w)) => w.insert(version.seq, self.cap),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_version_once_in_any_order() {
        let mut d = Deliveries::new(16);
        for seq in [5, 3, 9, 1] {
            assert!(d.first(ShardRef::new(0, 4), Version::new(1, seq)));
        }
        for seq in [5, 3, 9, 1] {
            assert!(!d.first(ShardRef::new(0, 4), Version::new(1, seq)));
        }
        // Other shards and epochs are independent.
        assert!(d.first(ShardRef::new(1, 4), Version::new(1, 5)));
        assert!(d.first(ShardRef::new(0, 4), Version::new(2, 5)));
    }

    #[test]
    fn window_is_bounded_and_old_redeliveries_are_stale() {
        let mut d = Deliveries::new(4);
        for seq in (10..110).step_by(10) {
            assert!(d.first(ShardRef::new(0, 4), Version::new(1, seq)));
        }
        let w = &d.shards[&ShardRef::new(0, 4)][0].1;
        assert_eq!(w.above.len(), 4);
        assert_eq!(w.low, 60);
        assert!(!d.first(ShardRef::new(0, 4), Version::new(1, 15)));
        assert!(d.first(ShardRef::new(0, 4), Version::new(1, 75)));
    }

    /// The ring buffer answers exactly as the B-tree it replaced, for
    /// seqs in order, reordered, duplicated and far behind.
    #[test]
    fn window_matches_a_sorted_set_model() {
        use std::collections::BTreeSet;
        let cap = 16;
        let (mut low, mut model) = (0u64, BTreeSet::new());
        let mut w = Window::default();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly ahead in order, sometimes back by up to 40.
            let seq = (i / 2 + 40).saturating_sub(x % 48);
            let want = seq > low && model.insert(seq);
            while model.len() > cap {
                low = model.pop_first().unwrap_or(low);
            }
            assert_eq!(w.insert(seq, cap), want, "seq {seq} at step {i}");
            assert_eq!(w.low, low);
            assert!(w.above.iter().copied().eq(model.iter().copied()));
        }
    }

    #[test]
    fn old_epochs_are_forgotten_then_stale() {
        let mut d = Deliveries::new(4);
        for epoch in 1..=6 {
            assert!(d.first(ShardRef::new(0, 4), Version::new(epoch, 1)));
        }
        assert_eq!(d.shards[&ShardRef::new(0, 4)].len(), EPOCHS_KEPT);
        assert!(!d.first(ShardRef::new(0, 4), Version::new(1, 2)));
        assert!(d.first(ShardRef::new(0, 4), Version::new(6, 2)));
    }
}

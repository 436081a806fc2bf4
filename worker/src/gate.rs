//! The hand-off between whoever decides which partitions this replica may
//! consume (the lease holder in [`crate::membership`], or the fixed
//! configuration) and the AMQP session that runs their consumers.
//!
//! # Algorithm
//! One lock guards two sets: `allowed` (written by the decider) and
//! `running` (written by the session). The session marks a partition
//! running *before* it subscribes and unmarks it only after its consumer
//! has stopped and closed its channel; the decider removes a partition from
//! `allowed` and then, under the same lock, sees whether it still runs. So
//! once the decider has seen "disallowed and not running", no consumer of
//! that partition exists in this process or can start, and its lease may
//! go. Every change bumps a version the other side waits on.

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Sets {
    allowed: BTreeSet<u32>,
    running: BTreeSet<u32>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct PartitionGate {
    sets: Mutex<Sets>,
    version: watch::Sender<u64>,
}

impl PartitionGate {
    /// A gate that allows `partitions` from the start.
    pub(crate) fn fixed(partitions: &[u32]) -> Self {
        let gate = Self::closed();
        gate.lock().allowed = partitions.iter().copied().collect();
        gate
    }

    /// A gate that allows nothing yet.
    pub(crate) fn closed() -> Self {
        Self {
            sets: Mutex::new(Sets::default()),
            version: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sets> {
        self.sets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees every later change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Makes exactly `allowed` consumable.
    pub(crate) fn set_allowed(&self, allowed: BTreeSet<u32>) {
        let changed = {
            let mut sets = self.lock();
            let changed = sets.allowed != allowed;
            sets.allowed = allowed;
            changed
        };
        if changed {
            self.bump();
        }
    }

    /// Whether `p` has a consumer (starting, running or draining).
    pub(crate) fn is_running(&self, p: u32) -> bool {
        self.lock().running.contains(&p)
    }

    /// Partitions with a consumer now, ascending.
    pub(crate) fn running(&self) -> BTreeSet<u32> {
        self.lock().running.clone()
    }

    /// Whether `p` may keep consuming.
    pub(crate) fn is_allowed(&self, p: u32) -> bool {
        self.lock().allowed.contains(&p)
    }

    /// The allowed partitions without a consumer, now marked running: the
    /// caller starts their consumers.
    pub(crate) fn claim_new(&self) -> Vec<u32> {
        let mut sets = self.lock();
        let new: Vec<u32> = sets.allowed.difference(&sets.running).copied().collect();
        sets.running.extend(new.iter().copied());
        new
    }

    /// `p`'s consumer has stopped and closed its channel.
    pub(crate) fn stopped(&self, p: u32) {
        self.lock().running.remove(&p);
        self.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_claimed_once_and_runs_until_stopped() {
        let gate = PartitionGate::fixed(&[1, 2]);
        assert_eq!(gate.claim_new(), [1, 2]);
        assert!(gate.claim_new().is_empty());
        gate.set_allowed(BTreeSet::from([2]));
        assert!(!gate.is_allowed(1));
        assert!(gate.is_running(1), "running until its consumer says so");
        gate.stopped(1);
        assert_eq!(gate.running(), BTreeSet::from([2]));
        assert!(gate.claim_new().is_empty(), "1 is not allowed any more");
    }

    #[test]
    fn every_change_is_seen_by_a_subscriber() {
        let gate = PartitionGate::closed();
        let mut rx = gate.subscribe();
        gate.set_allowed(BTreeSet::from([4]));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        gate.set_allowed(BTreeSet::from([4]));
        assert!(!rx.has_changed().unwrap(), "no change, no wake-up");
        gate.stopped(4);
        assert!(rx.has_changed().unwrap());
    }
}

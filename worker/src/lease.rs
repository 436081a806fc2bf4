//! The partition leases one replica holds, as a state machine without I/O
//! ([`crate::membership`] talks to Redis and feeds it the outcomes).
//!
//! # Algorithm
//! A partition is `Free` (no slot), `Held` (the lease is ours and its
//! consumer may run) or `Draining` (its consumer is told to stop; the lease
//! is still ours, and renewed, until the consumer has stopped). Each tick,
//! [`LeaseBook::plan`] says what to do, given the partitions the assignment
//! wants and the partitions whose consumer still runs:
//!
//! * desired and free: acquire (`SET NX PX ttl`);
//! * held and no longer desired, or not renewed for [`LeaseBook::valid_for`]
//!   (Redis unreachable, so the lease may soon expire there): drain;
//! * held or draining: renew (only while the value is still ours);
//! * draining and its consumer stopped: release (delete if still ours).
//!
//! Validity is counted from when the acquire or renew request was *sent*,
//! so a slow answer can only make the local view shorter than Redis's,
//! never longer. A renew answered "not yours" (the lease expired and
//! another replica took it) drains at once.
//!
//! # Why this is safe
//! The lease decides which replica *subscribes*; the queue's
//! single-active-consumer flag is what keeps two consumers from receiving
//! one partition at once. A replica releases a lease only after its
//! consumer has finished and acked what it held and closed its channel
//! (which returns the unprocessed prefetch to the head of the queue), so
//! the next owner subscribes strictly after and sees the messages in
//! order. If the lease expires under a consumer that is still draining (a
//! pause longer than the TTL), the next owner's subscription is a
//! single-active-consumer standby until the old one's channel closes: still one
//! consumer at a time. The versioned cache would also make a brief double
//! delivery harmless, but nothing here relies on it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// One held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Ours; its consumer may run. `since`: when the last successful
    /// acquire or renew was sent.
    Held { since: Instant },
    /// Ours until its consumer has stopped.
    Draining { since: Instant },
}

impl Slot {
    fn since(self) -> Instant {
        match self {
            Slot::Held { since } | Slot::Draining { since } => since,
        }
    }
}

/// What one tick should do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) acquire: Vec<u32>,
    pub(crate) renew: Vec<u32>,
    /// Newly draining: tell the consumer to stop.
    pub(crate) stop: Vec<u32>,
    pub(crate) release: Vec<u32>,
}

/// The leases of one replica.
#[derive(Debug)]
pub(crate) struct LeaseBook {
    valid_for: Duration,
    slots: BTreeMap<u32, Slot>,
}

impl LeaseBook {
    /// `valid_for`: how long after a sent acquire or renew a lease counts
    /// as ours without a newer one (well under the Redis TTL).
    pub(crate) fn new(valid_for: Duration) -> Self {
        Self {
            valid_for,
            slots: BTreeMap::new(),
        }
    }

    /// The leases whose consumer may run.
    pub(crate) fn held(&self) -> BTreeSet<u32> {
        self.slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Held { .. }))
            .map(|(&p, _)| p)
            .collect()
    }

    /// Every lease we hold, draining ones included.
    pub(crate) fn owned(&self) -> BTreeSet<u32> {
        self.slots.keys().copied().collect()
    }

    /// This tick's work at `now`; moves expired or unwanted leases to
    /// draining.
    pub(crate) fn plan(
        &mut self,
        desired: &BTreeSet<u32>,
        running: &BTreeSet<u32>,
        now: Instant,
    ) -> Plan {
        let mut plan = Plan::default();
        for (&p, slot) in &mut self.slots {
            let stale = now.duration_since(slot.since()) >= self.valid_for;
            match *slot {
                Slot::Held { since } if stale || !desired.contains(&p) => {
                    *slot = Slot::Draining { since };
                    plan.stop.push(p);
                }
                _ => {}
            }
            match *slot {
                Slot::Draining { .. } if !running.contains(&p) => plan.release.push(p),
                _ if !stale => plan.renew.push(p),
                _ => {}
            }
        }
        plan.acquire = desired
            .iter()
            .filter(|p| !self.slots.contains_key(p))
            .copied()
            .collect();
        plan
    }

    /// An acquire sent at `sent` succeeded.
    pub(crate) fn acquired(&mut self, p: u32, sent: Instant) {
        self.slots.insert(p, Slot::Held { since: sent });
    }

    /// A renew sent at `sent` answered: `ours` is false when the lease
    /// belongs to someone else now. Returns true when `p` must stop now.
    pub(crate) fn renewed(&mut self, p: u32, sent: Instant, ours: bool) -> bool {
        let Some(slot) = self.slots.get_mut(&p) else {
            return false;
        };
        match (*slot, ours) {
            (Slot::Held { .. }, true) => *slot = Slot::Held { since: sent },
            (Slot::Draining { .. }, true) => *slot = Slot::Draining { since: sent },
            (Slot::Held { since }, false) => {
                *slot = Slot::Draining { since };
                return true;
            }
            (Slot::Draining { .. }, false) => {}
        }
        false
    }

    /// The lease of `p` was released (or was no longer ours to release).
    pub(crate) fn released(&mut self, p: u32) {
        self.slots.remove(&p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: Duration = Duration::from_millis(2_500);

    fn set(ps: &[u32]) -> BTreeSet<u32> {
        ps.iter().copied().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_desired_partition_is_acquired_then_renewed() {
        let mut book = LeaseBook::new(VALID);
        let plan = book.plan(&set(&[1, 2]), &set(&[]), Instant::now());
        assert_eq!(plan.acquire, [1, 2]);
        assert!(plan.renew.is_empty() && plan.stop.is_empty() && plan.release.is_empty());
        book.acquired(1, Instant::now());
        assert_eq!(book.held(), set(&[1]));
        tokio::time::advance(Duration::from_secs(1)).await;
        let plan = book.plan(&set(&[1, 2]), &set(&[1]), Instant::now());
        assert_eq!(plan.acquire, [2], "2 was refused: tried again");
        assert_eq!(plan.renew, [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unwanted_lease_drains_and_is_released_only_after_its_consumer_stopped() {
        let mut book = LeaseBook::new(VALID);
        book.acquired(3, Instant::now());
        let plan = book.plan(&set(&[]), &set(&[3]), Instant::now());
        assert_eq!(plan.stop, [3]);
        assert_eq!(plan.renew, [3], "still ours while it drains");
        assert!(plan.release.is_empty(), "its consumer still runs");
        assert!(book.held().is_empty());
        assert_eq!(book.owned(), set(&[3]));
        let plan = book.plan(&set(&[]), &set(&[3]), Instant::now());
        assert!(plan.stop.is_empty(), "told once");
        assert!(plan.release.is_empty());
        let plan = book.plan(&set(&[]), &set(&[]), Instant::now());
        assert_eq!(plan.release, [3]);
        book.released(3);
        assert!(book.owned().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_not_renewed_in_time_stops_its_consumer() {
        let mut book = LeaseBook::new(VALID);
        book.acquired(5, Instant::now());
        tokio::time::advance(VALID - Duration::from_millis(1)).await;
        let plan = book.plan(&set(&[5]), &set(&[5]), Instant::now());
        assert!(plan.stop.is_empty());
        // The renew fails (no answer): nothing recorded.
        tokio::time::advance(Duration::from_millis(1)).await;
        let plan = book.plan(&set(&[5]), &set(&[5]), Instant::now());
        assert_eq!(plan.stop, [5]);
        assert!(plan.renew.is_empty(), "an expired lease is not renewed");
        assert!(book.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn validity_counts_from_when_the_renew_was_sent() {
        let mut book = LeaseBook::new(VALID);
        let t0 = Instant::now();
        book.acquired(0, t0);
        tokio::time::advance(Duration::from_secs(2)).await;
        let sent = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!book.renewed(0, sent, true));
        // 1 s after the answer, but 2 s after the send: valid until 2.5 s.
        let plan = book.plan(&set(&[0]), &set(&[0]), Instant::now());
        assert!(plan.stop.is_empty());
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let plan = book.plan(&set(&[0]), &set(&[0]), Instant::now());
        assert_eq!(plan.stop, [0]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_taken_by_another_replica_stops_at_once() {
        let mut book = LeaseBook::new(VALID);
        book.acquired(7, Instant::now());
        assert!(book.renewed(7, Instant::now(), false));
        assert!(book.held().is_empty());
        let plan = book.plan(&set(&[7]), &set(&[7]), Instant::now());
        assert!(plan.stop.is_empty(), "already told");
        assert!(plan.acquire.is_empty(), "not acquired again while draining");
        let plan = book.plan(&set(&[7]), &set(&[]), Instant::now());
        assert_eq!(plan.release, [7]);
        book.released(7);
        let plan = book.plan(&set(&[7]), &set(&[]), Instant::now());
        assert_eq!(plan.acquire, [7], "free again: acquired when desired");
    }

    #[tokio::test(start_paused = true)]
    async fn a_renew_for_a_forgotten_lease_is_ignored() {
        let mut book = LeaseBook::new(VALID);
        assert!(!book.renewed(9, Instant::now(), false));
        assert!(book.owned().is_empty());
    }
}

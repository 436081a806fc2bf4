//! The simulator's ledger against what reached the queue: "nothing lost"
//! as the end-to-end tests check it.
//!
//! The simulator's [`Ledger`] lists every dispatch of every session, per
//! shard, with its sequence number; a dispatch replayed on RESUME is not
//! listed again. Whatever consumes the partition queues reports each event
//! as `(shard, seq)`; once every listed pair has arrived, nothing was lost
//! (duplicates, the price of at-least-once delivery, are allowed).

use discord_sim::Ledger;
use std::collections::BTreeSet;
use std::time::Duration;

/// Dispatches in the ledger, all shards together.
pub fn len(ledger: &Ledger) -> usize {
    ledger.shards.values().map(Vec::len).sum()
}

/// Every `(shard, seq)` the simulator sent.
pub fn sent(ledger: &Ledger) -> BTreeSet<(u32, u64)> {
    ledger
        .shards
        .iter()
        .flat_map(|(s, entries)| entries.iter().map(move |e| (*s, e.seq)))
        .collect()
}

/// What arrived of what was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Every distinct `(shard, seq)` received.
    pub got: BTreeSet<(u32, u64)>,
    /// The wait ended before everything arrived (or the stream ended).
    pub timed_out: bool,
}

impl Delivery {
    /// The sent pairs that never arrived.
    pub fn lost<'a>(
        &'a self,
        sent: &'a BTreeSet<(u32, u64)>,
    ) -> impl Iterator<Item = &'a (u32, u64)> + 'a {
        sent.difference(&self.got)
    }
}

/// Receives `(shard, seq)` pairs from `next` until every pair of `sent`
/// arrived, `next` ends (`None`), or `within` passed.
pub async fn await_delivery(
    sent: &BTreeSet<(u32, u64)>,
    within: Duration,
    mut next: impl AsyncFnMut() -> Option<(u32, u64)>,
) -> Delivery {
    let mut got = BTreeSet::new();
    let complete = tokio::time::timeout(within, async {
        while !sent.is_subset(&got) {
            let Some(pair) = next().await else {
                return false;
            };
            got.insert(pair);
        }
        true
    })
    .await;
    Delivery {
        got,
        timed_out: complete != Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use discord_sim::LedgerEntry;

    fn entry(seq: u64, guild_id: Option<u64>) -> LedgerEntry {
        LedgerEntry {
            session_id: "s".into(),
            seq,
            event: "MESSAGE_CREATE".into(),
            guild_id,
            shard_total: 1,
            event_id: None,
        }
    }

    #[tokio::test]
    async fn every_sent_pair_must_arrive() {
        let mut ledger = Ledger::default();
        ledger
            .shards
            .insert(0, vec![entry(1, Some(9)), entry(2, None)]);
        ledger.shards.insert(3, vec![entry(1, Some(8))]);
        assert_eq!(len(&ledger), 3);
        let want = sent(&ledger);
        assert_eq!(want, BTreeSet::from([(0, 1), (0, 2), (3, 1)]));

        let mut arriving = vec![(3, 1), (0, 1), (0, 1), (0, 2)].into_iter();
        let all = await_delivery(&want, Duration::from_secs(5), async || arriving.next()).await;
        assert!(!all.timed_out);
        assert_eq!(all.lost(&want).count(), 0);

        let mut short = vec![(0, 1)].into_iter();
        let some = await_delivery(&want, Duration::from_secs(5), async || short.next()).await;
        assert!(some.timed_out);
        assert_eq!(some.lost(&want).collect::<Vec<_>>(), [&(0, 2), &(3, 1)]);
    }
}

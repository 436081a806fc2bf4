//! Readiness from the queue backlog: a worker is ready once it has caught
//! up, so a rolling update does not route reads to (or take down the
//! previous pod for) a cache still absorbing a cold-boot burst.
//!
//! # Algorithm
//! Every `interval`, a passive declare of each partition queue this
//! replica consumes *now* (its own partitions, not every partition: during
//! a cold-boot burst one replica's backlog must not take every replica's
//! endpoint away)
//! returns its ready-message count (messages not yet delivered to a
//! consumer). The count is exported as `worker_backlog_messages{partition}`
//! and the worker is caught up when every count is below the threshold.
//! A passive declare of a missing queue closes the channel, so the watcher
//! uses its own channel and reports the error (the session reconnects).

use crate::consumer::AmqpTopology;
use crate::gate::PartitionGate;
use crate::http::Health;
use lapin::Channel;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Backlog of each partition in `partitions`, in that order.
pub async fn backlog(
    ch: &Channel,
    topo: &AmqpTopology,
    partitions: &[u32],
) -> Result<Vec<u32>, lapin::Error> {
    let mut out = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let q = envelope::topology::inspect_queue(ch, &topo.queue(p)).await?;
        let n = q.message_count();
        metrics::gauge!("worker_backlog_messages", "partition" => p.to_string()).set(n as f64);
        out.push(n);
    }
    Ok(out)
}

/// Updates `health`'s caught-up flag from the backlog every `interval`
/// until the channel fails (returns that error; not ready from then on).
pub async fn watch_backlog(
    ch: Channel,
    topo: AmqpTopology,
    partitions: Vec<u32>,
    threshold: u32,
    health: Arc<Health>,
    interval: Duration,
) -> lapin::Error {
    let gate = Arc::new(PartitionGate::fixed(&partitions));
    gate.claim_new();
    watch_own_backlog(ch, topo, gate, threshold, health, interval).await
}

/// [`watch_backlog`] over the partitions `gate` says run now; a partition
/// that leaves the set has its backlog gauge zeroed (its new owner reports
/// it), so a sum over replicas counts each queue once.
pub(crate) async fn watch_own_backlog(
    ch: Channel,
    topo: AmqpTopology,
    gate: Arc<PartitionGate>,
    threshold: u32,
    health: Arc<Health>,
    interval: Duration,
) -> lapin::Error {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    let mut before: BTreeSet<u32> = BTreeSet::new();
    loop {
        tick.tick().await;
        let own = gate.running();
        for p in before.difference(&own) {
            metrics::gauge!("worker_backlog_messages", "partition" => p.to_string()).set(0.0);
        }
        let partitions: Vec<u32> = own.iter().copied().collect();
        before = own;
        match backlog(&ch, &topo, &partitions).await {
            Ok(counts) => {
                let caught_up = counts.iter().all(|&n| n < threshold);
                if last != Some(caught_up) {
                    tracing::info!(
                        caught_up,
                        ?partitions,
                        ?counts,
                        threshold,
                        "backlog readiness changed"
                    );
                    last = Some(caught_up);
                }
                health.set_caught_up(caught_up);
            }
            Err(e) => {
                health.set_caught_up(false);
                return e;
            }
        }
    }
}

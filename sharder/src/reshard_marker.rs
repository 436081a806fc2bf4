//! Publishing a reshard marker to every partition, durably.
//!
//! The workers open and close their reshard window on in-band markers
//! (`envelope::ReshardMarker`; the worker's `reshard` module says why).
//! What makes the window right is queue order, and the only order the
//! broker promises across publishers is "confirmed before published", so
//! the orchestrator's contract is:
//!
//! * `Started`: publish, wait until every partition's copy is confirmed,
//!   then let the new total's first shard identify. Every event that can
//!   have a twin is published after it.
//! * `Completed`: publish only after every event of the old total was
//!   confirmed (its shards stopped and drained). The marker is then behind
//!   all of them in every partition.
//!
//! # Algorithm
//! One [`ShardEvent`] per partition `p`, as shard `p` of the larger total
//! (`shard_id % partitions` routes it to partition `p`; the larger total
//! is at least `partitions`, which divides it), named
//! [`envelope::MARKER_EVENT`], versioned `(reshard id, phase)`. They go
//! through the ordinary sink, so they share its reconnects and confirms;
//! this returns when the sink confirmed all of them.

use crate::sink::{Confirmation, EventHeader, EventSink, ShardEvent};
use bytes::Bytes;
use envelope::{MARKER_EVENT, ReshardMarker};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// A marker that could not be published.
#[derive(Debug, thiserror::Error)]
pub enum MarkerPublishError {
    #[error(
        "cannot route a reshard marker to {partitions} partitions with shard totals {from} and \
         {to}: amqp.partitions must divide the shard total"
    )]
    Layout { partitions: u32, from: u32, to: u32 },
    #[error("the event sink closed before the reshard marker was published: {0}")]
    SinkClosed(String),
    #[error(
        "the broker confirmed {confirmed} of {partitions} copies of the reshard marker within \
         {within:?}; check RabbitMQ, then retry the reshard"
    )]
    Unconfirmed {
        confirmed: usize,
        partitions: u32,
        within: Duration,
    },
}

/// Publishes `marker` to each of `partitions` partition queues through
/// `sink` and waits (at most `within`) until the sink confirmed every copy.
pub async fn publish_marker<S: EventSink>(
    sink: &S,
    marker: ReshardMarker,
    partitions: u32,
    within: Duration,
) -> Result<(), MarkerPublishError> {
    let total = marker.from.max(marker.to);
    if partitions == 0 || partitions > total {
        return Err(MarkerPublishError::Layout {
            partitions,
            from: marker.from,
            to: marker.to,
        });
    }
    let payload = Bytes::from(marker.payload());
    let (tx, mut rx) = mpsc::unbounded_channel::<Confirmation>();
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(marker.at_ms);
    for p in 0..partitions {
        let header = EventHeader {
            shard_id: p,
            num_shards: total,
            epoch: marker.id,
            seq: marker.phase as u64,
            guild_id: None,
            guild_create: None,
        };
        let event =
            ShardEvent::received(header, MARKER_EVENT.into(), payload.clone(), tx.clone(), at);
        sink.send(event)
            .await
            .map_err(|e| MarkerPublishError::SinkClosed(e.0))?;
    }
    drop(tx);
    let mut confirmed = 0usize;
    let deadline = tokio::time::Instant::now() + within;
    while confirmed < partitions as usize {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(_)) => confirmed += 1,
            Ok(None) | Err(_) => {
                return Err(MarkerPublishError::Unconfirmed {
                    confirmed,
                    partitions,
                    within,
                });
            }
        }
    }
    tracing::info!(
        reshard = marker.id,
        phase = marker.phase.event_name(),
        from = marker.from,
        to = marker.to,
        partitions,
        "reshard marker confirmed on every partition"
    );
    Ok(())
}

#[cfg(test)]
#[path = "reshard_marker_tests.rs"]
mod tests;

//! Reshard markers: how the sharder tells the workers, in band, that a
//! second shard total is about to publish, and when the first one stopped.
//!
//! During a live reshard both generations receive every event of a guild,
//! each with its own session's `seq`, so versions cannot tell the two
//! copies apart. The worker pairs copies by content for the duration of the
//! reshard (see the worker's `reshard` module); it must know when that
//! window opens and closes, per partition queue, in queue order. So the
//! sharder publishes a marker to every partition:
//!
//! * `Started` before the first shard of the new total identifies (and
//!   after the broker confirmed it): every event that can have a copy in
//!   the other generation is queued behind it;
//! * `Completed` after the old generation closed and its last events were
//!   confirmed: every old-generation event is queued ahead of it;
//! * `Aborted` when the reshard is rolled back (the new generation closed).
//!
//! A marker is an ordinary envelope message of one event named
//! [`MARKER_EVENT`] (no gateway event has a `BULWARK_` name) without a
//! guild, its `d` the JSON of [`ReshardMarker`]. The event's version is
//! `(id, phase)`, so a marker is ordered and deduplicated like any event.

use crate::{BatchEncoder, EncodeError, Event};
use serde::{Deserialize, Serialize};

/// The event name of a reshard marker.
pub const MARKER_EVENT: &str = "BULWARK_RESHARD";

/// Where a reshard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReshardPhase {
    /// The new generation is about to identify; both may publish.
    Started = 1,
    /// The old generation closed and flushed; only the new one publishes.
    Completed = 2,
    /// Rolled back: the new generation closed; only the old one publishes.
    Aborted = 3,
}

impl ReshardPhase {
    /// The clean event the worker announces for it.
    pub fn event_name(self) -> &'static str {
        match self {
            ReshardPhase::Started => "RESHARD_STARTED",
            ReshardPhase::Completed => "RESHARD_COMPLETED",
            ReshardPhase::Aborted => "RESHARD_ABORTED",
        }
    }
}

/// One reshard marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshardMarker {
    /// The reshard: unix milliseconds when it was planned, unique per
    /// reshard of a bot.
    pub id: u64,
    pub phase: ReshardPhase,
    /// The shard total serving before the reshard.
    pub from: u32,
    /// The shard total after it.
    pub to: u32,
    /// When the marker was published, unix milliseconds.
    pub at_ms: u64,
}

/// A [`MARKER_EVENT`] whose `d` is not a marker.
#[derive(Debug, thiserror::Error)]
#[error("invalid {MARKER_EVENT} payload: {0}")]
pub struct MarkerError(#[from] serde_json::Error);

impl ReshardMarker {
    /// The `d` bytes of the marker event.
    pub fn payload(&self) -> Vec<u8> {
        // Serialising a struct of integers and a unit enum cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The marker as a whole envelope message (header shard 0 of `from`).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let d = self.payload();
        let mut enc = BatchEncoder::new(0, self.from.max(1))?;
        enc.push(&Event {
            epoch: self.id,
            seq: self.phase as u64,
            received_at: self.at_ms,
            t: MARKER_EVENT,
            guild_id: None,
            guild_create: None,
            d: &d,
        })?;
        Ok(enc.finish())
    }

    /// The marker an event carries: `None` when it is not a marker event.
    pub fn of(event: &Event<'_>) -> Option<Result<Self, MarkerError>> {
        (event.t == MARKER_EVENT)
            .then(|| serde_json::from_slice(event.d).map_err(MarkerError::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_survives_the_envelope() {
        let m = ReshardMarker {
            id: 1_700_000_000_000,
            phase: ReshardPhase::Started,
            from: 64,
            to: 128,
            at_ms: 1_700_000_000_500,
        };
        let bytes = m.encode().unwrap();
        let batch = crate::decode(&bytes).unwrap();
        assert_eq!(batch.events.len(), 1);
        let back = ReshardMarker::of(&batch.events[0]).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(batch.events[0].version(), crate::Version::new(m.id, 1));
    }

    #[test]
    fn other_events_are_not_markers_and_bad_markers_are_errors() {
        let mut ev = Event {
            epoch: 1,
            seq: 1,
            received_at: 0,
            t: "MESSAGE_CREATE",
            guild_id: None,
            guild_create: None,
            d: b"{}",
        };
        assert!(ReshardMarker::of(&ev).is_none());
        ev.t = MARKER_EVENT;
        assert!(ReshardMarker::of(&ev).unwrap().is_err());
        ev.d = br#"{"id":1,"phase":"sideways","from":1,"to":2,"at_ms":0}"#;
        assert!(ReshardMarker::of(&ev).unwrap().is_err());
    }
}

//! What the simulator reports about itself: the dispatch ledger and the
//! counters. Tests use them to count lost and duplicated events and to check
//! that a client obeyed the rate limits.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One dispatch assigned a sequence number in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub session_id: String,
    pub seq: u64,
    /// The event name (`READY`, `GUILD_CREATE`, ..., `RESUMED`).
    pub event: String,
    /// The guild the event belongs to (a string in JSON, like every
    /// snowflake).
    #[serde(serialize_with = "opt_id_str", deserialize_with = "opt_id_parse")]
    pub guild_id: Option<u64>,
}

/// Every dispatch of every session, per shard, in the order sequence numbers
/// were assigned. A dispatch generated while a session was disconnected is
/// recorded when it is buffered; a replay on RESUME is not recorded again
/// (it has the same seq), so "received by the client" should equal this
/// list per session, without gaps or repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub shards: BTreeMap<u32, Vec<LedgerEntry>>,
}

/// Counters of everything a test may want to assert on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// IDENTIFYs admitted (each spent one session start).
    pub identifies: u64,
    /// IDENTIFYs refused by the concurrency limit (op 9 `d:false`).
    pub identify_violations: u64,
    /// IDENTIFYs refused because the session start budget was spent.
    pub budget_exhausted: u64,
    /// IDENTIFYs that spent a session start and were answered with op 9
    /// because [`crate::Hostility::refuse_identify`] was set.
    #[serde(default)]
    pub hostile_refusals: u64,
    /// Connections closed right after READY or RESUMED because
    /// [`crate::Hostility::break_after_handshake`] was set.
    #[serde(default)]
    pub hostile_breaks: u64,
    /// RESUMEs that succeeded.
    pub resumes: u64,
    /// RESUMEs refused (unknown or expired session, seq too old): op 9.
    pub failed_resumes: u64,
    /// Dispatches sent again because of a RESUME.
    pub replayed_events: u64,
    /// Connections closed with 4008 for exceeding the send limit.
    pub rate_limit_closes: u64,
    /// Connections closed with 4009 for missing heartbeats.
    pub heartbeat_timeouts: u64,
    /// Sessions that expired while disconnected.
    pub expired_sessions: u64,
    /// Connections closed for a bad payload (4001, 4002, 4003, 4005).
    pub protocol_errors: u64,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Request Guild Members (op 8) commands received.
    #[serde(default)]
    pub member_requests: u64,
    /// Op 8 commands answered with RATE_LIMITED.
    #[serde(default)]
    pub member_requests_rate_limited: u64,
    /// Dispatches produced by the world.
    pub events_generated: u64,
    /// Dispatches assigned to sessions (READY, GUILD_CREATE and RESUMED
    /// included).
    pub events_dispatched: u64,
    /// Websocket connections accepted, by request path (`/` or `/resume`).
    pub connections: BTreeMap<String, u64>,
}

/// Compact in-memory form of a ledger entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LedgerRecord {
    pub session: u32,
    pub seq: u64,
    pub event: &'static str,
    pub guild_id: Option<u64>,
}

/// The ledger as the simulator keeps it (session ids interned).
#[derive(Debug, Default)]
pub(crate) struct LedgerStore {
    pub sessions: Vec<Arc<str>>,
    /// Records by shard id (a vector, not a map: one is pushed per dispatch).
    pub shards: Vec<Vec<LedgerRecord>>,
}

impl LedgerStore {
    pub(crate) fn intern(&mut self, session_id: Arc<str>) -> u32 {
        self.sessions.push(session_id);
        (self.sessions.len() - 1) as u32
    }

    pub(crate) fn record(&mut self, shard: u32, rec: LedgerRecord) {
        let i = shard as usize;
        if i >= self.shards.len() {
            self.shards.resize_with(i + 1, Vec::new);
        }
        self.shards[i].push(rec);
    }

    pub(crate) fn snapshot(&self) -> Ledger {
        Ledger {
            shards: self
                .shards
                .iter()
                .enumerate()
                .filter(|(_, recs)| !recs.is_empty())
                .map(|(shard, recs)| {
                    let entries = recs
                        .iter()
                        .map(|r| LedgerEntry {
                            session_id: self
                                .sessions
                                .get(r.session as usize)
                                .map(|s| s.to_string())
                                .unwrap_or_default(),
                            seq: r.seq,
                            event: r.event.to_owned(),
                            guild_id: r.guild_id,
                        })
                        .collect();
                    (shard as u32, entries)
                })
                .collect(),
        }
    }
}

fn opt_id_str<S: Serializer>(id: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

fn opt_id_parse<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Str(String),
        Num(u64),
    }
    match Option::<Id>::deserialize(d)? {
        None => Ok(None),
        Some(Id::Num(n)) => Ok(Some(n)),
        Some(Id::Str(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

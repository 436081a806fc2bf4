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
    /// The shard total of the session (`[shard, total]` in its IDENTIFY);
    /// the shard is the ledger's key. 0 in a ledger written before the
    /// simulator served several totals at once.
    #[serde(default)]
    pub shard_total: u32,
    /// The logical event: the world dispatch this is a delivery of,
    /// numbered in world order from 1 (one event is buffered into every
    /// session whose `[shard, total]` owns its guild, each with its own
    /// seq). `None` for what only this session was sent: READY, RESUMED,
    /// READY's GUILD_CREATE snapshots, GUILD_MEMBERS_CHUNK, RATE_LIMITED, the
    /// answers to op 4 (VOICE_STATE_UPDATE, VOICE_SERVER_UPDATE) and
    /// injected malformed dispatches. A join's GUILD_CREATE, an outage's
    /// GUILD_DELETE and its GUILD_CREATE are world events and have one.
    #[serde(default)]
    pub event_id: Option<u64>,
}

/// Every dispatch of every session, per shard, in the order sequence numbers
/// were assigned. A dispatch generated while a session was disconnected is
/// recorded when it is buffered; a replay on RESUME is not recorded again
/// (it has the same seq), so "received by the client" should equal this
/// list per session, without gaps or repeats.
///
/// Sessions of different shard totals share the key of their shard id;
/// [`LedgerEntry::shard_total`] tells them apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub shards: BTreeMap<u32, Vec<LedgerEntry>>,
}

/// One world event and every session it was buffered into
/// ([`Ledger::logical_events`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalEvent {
    /// The event name.
    pub event: String,
    /// The guild the event belongs to.
    #[serde(serialize_with = "opt_id_str", deserialize_with = "opt_id_parse")]
    pub guild_id: Option<u64>,
    /// Every delivery, by ascending shard id and, for one shard, in the
    /// order they were buffered.
    pub deliveries: Vec<Delivery>,
}

/// One session a logical event was buffered into, with the seq it got
/// there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub shard_total: u32,
    pub shard: u32,
    pub session_id: String,
    pub seq: u64,
}

impl LogicalEvent {
    /// How many deliveries went to sessions of `total` shards.
    pub fn deliveries_to(&self, total: u32) -> usize {
        self.deliveries
            .iter()
            .filter(|d| d.shard_total == total)
            .count()
    }
}

impl Ledger {
    /// Every world event that reached at least one session, by event id,
    /// with the sessions it reached. An event buffered into no session (no
    /// session owned its guild, or none had the intent) is absent: it was
    /// delivered 0 times. While two shard totals are connected, an event
    /// of a guild is delivered once per total; with one, once.
    pub fn logical_events(&self) -> BTreeMap<u64, LogicalEvent> {
        let mut events: BTreeMap<u64, LogicalEvent> = BTreeMap::new();
        for (&shard, entries) in &self.shards {
            for e in entries {
                let Some(id) = e.event_id else {
                    continue;
                };
                let delivery = Delivery {
                    shard_total: e.shard_total,
                    shard,
                    session_id: e.session_id.clone(),
                    seq: e.seq,
                };
                events
                    .entry(id)
                    .or_insert_with(|| LogicalEvent {
                        event: e.event.clone(),
                        guild_id: e.guild_id,
                        deliveries: Vec::new(),
                    })
                    .deliveries
                    .push(delivery);
            }
        }
        events
    }
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
    /// Voice State Update (op 4) commands received.
    #[serde(default)]
    pub voice_state_updates: u64,
    /// Presence Update (op 3) commands received.
    #[serde(default)]
    pub presence_updates: u64,
    /// Closes with 4011 (sharding required): IDENTIFYs refused for too few
    /// shards or a shard over `guild_cap`, and sessions ended because a
    /// join took their shard over `guild_cap`.
    #[serde(default)]
    pub sharding_required_closes: u64,
    /// Dispatches produced by the world (the last logical event id).
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
    pub total: u32,
    pub seq: u64,
    pub event: &'static str,
    pub guild_id: Option<u64>,
    /// The logical event id, 0 for none (ids start at 1): one record is
    /// kept per dispatch, so it stays small.
    pub event_id: u64,
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
                            shard_total: r.total,
                            event_id: (r.event_id != 0).then_some(r.event_id),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_ledger_written_before_shard_totals_still_parses() {
        let old = r#"{"shards":{"0":[{"session_id":"a","seq":1,"event":"READY","guild_id":null},
            {"session_id":"a","seq":2,"event":"MESSAGE_CREATE","guild_id":"42"}]}}"#;
        let l: Ledger = serde_json::from_str(old).unwrap();
        let e = &l.shards[&0][1];
        assert_eq!((e.guild_id, e.shard_total, e.event_id), (Some(42), 0, None));
        assert!(l.logical_events().is_empty());
        let c: Counters = serde_json::from_str(
            r#"{"identifies":1,"identify_violations":0,"budget_exhausted":0,"resumes":0,
            "failed_resumes":0,"replayed_events":0,"rate_limit_closes":0,
            "heartbeat_timeouts":0,"expired_sessions":0,"protocol_errors":0,"heartbeats":0,
            "events_generated":0,"events_dispatched":0,"connections":{}}"#,
        )
        .unwrap();
        assert_eq!(c.sharding_required_closes, 0);
    }

    #[test]
    fn logical_events_group_deliveries_by_event_id() {
        let mut store = LedgerStore::default();
        let (a, b) = (store.intern("a".into()), store.intern("b".into()));
        let rec = |session, total, seq, event_id| LedgerRecord {
            session,
            total,
            seq,
            event: "MESSAGE_CREATE",
            guild_id: Some(7),
            event_id,
        };
        store.record(1, rec(a, 2, 1, 0));
        store.record(1, rec(a, 2, 2, 1));
        store.record(3, rec(b, 4, 5, 1));
        store.record(1, rec(a, 2, 3, 2));
        let ledger = store.snapshot();
        let json: Ledger = serde_json::from_str(&serde_json::to_string(&ledger).unwrap()).unwrap();
        assert_eq!(json, ledger, "round trip");
        let events = ledger.logical_events();
        assert_eq!(events.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        let one = &events[&1];
        assert_eq!(
            (one.event.as_str(), one.guild_id),
            ("MESSAGE_CREATE", Some(7))
        );
        assert_eq!(
            one.deliveries,
            vec![
                Delivery {
                    shard_total: 2,
                    shard: 1,
                    session_id: "a".into(),
                    seq: 2
                },
                Delivery {
                    shard_total: 4,
                    shard: 3,
                    session_id: "b".into(),
                    seq: 5
                },
            ]
        );
        assert_eq!((one.deliveries_to(2), one.deliveries_to(4)), (1, 1));
        assert_eq!(events[&2].deliveries.len(), 1);
    }
}

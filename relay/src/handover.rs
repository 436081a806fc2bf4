//! A relay that stops hands its bot sessions to whichever relay the bots
//! RESUME on, so a relay pod's restart (a rolling update, a node drain) is
//! invisible to the bots, as a sharder's or a worker's is.
//!
//! # Algorithm
//! At shutdown the stopping relay:
//! 1. stops its feed ([`crate::feed`]): cancels its consumer, dispatches
//!    what had already reached it, notes whether its queue was then empty
//!    (`drained`), and publishes a marker, `RELAY_STOPPED` with its pod
//!    id, to the output exchange; its sessions' rings are now final;
//! 2. writes the message ids it dispatched, newest last, and `drained` to
//!    `<prefix>:relay:seen:<pod>`, and one [`Record`] per session to
//!    `<prefix>:relay:session:<id>` (client shard, intents, `s`, the guilds
//!    the bot has, and the ring after what the bot can have missed, see
//!    [`Session::tail`]), all with the resume window as TTL;
//! 3. closes its connections with 4000, which libraries answer with a
//!    RESUME, through the Service, on another relay.
//!
//! A relay that gets a RESUME of a session it does not hold takes the
//! record (GETDEL: one relay restores it, once) and, under the hub's
//! dispatch lock ([`crate::hub::Hub::restore`]), rebuilds the session: the
//! ring it was handed, then the events of its own [`Recent`] buffer (the
//! last `relay.handover_events` it dispatched) that the stopped relay had
//! not dispatched, in arrival order, which is each guild's order; then it
//! registers the session, so every later event reaches it live. Later
//! events the stopped relay had dispatched (this relay's feed may lag
//! behind the other's) are skipped for [`SKIP_FOR`].
//!
//! That is complete only if this relay's stream holds everything the
//! stopped one missed ([`Recent::missed`]), which needs no clock shared
//! between pods:
//! * the marker came through this relay's feed (it waits up to
//!   [`MARKER_WAIT`] for it): its queue was bound before the other relay
//!   stopped, so whatever that one missed afterwards arrives here;
//! * and what it missed before is here too: either nothing left the
//!   buffer since the feed started, and the buffer holds an event the
//!   stopped relay dispatched (so it had read past this relay's start) or
//!   that relay's queue was drained; or the oldest [`OVERLAP`] events in
//!   the buffer were all dispatched by the stopped relay (the two queues
//!   get each worker's events in the same order; only events published
//!   within moments of each other by different workers can swap).
//!
//! What is replayed starts where the two streams meet, at the first
//! buffered event the stopped relay dispatched: older events predate its
//! window of seen ids or its start, and the bot has them or never should.
//! With no event in common (a quiet stream), it starts at the marker; an
//! event routed in the instant between that relay's last delivery and its
//! marker would be missed then.
//!
//! Otherwise an event may be in neither relay: the RESUME gets op 9 and the
//! bot identifies again, as on Discord when a session cannot be resumed.

use crate::Ctx;
use crate::incoming::Incoming;
use crate::session::{ClientShard, Session, Tail};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Ring entries kept before what a connection sent (see [`Session::tail`]).
pub const TAIL_MARGIN: u64 = 1_000;
/// How long a restored session skips events the stopped relay had sent.
pub const SKIP_FOR: Duration = Duration::from_secs(60);
/// Oldest buffered events that must all be known to the stopped relay.
pub const OVERLAP: usize = 64;
/// How long a RESUME waits for the stopped relay's marker.
pub const MARKER_WAIT: Duration = Duration::from_secs(5);
/// The marker's routing key on the output exchange.
pub const MARKER: &str = "RELAY_STOPPED";
/// The marker's header naming the relay that stopped.
pub const MARKER_HEADER: &str = "x-bulwark-relay";
/// How long a stopped relay's seen ids stay cached here.
const SEEN_CACHE_FOR: Duration = Duration::from_secs(30);

/// One session as a stopping relay hands it over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    /// The relay that stopped (its seen ids' key).
    pub pod: String,
    pub shard: [u32; 2],
    pub intents: u64,
    pub seq: u64,
    /// `(s, payload)` in order.
    pub ring: Vec<(u64, String)>,
    pub known: Vec<u64>,
}

/// Why a hand-over could not be written or taken.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a handed-over session record is not valid: {0}")]
    Record(#[from] serde_json::Error),
}

/// The events this relay dispatched lately, for sessions handed over by a
/// relay that stopped (see the module docs).
#[derive(Debug)]
pub struct Recent {
    events: VecDeque<Arc<Incoming>>,
    capacity: usize,
    /// Events pushed since the feed started: the next one's index.
    pushed: u64,
    /// The feed consumes; false while it is down (events are missed).
    running: bool,
    /// An event left the buffer since the feed started.
    evicted: bool,
    /// Relays whose marker came through the feed since it started, with
    /// the index of the event that followed it.
    markers: HashMap<String, u64>,
}

/// Why a [`Recent`] buffer cannot give what a stopped relay missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// The relay's marker has not come through the feed yet.
    NotYet,
    /// It may not hold all of it: op 9.
    No,
}

/// What a stopped relay dispatched, as its sessions' taker sees it.
#[derive(Debug, Default)]
pub struct Seen {
    pub ids: HashSet<String>,
    /// Its queue was empty once its consumer stopped.
    pub drained: bool,
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::new(),
            capacity,
            pushed: 0,
            running: false,
            evicted: false,
            markers: HashMap::new(),
        }
    }

    /// The feed (re)started: what came before a gap cannot vouch for
    /// anything.
    pub fn started(&mut self) {
        self.events.clear();
        self.markers.clear();
        self.pushed = 0;
        self.running = true;
        self.evicted = false;
    }

    /// The feed lost the broker.
    pub fn lost(&mut self) {
        self.events.clear();
        self.markers.clear();
        self.running = false;
    }

    pub fn push(&mut self, ev: Arc<Incoming>) {
        if self.events.len() >= self.capacity {
            self.events.pop_front();
            self.evicted = true;
        }
        self.events.push_back(ev);
        self.pushed += 1;
    }

    /// Relay `pod`'s marker came through the feed.
    pub fn marker(&mut self, pod: &str) {
        self.markers.insert(pod.to_owned(), self.pushed);
    }

    /// The buffered events relay `pod` had not dispatched when it
    /// stopped, oldest first, if this buffer holds all of them (see the
    /// module docs).
    ///
    /// They start where the two streams meet: the first buffered event the
    /// stopped relay had dispatched. Older ones came before its window of
    /// seen ids (or before it ran) and are not missed. With no event in
    /// common, the stopped relay's queue must have been empty, and what it
    /// missed comes with or after its marker.
    pub fn missed(&self, pod: &str, seen: &Seen) -> Result<Vec<Arc<Incoming>>, Cover> {
        if !self.running {
            return Err(Cover::No);
        }
        let Some(&marker) = self.markers.get(pod) else {
            return Err(Cover::NotYet);
        };
        let known = |e: &Arc<Incoming>| seen.ids.contains(&e.message_id);
        let from = if self.evicted {
            let n = OVERLAP.min(self.events.len());
            if n == 0 || !self.events.iter().take(n).all(known) {
                return Err(Cover::No);
            }
            0
        } else {
            match self.events.iter().position(known) {
                Some(first) => first,
                // Nothing evicted: the buffer holds every event since the
                // feed started, so the marker's index is its position.
                None if seen.drained => usize::try_from(marker).unwrap_or(usize::MAX),
                None => return Err(Cover::No),
            }
        };
        Ok(self
            .events
            .iter()
            .skip(from)
            .filter(|e| !known(e))
            .cloned()
            .collect())
    }
}

/// Stopped relays' seen ids, fetched once for all their sessions.
#[derive(Default)]
pub struct SeenCache(tokio::sync::Mutex<HashMap<String, (Instant, Arc<Seen>)>>);

impl SeenCache {
    async fn get(
        &self,
        con: &mut dnscache::RedisConnection,
        prefix: &str,
        pod: &str,
    ) -> Result<Arc<Seen>, redis::RedisError> {
        let mut cache = self.0.lock().await;
        let now = Instant::now();
        cache.retain(|_, (at, _)| now.duration_since(*at) < SEEN_CACHE_FOR);
        if let Some((_, seen)) = cache.get(pod) {
            return Ok(seen.clone());
        }
        let raw: Option<String> = redis::cmd("GET")
            .arg(seen_key(prefix, pod))
            .query_async(con)
            .await?;
        let seen = Arc::new(Seen::decode(raw.as_deref().unwrap_or_default()));
        cache.insert(pod.to_owned(), (now, seen.clone()));
        Ok(seen)
    }
}

impl Seen {
    /// `drained` (`1` or `0`) on the first line, then one id per line.
    fn encode(drained: bool, ids: &[String]) -> String {
        let mut out = String::with_capacity(2 + ids.iter().map(|i| i.len() + 1).sum::<usize>());
        out.push(if drained { '1' } else { '0' });
        for id in ids {
            out.push('\n');
            out.push_str(id);
        }
        out
    }

    fn decode(raw: &str) -> Self {
        let mut lines = raw.split('\n');
        let drained = lines.next() == Some("1");
        Self {
            ids: lines.filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            drained,
        }
    }
}

fn session_key(prefix: &str, id: &str) -> String {
    format!("{prefix}:relay:session:{id}")
}

fn seen_key(prefix: &str, pod: &str) -> String {
    format!("{prefix}:relay:seen:{pod}")
}

/// Writes this relay's sessions and seen ids for the relays the bots
/// will RESUME on; call once the feed stopped (`drained`: its queue was
/// empty then). Returns how many sessions were handed over.
pub async fn hand_over(ctx: &Ctx, drained: bool) -> Result<usize, HandoverError> {
    let prefix = &ctx.prefix;
    let ttl = u64::try_from(ctx.cfg.resume_window.as_millis()).unwrap_or(u64::MAX);
    let mut pipe = redis::pipe();
    let seen = Seen::encode(drained, &ctx.hub.seen_ids(ctx.cfg.handover_events));
    pipe.cmd("SET")
        .arg(seen_key(prefix, &ctx.pod))
        .arg(seen)
        .arg("PX")
        .arg(ttl)
        .ignore();
    let mut n = 0;
    for s in ctx.hub.sessions() {
        let Some(tail) = s.tail(TAIL_MARGIN) else {
            continue;
        };
        let record = Record {
            pod: ctx.pod.clone(),
            shard: [s.shard.id, s.shard.count],
            intents: s.intents,
            seq: tail.seq,
            ring: tail
                .ring
                .into_iter()
                .map(|(seq, text)| (seq, text.to_string()))
                .collect(),
            known: tail.known,
        };
        pipe.cmd("SET")
            .arg(session_key(prefix, &s.id))
            .arg(serde_json::to_vec(&record)?)
            .arg("PX")
            .arg(ttl)
            .ignore();
        n += 1;
    }
    let mut con = ctx.redis.clone();
    pipe.query_async::<()>(&mut con).await?;
    metrics::counter!("relay_handover_sessions_total", "result" => "written").increment(n as u64);
    Ok(n)
}

/// Takes over session `id` if a stopped relay handed it over and this
/// relay can complete it; `None` otherwise (the RESUME gets op 9).
pub async fn take(ctx: &Ctx, id: &str) -> Result<Option<Arc<Session>>, HandoverError> {
    let mut con = ctx.redis.clone();
    let raw: Option<Vec<u8>> = redis::cmd("GETDEL")
        .arg(session_key(&ctx.prefix, id))
        .query_async(&mut con)
        .await?;
    let Some(raw) = raw else {
        return Ok(None);
    };
    let r: Record = serde_json::from_slice(&raw)?;
    let [shard_id, count] = r.shard;
    if count == 0 || shard_id >= count {
        return Err(HandoverError::Record(serde::de::Error::custom(format!(
            "shard [{shard_id}, {count}]"
        ))));
    }
    let seen = ctx.seen.get(&mut con, &ctx.prefix, &r.pod).await?;
    let mut session = Box::new(Session::restored(
        id.into(),
        ClientShard {
            id: shard_id,
            count,
        },
        r.intents,
        ctx.cfg.session_buffer,
        Tail {
            seq: r.seq,
            ring: r
                .ring
                .into_iter()
                .map(|(seq, text)| (seq, Arc::from(text)))
                .collect(),
            known: r.known,
        },
        seen.clone(),
        Instant::now() + SKIP_FOR,
    ));
    let deadline = Instant::now() + MARKER_WAIT;
    let result = loop {
        // Registered before the check, so a marker in between wakes it.
        let marker = ctx.hub.markers.notified();
        match ctx.hub.restore(session, &r.pod, &seen) {
            Ok(s) => break Some(s),
            Err((Cover::NotYet, s)) if Instant::now() < deadline => {
                session = s;
                let _ = tokio::time::timeout_at(deadline, marker).await;
            }
            Err((cover, _)) => {
                tracing::info!(session = id, relay = %r.pod, ?cover, "a handed-over session cannot be completed here: op 9");
                break None;
            }
        }
    };
    let label = if result.is_some() {
        "restored"
    } else {
        "not_covered"
    };
    metrics::counter!("relay_handover_sessions_total", "result" => label).increment(1);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use envelope::Version;

    fn ev(n: u64) -> Arc<Incoming> {
        Arc::new(Incoming {
            message_id: format!("0:1:{n}"),
            clean: "MESSAGE_CREATE".into(),
            event: "MESSAGE_CREATE".into(),
            guild_id: Some(1 << 22),
            version: Version { epoch: 1, seq: n },
            initial: false,
            body: Bytes::from_static(b"{}"),
        })
    }

    fn seen(ns: impl Iterator<Item = u64>, drained: bool) -> Seen {
        Seen {
            ids: ns.map(|n| format!("0:1:{n}")).collect(),
            drained,
        }
    }

    fn seqs(r: Result<Vec<Arc<Incoming>>, Cover>) -> Result<Vec<u64>, Cover> {
        r.map(|v| v.iter().map(|e| e.version.seq).collect())
    }

    #[test]
    fn a_buffer_gives_what_a_stopped_relay_missed_and_nothing_older() {
        let mut r = Recent::new(100);
        assert_eq!(
            seqs(r.missed("a", &seen(0..0, true))),
            Err(Cover::No),
            "feed never started"
        );
        r.started();
        for n in 1..=50 {
            r.push(ev(n));
        }
        assert_eq!(
            seqs(r.missed("a", &seen(1..=10, false))),
            Err(Cover::NotYet)
        );
        r.marker("a");
        // It read past this relay's start: what it had not sent follows.
        assert_eq!(
            seqs(r.missed("a", &seen(1..=10, false))),
            Ok((11..=50).collect())
        );
        // It started after this relay: the events before its first one
        // are not missed, only those after.
        assert_eq!(
            seqs(r.missed("a", &seen((20..=30).chain([33]), false))),
            Ok([31, 32].into_iter().chain(34..=50).collect())
        );
        // It lagged behind this relay's start, with events left unread:
        // they may be in neither relay.
        assert_eq!(seqs(r.missed("a", &seen(100..=110, false))), Err(Cover::No));
        // It had read everything: what it missed is what came with its
        // marker and after.
        r.push(ev(51));
        assert_eq!(seqs(r.missed("a", &seen(100..=110, true))), Ok(vec![51]));
        // Evicted: only an overlap of OVERLAP known events vouches.
        for n in 52..=200 {
            r.push(ev(n));
        }
        assert_eq!(
            seqs(r.missed("a", &seen(1..=150, true))),
            Err(Cover::No),
            "oldest is 101"
        );
        assert_eq!(
            seqs(r.missed("a", &seen(1..=101 + OVERLAP as u64, false))),
            Ok((102 + OVERLAP as u64..=200).collect())
        );
        assert_eq!(
            seqs(r.missed("a", &seen(1..=99 + OVERLAP as u64, false))),
            Err(Cover::No),
            "one of the oldest OVERLAP unknown"
        );
        r.lost();
        assert_eq!(
            seqs(r.missed("a", &seen(1..=200, true))),
            Err(Cover::No),
            "the feed is down"
        );
        r.started();
        assert_eq!(
            seqs(r.missed("a", &seen(1..=200, true))),
            Err(Cover::NotYet),
            "markers go with a restart"
        );
    }

    #[test]
    fn seen_ids_round_trip() {
        let ids = vec!["0:1:2".to_owned(), "1:3:4".to_owned()];
        for drained in [true, false] {
            let s = Seen::decode(&Seen::encode(drained, &ids));
            assert_eq!(s.drained, drained);
            assert_eq!(s.ids, ids.iter().cloned().collect());
        }
        let empty = Seen::decode("");
        assert!(!empty.drained && empty.ids.is_empty());
    }
}

//! One bot session: what its connection has been sent, what it may still
//! RESUME, and the translation of the clean stream into its dispatches.
//!
//! # Algorithm
//! Every dispatch a session gets is written once, as its final payload text
//! with the session's own `s`, into a bounded ring. A connection does not
//! own a queue: it sends the ring's entries after the last `s` it sent, when
//! woken. So a RESUME with `seq` replays exactly the entries after `seq`,
//! from whichever connection resumes, and a connection that falls behind by
//! more than the ring finds its next entry gone and is closed (4000); its
//! RESUME then gets op 9. A session is only dropped `resume_window` after
//! its last connection went away.
//!
//! While the session's snapshot (READY and one GUILD_CREATE per guild, from
//! the versioned cache) is loaded, live events for it are held back. Once
//! the snapshot is in the ring, a held event of a guild is dropped if the
//! snapshot already holds its effect: the cache applies a guild's events in
//! order and publishes each after applying it, so an event whose version is
//! at most the newest version in the guild's snapshot is either in it or
//! did not change it. Everything else follows, in arrival order, which is
//! the guild's order (one guild lives on one shard, one partition, one
//! worker consumer).
//!
//! The clean stream names lifecycle events by what they mean; a bot library
//! wants Discord's names. A guild the session already has never gets a
//! second GUILD_CREATE (a real shard's restart loads its guilds again:
//! `GUILD_AVAILABLE` with `initial`), so a Bulwark restart is invisible.

use crate::handover::Seen;
use crate::incoming::Incoming;
use envelope::Version;
use gateway_protocol::intents;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The `[shard_id, shard_count]` a bot identified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientShard {
    pub id: u32,
    pub count: u32,
}

impl ClientShard {
    /// True when this shard gets events of `guild` (`None`: DMs and other
    /// guild-less events, which Discord sends to shard 0).
    pub fn owns(self, guild: Option<u64>) -> bool {
        match guild {
            Some(g) => (g >> 22) % u64::from(self.count) == u64::from(self.id),
            None => self.id == 0,
        }
    }
}

/// The ring's entries after a `seq` are no longer all there.
#[derive(Debug, PartialEq, Eq)]
pub struct Lost;

/// A bot session.
pub struct Session {
    pub id: Arc<str>,
    pub shard: ClientShard,
    pub intents: u64,
    /// Woken when the ring grows or the session is taken over.
    pub notify: Notify,
    state: Mutex<State>,
}

struct State {
    seq: u64,
    ring: VecDeque<(u64, Arc<str>)>,
    capacity: usize,
    /// `Some` while the snapshot loads: the events held back.
    loading: Option<Vec<Arc<Incoming>>>,
    /// Guilds the bot was sent a GUILD_CREATE for.
    known: HashSet<u64>,
    /// The connection that may send; a RESUME elsewhere takes over.
    connection: Option<u64>,
    /// When the last connection went away.
    detached_since: Option<Instant>,
    /// Held-back events overflowed while loading: the session is unusable.
    broken: bool,
    /// The last `s` a connection sent.
    sent: u64,
    /// The last `s` the bot said it has (heartbeat, RESUME).
    acked: u64,
    /// Taken over from a relay that stopped: the events it had already
    /// dispatched, skipped when this relay's feed delivers them late.
    skip: Option<Skip>,
}

/// Message ids a restored session already has, until `until`.
struct Skip {
    seen: Arc<Seen>,
    until: Instant,
}

/// What a stopping relay hands over of a session ([`crate::handover`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The last `s` written.
    pub seq: u64,
    /// The ring's entries a RESUME may still ask for, in order.
    pub ring: Vec<(u64, Arc<str>)>,
    /// Guilds the bot was sent a GUILD_CREATE for.
    pub known: Vec<u64>,
}

impl Session {
    /// A session whose snapshot is about to load, attached to `connection`.
    pub fn loading(
        id: Arc<str>,
        shard: ClientShard,
        intents: u64,
        capacity: usize,
        connection: u64,
    ) -> Self {
        Self {
            id,
            shard,
            intents,
            notify: Notify::new(),
            state: Mutex::new(State {
                seq: 0,
                ring: VecDeque::new(),
                capacity,
                loading: Some(Vec::new()),
                known: HashSet::new(),
                connection: Some(connection),
                detached_since: None,
                broken: false,
                sent: 0,
                acked: 0,
                skip: None,
            }),
        }
    }

    /// A session another relay handed over ([`Tail`]), detached until the
    /// RESUME that asked for it attaches; live events in `skip` are
    /// dropped until `skip_until`.
    pub fn restored(
        id: Arc<str>,
        shard: ClientShard,
        intents: u64,
        capacity: usize,
        tail: Tail,
        skip: Arc<Seen>,
        skip_until: Instant,
    ) -> Self {
        let mut ring: VecDeque<(u64, Arc<str>)> = tail.ring.into();
        while ring.len() > capacity {
            ring.pop_front();
        }
        Self {
            id,
            shard,
            intents,
            notify: Notify::new(),
            state: Mutex::new(State {
                seq: tail.seq,
                ring,
                capacity,
                loading: None,
                known: tail.known.into_iter().collect(),
                connection: None,
                detached_since: Some(Instant::now()),
                broken: false,
                sent: tail.seq,
                acked: tail.seq,
                skip: Some(Skip {
                    seen: skip,
                    until: skip_until,
                }),
            }),
        }
    }

    /// What a RESUME of this session may still need, for another relay:
    /// the ring after what the bot can have missed (its last heartbeat's
    /// `s`, or `margin` before what was sent, whichever is later: a bot
    /// resumes from what it received, at most what was sent). `None` while
    /// loading or broken: such a session cannot be resumed anyway.
    pub fn tail(&self, margin: u64) -> Option<Tail> {
        let st = self.state();
        if st.loading.is_some() || st.broken {
            return None;
        }
        let from = st.acked.max(st.sent.saturating_sub(margin));
        Some(Tail {
            seq: st.seq,
            ring: st
                .ring
                .iter()
                .filter(|(seq, _)| *seq > from)
                .cloned()
                .collect(),
            known: st.known.iter().copied().collect(),
        })
    }

    /// The bot says it has everything up to `seq` (a heartbeat's `d`).
    pub fn acked(&self, seq: u64) {
        let mut st = self.state();
        if seq <= st.seq {
            st.acked = st.acked.max(seq);
        }
    }

    /// A connection sent everything up to `seq`.
    pub fn sent(&self, seq: u64) {
        let mut st = self.state();
        st.sent = st.sent.max(seq);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a live event to the session (held back while loading).
    pub fn offer(&self, ev: &Arc<Incoming>) {
        if !self.shard.owns(ev.guild_id) {
            return;
        }
        let mut st = self.state();
        let st = &mut *st;
        if let Some(skip) = &st.skip {
            if Instant::now() >= skip.until {
                st.skip = None;
            } else if skip.seen.ids.contains(&ev.message_id) {
                return;
            }
        }
        if let Some(held) = &mut st.loading {
            if held.len() >= st.capacity {
                st.broken = true;
                held.clear();
            } else {
                held.push(ev.clone());
            }
            return;
        }
        if self.deliver(st, ev) {
            self.notify.notify_one();
        }
    }

    /// Puts READY and the guilds' GUILD_CREATEs in the ring, then the held
    /// events the snapshot does not cover. `floors`: per guild, the newest
    /// version in its snapshot. Returns `false` if the session broke.
    pub fn finish_loading(
        &self,
        ready: &str,
        guilds: Vec<(u64, String)>,
        floors: &HashMap<u64, Version>,
    ) -> bool {
        let mut st = self.state();
        if st.broken {
            return false;
        }
        push(&mut st, "READY", ready);
        for (id, d) in guilds {
            push(&mut st, "GUILD_CREATE", &d);
            st.known.insert(id);
        }
        let held = st.loading.take().unwrap_or_default();
        for ev in &held {
            let covered = ev
                .guild_id
                .and_then(|g| floors.get(&g))
                .is_some_and(|floor| ev.version <= *floor);
            if !covered {
                self.deliver(&mut st, ev);
            }
        }
        drop(st);
        self.notify.notify_one();
        true
    }

    /// Writes `ev` as the bot's dispatch, if it gets one. True if written.
    fn deliver(&self, st: &mut State, ev: &Incoming) -> bool {
        let guild = ev.guild_id;
        let name = match (ev.clean.as_str(), guild) {
            ("GUILD_AVAILABLE", Some(g)) if ev.initial && st.known.contains(&g) => return false,
            ("GUILD_JOINED" | "GUILD_AVAILABLE", Some(g)) => {
                st.known.insert(g);
                "GUILD_CREATE"
            }
            ("GUILD_REMOVED", Some(g)) => {
                st.known.remove(&g);
                "GUILD_DELETE"
            }
            ("GUILD_UNAVAILABLE", _) => "GUILD_DELETE",
            (clean, _) if clean.starts_with("RESHARD_") => return false,
            _ => ev.event.as_str(),
        };
        if !intents::receives(self.intents, name, guild.is_some()) {
            return false;
        }
        let body = String::from_utf8_lossy(&ev.body);
        if intents::content_restricted(self.intents, name, guild.is_some()) {
            push(st, name, &crate::incoming::without_content(&body));
        } else {
            push(st, name, &body);
        }
        true
    }

    /// Writes one dispatch of the session's own (RESUMED, a member chunk).
    pub fn push(&self, event: &str, d: &str) {
        push(&mut self.state(), event, d);
        self.notify.notify_one();
    }

    /// The payloads after `seq`, or [`Lost`] when some were dropped from
    /// the ring. Empty while loading.
    pub fn after(&self, seq: u64) -> Result<Vec<(u64, Arc<str>)>, Lost> {
        let st = self.state();
        if st.broken {
            return Err(Lost);
        }
        if seq > st.seq {
            return Err(Lost);
        }
        match st.ring.front() {
            Some((first, _)) if *first > seq + 1 => return Err(Lost),
            None if seq < st.seq => return Err(Lost),
            _ => {}
        }
        let skip = st.ring.front().map_or(0, |(first, _)| {
            usize::try_from(seq + 1 - first).unwrap_or(usize::MAX)
        });
        Ok(st.ring.iter().skip(skip).cloned().collect())
    }

    /// True while the snapshot loads.
    pub fn is_loading(&self) -> bool {
        self.state().loading.is_some()
    }

    /// Makes `connection` the one that sends (a RESUME); wakes the old one,
    /// which then finds it is no longer attached and closes.
    pub fn attach(&self, connection: u64) {
        let mut st = self.state();
        st.connection = Some(connection);
        st.detached_since = None;
        drop(st);
        self.notify.notify_waiters();
    }

    /// True while `connection` is the one that sends.
    pub fn is_attached(&self, connection: u64) -> bool {
        self.state().connection == Some(connection)
    }

    /// `connection` went away; the session waits for a RESUME.
    pub fn detach(&self, connection: u64, now: Instant) {
        let mut st = self.state();
        if st.connection == Some(connection) {
            st.connection = None;
            st.detached_since = Some(now);
        }
    }

    /// True when nobody resumed it within `window` of its last detach.
    pub fn expired(&self, now: Instant, window: std::time::Duration) -> bool {
        let st = self.state();
        st.broken
            || st
                .detached_since
                .is_some_and(|at| now.duration_since(at) >= window)
    }

    /// The last `s` written.
    pub fn last_seq(&self) -> u64 {
        self.state().seq
    }

    /// The last `s` written.
    #[cfg(test)]
    pub fn seq(&self) -> u64 {
        self.state().seq
    }
}

fn push(st: &mut State, event: &str, d: &str) {
    st.seq += 1;
    let seq = st.seq;
    let text: Arc<str> = format!("{{\"op\":0,\"t\":\"{event}\",\"s\":{seq},\"d\":{d}}}").into();
    st.ring.push_back((seq, text));
    while st.ring.len() > st.capacity {
        st.ring.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const G: u64 = 81384788765712384; // (G >> 22) % 2 == 0

    fn ev(clean: &str, event: &str, guild: Option<u64>, seq: u64, initial: bool) -> Arc<Incoming> {
        Arc::new(Incoming {
            message_id: format!("0:1:{seq}"),
            clean: clean.into(),
            event: event.into(),
            guild_id: guild,
            version: Version { epoch: 1, seq },
            initial,
            body: Bytes::from(format!("{{\"n\":{seq},\"content\":\"hi\"}}")),
        })
    }

    fn names(s: &Session, after: u64) -> Vec<String> {
        s.after(after)
            .unwrap()
            .iter()
            .map(|(_, t)| {
                let v: serde_json::Value = serde_json::from_str(t).unwrap();
                v["t"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    fn session(capacity: usize) -> Session {
        Session::loading(
            "s".into(),
            ClientShard { id: 0, count: 2 },
            1 | (1 << 9),
            capacity,
            1,
        )
    }

    #[test]
    fn held_events_the_snapshot_covers_are_dropped_and_the_rest_follow_in_order() {
        let s = session(100);
        assert_eq!(G >> 22 & 1, 0);
        for seq in 1..=4 {
            s.offer(&ev("MESSAGE_CREATE", "MESSAGE_CREATE", Some(G), seq, false));
        }
        // Another shard's guild, and a DM (shard 0 gets DMs).
        s.offer(&ev(
            "MESSAGE_CREATE",
            "MESSAGE_CREATE",
            Some(G | (1 << 22)),
            5,
            false,
        ));
        assert!(s.is_loading() && s.after(0).unwrap().is_empty());
        let floors = HashMap::from([(G, Version { epoch: 1, seq: 2 })]);
        assert!(s.finish_loading("{}", vec![(G, "{}".into())], &floors));
        assert_eq!(
            names(&s, 0),
            ["READY", "GUILD_CREATE", "MESSAGE_CREATE", "MESSAGE_CREATE"]
        );
        let texts = s.after(2).unwrap();
        assert!(texts[0].1.contains("\"n\":3") && texts[1].1.contains("\"n\":4"));
        assert!(texts[0].1.contains("\"s\":3"));
    }

    #[test]
    fn a_known_guild_loading_again_is_not_sent_twice_but_a_new_one_is() {
        let s = session(100);
        s.finish_loading("{}", vec![(G, "{}".into())], &HashMap::new());
        let other = G + (2 << 22); // also shard 0
        s.offer(&ev("GUILD_AVAILABLE", "GUILD_CREATE", Some(G), 10, true));
        s.offer(&ev(
            "GUILD_AVAILABLE",
            "GUILD_CREATE",
            Some(other),
            11,
            true,
        ));
        s.offer(&ev(
            "GUILD_AVAILABLE",
            "GUILD_CREATE",
            Some(other),
            12,
            true,
        ));
        s.offer(&ev("GUILD_REMOVED", "GUILD_DELETE", Some(other), 13, false));
        s.offer(&ev("GUILD_JOINED", "GUILD_CREATE", Some(other), 14, false));
        s.offer(&ev("RESHARD_STARTED", "RESHARD_STARTED", None, 15, false));
        assert_eq!(
            names(&s, 2),
            ["GUILD_CREATE", "GUILD_DELETE", "GUILD_CREATE"]
        );
    }

    #[test]
    fn intents_and_message_content_are_honoured() {
        let s = session(100);
        s.finish_loading("{}", Vec::new(), &HashMap::new());
        s.offer(&ev("TYPING_START", "TYPING_START", Some(G), 1, false));
        s.offer(&ev("MESSAGE_CREATE", "MESSAGE_CREATE", Some(G), 2, false));
        let sent = s.after(1).unwrap();
        assert_eq!(sent.len(), 1, "typing needs GUILD_MESSAGE_TYPING");
        assert!(sent[0].1.contains("\"content\":\"\""), "{}", sent[0].1);
    }

    #[test]
    fn resume_replays_what_the_ring_holds_and_reports_what_it_lost() {
        let s = session(3);
        s.finish_loading("{}", Vec::new(), &HashMap::new());
        for seq in 1..=5 {
            s.offer(&ev("MESSAGE_CREATE", "MESSAGE_CREATE", Some(G), seq, false));
        }
        assert_eq!(s.seq(), 6);
        assert_eq!(s.after(3).unwrap().len(), 3);
        assert_eq!(s.after(6).unwrap().len(), 0);
        assert_eq!(s.after(2), Err(Lost));
        assert_eq!(s.after(7), Err(Lost));
    }

    #[test]
    fn a_restored_session_continues_the_ring_and_skips_what_it_has() {
        let seen = Arc::new(Seen {
            ids: ["0:1:1".to_owned(), "0:1:3".to_owned()].into(),
            drained: false,
        });
        let ring = vec![(9, Arc::from("nine")), (10, Arc::from("ten"))];
        let tail = Tail {
            seq: 10,
            ring,
            known: vec![G],
        };
        let now = Instant::now();
        let s = Session::restored(
            "s".into(),
            ClientShard { id: 0, count: 2 },
            1 | (1 << 9),
            100,
            tail,
            seen,
            now + std::time::Duration::from_secs(60),
        );
        assert!(!s.is_attached(1) && !s.is_loading());
        assert_eq!(s.after(8).unwrap().len(), 2);
        assert_eq!(s.after(7), Err(Lost), "before what was handed over");
        for seq in 1..=4 {
            s.offer(&ev("MESSAGE_CREATE", "MESSAGE_CREATE", Some(G), seq, false));
        }
        s.offer(&ev("GUILD_AVAILABLE", "GUILD_CREATE", Some(G), 5, true));
        let texts = s.after(10).unwrap();
        assert_eq!(texts.len(), 2, "1 and 3 were sent before; G is known");
        assert!(texts[0].1.contains("\"s\":11") && texts[0].1.contains("\"n\":2"));
        assert!(texts[1].1.contains("\"n\":4"));
        let tail = s.tail(1_000).unwrap();
        assert_eq!(tail.seq, 12);
        assert_eq!(tail.known, vec![G]);
    }

    #[test]
    fn a_tail_starts_at_what_the_bot_can_have_missed() {
        let s = session(100);
        s.finish_loading("{}", Vec::new(), &HashMap::new());
        for seq in 1..=9 {
            s.offer(&ev("MESSAGE_CREATE", "MESSAGE_CREATE", Some(G), seq, false));
        }
        s.sent(8);
        s.acked(5);
        let firsts = |t: Tail| t.ring.first().map(|(seq, _)| *seq);
        assert_eq!(
            firsts(s.tail(1_000).unwrap()),
            Some(6),
            "after the heartbeat's s"
        );
        assert_eq!(
            firsts(s.tail(1).unwrap()),
            Some(8),
            "margin before what was sent"
        );
        s.acked(99);
        assert_eq!(
            firsts(s.tail(1_000).unwrap()),
            Some(6),
            "an s never written is ignored"
        );
        assert!(session(100).tail(1).is_none(), "loading");
    }

    #[test]
    fn overflow_while_loading_breaks_the_session() {
        let s = session(2);
        for seq in 1..=3 {
            s.offer(&ev("MESSAGE_CREATE", "MESSAGE_CREATE", Some(G), seq, false));
        }
        assert!(!s.finish_loading("{}", Vec::new(), &HashMap::new()));
        assert!(s.expired(Instant::now(), std::time::Duration::from_secs(60)));
    }
}

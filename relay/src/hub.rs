//! Every session of this relay, and the fan-out of the clean stream to
//! them.
//!
//! # Algorithm
//! Each clean event is offered to every session; a session takes those of
//! its shard's guilds (`(guild_id >> 22) % count == id`) that its intents
//! cover. Copies of one event (a redelivery, a reshard's two totals) share
//! a `message_id` and are offered once: the hub remembers the last
//! [`DEDUP`] ids. Answers to forwarded member requests (GUILD_MEMBERS_CHUNK,
//! RATE_LIMITED) are not fanned out: they go to the session that asked,
//! or nowhere ([`crate::replies`]). The real shards' READY and RESUMED
//! go to nobody: a bot's session is the relay's. Sessions nobody resumed within the
//! window are dropped by [`Hub::reap`].
//!
//! One lock covers a whole dispatch (the ids seen, the offers, the
//! [`Recent`] buffer), so a session handed over by a stopping relay
//! ([`Hub::restore`]) is rebuilt from the buffer and registered between
//! two events: each event reaches it once, from the buffer or live.

use crate::handover::{Cover, Recent, Seen};
use crate::incoming::Incoming;
use crate::replies::Replies;
use crate::session::Session;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How many recent message ids are remembered for deduplication.
pub const DEDUP: usize = 200_000;

/// The relay's sessions.
pub struct Hub {
    sessions: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    feed: Mutex<Feed>,
    /// Forwarded member requests awaiting their answers.
    pub replies: Replies,
    /// Woken when a stopped relay's marker comes through the feed.
    pub markers: tokio::sync::Notify,
}

/// What the dispatch lock guards.
struct Feed {
    seen: HashSet<String>,
    /// `seen` in arrival order.
    order: VecDeque<String>,
    recent: Recent,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(config::RelayConfig::default().handover_events)
    }
}

impl Hub {
    /// A hub whose [`Recent`] buffer holds `handover_events`.
    pub fn new(handover_events: usize) -> Self {
        Self {
            sessions: RwLock::default(),
            feed: Mutex::new(Feed {
                seen: HashSet::new(),
                order: VecDeque::new(),
                recent: Recent::new(handover_events),
            }),
            replies: Replies::default(),
            markers: tokio::sync::Notify::new(),
        }
    }

    fn feed(&self) -> std::sync::MutexGuard<'_, Feed> {
        self.feed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers one clean event to every session, once per `message_id`.
    /// False for a copy already offered.
    pub fn dispatch(&self, ev: Incoming) -> bool {
        let mut feed = self.feed();
        if !feed.seen.insert(ev.message_id.clone()) {
            return false;
        }
        feed.order.push_back(ev.message_id.clone());
        while feed.order.len() > DEDUP {
            if let Some(old) = feed.order.pop_front() {
                feed.seen.remove(&old);
            }
        }
        if matches!(ev.event.as_str(), "GUILD_MEMBERS_CHUNK" | "RATE_LIMITED") {
            self.answer(&ev);
            return true;
        }
        if matches!(ev.event.as_str(), "READY" | "RESUMED") {
            // A real shard's own session: its READY carries the real
            // session id and Discord's resume URL, and a bot library that
            // took it would RESUME the real shard's session at Discord,
            // closing it. Bots get the relay's READY and RESUMED only.
            metrics::counter!("relay_events_withheld_total", "event" => ev.event.clone())
                .increment(1);
            return true;
        }
        let ev = Arc::new(ev);
        for s in self.read().values() {
            s.offer(&ev);
        }
        feed.recent.push(ev);
        true
    }

    /// The feed started consuming.
    pub fn feed_started(&self) {
        self.feed().recent.started();
    }

    /// The feed lost the broker: events are being missed.
    pub fn feed_lost(&self) {
        self.feed().recent.lost();
    }

    /// Relay `pod` stopped: its marker came through the feed.
    pub fn marker(&self, pod: &str) {
        self.feed().recent.marker(pod);
        self.markers.notify_waiters();
    }

    /// The last `n` message ids dispatched, oldest first.
    pub fn seen_ids(&self, n: usize) -> Vec<String> {
        let feed = self.feed();
        let skip = feed.order.len().saturating_sub(n);
        feed.order.iter().skip(skip).cloned().collect()
    }

    /// Every session held.
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.read().values().cloned().collect()
    }

    /// Registers `s`, handed over by relay `pod` after dispatching `seen`,
    /// once the events it missed are in its ring; gives `s` back when the
    /// [`Recent`] buffer does not cover them ([`crate::handover`]).
    pub fn restore(
        &self,
        s: Box<Session>,
        pod: &str,
        seen: &Seen,
    ) -> Result<Arc<Session>, (Cover, Box<Session>)> {
        let feed = self.feed();
        let missed = match feed.recent.missed(pod, seen) {
            Ok(missed) => missed,
            Err(cover) => return Err((cover, s)),
        };
        let before = s.last_seq();
        for ev in &missed {
            s.offer(ev);
        }
        tracing::info!(session = %s.id, replayed = s.last_seq() - before, relay = pod, "took over a session another relay handed over");
        let s: Arc<Session> = Arc::from(s);
        self.insert(s.clone());
        drop(feed);
        Ok(s)
    }

    /// Hands an answer to the session whose request it answers.
    fn answer(&self, ev: &Incoming) {
        let result = match self.replies.route(&ev.event, &ev.body) {
            Some(reply) => match self.get(&reply.session) {
                Some(s) => {
                    s.push(&ev.event, &reply.d);
                    "delivered"
                }
                None => "session_gone",
            },
            None => "not_ours",
        };
        metrics::counter!("relay_command_answers_total", "event" => ev.event.clone(), "result" => result)
            .increment(1);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new session.
    pub fn insert(&self, s: Arc<Session>) {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(s.id.clone(), s);
        metrics::gauge!("relay_sessions").set(self.len() as f64);
    }

    /// The session `id`, if it is still resumable.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.read().get(id).cloned()
    }

    /// Forgets session `id`.
    pub fn remove(&self, id: &str) {
        self.sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        metrics::gauge!("relay_sessions").set(self.len() as f64);
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Drops the sessions nobody resumed within `window`; returns how many.
    pub fn reap(&self, now: Instant, window: Duration) -> usize {
        let mut sessions = self
            .sessions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before = sessions.len();
        sessions.retain(|_, s| !s.expired(now, window));
        let gone = before - sessions.len();
        metrics::gauge!("relay_sessions").set(sessions.len() as f64);
        let unanswered = self.replies.reap(now);
        metrics::gauge!("relay_member_requests_pending").set(self.replies.len() as f64);
        if unanswered > 0 {
            metrics::counter!("relay_command_answers_total", "event" => "GUILD_MEMBERS_CHUNK", "result" => "timed_out")
                .increment(unanswered as u64);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ClientShard;
    use bytes::Bytes;
    use envelope::Version;

    #[test]
    fn copies_are_offered_once_and_expired_sessions_go() {
        let hub = Hub::default();
        let s = Arc::new(Session::loading(
            "a".into(),
            ClientShard { id: 0, count: 1 },
            1 << 9,
            100,
            1,
        ));
        hub.insert(s.clone());
        s.finish_loading("{}", Vec::new(), &HashMap::new());
        let ev = Incoming {
            message_id: "0:1:1".into(),
            clean: "MESSAGE_CREATE".into(),
            event: "MESSAGE_CREATE".into(),
            guild_id: Some(1 << 22),
            version: Version { epoch: 1, seq: 1 },
            initial: false,
            body: Bytes::from_static(b"{}"),
        };
        assert!(hub.dispatch(ev.clone()));
        assert!(!hub.dispatch(ev.clone()));
        assert_eq!(s.seq(), 2, "READY and one message");
        // A real shard's READY or RESUMED (no guild: every session of
        // client shard 0 would take it) never reaches a bot.
        for (n, name) in ["READY", "RESUMED"].into_iter().enumerate() {
            let real = Incoming {
                message_id: format!("0:2:{n}"),
                clean: name.into(),
                event: name.into(),
                guild_id: None,
                body: Bytes::from_static(
                    br#"{"session_id":"real","resume_gateway_url":"wss://discord"}"#,
                ),
                ..ev.clone()
            };
            assert!(hub.dispatch(real));
        }
        assert_eq!(s.seq(), 2, "the real shards' session events are withheld");
        let now = Instant::now();
        assert_eq!(hub.reap(now, Duration::from_secs(1)), 0);
        s.detach(1, now);
        assert_eq!(
            hub.reap(now + Duration::from_secs(2), Duration::from_secs(1)),
            1
        );
        assert!(hub.get("a").is_none());
    }
}

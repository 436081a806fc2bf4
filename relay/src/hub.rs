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
#[derive(Default)]
pub struct Hub {
    sessions: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
    /// Forwarded member requests awaiting their answers.
    pub replies: Replies,
}

impl Hub {
    /// Offers one clean event to every session, once per `message_id`.
    /// False for a copy already offered.
    pub fn dispatch(&self, ev: Incoming) -> bool {
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if !seen.0.insert(ev.message_id.clone()) {
                return false;
            }
            seen.1.push_back(ev.message_id.clone());
            while seen.1.len() > DEDUP {
                if let Some(old) = seen.1.pop_front() {
                    seen.0.remove(&old);
                }
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
        true
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

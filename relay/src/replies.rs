//! Answers to forwarded member requests (op 8), back to the session that
//! asked, and to it alone.
//!
//! # Algorithm
//! Discord sends GUILD_MEMBERS_CHUNK (and RATE_LIMITED, when it refuses a
//! request) only to the session that sent the op 8, matched by the
//! request's `nonce`. Through the relay the real shard's answer arrives on
//! the clean stream of every relay process, so the relay puts a nonce of
//! its own on each forwarded request (`<prefix>.<n>`: the prefix is
//! random per process, so two relays never claim each other's answers)
//! and remembers which session asked, with the bot's own nonce. An answer
//! with such a nonce goes to that session with the bot's nonce put back;
//! the request is forgotten after its last chunk (or the RATE_LIMITED), or
//! after [`ANSWER_WITHIN`]. Any other chunk or RATE_LIMITED is nobody's
//! here and is dropped: never fanned out to every session of the guild.

use rand::RngCore;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long a forwarded request waits for its answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// Requests waiting for more than this many answers are refused (a bot
/// cannot pin the relay's memory with requests nobody answers).
pub const MAX_PENDING: usize = 100_000;

struct Pending {
    session: Arc<str>,
    nonce: Option<String>,
    until: Instant,
}

/// The forwarded requests of this relay process awaiting answers.
pub struct Replies {
    prefix: String,
    next: AtomicU64,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Default for Replies {
    fn default() -> Self {
        let mut bytes = [0u8; 4];
        rand::rng().fill_bytes(&mut bytes);
        Self {
            prefix: format!("bw{}", hex(&bytes)),
            next: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Which session an answer goes to, and its `d` with the bot's nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub session: Arc<str>,
    pub d: String,
}

impl Replies {
    /// Remembers a request of `session` (whose own nonce was `nonce`);
    /// returns the nonce to forward it with, or `None` when too many wait.
    pub fn register(
        &self,
        session: Arc<str>,
        nonce: Option<String>,
        now: Instant,
    ) -> Option<String> {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if p.len() >= MAX_PENDING {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let ours = format!("{}.{n}", self.prefix);
        p.insert(
            ours.clone(),
            Pending {
                session,
                nonce,
                until: now + ANSWER_WITHIN,
            },
        );
        Some(ours)
    }

    /// The session a GUILD_MEMBERS_CHUNK or RATE_LIMITED answers, if a
    /// request of this relay asked for it.
    pub fn route(&self, event: &str, body: &[u8]) -> Option<Reply> {
        let mut d: Value = serde_json::from_slice(body).ok()?;
        let holder = match event {
            "GUILD_MEMBERS_CHUNK" => &mut d,
            "RATE_LIMITED" => d.get_mut("meta")?,
            _ => return None,
        };
        let ours = holder.get("nonce")?.as_str()?.to_owned();
        if !ours.starts_with(&self.prefix) {
            return None;
        }
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = p.get(&ours)?;
        let session = pending.session.clone();
        match &pending.nonce {
            Some(n) => holder["nonce"] = Value::String(n.clone()),
            None => {
                if let Some(o) = holder.as_object_mut() {
                    o.remove("nonce");
                }
            }
        }
        let last = match event {
            "GUILD_MEMBERS_CHUNK" => {
                let index = d.get("chunk_index").and_then(Value::as_u64).unwrap_or(0);
                let count = d.get("chunk_count").and_then(Value::as_u64).unwrap_or(1);
                index + 1 >= count
            }
            _ => true,
        };
        if last {
            p.remove(&ours);
        }
        Some(Reply {
            session,
            d: d.to_string(),
        })
    }

    /// Forgets requests unanswered within [`ANSWER_WITHIN`]; how many.
    pub fn reap(&self, now: Instant) -> usize {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let before = p.len();
        p.retain(|_, r| r.until > now);
        before - p.len()
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_to_the_asker_with_its_nonce_and_end_with_the_last_chunk() {
        let r = Replies::default();
        let now = Instant::now();
        let a = r.register("a".into(), Some("mine".into()), now).unwrap();
        let b = r.register("b".into(), None, now).unwrap();
        assert_ne!(a, b);
        assert!(a.len() <= 32, "Discord echoes nonces of up to 32 bytes");
        let chunk = |n: &str, i: u32, c: u32| {
            format!(
                r#"{{"guild_id":"1","members":[],"chunk_index":{i},"chunk_count":{c},"nonce":"{n}"}}"#
            )
        };
        let first = r
            .route("GUILD_MEMBERS_CHUNK", chunk(&a, 0, 2).as_bytes())
            .unwrap();
        assert_eq!(&*first.session, "a");
        let d: Value = serde_json::from_str(&first.d).unwrap();
        assert_eq!(d["nonce"], "mine");
        assert_eq!(r.len(), 2, "one more chunk to come for a");
        assert!(
            r.route("GUILD_MEMBERS_CHUNK", chunk(&a, 1, 2).as_bytes())
                .is_some()
        );
        assert!(
            r.route("GUILD_MEMBERS_CHUNK", chunk(&a, 1, 2).as_bytes())
                .is_none(),
            "answered"
        );
        let limited =
            format!(r#"{{"opcode":8,"retry_after":1.5,"meta":{{"guild_id":"1","nonce":"{b}"}}}}"#);
        let reply = r.route("RATE_LIMITED", limited.as_bytes()).unwrap();
        assert_eq!(&*reply.session, "b");
        let d: Value = serde_json::from_str(&reply.d).unwrap();
        assert!(d["meta"].get("nonce").is_none(), "b sent no nonce");
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn answers_to_others_are_nobodys_and_unanswered_requests_expire() {
        let r = Replies::default();
        let other = Replies::default();
        let now = Instant::now();
        let theirs = other.register("x".into(), None, now).unwrap();
        let chunk = format!(
            r#"{{"guild_id":"1","members":[],"chunk_index":0,"chunk_count":1,"nonce":"{theirs}"}}"#
        );
        assert!(r.route("GUILD_MEMBERS_CHUNK", chunk.as_bytes()).is_none());
        assert!(
            r.route("GUILD_MEMBERS_CHUNK", br#"{"guild_id":"1","members":[]}"#)
                .is_none()
        );
        assert!(r.route("GUILD_MEMBERS_CHUNK", b"not json").is_none());
        r.register("a".into(), None, now).unwrap();
        assert_eq!(r.reap(now + ANSWER_WITHIN - Duration::from_millis(1)), 0);
        assert_eq!(r.reap(now + ANSWER_WITHIN), 1);
    }
}

//! A shard's gateway session, as persisted between processes.
//!
//! A rolling restart must resume every shard (no identify spent, no event
//! lost), so each shard's session outlives the process. What is saved must
//! also be safe to trust: a file from another bot, another shard count, or
//! half-written by a crash must never be resumed with (Discord would answer
//! op 9 or, worse, the events would be attributed to the wrong layout).
//!
//! # Algorithm
//! A session is saved as one JSON document with a format number, the owner
//! (bot user id and a fingerprint of the token, never the token), the shard
//! and shard count, `session_id`, `resume_gateway_url`, `seq`, `epoch` and the
//! confirmed guild states ([`GuildSnapshot`]). [`Session::decode`] rejects,
//! with a reason to log: empty or oversized data, invalid JSON, another
//! format, another token, another shard or shard count, an empty session id
//! or a resume URL that is not `ws://`/`wss://`. A rejected session is
//! ignored and the shard identifies.
//!
//! `seq` is the highest sequence number the sink confirmed contiguously, so
//! a resume replays exactly what was not yet accepted downstream.
//!
//! `epoch` orders sessions of one shard: each fresh session takes
//! `max(previous + 1, unix time in ms)` ([`next_epoch`]), so it stays strictly
//! increasing even when the previous session was lost with a corrupt file.

use crate::guilds::GuildSnapshot;
use serde::{Deserialize, Serialize};

/// Format number of the persisted document.
const FORMAT: u32 = 1;

/// Largest persisted session accepted (2500 guilds need about 60 KiB).
pub const MAX_SESSION_BYTES: usize = 4 * 1024 * 1024;

/// Who a session belongs to: a stored session of anyone else is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOwner {
    /// Stable, non-reversible fingerprint of the bot token.
    pub token_fingerprint: String,
    /// Total number of shards of the running layout.
    pub total_shards: u32,
}

impl SessionOwner {
    /// The owner for `token` in a layout of `total_shards`.
    pub fn new(token: &config::Secret, total_shards: u32) -> Self {
        Self {
            token_fingerprint: token_fingerprint(token),
            total_shards,
        }
    }
}

/// A 64-bit FNV-1a fingerprint of the token, as hex. Stable across builds
/// (unlike `std`'s hasher) so an upgrade never invalidates every session;
/// 64 bits of a hash reveal nothing usable about a token with hundreds of
/// bits of entropy, and it is only compared, never logged.
pub fn token_fingerprint(token: &config::Secret) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in token.expose().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The epoch for a fresh session after `previous`.
pub fn next_epoch(previous: Option<u64>) -> u64 {
    let now_ms = crate::clock::now_ms();
    previous.map_or(now_ms, |p| p.saturating_add(1).max(now_ms))
}

/// A resumable gateway session of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// Persisted format number.
    pub format: u32,
    /// See [`SessionOwner::token_fingerprint`].
    pub token_fingerprint: String,
    /// Bot user id from READY, for operators reading the file.
    pub bot_user_id: Option<u64>,
    pub shard_id: u32,
    pub total_shards: u32,
    pub session_id: String,
    pub resume_gateway_url: String,
    /// Highest sequence number the sink confirmed contiguously.
    pub seq: u64,
    /// Version of the session, strictly increasing per shard.
    pub epoch: u64,
    /// Confirmed guild states.
    pub guilds: GuildSnapshot,
}

/// Why a stored session was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRejected {
    #[error("stored session is empty")]
    Empty,
    #[error("stored session is {0} bytes, above the {MAX_SESSION_BYTES}-byte bound")]
    TooLarge(usize),
    #[error("stored session is not a valid session document: {0}")]
    Corrupt(String),
    #[error("stored session has format {0}, this build reads format {FORMAT}")]
    Format(u32),
    #[error("stored session belongs to another bot token")]
    ForeignBot,
    #[error("stored session is for shard {stored}, expected {expected}")]
    WrongShard { stored: u32, expected: u32 },
    #[error("stored session is for {stored} shards, the layout has {expected}")]
    WrongTotal { stored: u32, expected: u32 },
    #[error("stored session has {0}")]
    Invalid(&'static str),
}

impl Session {
    /// A fresh session from READY.
    pub fn new(
        owner: &SessionOwner,
        shard_id: u32,
        session_id: String,
        resume_gateway_url: String,
        epoch: u64,
    ) -> Self {
        Self {
            format: FORMAT,
            token_fingerprint: owner.token_fingerprint.clone(),
            bot_user_id: None,
            shard_id,
            total_shards: owner.total_shards,
            session_id,
            resume_gateway_url,
            seq: 0,
            epoch,
            guilds: GuildSnapshot::default(),
        }
    }

    /// The persisted bytes.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, integers and vectors always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads and checks stored bytes for `shard_id` of `owner`.
    pub fn decode(
        bytes: &[u8],
        owner: &SessionOwner,
        shard_id: u32,
    ) -> Result<Self, SessionRejected> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(SessionRejected::Empty);
        }
        if bytes.len() > MAX_SESSION_BYTES {
            return Err(SessionRejected::TooLarge(bytes.len()));
        }
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| SessionRejected::Corrupt(e.to_string()))?;
        if head.format != FORMAT {
            return Err(SessionRejected::Format(head.format));
        }
        let s: Session =
            serde_json::from_slice(bytes).map_err(|e| SessionRejected::Corrupt(e.to_string()))?;
        if s.token_fingerprint != owner.token_fingerprint {
            return Err(SessionRejected::ForeignBot);
        }
        if s.shard_id != shard_id {
            return Err(SessionRejected::WrongShard {
                stored: s.shard_id,
                expected: shard_id,
            });
        }
        if s.total_shards != owner.total_shards {
            return Err(SessionRejected::WrongTotal {
                stored: s.total_shards,
                expected: owner.total_shards,
            });
        }
        if s.session_id.trim().is_empty() {
            return Err(SessionRejected::Invalid("an empty session_id"));
        }
        if !(s.resume_gateway_url.starts_with("wss://")
            || s.resume_gateway_url.starts_with("ws://"))
        {
            return Err(SessionRejected::Invalid(
                "a resume_gateway_url that is not ws:// or wss://",
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::Secret;

    fn sample(owner: &SessionOwner, shard: u32) -> Session {
        let mut s = Session::new(
            owner,
            shard,
            "abc123".into(),
            "wss://resume.example/".into(),
            7,
        );
        s.seq = 42;
        s.guilds.pending = vec![1, 2];
        s
    }

    #[test]
    fn round_trip_and_rejections() {
        let owner = SessionOwner::new(&Secret::new("token-a"), 16);
        let s = sample(&owner, 3);
        let bytes = s.encode();
        assert_eq!(Session::decode(&bytes, &owner, 3).unwrap(), s);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("token-a"));

        let other_bot = SessionOwner::new(&Secret::new("token-b"), 16);
        assert_eq!(
            Session::decode(&bytes, &other_bot, 3),
            Err(SessionRejected::ForeignBot)
        );
        let other_total = SessionOwner::new(&Secret::new("token-a"), 32);
        assert!(matches!(
            Session::decode(&bytes, &other_total, 3),
            Err(SessionRejected::WrongTotal { .. })
        ));
        assert!(matches!(
            Session::decode(&bytes, &owner, 4),
            Err(SessionRejected::WrongShard { .. })
        ));
        assert_eq!(Session::decode(b"", &owner, 3), Err(SessionRejected::Empty));
        assert_eq!(
            Session::decode(b" \n", &owner, 3),
            Err(SessionRejected::Empty)
        );
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(
                    Session::decode(&bytes[..cut], &owner, 3),
                    Err(SessionRejected::Corrupt(_))
                ),
                "truncated at {cut}"
            );
        }
        let wrong_type = text.replace("\"seq\":42", "\"seq\":\"42\"");
        assert!(Session::decode(wrong_type.as_bytes(), &owner, 3).is_err());
        let future = text.replace("\"format\":1", "\"format\":2");
        assert_eq!(
            Session::decode(future.as_bytes(), &owner, 3),
            Err(SessionRejected::Format(2))
        );
        let empty_id = text.replace("abc123", "");
        assert!(matches!(
            Session::decode(empty_id.as_bytes(), &owner, 3),
            Err(SessionRejected::Invalid(_))
        ));
        let bad_url = text.replace("wss://resume.example/", "http://x");
        assert!(Session::decode(bad_url.as_bytes(), &owner, 3).is_err());
        let huge = vec![b' '; MAX_SESSION_BYTES + 1];
        let mut huge = huge;
        huge[0] = b'{';
        assert!(matches!(
            Session::decode(&huge, &owner, 3),
            Err(SessionRejected::TooLarge(_))
        ));
    }

    #[test]
    fn fingerprints_and_epochs() {
        let a = token_fingerprint(&Secret::new("a"));
        assert_eq!(a, token_fingerprint(&Secret::new("a")));
        assert_ne!(a, token_fingerprint(&Secret::new("b")));
        assert_eq!(a.len(), 16);
        let e1 = next_epoch(None);
        assert!(e1 > 1_700_000_000_000, "unix ms: {e1}");
        assert!(next_epoch(Some(e1)) > e1);
        assert_eq!(next_epoch(Some(u64::MAX - 1)), u64::MAX);
    }
}

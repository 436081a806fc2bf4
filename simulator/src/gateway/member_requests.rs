//! Request Guild Members (op 8): validation, the per-guild rate limit, and
//! the GUILD_MEMBERS_CHUNK replies.
//!
//! As Discord documents it: `guild_id` plus either `query` with `limit`
//! (members whose username starts with the query, case-insensitively; an
//! empty query with limit 0 asks for every member and needs the
//! GUILD_MEMBERS intent) or up to 100 `user_ids` (unknown ones come back in
//! `not_found`). Replies come in chunks of at most 1000 members, each with
//! `chunk_index`, `chunk_count` and the request's `nonce` (a nonce over 32
//! bytes is ignored). `presences` needs GUILD_PRESENCES, and comes back as
//! an empty list (the world keeps no presence state).
//!
//! # Rate limit
//! One request per guild per session per window (half the send-limit
//! window: 30 s at Discord's scale). A request over the limit gets a
//! RATE_LIMITED dispatch (`opcode`, `retry_after` in seconds, `meta` with
//! `guild_id` and `nonce`) instead of chunks, and is counted.

use super::protocol::{CloseReason, close};
use super::sessions::{Core, INTENT_GUILD_MEMBERS, INTENT_GUILD_PRESENCES};
use crate::config::SimConfig;
use serde::Deserialize;
use std::fmt::Write as _;
use std::time::Instant;

/// Members per GUILD_MEMBERS_CHUNK.
pub(crate) const CHUNK_SIZE: usize = 1000;
/// Most `user_ids` one request may name.
pub(crate) const MAX_USER_IDS: usize = 100;
/// Largest `limit` for a non-empty query.
pub(crate) const MAX_QUERY_LIMIT: u64 = 100;
/// Longest nonce echoed back.
pub(crate) const MAX_NONCE_BYTES: usize = 32;

/// A snowflake as clients send it: a string or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Snowflake {
    Str(String),
    Num(u64),
}

impl Snowflake {
    fn get(&self) -> Option<u64> {
        match self {
            Snowflake::Str(s) => s.parse().ok(),
            Snowflake::Num(n) => Some(*n),
        }
    }
}

/// `user_ids`: one snowflake or an array.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum UserIds {
    One(Snowflake),
    Many(Vec<Snowflake>),
}

/// Op 8's `d`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RequestGuildMembers {
    pub guild_id: Snowflake,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub presences: Option<bool>,
    #[serde(default)]
    pub user_ids: Option<UserIds>,
    #[serde(default)]
    pub nonce: Option<String>,
}

/// What the request selects, validated.
enum Selection {
    Query { prefix: String, limit: usize },
    Users(Vec<u64>),
}

fn bad(msg: impl Into<String>) -> CloseReason {
    CloseReason::new(close::DECODE_ERROR, msg)
}

impl RequestGuildMembers {
    fn selection(&self, intents: u64) -> Result<Selection, CloseReason> {
        match (&self.query, &self.user_ids) {
            (Some(_), Some(_)) => Err(bad("op 8: `query` and `user_ids` are exclusive")),
            (None, None) => Err(bad("op 8: `query` or `user_ids` is required")),
            (Some(q), None) => {
                let limit = self
                    .limit
                    .ok_or_else(|| bad("op 8: `limit` is required with `query`"))?;
                if q.is_empty() && limit == 0 {
                    if intents & INTENT_GUILD_MEMBERS == 0 {
                        return Err(CloseReason::new(
                            close::INVALID_INTENTS,
                            "op 8: the whole member list needs the GUILD_MEMBERS intent",
                        ));
                    }
                    return Ok(Selection::Query {
                        prefix: String::new(),
                        limit: usize::MAX,
                    });
                }
                let limit = limit.clamp(1, MAX_QUERY_LIMIT) as usize;
                Ok(Selection::Query {
                    prefix: q.to_lowercase(),
                    limit,
                })
            }
            (None, Some(ids)) => {
                let ids = match ids {
                    UserIds::One(id) => vec![id.clone()],
                    UserIds::Many(ids) => ids.clone(),
                };
                if ids.len() > MAX_USER_IDS {
                    return Err(bad(format!("op 8: more than {MAX_USER_IDS} user_ids")));
                }
                ids.iter()
                    .map(|s| s.get().ok_or_else(|| bad("op 8: invalid user id")))
                    .collect::<Result<_, _>>()
                    .map(Selection::Users)
            }
        }
    }
}

impl Core {
    /// Answers op 8 for session `sid`: queues GUILD_MEMBERS_CHUNKs or a
    /// RATE_LIMITED dispatch. An error closes the connection.
    pub(crate) fn request_members(
        &mut self,
        sid: &str,
        req: &RequestGuildMembers,
        cfg: &SimConfig,
        now: Instant,
    ) -> Result<(), CloseReason> {
        let Some((slot, s)) = self.session_mut(sid) else {
            return Ok(());
        };
        let (intents, shard, total) = (s.intents, s.shard, s.total);
        let guild_id = req
            .guild_id
            .get()
            .ok_or_else(|| bad("op 8: invalid guild_id"))?;
        let selection = req.selection(intents)?;
        let nonce = req.nonce.as_deref().filter(|n| n.len() <= MAX_NONCE_BYTES);
        let last = s.member_requests.get(&guild_id).copied();
        self.counters.member_requests += 1;
        let window = cfg.send_window / 2;
        if let Some(at) = last.filter(|&at| now.saturating_duration_since(at) < window) {
            let retry = window.saturating_sub(now.saturating_duration_since(at));
            self.counters.member_requests_rate_limited += 1;
            let mut d = format!(
                "{{\"opcode\":8,\"retry_after\":{:.3},\"meta\":{{\"guild_id\":\"{guild_id}\"",
                retry.as_secs_f64()
            );
            if let Some(n) = nonce {
                d.push_str(",\"nonce\":");
                push_json_str(&mut d, n);
            }
            d.push_str("}}");
            self.push(slot, "RATE_LIMITED", None, d.into(), cfg);
            return Ok(());
        }
        if let Some((_, s)) = self.session_mut(sid) {
            s.member_requests.insert(guild_id, now);
        }
        if crate::world::shard_of(guild_id, total) != shard {
            return Ok(());
        }
        let Some(members) = self.world.members_of(guild_id) else {
            return Ok(());
        };
        let (chosen, not_found): (Vec<&String>, Vec<u64>) = match &selection {
            Selection::Query { prefix, limit } => (
                members
                    .iter()
                    .filter(|(_, name, _)| name.to_lowercase().starts_with(prefix.as_str()))
                    .take(*limit)
                    .map(|(_, _, json)| json)
                    .collect(),
                Vec::new(),
            ),
            Selection::Users(ids) => {
                let found = |id: &u64| members.binary_search_by_key(id, |m| m.0).ok();
                (
                    ids.iter()
                        .filter_map(&found)
                        .map(|i| &members[i].2)
                        .collect(),
                    ids.iter()
                        .copied()
                        .filter(|id| found(id).is_none())
                        .collect(),
                )
            }
        };
        let presences = req.presences == Some(true) && intents & INTENT_GUILD_PRESENCES != 0;
        let count = chosen.len().div_ceil(CHUNK_SIZE).max(1);
        let mut payloads = Vec::with_capacity(count);
        for index in 0..count {
            let part = chosen.chunks(CHUNK_SIZE).nth(index).unwrap_or_default();
            let mut d = String::with_capacity(64 + part.iter().map(|m| m.len() + 1).sum::<usize>());
            let _ = write!(d, "{{\"guild_id\":\"{guild_id}\",\"members\":[");
            for (i, m) in part.iter().enumerate() {
                if i > 0 {
                    d.push(',');
                }
                d.push_str(m);
            }
            let _ = write!(d, "],\"chunk_index\":{index},\"chunk_count\":{count}");
            if index == 0 && matches!(selection, Selection::Users(_)) {
                d.push_str(",\"not_found\":[");
                for (i, id) in not_found.iter().enumerate() {
                    if i > 0 {
                        d.push(',');
                    }
                    let _ = write!(d, "\"{id}\"");
                }
                d.push(']');
            }
            if presences {
                d.push_str(",\"presences\":[]");
            }
            if let Some(n) = nonce {
                d.push_str(",\"nonce\":");
                push_json_str(&mut d, n);
            }
            d.push('}');
            payloads.push(d);
        }
        for d in payloads {
            self.push(slot, "GUILD_MEMBERS_CHUNK", Some(guild_id), d.into(), cfg);
        }
        Ok(())
    }
}

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

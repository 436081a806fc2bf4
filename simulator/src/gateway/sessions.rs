//! Sessions: identify, resume, per-session sequence numbers and the replay
//! buffer, with the world they draw from, behind one lock.
//!
//! World, sessions, ledger and counters share one mutex so that what a
//! session sees is always a consistent cut of the world: READY and its
//! GUILD_CREATE snapshots are taken and queued atomically with respect to
//! event generation, and a dispatch is buffered into every live session of
//! its shard before the next one is produced.
//!
//! # Algorithm
//! A session owns a contiguous buffer of frames `(seq, event, d)`. Producers
//! append (assigning the next seq) and wake the attached connection; the
//! connection pulls every frame after the last seq it wrote. RESUME just
//! re-attaches a connection with "last written" set to the client's seq, so
//! replay, buffered-while-disconnected events and live events all flow
//! through the same path in seq order. A detached session expires
//! `session_expiry` after its connection dropped.

use super::limits::{IdentifyLimiter, SessionBudget};
use super::protocol::{CloseReason, Identify, Resume, close};
use super::records::{Counters, LedgerRecord, LedgerStore};
use crate::config::{PRIVILEGED_INTENTS, SimConfig, VALID_INTENTS};
use crate::world::{Dispatch, World};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, mpsc};

/// The bot user's id in READY.
pub(crate) const BOT_USER_ID: u64 = 1_100_000_000_000_000_001;
/// The application id in READY.
pub(crate) const APPLICATION_ID: u64 = 1_100_000_000_000_000_002;

/// One dispatch in a session's buffer.
#[derive(Debug)]
pub(crate) struct Frame {
    pub seq: u64,
    pub event: &'static str,
    pub d: Arc<str>,
}

/// Orders the core sends to a live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Reconnect,
    Drop,
    Zombie,
    Malformed(Malformed),
    RequestHeartbeat,
    InvalidSession(bool),
    /// Close with this code (e.g. the session was resumed elsewhere).
    Close(u16),
}

/// Kinds of malformed frame the simulator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// A message whose (decompressed) text is not valid JSON.
    InvalidJson,
    /// A compressed message cut in half (corrupts a zlib/zstd stream).
    Truncated,
    /// A valid payload with an opcode Discord does not define.
    UnknownOp,
}

/// How the core reaches the connection a session is attached to.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub conn_id: u64,
    pub notify: Arc<Notify>,
    pub ctl: mpsc::UnboundedSender<Control>,
}

#[derive(Debug)]
struct Session {
    shard: u32,
    intents: u64,
    seq: u64,
    /// Last seq the attached connection pulled.
    pulled: u64,
    frames: VecDeque<Arc<Frame>>,
    link: Option<Link>,
    detached_at: Option<Instant>,
    ledger_idx: u32,
}

impl Session {
    /// Keeps `keep` frames, plus whatever the attached connection has not
    /// pulled yet (up to a hard cap, past which the client is too slow and
    /// will be closed).
    fn trim(&mut self, keep: usize) {
        let hard_cap = keep.saturating_mul(4).max(20_000);
        while self.frames.len() > keep {
            let unpulled =
                self.link.is_some() && self.frames.front().is_some_and(|f| f.seq > self.pulled);
            if unpulled && self.frames.len() <= hard_cap {
                break;
            }
            self.frames.pop_front();
        }
    }
}

/// Why IDENTIFY or RESUME was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Send op 9 `d:false` and keep the connection.
    InvalidSession,
    /// Close the connection.
    Close(CloseReason),
}

/// What the connection got when it pulled frames.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pull {
    Ok,
    /// The connection fell behind the replay buffer.
    Behind,
    /// The session is no longer attached to this connection.
    Detached,
}

/// World, sessions, ledger and counters. See the module documentation.
#[derive(Debug)]
pub(crate) struct Core {
    pub world: World,
    pub ledger: LedgerStore,
    pub counters: Counters,
    pub budget: SessionBudget,
    sessions: HashMap<Arc<str>, Session>,
    by_shard: Vec<Vec<Arc<str>>>,
    identify: IdentifyLimiter,
    next_session: u64,
    seed: u64,
}

impl Core {
    pub(crate) fn new(cfg: &SimConfig, world: World, now: Instant) -> Self {
        Self {
            world,
            ledger: LedgerStore::default(),
            counters: Counters::default(),
            budget: SessionBudget::new(cfg.session_start_total, cfg.session_start_reset, now),
            sessions: HashMap::new(),
            by_shard: vec![Vec::new(); cfg.shards as usize],
            identify: IdentifyLimiter::new(cfg.max_concurrency, cfg.identify_window),
            next_session: 0,
            seed: cfg.seed,
        }
    }

    /// Buffers a world dispatch into every live session of its shard whose
    /// intents cover it.
    pub(crate) fn deliver(&mut self, d: &Dispatch, cfg: &SimConfig) {
        self.counters.events_generated += 1;
        let Some(ids) = self.by_shard.get(d.shard as usize) else {
            return;
        };
        let need = required_intent(d.event);
        for sid in ids.clone() {
            let wants = self
                .sessions
                .get(&sid)
                .is_some_and(|s| need.is_none_or(|bit| s.intents & (1 << bit) != 0));
            if wants {
                self.push(&sid, d.event, d.guild_id, d.payload.clone(), cfg);
            }
        }
    }

    fn push(
        &mut self,
        sid: &Arc<str>,
        event: &'static str,
        guild_id: Option<u64>,
        d: Arc<str>,
        cfg: &SimConfig,
    ) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.seq += 1;
        s.frames.push_back(Arc::new(Frame {
            seq: s.seq,
            event,
            d,
        }));
        s.trim(cfg.replay_buffer);
        self.ledger.record(
            s.shard,
            LedgerRecord {
                session: s.ledger_idx,
                seq: s.seq,
                event,
                guild_id,
            },
        );
        self.counters.events_dispatched += 1;
        if let Some(l) = &s.link {
            l.notify.notify_one();
        }
    }

    /// Handles IDENTIFY: validates it, applies the rate limits, and creates
    /// the session with READY and the GUILD_CREATEs queued.
    pub(crate) fn identify(
        &mut self,
        id: &Identify,
        link: Link,
        resume_url: &str,
        cfg: &SimConfig,
        now: Instant,
    ) -> Result<Arc<str>, Refusal> {
        let closed = |code, msg: String| Err(Refusal::Close(CloseReason::new(code, msg)));
        if id.token != cfg.token {
            return closed(close::AUTHENTICATION_FAILED, "invalid token".into());
        }
        let [shard, num] = match id.shard {
            Some(s) => s,
            None if cfg.shards > 1 => {
                return closed(
                    close::SHARDING_REQUIRED,
                    format!("sharding required: use {} shards", cfg.shards),
                );
            }
            None => [0, 1],
        };
        if num == 0 || shard >= num || num > cfg.shards {
            return closed(
                close::INVALID_SHARD,
                format!(
                    "invalid shard [{shard}, {num}]; this bot uses {} shards",
                    cfg.shards
                ),
            );
        }
        if num < cfg.shards {
            return closed(
                close::SHARDING_REQUIRED,
                format!("{num} shards are too few; use {}", cfg.shards),
            );
        }
        if id.intents & !VALID_INTENTS != 0 {
            return closed(
                close::INVALID_INTENTS,
                format!("invalid intent bits {:#x}", id.intents & !VALID_INTENTS),
            );
        }
        let disallowed = id.intents & PRIVILEGED_INTENTS & !cfg.allowed_privileged_intents;
        if disallowed != 0 {
            return closed(
                close::DISALLOWED_INTENTS,
                format!("privileged intents {disallowed:#x} are not enabled for this bot"),
            );
        }
        if let Some(t) = id.large_threshold
            && !(50..=250).contains(&t)
        {
            return closed(
                close::DECODE_ERROR,
                format!("large_threshold {t} is outside 50..=250"),
            );
        }
        if let Err(bucket) = self.identify.admit(shard, now) {
            self.counters.identify_violations += 1;
            tracing::warn!(shard, bucket, "identify rate limit exceeded: op 9");
            return Err(Refusal::InvalidSession);
        }
        if !self.budget.spend(now) {
            self.counters.budget_exhausted += 1;
            tracing::warn!(shard, "session start budget spent: op 9");
            return Err(Refusal::InvalidSession);
        }
        self.counters.identifies += 1;
        self.next_session += 1;
        let sid: Arc<str> = format!(
            "{:016x}{:016x}",
            splitmix(self.seed ^ 0x5e55_1011),
            splitmix(self.next_session)
        )
        .into();
        let ledger_idx = self.ledger.intern(sid.clone());
        let guilds = self.world.shard_guilds(shard);
        let stubs: Vec<_> = guilds
            .iter()
            .map(|(g, _)| json!({"id": g.to_string(), "unavailable": true}))
            .collect();
        let ready = json!({
            "v": 10,
            "user": {
                "id": BOT_USER_ID.to_string(), "username": "bulwark-sim", "discriminator": "0",
                "global_name": null, "avatar": null, "bot": true, "flags": 0, "mfa_enabled": false,
                "verified": true, "email": null,
            },
            "guilds": stubs,
            "session_id": &*sid,
            "resume_gateway_url": resume_url,
            "shard": [shard, num],
            "application": {"id": APPLICATION_ID.to_string(), "flags": 0},
            "private_channels": [],
            "presences": [],
            "relationships": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["us-east"],
            "user_settings": {},
            "_trace": ["[\"discord-sim\"]"],
        });
        self.sessions.insert(
            sid.clone(),
            Session {
                shard,
                intents: id.intents,
                seq: 0,
                pulled: 0,
                frames: VecDeque::new(),
                link: Some(link),
                detached_at: None,
                ledger_idx,
            },
        );
        if let Some(list) = self.by_shard.get_mut(shard as usize) {
            list.push(sid.clone());
        }
        self.push(&sid, "READY", None, ready.to_string().into(), cfg);
        for (gid, available) in guilds {
            if let Some(d) = available.then(|| self.world.guild_create(gid)).flatten() {
                self.push(&sid, "GUILD_CREATE", Some(gid), d, cfg);
            }
        }
        Ok(sid)
    }

    /// Handles RESUME: re-attaches the session and queues RESUMED after the
    /// frames to replay. Returns the session and the seq to replay after.
    pub(crate) fn resume(
        &mut self,
        r: &Resume,
        link: Link,
        cfg: &SimConfig,
        now: Instant,
    ) -> Result<(Arc<str>, u64), Refusal> {
        if r.token != cfg.token {
            return Err(Refusal::Close(CloseReason::new(
                close::AUTHENTICATION_FAILED,
                "invalid token",
            )));
        }
        self.expire(cfg, now);
        let found = self
            .sessions
            .get_key_value(r.session_id.as_str())
            .map(|(k, _)| k.clone());
        let Some((sid, s)) = found.and_then(|k| self.sessions.get_mut(&k).map(|s| (k, s))) else {
            self.counters.failed_resumes += 1;
            tracing::info!(session = %r.session_id, "resume of unknown or expired session: op 9");
            return Err(Refusal::InvalidSession);
        };
        if r.seq > s.seq {
            return Err(Refusal::Close(CloseReason::new(
                close::INVALID_SEQ,
                format!("seq {} is ahead of the session's {}", r.seq, s.seq),
            )));
        }
        let oldest = s.frames.front().map_or(s.seq + 1, |f| f.seq);
        if r.seq + 1 < oldest {
            self.counters.failed_resumes += 1;
            tracing::info!(session = %sid, seq = r.seq, oldest, "resume too far back: op 9");
            return Err(Refusal::InvalidSession);
        }
        if let Some(old) = s.link.replace(link) {
            let _ = old.ctl.send(Control::Close(close::UNKNOWN_ERROR));
        }
        s.detached_at = None;
        s.pulled = r.seq;
        self.counters.resumes += 1;
        self.counters.replayed_events += s.seq - r.seq;
        let d = json!({"_trace": ["[\"discord-sim\"]"]}).to_string();
        self.push(&sid, "RESUMED", None, d.into(), cfg);
        Ok((sid, r.seq))
    }

    /// Copies up to `max` frames after `after` into `out`.
    pub(crate) fn pull(
        &mut self,
        sid: &str,
        conn_id: u64,
        after: u64,
        max: usize,
        keep: usize,
        out: &mut Vec<Arc<Frame>>,
    ) -> Pull {
        let Some(s) = self.sessions.get_mut(sid) else {
            return Pull::Detached;
        };
        if s.link.as_ref().is_none_or(|l| l.conn_id != conn_id) {
            return Pull::Detached;
        }
        s.pulled = after;
        let Some(first) = s.frames.front().map(|f| f.seq) else {
            return Pull::Ok;
        };
        if after + 1 < first {
            return Pull::Behind;
        }
        let start = (after + 1 - first) as usize;
        out.extend(s.frames.iter().skip(start).take(max).cloned());
        if let Some(last) = out.last() {
            s.pulled = last.seq;
        }
        s.trim(keep);
        Pull::Ok
    }

    /// The connection `conn_id` is gone. `end` ends the session (close 1000
    /// or 1001, 4009); otherwise it stays resumable until it expires.
    pub(crate) fn detach(&mut self, sid: &str, conn_id: u64, end: bool, now: Instant) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        if s.link.as_ref().is_none_or(|l| l.conn_id != conn_id) {
            return;
        }
        s.link = None;
        if end {
            self.remove(sid);
        } else {
            s.detached_at = Some(now);
        }
    }

    fn remove(&mut self, sid: &str) {
        if let Some(s) = self.sessions.remove(sid)
            && let Some(list) = self.by_shard.get_mut(s.shard as usize)
        {
            list.retain(|x| &**x != sid);
        }
    }

    /// Ends every detached session older than `session_expiry`.
    pub(crate) fn expire(&mut self, cfg: &SimConfig, now: Instant) {
        let expired: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.detached_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= cfg.session_expiry)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for sid in expired {
            tracing::info!(session = %sid, "session expired");
            self.counters.expired_sessions += 1;
            self.remove(&sid);
        }
    }

    /// How many sessions on `shards` (all when empty) have a connection.
    pub(crate) fn attached(&self, shards: &[u32]) -> usize {
        self.sessions
            .values()
            .filter(|s| shards.is_empty() || shards.contains(&s.shard))
            .filter(|s| s.link.is_some())
            .count()
    }

    /// Sends `ctl` to the connections of every attached session on `shards`
    /// (all shards when empty). Returns how many connections it reached.
    pub(crate) fn control(&self, shards: &[u32], ctl: Control) -> usize {
        self.sessions
            .values()
            .filter(|s| shards.is_empty() || shards.contains(&s.shard))
            .filter_map(|s| s.link.as_ref())
            .filter(|l| l.ctl.send(ctl).is_ok())
            .count()
    }
}

/// The intent bit a dispatch needs, if any.
fn required_intent(event: &str) -> Option<u32> {
    match event {
        "GUILD_MEMBER_ADD" | "GUILD_MEMBER_UPDATE" | "GUILD_MEMBER_REMOVE" => Some(1),
        "PRESENCE_UPDATE" => Some(8),
        "MESSAGE_CREATE" => Some(9),
        "TYPING_START" => Some(11),
        "READY" | "RESUMED" => None,
        _ => Some(0),
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

//! Sessions: per-session sequence numbers and the replay buffer, with the
//! world they draw from, behind one lock.
//!
//! World, sessions, ledger and counters share one mutex so that what a
//! session sees is always a consistent cut of the world: READY and its
//! GUILD_CREATE snapshots are taken and queued atomically with respect to
//! event generation, and a dispatch is buffered into every live session of
//! its shard before the next one is produced. IDENTIFY and RESUME are in
//! [`super::handshake`].
//!
//! # Algorithm
//! A session owns a contiguous buffer of frames `(seq, event, d)`. Producers
//! append (assigning the next seq) and wake the attached connection; the
//! connection pulls every frame after the last seq it wrote. RESUME just
//! re-attaches a connection with "last written" set to the client's seq, so
//! replay, buffered-while-disconnected events and live events all flow
//! through the same path in seq order. A detached session expires
//! `session_expiry` after its connection dropped.
//!
//! Sessions live in a slab indexed by slot, with a per-shard list of slots,
//! so buffering a dispatch costs no hashing and, amortised, no allocation:
//! `d` is copied into the session's byte ring ([`super::replay`]). The
//! session id maps to its slot only for RESUME and pulls.

use super::limits::{IdentifyLimiter, SessionBudget};
use super::records::{Counters, LedgerRecord, LedgerStore};
use super::replay::{Pulled, Replay};
use crate::config::SimConfig;
use crate::world::{Dispatch, World};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{Notify, mpsc};

/// GUILD_MEMBERS.
pub(crate) const INTENT_GUILD_MEMBERS: u64 = 1 << 1;
/// GUILD_PRESENCES (op 8 `presences`).
pub(crate) const INTENT_GUILD_PRESENCES: u64 = 1 << 8;
/// MESSAGE_CONTENT.
pub(crate) const INTENT_MESSAGE_CONTENT: u64 = 1 << 15;

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
    /// A `MESSAGE_CREATE` whose `d` is not valid JSON, buffered with a seq
    /// like any dispatch: every resume replays the same bytes, as Discord
    /// would replay a bad event of its own.
    InvalidData,
}

/// The `d` of [`Malformed::InvalidData`]: a string that never ends, so the
/// frame around it is unreadable as a whole.
pub(crate) const INVALID_DATA: &str = r#"{"id":"1","content":"never closed}"#;

/// How the core reaches the connection a session is attached to.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub conn_id: u64,
    pub notify: Arc<Notify>,
    pub ctl: mpsc::UnboundedSender<Control>,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub id: Arc<str>,
    pub shard: u32,
    pub intents: u64,
    pub seq: u64,
    /// Last seq the attached connection pulled.
    pub pulled: u64,
    pub frames: Replay,
    pub link: Option<Link>,
    pub detached_at: Option<Instant>,
    pub ledger_idx: u32,
    /// When each guild's members were last requested (op 8).
    pub member_requests: HashMap<u64, Instant>,
}

impl Session {
    /// Keeps `keep` frames, plus whatever the attached connection has not
    /// pulled yet (up to a hard cap, past which the client is too slow and
    /// will be closed).
    fn trim(&mut self, keep: usize) {
        let hard_cap = keep.saturating_mul(4).max(20_000);
        while self.frames.len() > keep {
            let unpulled =
                self.link.is_some() && self.frames.front_seq().is_some_and(|seq| seq > self.pulled);
            if unpulled && self.frames.len() <= hard_cap {
                break;
            }
            self.frames.pop_front();
        }
    }
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
    /// Misbehaviours kept up on every connection until changed.
    pub hostility: super::hostility::Hostility,
    pub(super) identify: IdentifyLimiter,
    pub(super) next_session: u64,
    pub(super) seed: u64,
    slots: Vec<Option<Session>>,
    free: Vec<usize>,
    by_id: HashMap<Arc<str>, usize>,
    by_shard: Vec<Vec<usize>>,
}

impl Core {
    pub(crate) fn new(cfg: &SimConfig, world: World, now: Instant) -> Self {
        Self {
            world,
            ledger: LedgerStore::default(),
            counters: Counters::default(),
            budget: SessionBudget::new(cfg.session_start_total, cfg.session_start_reset, now),
            hostility: super::hostility::Hostility::default(),
            identify: IdentifyLimiter::new(cfg.max_concurrency, cfg.identify_window),
            next_session: 0,
            seed: cfg.seed,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            by_shard: vec![Vec::new(); cfg.shards as usize],
        }
    }

    /// Buffers a world dispatch into every live session of its shard whose
    /// intents cover it, choosing the restricted payload for sessions that
    /// lack the intent guarding part of it.
    pub(crate) fn deliver(&mut self, d: &Dispatch, cfg: &SimConfig) {
        self.counters.events_generated += 1;
        let Some(slots) = self.by_shard.get(d.shard as usize) else {
            return;
        };
        let need = required_intent(d.event);
        let guard = guarding_intent(d.event);
        for &slot in slots {
            let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if need.is_some_and(|bit| s.intents & bit == 0) {
                continue;
            }
            let payload = match &d.restricted {
                Some(r) if s.intents & guard == 0 => r,
                _ => &d.payload,
            };
            push_frame(
                s,
                &mut self.ledger,
                &mut self.counters,
                d.event,
                d.guild_id,
                payload,
                cfg,
            );
        }
    }

    /// Buffers one dispatch into the session `slot`.
    pub(crate) fn push(
        &mut self,
        slot: usize,
        event: &'static str,
        guild_id: Option<u64>,
        d: Arc<str>,
        cfg: &SimConfig,
    ) {
        if let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) {
            push_frame(
                s,
                &mut self.ledger,
                &mut self.counters,
                event,
                guild_id,
                &d,
                cfg,
            );
        }
    }

    /// Stores a new session; returns its slot.
    pub(super) fn insert(&mut self, s: Session) -> usize {
        let (id, shard) = (s.id.clone(), s.shard);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(s);
                slot
            }
            None => {
                self.slots.push(Some(s));
                self.slots.len() - 1
            }
        };
        self.by_id.insert(id, slot);
        if let Some(list) = self.by_shard.get_mut(shard as usize) {
            list.push(slot);
        }
        slot
    }

    /// The slot and session of `sid`.
    pub(crate) fn session_mut(&mut self, sid: &str) -> Option<(usize, &mut Session)> {
        let slot = *self.by_id.get(sid)?;
        self.slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .map(|s| (slot, s))
    }

    /// Copies up to `max` frames after `after` into `out`.
    pub(crate) fn pull(
        &mut self,
        sid: &str,
        conn_id: u64,
        after: u64,
        max: usize,
        keep: usize,
        out: &mut Pulled,
    ) -> Pull {
        let Some((_, s)) = self.session_mut(sid) else {
            return Pull::Detached;
        };
        if s.link.as_ref().is_none_or(|l| l.conn_id != conn_id) {
            return Pull::Detached;
        }
        s.pulled = after;
        let Some(first) = s.frames.front_seq() else {
            return Pull::Ok;
        };
        if after + 1 < first {
            return Pull::Behind;
        }
        let start = (after + 1 - first) as usize;
        s.frames.copy_to(start, max, out);
        if let Some(last) = out.last_seq() {
            s.pulled = last;
        }
        s.trim(keep);
        Pull::Ok
    }

    /// The connection `conn_id` is gone. `end` ends the session (close 1000
    /// or 1001, 4009); otherwise it stays resumable until it expires.
    pub(crate) fn detach(&mut self, sid: &str, conn_id: u64, end: bool, now: Instant) {
        let Some((slot, s)) = self.session_mut(sid) else {
            return;
        };
        if s.link.as_ref().is_none_or(|l| l.conn_id != conn_id) {
            return;
        }
        s.link = None;
        if end {
            self.remove(slot);
        } else {
            s.detached_at = Some(now);
        }
    }

    fn remove(&mut self, slot: usize) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.by_id.remove(&s.id);
        if let Some(list) = self.by_shard.get_mut(s.shard as usize) {
            list.retain(|&x| x != slot);
        }
        self.free.push(slot);
    }

    /// Ends every detached session older than `session_expiry`.
    pub(crate) fn expire(&mut self, cfg: &SimConfig, now: Instant) {
        let expired: Vec<usize> = self
            .sessions()
            .filter(|(_, s)| {
                s.detached_at
                    .is_some_and(|t| now.saturating_duration_since(t) >= cfg.session_expiry)
            })
            .map(|(slot, _)| slot)
            .collect();
        for slot in expired {
            if let Some(Some(s)) = self.slots.get(slot) {
                tracing::info!(session = %s.id, "session expired");
            }
            self.counters.expired_sessions += 1;
            self.remove(slot);
        }
    }

    fn sessions(&self) -> impl Iterator<Item = (usize, &Session)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// How many sessions on `shards` (all when empty) have a connection.
    pub(crate) fn attached(&self, shards: &[u32]) -> usize {
        self.sessions()
            .filter(|(_, s)| attached_on(s, shards))
            .count()
    }

    /// Injects a malformed frame of `kind` into every attached session on
    /// `shards` (all when empty): [`Malformed::InvalidData`] is buffered as
    /// the session's next dispatch, the others go to its connection once.
    pub(crate) fn malformed(&mut self, shards: &[u32], kind: Malformed, cfg: &SimConfig) -> usize {
        if kind != Malformed::InvalidData {
            return self.control(shards, Control::Malformed(kind));
        }
        let mut n = 0;
        for s in self.slots.iter_mut().flatten() {
            if attached_on(s, shards) {
                push_frame(
                    s,
                    &mut self.ledger,
                    &mut self.counters,
                    "MESSAGE_CREATE",
                    None,
                    INVALID_DATA,
                    cfg,
                );
                n += 1;
            }
        }
        n
    }

    /// Sends `ctl` to the connections of every attached session on `shards`
    /// (all shards when empty). Returns how many connections it reached.
    pub(crate) fn control(&self, shards: &[u32], ctl: Control) -> usize {
        self.sessions()
            .filter(|(_, s)| attached_on(s, shards))
            .filter_map(|(_, s)| s.link.as_ref())
            .filter(|l| l.ctl.send(ctl).is_ok())
            .count()
    }
}

/// Whether `s` is on one of `shards` (any shard when empty) and has a
/// connection: the sessions a fault reaches.
fn attached_on(s: &Session, shards: &[u32]) -> bool {
    (shards.is_empty() || shards.contains(&s.shard)) && s.link.is_some()
}

fn push_frame(
    s: &mut Session,
    ledger: &mut LedgerStore,
    counters: &mut Counters,
    event: &'static str,
    guild_id: Option<u64>,
    d: &str,
    cfg: &SimConfig,
) {
    s.seq += 1;
    s.frames.push(s.seq, event, d);
    s.trim(cfg.replay_buffer);
    ledger.record(
        s.shard,
        LedgerRecord {
            session: s.ledger_idx,
            seq: s.seq,
            event,
            guild_id,
        },
    );
    counters.events_dispatched += 1;
    if let Some(l) = &s.link {
        l.notify.notify_one();
    }
}

/// The intent a dispatch needs, if any.
fn required_intent(event: &str) -> Option<u64> {
    let bit = match event {
        "GUILD_MEMBER_ADD" | "GUILD_MEMBER_UPDATE" | "GUILD_MEMBER_REMOVE" => 1,
        "PRESENCE_UPDATE" => 8,
        "MESSAGE_CREATE" => 9,
        "TYPING_START" => 11,
        "GUILD_EMOJIS_UPDATE" => 3,
        "READY" | "RESUMED" | "GUILD_MEMBERS_CHUNK" | "RATE_LIMITED" => return None,
        _ => 0,
    };
    Some(1 << bit)
}

/// The intent without which a session gets a dispatch's restricted payload.
fn guarding_intent(event: &str) -> u64 {
    match event {
        "GUILD_CREATE" => INTENT_GUILD_MEMBERS,
        _ => INTENT_MESSAGE_CONTENT,
    }
}

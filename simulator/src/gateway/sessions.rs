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
//! Sessions live in a slab indexed by slot, so buffering a dispatch costs
//! no hashing and, amortised, no allocation: `d` is copied into the
//! session's byte ring ([`super::replay`]). The session id maps to its slot
//! only for RESUME and pulls.
//!
//! # Algorithm: routing over several shard totals
//! Discord serves sessions of different shard totals at once (a live
//! reshard runs the old N shards beside the new M), so a session is keyed
//! by `(total, shard)`. The core keeps a short list of *routes*, one per
//! total that has at least one session (attached or resumable), created by
//! the first IDENTIFY of that total and dropped with its last session; each
//! route holds, per shard, the slots of its sessions and how many guilds
//! that shard owns. A world dispatch of guild `g` is buffered, for every
//! route, into the sessions of shard [`crate::shard_of`]`(g, total)`, and a
//! dispatch without a guild into shard 0 of every route (Discord sends DMs
//! to shard 0). The common case is one route, so the hot path costs one
//! division more than a single `by_shard` vector did.
//!
//! Every world dispatch gets a logical event id (its number in world
//! order) that the ledger records with each delivery. The `d` bytes of one
//! world event are the same in every session it is buffered into, whatever
//! its total (one `Arc<str>` copied into each ring), except the restricted
//! payload of a session lacking the intent that guards part of it: a
//! downstream dedup that fingerprints `(t, d)` sees one event from two
//! generations as one.
//!
//! Guild counts per shard are kept only for shards with sessions: set from
//! the world when a shard's first session of a route is stored, then moved
//! by joins ([`crate::Membership::Joined`]) and removals. With
//! [`SimConfig::guild_cap`] set, a join that takes a shard over the cap ends
//! every session of that `(total, shard)` with 4011 before the join is
//! buffered, as Discord does; 4011 is fatal, so the session is gone and a
//! RESUME gets op 9.

use super::limits::{IdentifyLimiter, SessionBudget};
use super::protocol::close;
use super::records::{Counters, LedgerRecord, LedgerStore};
use super::replay::{Pulled, Replay};
use crate::config::SimConfig;
use crate::world::{Dispatch, Membership, World, shard_of};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    Reconnect,
    Drop,
    Zombie,
    Malformed(Malformed),
    RequestHeartbeat,
    InvalidSession(bool),
    /// Close with this code and reason (the session was resumed
    /// elsewhere, or ended by the core).
    Close(u16, Arc<str>),
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
    /// The shard total of its IDENTIFY.
    pub total: u32,
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
    /// How long the next RESUME of this session waits before RESUMED
    /// (`/sim/faults/slow-resume`).
    pub slow_resume: Option<std::time::Duration>,
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

/// The sessions of one shard total. See the module documentation.
#[derive(Debug)]
struct Route {
    total: u32,
    /// Per shard id (`total` entries).
    by_shard: Vec<ShardSessions>,
    /// Sessions of this total (the route goes with the last).
    sessions: usize,
}

#[derive(Debug, Clone, Default)]
struct ShardSessions {
    slots: Vec<usize>,
    /// Guilds the shard owns; kept only while `slots` is not empty.
    guilds: u32,
}

/// Which sessions a fault, a count or a control order reaches: those on
/// one of `shards` (every shard when empty) of `total` (every total when
/// `None`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub total: Option<u32>,
    pub shards: &'a [u32],
}

impl<'a> Target<'a> {
    /// `shards` (all when empty) in every total.
    pub(crate) fn shards(shards: &'a [u32]) -> Self {
        Self {
            total: None,
            shards,
        }
    }

    /// `shards` (all when empty) of `total` only.
    pub(crate) fn of(total: u32, shards: &'a [u32]) -> Self {
        Self {
            total: Some(total),
            shards,
        }
    }

    fn matches(&self, s: &Session) -> bool {
        self.total.is_none_or(|t| t == s.total)
            && (self.shards.is_empty() || self.shards.contains(&s.shard))
    }
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
    /// One per connected total, usually one.
    routes: Vec<Route>,
    /// The last logical event id given to a world dispatch.
    last_event: u64,
    guild_cap: Option<u32>,
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
            routes: Vec::new(),
            last_event: 0,
            guild_cap: cfg.guild_cap,
        }
    }

    /// Buffers a world dispatch into every live session, of every
    /// connected total, whose shard owns its guild (shard 0 when it has
    /// none) and whose intents cover it, choosing the restricted payload
    /// for sessions that lack the intent guarding part of it. A join first
    /// ends the sessions it takes over `guild_cap`.
    pub(crate) fn deliver(&mut self, d: &Dispatch, cfg: &SimConfig) {
        self.counters.events_generated += 1;
        self.last_event += 1;
        let event_id = self.last_event;
        if d.membership != Membership::Unchanged {
            self.track_membership(d);
        }
        let need = required_intent(d.event);
        let guard = guarding_intent(d.event);
        for route in &self.routes {
            let shard = d.guild_id.map_or(0, |g| shard_of(g, route.total));
            let Some(on_shard) = route.by_shard.get(shard as usize) else {
                continue;
            };
            for &slot in &on_shard.slots {
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
                    Frame {
                        event: d.event,
                        guild_id: d.guild_id,
                        event_id,
                        d: payload,
                    },
                    cfg,
                );
            }
        }
    }

    /// Moves the guild count of the shard owning a joined or removed guild
    /// in every route; ends, with 4011, the sessions of every shard a join
    /// took over `guild_cap`.
    fn track_membership(&mut self, d: &Dispatch) {
        let Some(g) = d.guild_id else {
            return;
        };
        let mut over = Vec::new();
        for route in &mut self.routes {
            let shard = shard_of(g, route.total);
            let Some(on_shard) = route.by_shard.get_mut(shard as usize) else {
                continue;
            };
            if on_shard.slots.is_empty() {
                continue;
            }
            match d.membership {
                Membership::Joined => on_shard.guilds += 1,
                Membership::Left => on_shard.guilds = on_shard.guilds.saturating_sub(1),
                Membership::Unchanged => {}
            }
            if let Some(cap) = self.guild_cap
                && on_shard.guilds > cap
            {
                let reason: Arc<str> = format!(
                    "sharding required: shard [{shard}, {}] now holds {} guilds, over the cap of {cap}",
                    route.total, on_shard.guilds
                )
                .into();
                over.extend(on_shard.slots.iter().map(|&slot| (slot, reason.clone())));
            }
        }
        for (slot, reason) in over {
            self.end(slot, close::SHARDING_REQUIRED, reason);
        }
    }

    /// Ends the session in `slot` for good: its connection, if any, is
    /// closed with `code` (the session is gone first, so nothing resumes
    /// it).
    fn end(&mut self, slot: usize, code: u16, reason: Arc<str>) {
        if let Some(s) = self.slots.get(slot).and_then(Option::as_ref) {
            tracing::info!(session = %s.id, shard = s.shard, total = s.total, code, %reason, "session ended");
            if let Some(l) = &s.link {
                let _ = l.ctl.send(Control::Close(code, reason));
            }
            if code == close::SHARDING_REQUIRED {
                self.counters.sharding_required_closes += 1;
            }
            self.remove(slot);
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
                Frame {
                    event,
                    guild_id,
                    event_id: 0,
                    d: &d,
                },
                cfg,
            );
        }
    }

    /// Stores a new session whose shard owns `guilds` guilds (creating the
    /// route of its total if needed); returns its slot.
    pub(super) fn insert(&mut self, s: Session, guilds: u32) -> usize {
        let (id, shard, total) = (s.id.clone(), s.shard, s.total);
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
        let route = match self.routes.iter().position(|r| r.total == total) {
            Some(i) => &mut self.routes[i],
            None => {
                tracing::info!(total, "first session of a new shard total");
                self.routes.push(Route {
                    total,
                    by_shard: vec![ShardSessions::default(); total as usize],
                    sessions: 0,
                });
                let last = self.routes.len() - 1;
                &mut self.routes[last]
            }
        };
        route.sessions += 1;
        if let Some(on_shard) = route.by_shard.get_mut(shard as usize) {
            if on_shard.slots.is_empty() {
                on_shard.guilds = guilds;
            }
            on_shard.slots.push(slot);
        }
        slot
    }

    /// The totals with at least one session (attached or resumable),
    /// ascending.
    pub(crate) fn totals(&self) -> Vec<u32> {
        let mut totals: Vec<u32> = self.routes.iter().map(|r| r.total).collect();
        totals.sort_unstable();
        totals
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
        if let Some(i) = self.routes.iter().position(|r| r.total == s.total) {
            let route = &mut self.routes[i];
            if let Some(on_shard) = route.by_shard.get_mut(s.shard as usize) {
                on_shard.slots.retain(|&x| x != slot);
            }
            route.sessions = route.sessions.saturating_sub(1);
            if route.sessions == 0 {
                tracing::info!(total = s.total, "last session of a shard total ended");
                self.routes.swap_remove(i);
            }
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

    /// How many sessions `target` reaches have a connection.
    pub(crate) fn attached(&self, target: Target<'_>) -> usize {
        self.sessions()
            .filter(|(_, s)| attached_to(s, target))
            .count()
    }

    /// Injects a malformed frame of `kind` into every attached session
    /// `target` reaches: [`Malformed::InvalidData`] is buffered as the
    /// session's next dispatch, the others go to its connection once.
    pub(crate) fn malformed(
        &mut self,
        target: Target<'_>,
        kind: Malformed,
        cfg: &SimConfig,
    ) -> usize {
        if kind != Malformed::InvalidData {
            return self.control(target, Control::Malformed(kind));
        }
        let mut n = 0;
        for s in self.slots.iter_mut().flatten() {
            if attached_to(s, target) {
                push_frame(
                    s,
                    &mut self.ledger,
                    &mut self.counters,
                    Frame {
                        event: "MESSAGE_CREATE",
                        guild_id: None,
                        event_id: 0,
                        d: INVALID_DATA,
                    },
                    cfg,
                );
                n += 1;
            }
        }
        n
    }

    /// Holds the next RESUME of every session `target` reaches for `hold`
    /// before RESUMED, as a loaded gateway does; returns how many.
    pub(crate) fn slow_resume(&mut self, target: Target<'_>, hold: std::time::Duration) -> usize {
        let mut n = 0;
        for s in self.slots.iter_mut().flatten() {
            if target.matches(s) {
                s.slow_resume = Some(hold);
                n += 1;
            }
        }
        n
    }

    /// The hold [`Core::slow_resume`] set on `sid`, taken.
    pub(crate) fn take_slow_resume(&mut self, sid: &str) -> Option<std::time::Duration> {
        self.session_mut(sid)?.1.slow_resume.take()
    }

    /// Sends `ctl` to the connections of every attached session `target`
    /// reaches. Returns how many connections it reached.
    pub(crate) fn control(&self, target: Target<'_>, ctl: Control) -> usize {
        self.sessions()
            .filter(|(_, s)| attached_to(s, target))
            .filter_map(|(_, s)| s.link.as_ref())
            .filter(|l| l.ctl.send(ctl.clone()).is_ok())
            .count()
    }
}

/// Whether `target` reaches `s` and it has a connection: the sessions a
/// fault reaches.
fn attached_to(s: &Session, target: Target<'_>) -> bool {
    target.matches(s) && s.link.is_some()
}

/// One dispatch to buffer into a session.
struct Frame<'a> {
    event: &'static str,
    guild_id: Option<u64>,
    /// The logical event id, 0 when it is not a world event.
    event_id: u64,
    d: &'a str,
}

fn push_frame(
    s: &mut Session,
    ledger: &mut LedgerStore,
    counters: &mut Counters,
    f: Frame<'_>,
    cfg: &SimConfig,
) {
    s.seq += 1;
    s.frames.push(s.seq, f.event, f.d);
    s.trim(cfg.replay_buffer);
    ledger.record(
        s.shard,
        LedgerRecord {
            session: s.ledger_idx,
            total: s.total,
            seq: s.seq,
            event: f.event,
            guild_id: f.guild_id,
            event_id: f.event_id,
        },
    );
    counters.events_dispatched += 1;
    if let Some(l) = &s.link {
        l.notify.notify_one();
    }
}

/// The intent a dispatch needs, if any (every simulated dispatch that
/// needs one is a guild's).
fn required_intent(event: &str) -> Option<u64> {
    gateway_protocol::intents::required_intent(event, true)
}

/// The intent without which a session gets a dispatch's restricted payload.
fn guarding_intent(event: &str) -> u64 {
    match event {
        "GUILD_CREATE" => INTENT_GUILD_MEMBERS,
        _ => INTENT_MESSAGE_CONTENT,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::gateway::handshake::Refusal;
    use crate::gateway::protocol::{Identify, Resume};
    use crate::world::EventMix;
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// Every intent a cache needs, MESSAGE_CONTENT included: no restricted
    /// payloads.
    const INTENTS: u64 = 1 | (1 << 1) | (1 << 3) | (1 << 8) | (1 << 9) | (1 << 11) | (1 << 15);

    struct Harness {
        cfg: SimConfig,
        core: Core,
        now: Instant,
        next_conn: u64,
        /// Kept so the links' channels stay open.
        ctl: Vec<mpsc::UnboundedReceiver<Control>>,
    }

    impl Harness {
        fn new(cfg: SimConfig) -> Self {
            let world = World::new(cfg.seed, cfg.world_config()).unwrap();
            let now = Instant::now();
            Self {
                core: Core::new(&cfg, world, now),
                cfg,
                now,
                next_conn: 0,
                ctl: Vec::new(),
            }
        }

        fn link(&mut self) -> Link {
            let (tx, rx) = mpsc::unbounded_channel();
            self.ctl.push(rx);
            self.next_conn += 1;
            Link {
                conn_id: self.next_conn,
                notify: Arc::new(Notify::new()),
                ctl: tx,
            }
        }

        /// IDENTIFY `[shard, total]`, one identify window after the last.
        fn identify(&mut self, shard: u32, total: u32) -> Result<(Arc<str>, u64), Refusal> {
            self.now += self.cfg.identify_window;
            let id: Identify = serde_json::from_value(serde_json::json!({
                "token": self.cfg.token, "intents": INTENTS, "shard": [shard, total],
                "properties": {"os": "t", "browser": "t", "device": "t"},
            }))
            .unwrap();
            let link = self.link();
            let conn = link.conn_id;
            let cfg = self.cfg.clone();
            self.core
                .identify(&id, link, "ws://x/resume", &cfg, self.now)
                .map(|sid| (sid, conn))
        }

        fn emit(&mut self, n: usize) {
            for _ in 0..n {
                let d = self.core.world.next_dispatch();
                self.core.deliver(&d, &self.cfg);
            }
        }

        /// Every frame session `sid` holds, by seq.
        fn frames(&mut self, sid: &str, conn: u64) -> BTreeMap<u64, Vec<u8>> {
            let mut out = Pulled::default();
            let keep = self.cfg.replay_buffer;
            let pulled = self.core.pull(sid, conn, 0, usize::MAX, keep, &mut out);
            assert_eq!(pulled, Pull::Ok);
            out.iter().map(|(seq, _, d)| (seq, d.to_vec())).collect()
        }
    }

    fn cfg() -> SimConfig {
        SimConfig {
            shards: 2,
            guilds: 12,
            identify_window: Duration::from_millis(5),
            ..SimConfig::default()
        }
    }

    #[test]
    fn a_world_event_has_the_same_d_bytes_in_every_total_it_reaches() {
        let mut h = Harness::new(cfg());
        let mut sessions = Vec::new();
        for (shard, total) in [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)] {
            let (sid, conn) = h.identify(shard, total).unwrap();
            sessions.push((sid, conn));
        }
        assert_eq!(h.core.totals(), vec![2, 3]);
        h.emit(500);
        let mut bytes = HashMap::new();
        for (sid, conn) in &sessions {
            for (seq, d) in h.frames(sid, *conn) {
                bytes.insert((sid.to_string(), seq), d);
            }
        }
        let events = h.core.ledger.snapshot().logical_events();
        assert_eq!(events.len(), 500);
        for (id, e) in events {
            let g = e.guild_id.unwrap();
            assert_eq!(e.deliveries.len(), 2, "event {id}");
            for d in &e.deliveries {
                assert_eq!(d.shard, shard_of(g, d.shard_total), "event {id}");
            }
            let [a, b] = [0, 1].map(|i| {
                let d = &e.deliveries[i];
                &bytes[&(d.session_id.clone(), d.seq)]
            });
            assert_eq!(a, b, "event {id} ({})", e.event);
        }
    }

    #[test]
    fn a_total_goes_with_its_last_session_and_stops_receiving() {
        let mut h = Harness::new(cfg());
        let (old, old_conn) = h.identify(0, 2).unwrap();
        let (new, _) = h.identify(0, 4).unwrap();
        h.core.detach(&old, old_conn, false, h.now);
        assert_eq!(h.core.totals(), vec![2, 4], "resumable: still routed");
        h.core.expire(&h.cfg, h.now + h.cfg.session_expiry);
        assert_eq!(h.core.totals(), vec![4]);
        h.emit(50);
        let ledger = h.core.ledger.snapshot();
        assert!(
            ledger
                .logical_events()
                .values()
                .all(|e| e.deliveries.iter().all(|d| d.session_id == *new))
        );
        assert!(
            ledger.shards[&0]
                .iter()
                .filter(|e| e.session_id == *old)
                .all(|e| e.event_id.is_none()),
            "the old session got READY and its snapshots only"
        );
    }

    #[test]
    fn a_join_over_the_guild_cap_ends_a_resumable_session_too() {
        let mut h = Harness::new(SimConfig {
            shards: 1,
            guilds: 3,
            guild_cap: Some(3),
            event_mix: "GUILD_JOIN=1".parse::<EventMix>().unwrap(),
            ..cfg()
        });
        let (sid, conn) = h.identify(0, 1).unwrap();
        h.core.detach(&sid, conn, false, h.now);
        h.emit(1);
        assert_eq!(h.core.counters.sharding_required_closes, 1);
        assert!(h.core.totals().is_empty());
        let resume: Resume = serde_json::from_value(serde_json::json!({
            "token": h.cfg.token, "session_id": &*sid, "seq": 1,
        }))
        .unwrap();
        let link = h.link();
        let cfg = h.cfg.clone();
        assert_eq!(
            h.core.resume(&resume, link, &cfg, h.now).unwrap_err(),
            Refusal::InvalidSession
        );
        // Over the cap at IDENTIFY now: 4 guilds.
        match h.identify(0, 1).unwrap_err() {
            Refusal::Close(r) => {
                assert_eq!(r.code, close::SHARDING_REQUIRED);
                assert!(r.reason.contains("4 guilds"), "{}", r.reason);
            }
            other => panic!("{other:?}"),
        }
        // Two shards hold them within the cap.
        h.identify(0, 2).unwrap();
        h.identify(1, 2).unwrap();
    }

    #[test]
    fn an_attached_session_over_the_cap_is_told_4011_before_it_is_gone() {
        let mut h = Harness::new(SimConfig {
            shards: 1,
            guilds: 2,
            guild_cap: Some(2),
            event_mix: "GUILD_JOIN=1".parse::<EventMix>().unwrap(),
            ..cfg()
        });
        let (sid, conn) = h.identify(0, 1).unwrap();
        h.emit(1);
        let got = h.ctl[0].try_recv().unwrap();
        assert!(
            matches!(got, Control::Close(close::SHARDING_REQUIRED, _)),
            "{got:?}"
        );
        let mut out = Pulled::default();
        assert_eq!(h.core.pull(&sid, conn, 0, 10, 10, &mut out), Pull::Detached);
    }
}

//! The simulated Discord world: guilds, their channels, roles, members and
//! emojis, and the stream of changes to them.
//!
//! This module is pure, synchronous and deterministic: the same seed and
//! configuration give the same guilds and the same sequence of dispatches,
//! byte for byte, with no sockets and no clock. The gateway server drives it;
//! property tests elsewhere can drive it directly to get realistic event logs.
//!
//! # Algorithm
//! Every call to [`World::next_dispatch`] first restores any guild whose
//! automatic outage has lasted `outage_events` events (emitting its
//! GUILD_CREATE), otherwise draws an [`EventKind`] from the [`EventMix`],
//! picks a random available guild and entity, applies the change to the
//! stored state and returns the payload that describes it. A kind that does
//! not apply (no role to delete, last text channel, ...) is redrawn.
//! Entities are stored typed with their JSON text pre-serialised, so a
//! dispatch costs a few string appends, not a JSON tree. The stored state
//! after a dispatch is exactly what a cache that applied every dispatch so
//! far holds ([`World::truth`] parses it back from the same text).

mod changes;
mod config;
mod entities;
mod guild;
mod guilds;
mod json_text;
mod lifecycle;
mod messages;
mod mix;
mod names;
mod snowflake;

pub use config::{MAX_GUILDS_PER_SHARD, WorldConfig};
pub use guild::GuildTruth;
pub use mix::{EventKind, EventMix};
pub use snowflake::{DISCORD_EPOCH_MS, shard_of};

pub(crate) use guild::MemberList;

use crate::error::SimError;
use guild::GuildState;
use guilds::Guilds;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use snowflake::SnowflakeClock;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// The bot user's id (READY's `user`, and a member of every guild).
pub(crate) const BOT_USER_ID: u64 = 1_100_000_000_000_000_001;
/// The bot user's name.
pub(crate) const BOT_USERNAME: &str = "bulwark-sim";

/// One dispatch event: which shard receives it, its name (`t`) and its
/// payload (`d`), serialised once.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    /// The shard of the guild under the world's own shard count
    /// ([`WorldConfig::shards`]). Sessions of another total route by
    /// [`shard_of`] with their own total.
    pub shard: u32,
    /// The gateway event name, e.g. `MESSAGE_CREATE`.
    pub event: &'static str,
    /// The guild the event belongs to.
    pub guild_id: Option<u64>,
    /// The JSON text of `d`.
    pub payload: Arc<str>,
    /// The JSON text of `d` for sessions without the intent that guards part
    /// of it, when that differs: MESSAGE_CREATE without MESSAGE_CONTENT
    /// (`content`, `embeds`, `attachments` and `components` empty, unless
    /// the message mentions the bot) and GUILD_CREATE without GUILD_MEMBERS
    /// (`members` lists only the bot's own member).
    pub restricted: Option<Arc<str>>,
    /// Whether the dispatch changes the set of guilds the bot is in.
    pub membership: Membership,
}

/// How a dispatch changes the set of guilds the bot is in (an outage and
/// its end do not: a guild in an outage is still the bot's, and READY lists
/// it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Membership {
    /// The guild set is unchanged.
    #[default]
    Unchanged,
    /// The bot joined the guild (its GUILD_CREATE).
    Joined,
    /// The bot was removed from the guild (GUILD_DELETE without
    /// `unavailable`).
    Left,
}

impl Dispatch {
    fn new(shard: u32, event: &'static str, guild_id: u64, payload: String) -> Self {
        Self::from_text(shard, event, guild_id, &payload)
    }

    /// A dispatch whose payload is a copy of `payload` (typically the
    /// world's reused text buffer: one allocation, the shared one).
    fn from_text(shard: u32, event: &'static str, guild_id: u64, payload: &str) -> Self {
        Dispatch {
            shard,
            event,
            guild_id: Some(guild_id),
            payload: payload.into(),
            restricted: None,
            membership: Membership::Unchanged,
        }
    }
}

/// The exact state of every guild the bot is in, as a perfect cache holds it.
///
/// Precisely: for each guild, the state obtained by applying, in order, the
/// last GUILD_CREATE snapshot a session of its shard was sent and every
/// dispatch sent after it. Every change is applied to the world and handed
/// to the sessions of its shard in one step, under one lock, so this holds
/// for every shard with a session; a change to a guild whose shard has no
/// session reaches the cache through the snapshot of the shard's next
/// IDENTIFY. Truth read while events are still being generated is a moving
/// target: a client comparing against it must stop the events first, and
/// the simulator must generate nothing once the stop was acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Truth {
    /// Guilds by id (serialised with string keys).
    pub guilds: BTreeMap<u64, GuildTruth>,
}

/// The simulated world. See the module documentation.
#[derive(Debug, Clone)]
pub struct World {
    cfg: WorldConfig,
    rng: StdRng,
    clock: SnowflakeClock,
    /// Guilds by slot and id, and which are available. Unordered:
    /// whatever lists guilds sorts them.
    guilds: Guilds,
    /// (due event number, guild) for automatic outages, in due order.
    auto_restore: VecDeque<(u64, u64)>,
    events: u64,
    /// Reused text buffer payloads are written into before being copied
    /// into their `Arc<str>`.
    buf: String,
    /// When each (user, channel) last started typing (Unix seconds): as on
    /// Discord, one TYPING_START per indicator ([`TYPING_INDICATOR_SECS`]).
    typing: std::collections::HashMap<(u64, u64), u64>,
}

/// How long Discord's typing indicator lasts: a client triggers it again
/// only once it ran out, so one user never starts typing twice in one
/// channel within it (and two TYPING_STARTs never carry the same payload).
pub(crate) const TYPING_INDICATOR_SECS: u64 = 10;

impl World {
    /// Generates the initial guilds for `seed`.
    pub fn new(seed: u64, cfg: WorldConfig) -> Result<Self, SimError> {
        cfg.validate()?;
        let mut w = World {
            rng: StdRng::seed_from_u64(seed),
            clock: SnowflakeClock::new(),
            guilds: Guilds::default(),
            auto_restore: VecDeque::new(),
            events: 0,
            buf: String::with_capacity(4096),
            typing: std::collections::HashMap::new(),
            cfg,
        };
        for i in 0..w.cfg.guilds {
            let shard = i % w.cfg.shards;
            w.add_guild(shard);
        }
        Ok(w)
    }

    /// The configuration the world was built with.
    pub fn config(&self) -> &WorldConfig {
        &self.cfg
    }

    /// Replaces the event mix (takes effect from the next dispatch).
    pub fn set_mix(&mut self, mix: EventMix) -> Result<(), SimError> {
        if mix.total() == 0 {
            return Err(SimError::config(
                "event_mix",
                "at least one weight must be positive",
            ));
        }
        self.cfg.mix = mix;
        Ok(())
    }

    /// Number of dispatches produced so far.
    pub fn events_produced(&self) -> u64 {
        self.events
    }

    /// The shard `guild_id` routes to under the world's own shard count
    /// ([`WorldConfig::shards`]); [`shard_of`] gives it for any total.
    pub fn shard_of(&self, guild_id: u64) -> u32 {
        shard_of(guild_id, self.cfg.shards)
    }

    /// Every guild id the bot is in, ascending.
    pub fn guild_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.guilds.iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    /// The guilds of `shard` with whether each is available, ascending by id
    /// (READY lists them all as unavailable stubs; the available ones then
    /// get a GUILD_CREATE).
    pub fn shard_guilds(&self, shard: u32) -> Vec<(u64, bool)> {
        self.guilds_of(shard, self.cfg.shards)
    }

    /// The guilds shard `shard` of `total` shards owns ([`shard_of`]), with
    /// whether each is available, ascending by id: what READY of a session
    /// identified as `[shard, total]` lists. Any total works, not only the
    /// world's own: Discord serves several totals at once while a bot
    /// reshards.
    pub fn guilds_of(&self, shard: u32, total: u32) -> Vec<(u64, bool)> {
        let mut guilds: Vec<(u64, bool)> = self
            .guilds
            .iter()
            .filter(|&(id, _)| shard_of(id, total) == shard)
            .map(|(id, g)| (id, !g.unavailable))
            .collect();
        guilds.sort_unstable_by_key(|&(id, _)| id);
        guilds
    }

    /// The GUILD_CREATE payload for an available guild, as of now.
    pub fn guild_create(&self, guild_id: u64) -> Option<Arc<str>> {
        self.guild_create_for(guild_id, MemberList::All)
    }

    /// The GUILD_CREATE payload with the member list `list` asks for.
    pub(crate) fn guild_create_for(&self, guild_id: u64, list: MemberList) -> Option<Arc<str>> {
        let g = self.guilds.get(guild_id)?;
        if g.unavailable {
            return None;
        }
        Some(g.create_payload(list).into())
    }

    /// The ground truth: every guild as a perfect cache holds it now.
    pub fn truth(&self) -> Truth {
        Truth {
            guilds: self.guilds.iter().map(|(id, g)| (id, g.truth())).collect(),
        }
    }

    /// Ground truth for one guild.
    pub fn guild_truth(&self, guild_id: u64) -> Option<GuildTruth> {
        self.guilds.get(guild_id).map(GuildState::truth)
    }

    /// The members of an available guild as (user id, username, member
    /// JSON), ascending by id: what GUILD_MEMBERS_CHUNK answers draw from.
    pub(crate) fn members_of(&self, guild_id: u64) -> Option<Vec<(u64, &str, String)>> {
        let g = self.guilds.get(guild_id)?;
        if g.unavailable {
            return None;
        }
        Some(
            g.members_by_id()
                .into_iter()
                .map(|(id, m)| (id, m.username.as_str(), m.json()))
                .collect(),
        )
    }

    /// Produces the next dispatch and applies it to the world.
    pub fn next_dispatch(&mut self) -> Dispatch {
        self.events += 1;
        while let Some(&(due, gid)) = self.auto_restore.front() {
            if due > self.events {
                break;
            }
            self.auto_restore.pop_front();
            if let Some(d) = self.end_outage(gid) {
                return d;
            }
        }
        let step = self.rng.random_range(0..4);
        self.clock.advance(step);
        let total = self.cfg.mix.total();
        for _ in 0..16 {
            let kind = self.cfg.mix.pick(self.rng.random_range(0..total));
            if let Some(d) = self.generate(kind) {
                return d;
            }
        }
        // Nothing in the mix applies (e.g. every guild is unavailable):
        // the bot joins a guild, which always applies.
        self.join()
    }

    fn generate(&mut self, kind: EventKind) -> Option<Dispatch> {
        if kind == EventKind::GuildJoin {
            return Some(self.join());
        }
        let available = self.guilds.available_len();
        if available == 0 {
            return None;
        }
        let slot = self
            .guilds
            .available_slot(self.rng.random_range(0..available))?;
        match kind {
            EventKind::MessageCreate => self.message_create(slot),
            EventKind::TypingStart => self.typing_start(slot),
            EventKind::PresenceUpdate => self.presence_update(slot),
            EventKind::MemberAdd => self.member_add(slot),
            EventKind::MemberUpdate => self.member_update(slot),
            EventKind::MemberRemove => self.member_remove(slot),
            EventKind::ChannelCreate => self.channel_create(slot),
            EventKind::ChannelUpdate => self.channel_update(slot),
            EventKind::ChannelDelete => self.channel_delete(slot),
            EventKind::RoleCreate => self.role_create(slot),
            EventKind::RoleUpdate => self.role_update(slot),
            EventKind::RoleDelete => self.role_delete(slot),
            EventKind::GuildUpdate => self.guild_update(slot),
            EventKind::EmojisUpdate => self.emojis_update(slot),
            EventKind::GuildOutage => {
                if available < 2 {
                    return None;
                }
                let gid = self.guilds.at(slot)?.fields.id;
                let d = self.start_outage(gid)?;
                self.auto_restore
                    .push_back((self.events + self.cfg.outage_events.max(1), gid));
                Some(d)
            }
            EventKind::GuildRemove => self.guild_remove(slot),
            EventKind::GuildJoin => Some(self.join()),
        }
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Option<&'a T> {
    items.get(pick_index(rng, items.len())?)
}

/// A random index below `len` (drawing exactly as [`pick`] does).
fn pick_index(rng: &mut StdRng, len: usize) -> Option<usize> {
    if len == 0 {
        None
    } else {
        Some(rng.random_range(0..len))
    }
}

#[cfg(test)]
mod tests;

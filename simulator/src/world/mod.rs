//! The simulated Discord world: guilds, their channels, roles and members,
//! and the stream of changes to them.
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
//! The stored state after a dispatch is exactly what a cache that applied
//! every dispatch so far holds ([`World::truth`]).

mod entities;
mod guild;
mod mix;
mod snowflake;

pub use guild::GuildTruth;
pub use mix::{EventKind, EventMix};
pub use snowflake::{DISCORD_EPOCH_MS, shard_of};

use crate::error::SimError;
use entities::{GUILD_CATEGORY, GUILD_TEXT, GUILD_VOICE};
use guild::GuildState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use snowflake::SnowflakeClock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

/// Discord's limit of guilds per shard.
pub const MAX_GUILDS_PER_SHARD: u32 = 2500;

/// The shape of the generated world.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    /// Number of shards guilds route to (`(guild_id >> 22) % shards`).
    pub shards: u32,
    /// Guilds at start (spread evenly over the shards).
    pub guilds: u32,
    /// Channels per new guild (one category, the rest mostly text).
    pub channels_per_guild: u32,
    /// Roles per new guild, besides `@everyone`.
    pub roles_per_guild: u32,
    /// Members per new guild (the owner included).
    pub members_per_guild: u32,
    /// Relative frequency of each kind of change.
    pub mix: EventMix,
    /// How many dispatches an automatic outage lasts before the guild's
    /// GUILD_CREATE brings it back.
    pub outage_events: u64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            shards: 1,
            guilds: 10,
            channels_per_guild: 8,
            roles_per_guild: 5,
            members_per_guild: 25,
            mix: EventMix::default(),
            outage_events: 200,
        }
    }
}

impl WorldConfig {
    /// Checks bounds; the error names the offending key.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.shards == 0 {
            return Err(SimError::config("shards", "must be at least 1"));
        }
        if u64::from(self.guilds) > u64::from(self.shards) * u64::from(MAX_GUILDS_PER_SHARD) {
            return Err(SimError::config(
                "guilds",
                format!(
                    "{} guilds over {} shards exceeds Discord's {MAX_GUILDS_PER_SHARD} per shard",
                    self.guilds, self.shards
                ),
            ));
        }
        if self.channels_per_guild < 2 {
            return Err(SimError::config(
                "channels_per_guild",
                "must be at least 2 (a category and a text channel)",
            ));
        }
        if self.members_per_guild == 0 {
            return Err(SimError::config(
                "members_per_guild",
                "must be at least 1 (the owner)",
            ));
        }
        if self.mix.total() == 0 {
            return Err(SimError::config(
                "event_mix",
                "at least one weight must be positive",
            ));
        }
        Ok(())
    }
}

/// One dispatch event: which shard receives it, its name (`t`) and its
/// payload (`d`), serialised once.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub shard: u32,
    /// The gateway event name, e.g. `MESSAGE_CREATE`.
    pub event: &'static str,
    /// The guild the event belongs to.
    pub guild_id: Option<u64>,
    /// The JSON text of `d`.
    pub payload: Arc<str>,
}

/// The exact state of every guild the bot is in, as a perfect cache holds it.
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
    guilds: BTreeMap<u64, GuildState>,
    available: Vec<u64>,
    available_pos: HashMap<u64, usize>,
    /// (due event number, guild) for automatic outages, in due order.
    auto_restore: VecDeque<(u64, u64)>,
    events: u64,
}

impl World {
    /// Generates the initial guilds for `seed`.
    pub fn new(seed: u64, cfg: WorldConfig) -> Result<Self, SimError> {
        cfg.validate()?;
        let mut w = World {
            rng: StdRng::seed_from_u64(seed),
            clock: SnowflakeClock::new(),
            guilds: BTreeMap::new(),
            available: Vec::new(),
            available_pos: HashMap::new(),
            auto_restore: VecDeque::new(),
            events: 0,
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

    /// The shard `guild_id` routes to in this world.
    pub fn shard_of(&self, guild_id: u64) -> u32 {
        shard_of(guild_id, self.cfg.shards)
    }

    /// Every guild id the bot is in, ascending.
    pub fn guild_ids(&self) -> Vec<u64> {
        self.guilds.keys().copied().collect()
    }

    /// The guilds of `shard` with whether each is available, ascending by id
    /// (READY lists them all as unavailable stubs; the available ones then
    /// get a GUILD_CREATE).
    pub fn shard_guilds(&self, shard: u32) -> Vec<(u64, bool)> {
        self.guilds
            .iter()
            .filter(|(_, g)| g.truth.shard == shard)
            .map(|(&id, g)| (id, !g.truth.unavailable))
            .collect()
    }

    /// The GUILD_CREATE payload for an available guild, as of now.
    pub fn guild_create(&self, guild_id: u64) -> Option<Arc<str>> {
        let g = self.guilds.get(&guild_id)?;
        if g.truth.unavailable {
            return None;
        }
        Some(g.create_payload().to_string().into())
    }

    /// The ground truth: every guild as a perfect cache holds it now.
    pub fn truth(&self) -> Truth {
        Truth {
            guilds: self
                .guilds
                .iter()
                .map(|(&id, g)| (id, g.truth.clone()))
                .collect(),
        }
    }

    /// Ground truth for one guild.
    pub fn guild_truth(&self, guild_id: u64) -> Option<&GuildTruth> {
        self.guilds.get(&guild_id).map(|g| &g.truth)
    }

    /// Starts an outage of `guild_id` that lasts until [`World::end_outage`]:
    /// returns its GUILD_DELETE `unavailable:true`, or `None` when the guild
    /// is unknown or already unavailable.
    pub fn start_outage(&mut self, guild_id: u64) -> Option<Dispatch> {
        let g = self.guilds.get_mut(&guild_id)?;
        if g.truth.unavailable {
            return None;
        }
        g.truth.unavailable = true;
        let shard = g.truth.shard;
        self.remove_available(guild_id);
        let d = json!({"id": guild_id.to_string(), "unavailable": true});
        Some(dispatch(shard, "GUILD_DELETE", guild_id, &d))
    }

    /// Ends an outage: returns the guild's GUILD_CREATE, or `None` when the
    /// guild is unknown or available.
    pub fn end_outage(&mut self, guild_id: u64) -> Option<Dispatch> {
        let g = self.guilds.get_mut(&guild_id)?;
        if !g.truth.unavailable {
            return None;
        }
        g.truth.unavailable = false;
        let shard = g.truth.shard;
        let payload: Arc<str> = g.create_payload().to_string().into();
        self.add_available(guild_id);
        Some(Dispatch {
            shard,
            event: "GUILD_CREATE",
            guild_id: Some(guild_id),
            payload,
        })
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
        if self.available.is_empty() {
            return None;
        }
        let gid = self.available[self.rng.random_range(0..self.available.len())];
        match kind {
            EventKind::MessageCreate => self.message_create(gid),
            EventKind::TypingStart => self.typing_start(gid),
            EventKind::PresenceUpdate => self.presence_update(gid),
            EventKind::MemberAdd => self.member_add(gid),
            EventKind::MemberUpdate => self.member_update(gid),
            EventKind::MemberRemove => self.member_remove(gid),
            EventKind::ChannelCreate => self.channel_create(gid),
            EventKind::ChannelUpdate => self.channel_update(gid),
            EventKind::ChannelDelete => self.channel_delete(gid),
            EventKind::RoleCreate => self.role_create(gid),
            EventKind::RoleUpdate => self.role_update(gid),
            EventKind::RoleDelete => self.role_delete(gid),
            EventKind::GuildUpdate => self.guild_update(gid),
            EventKind::GuildOutage => {
                if self.available.len() < 2 {
                    return None;
                }
                let d = self.start_outage(gid)?;
                self.auto_restore
                    .push_back((self.events + self.cfg.outage_events.max(1), gid));
                Some(d)
            }
            EventKind::GuildRemove => self.guild_remove(gid),
            EventKind::GuildJoin => Some(self.join()),
        }
    }

    fn add_available(&mut self, gid: u64) {
        if !self.available_pos.contains_key(&gid) {
            self.available_pos.insert(gid, self.available.len());
            self.available.push(gid);
        }
    }

    fn remove_available(&mut self, gid: u64) {
        if let Some(pos) = self.available_pos.remove(&gid) {
            self.available.swap_remove(pos);
            if let Some(&moved) = self.available.get(pos) {
                self.available_pos.insert(moved, pos);
            }
        }
    }

    /// Creates a guild on `shard` with its channels, roles and members.
    fn add_guild(&mut self, shard: u32) -> u64 {
        let id = self.clock.next_id_for_shard(shard, self.cfg.shards);
        let rng = &mut self.rng;
        let clock = &mut self.clock;
        let joined_at = clock.iso_now();
        let mut roles = BTreeMap::new();
        roles.insert(id, entities::role(id, "@everyone", 0, rng));
        let mut role_ids = Vec::new();
        for pos in 1..=i64::from(self.cfg.roles_per_guild) {
            let rid = clock.next_id();
            roles.insert(rid, entities::role(rid, &entities::name(rng), pos, rng));
            role_ids.push(rid);
        }
        let mut channels = BTreeMap::new();
        let (mut channel_ids, mut text_channels) = (Vec::new(), Vec::new());
        let category = clock.next_id();
        channels.insert(
            category,
            entities::channel(category, id, GUILD_CATEGORY, "text", 0, None),
        );
        channel_ids.push(category);
        for pos in 1..i64::from(self.cfg.channels_per_guild) {
            let cid = clock.next_id();
            let voice = pos > 1 && rng.random_bool(0.2);
            let (kind, name) = if voice {
                (GUILD_VOICE, format!("voice-{pos}"))
            } else {
                (GUILD_TEXT, entities::channel_name(rng))
            };
            channels.insert(
                cid,
                entities::channel(cid, id, kind, &name, pos, Some(category)),
            );
            channel_ids.push(cid);
            if !voice {
                text_channels.push(cid);
            }
        }
        let name = entities::name(rng);
        let mut g = GuildState {
            truth: GuildTruth {
                shard,
                unavailable: false,
                member_count: 0,
                guild: Value::Null,
                channels,
                roles,
                members: BTreeMap::new(),
            },
            text_channels,
            channel_ids,
            role_ids,
            member_ids: Vec::new(),
            owner_id: 0,
            joined_at,
            author_cache: BTreeMap::new(),
        };
        for _ in 0..self.cfg.members_per_guild {
            let uid = self.clock.next_id();
            let member = self.new_member(&g, uid);
            g.put_member(uid, member);
            g.member_ids.push(uid);
        }
        g.owner_id = g.member_ids[0];
        g.truth.member_count = g.member_ids.len() as u64;
        g.truth.guild = entities::guild_fields(id, &name, g.owner_id);
        self.guilds.insert(id, g);
        self.add_available(id);
        id
    }

    fn new_member(&mut self, g: &GuildState, uid: u64) -> Value {
        let user = entities::user(uid, &mut self.rng);
        let roles = self.random_roles(g);
        entities::member(user, &roles, &self.clock.iso_now())
    }

    fn random_roles(&mut self, g: &GuildState) -> Vec<u64> {
        let n = self.rng.random_range(0..=2usize.min(g.role_ids.len()));
        let mut roles: Vec<u64> = (0..n)
            .map(|_| g.role_ids[self.rng.random_range(0..g.role_ids.len())])
            .collect();
        roles.sort_unstable();
        roles.dedup();
        roles
    }

    fn join(&mut self) -> Dispatch {
        let shard = self.rng.random_range(0..self.cfg.shards);
        let gid = self.add_guild(shard);
        let payload: Arc<str> = self.guilds[&gid].create_payload().to_string().into();
        Dispatch {
            shard,
            event: "GUILD_CREATE",
            guild_id: Some(gid),
            payload,
        }
    }

    fn guild_remove(&mut self, gid: u64) -> Option<Dispatch> {
        if self.available.len() < 2 {
            return None;
        }
        let g = self.guilds.remove(&gid)?;
        self.remove_available(gid);
        let d = json!({"id": gid.to_string()});
        Some(dispatch(g.truth.shard, "GUILD_DELETE", gid, &d))
    }

    fn guild_update(&mut self, gid: u64) -> Option<Dispatch> {
        let name = entities::name(&mut self.rng);
        let described = self.rng.random_bool(0.5);
        let g = self.guilds.get_mut(&gid)?;
        g.truth.guild["name"] = json!(name);
        g.truth.guild["description"] = if described {
            json!(format!("the {name} community"))
        } else {
            Value::Null
        };
        let d = g.update_payload();
        Some(dispatch(g.truth.shard, "GUILD_UPDATE", gid, &d))
    }

    fn message_create(&mut self, gid: u64) -> Option<Dispatch> {
        let id = self.clock.next_id();
        let content = entities::sentence(&mut self.rng);
        let ts = self.clock.iso_now();
        let g = self.guilds.get(&gid)?;
        let channel = *pick(&mut self.rng, &g.text_channels)?;
        let author = *pick(&mut self.rng, &g.member_ids)?;
        let (user, partial) = g.author_cache.get(&author)?;
        let mut s = String::with_capacity(256 + user.len() + partial.len());
        let _ = write!(
            s,
            "{{\"type\":0,\"tts\":false,\"timestamp\":\"{ts}\",\"pinned\":false,\
             \"mentions\":[],\"mention_roles\":[],\"mention_everyone\":false,\
             \"member\":{partial},\"id\":\"{id}\",\"flags\":0,\"embeds\":[],\
             \"edited_timestamp\":null,\"content\":\"{content}\",\"components\":[],\
             \"channel_id\":\"{channel}\",\"author\":{user},\"attachments\":[],\
             \"guild_id\":\"{gid}\"}}"
        );
        Some(Dispatch {
            shard: g.truth.shard,
            event: "MESSAGE_CREATE",
            guild_id: Some(gid),
            payload: s.into(),
        })
    }

    fn typing_start(&mut self, gid: u64) -> Option<Dispatch> {
        let secs = self.clock.unix_secs();
        let g = self.guilds.get(&gid)?;
        let channel = *pick(&mut self.rng, &g.text_channels)?;
        let uid = *pick(&mut self.rng, &g.member_ids)?;
        let (user, partial) = g.author_cache.get(&uid)?;
        let rest = partial.strip_prefix('{').unwrap_or("}");
        let s = format!(
            "{{\"user_id\":\"{uid}\",\"timestamp\":{secs},\"member\":{{\"user\":{user},{rest},\
             \"channel_id\":\"{channel}\",\"guild_id\":\"{gid}\"}}"
        );
        Some(Dispatch {
            shard: g.truth.shard,
            event: "TYPING_START",
            guild_id: Some(gid),
            payload: s.into(),
        })
    }

    fn presence_update(&mut self, gid: u64) -> Option<Dispatch> {
        const STATUSES: [&str; 4] = ["online", "idle", "dnd", "offline"];
        let status = STATUSES[self.rng.random_range(0..STATUSES.len())];
        let g = self.guilds.get(&gid)?;
        let uid = *pick(&mut self.rng, &g.member_ids)?;
        let client = if status == "offline" {
            String::from("{}")
        } else {
            format!("{{\"desktop\":\"{status}\"}}")
        };
        let s = format!(
            "{{\"user\":{{\"id\":\"{uid}\"}},\"status\":\"{status}\",\"guild_id\":\"{gid}\",\
             \"client_status\":{client},\"activities\":[]}}"
        );
        Some(Dispatch {
            shard: g.truth.shard,
            event: "PRESENCE_UPDATE",
            guild_id: Some(gid),
            payload: s.into(),
        })
    }

    fn member_add(&mut self, gid: u64) -> Option<Dispatch> {
        let uid = self.clock.next_id();
        let g = self.guilds.get(&gid)?.clone_shallow();
        let member = self.new_member(&g, uid);
        let g = self.guilds.get_mut(&gid)?;
        g.put_member(uid, member.clone());
        g.member_ids.push(uid);
        g.truth.member_count += 1;
        let mut d = member;
        d["guild_id"] = json!(gid.to_string());
        Some(dispatch(g.truth.shard, "GUILD_MEMBER_ADD", gid, &d))
    }

    fn member_update(&mut self, gid: u64) -> Option<Dispatch> {
        let g = self.guilds.get(&gid)?.clone_shallow();
        let uid = *pick(&mut self.rng, &g.member_ids)?;
        let roles = self.random_roles(&g);
        let nick = if self.rng.random_bool(0.6) {
            json!(entities::name(&mut self.rng))
        } else {
            Value::Null
        };
        let g = self.guilds.get_mut(&gid)?;
        let mut member = g.truth.members.get(&uid)?.clone();
        member["nick"] = nick;
        member["roles"] = json!(roles.iter().map(u64::to_string).collect::<Vec<_>>());
        g.put_member(uid, member.clone());
        let mut d = member;
        d["guild_id"] = json!(gid.to_string());
        Some(dispatch(g.truth.shard, "GUILD_MEMBER_UPDATE", gid, &d))
    }

    fn member_remove(&mut self, gid: u64) -> Option<Dispatch> {
        let g = self.guilds.get_mut(&gid)?;
        if g.member_ids.len() < 2 {
            return None;
        }
        let idx = self.rng.random_range(0..g.member_ids.len());
        if g.member_ids[idx] == g.owner_id {
            return None;
        }
        let member = g.remove_member(idx)?;
        g.truth.member_count = g.truth.member_count.saturating_sub(1);
        let d = json!({"guild_id": gid.to_string(), "user": member.get("user")});
        Some(dispatch(g.truth.shard, "GUILD_MEMBER_REMOVE", gid, &d))
    }

    fn channel_create(&mut self, gid: u64) -> Option<Dispatch> {
        let cid = self.clock.next_id();
        let name = entities::channel_name(&mut self.rng);
        let g = self.guilds.get_mut(&gid)?;
        let parent = g.channel_ids.first().copied();
        let pos = g.channel_ids.len() as i64;
        let c = entities::channel(cid, gid, GUILD_TEXT, &name, pos, parent);
        g.truth.channels.insert(cid, c.clone());
        g.channel_ids.push(cid);
        g.text_channels.push(cid);
        Some(dispatch(g.truth.shard, "CHANNEL_CREATE", gid, &c))
    }

    fn channel_update(&mut self, gid: u64) -> Option<Dispatch> {
        let name = entities::channel_name(&mut self.rng);
        let topic = entities::sentence(&mut self.rng);
        let g = self.guilds.get_mut(&gid)?;
        let cid = *pick(&mut self.rng, &g.text_channels)?;
        let c = g.truth.channels.get_mut(&cid)?;
        c["name"] = json!(name);
        c["topic"] = json!(topic);
        let c = c.clone();
        Some(dispatch(g.truth.shard, "CHANNEL_UPDATE", gid, &c))
    }

    fn channel_delete(&mut self, gid: u64) -> Option<Dispatch> {
        let g = self.guilds.get_mut(&gid)?;
        if g.text_channels.len() < 2 {
            return None;
        }
        let idx = self.rng.random_range(0..g.text_channels.len());
        let cid = g.text_channels.swap_remove(idx);
        g.channel_ids.retain(|&c| c != cid);
        let c = g.truth.channels.remove(&cid)?;
        Some(dispatch(g.truth.shard, "CHANNEL_DELETE", gid, &c))
    }

    fn role_create(&mut self, gid: u64) -> Option<Dispatch> {
        let rid = self.clock.next_id();
        let name = entities::name(&mut self.rng);
        let g = self.guilds.get_mut(&gid)?;
        let pos = g.role_ids.len() as i64 + 1;
        let role = entities::role(rid, &name, pos, &mut self.rng);
        g.truth.roles.insert(rid, role.clone());
        g.role_ids.push(rid);
        let d = json!({"guild_id": gid.to_string(), "role": role});
        Some(dispatch(g.truth.shard, "GUILD_ROLE_CREATE", gid, &d))
    }

    fn role_update(&mut self, gid: u64) -> Option<Dispatch> {
        let name = entities::name(&mut self.rng);
        let color: u32 = self.rng.random_range(0..0x00FF_FFFF);
        let g = self.guilds.get_mut(&gid)?;
        let rid = *pick(&mut self.rng, &g.role_ids)?;
        let role = g.truth.roles.get_mut(&rid)?;
        role["name"] = json!(name);
        role["color"] = json!(color);
        role["colors"]["primary_color"] = json!(color);
        let d = json!({"guild_id": gid.to_string(), "role": role.clone()});
        Some(dispatch(g.truth.shard, "GUILD_ROLE_UPDATE", gid, &d))
    }

    fn role_delete(&mut self, gid: u64) -> Option<Dispatch> {
        let g = self.guilds.get_mut(&gid)?;
        let candidates = g.unheld_roles();
        let rid = *pick(&mut self.rng, &candidates)?;
        g.role_ids.retain(|&r| r != rid);
        g.truth.roles.remove(&rid);
        let d = json!({"guild_id": gid.to_string(), "role_id": rid.to_string()});
        Some(dispatch(g.truth.shard, "GUILD_ROLE_DELETE", gid, &d))
    }
}

impl GuildState {
    /// The id lists only (what generation needs to pick from), without the
    /// heavy maps.
    fn clone_shallow(&self) -> GuildState {
        GuildState {
            truth: GuildTruth {
                shard: self.truth.shard,
                unavailable: self.truth.unavailable,
                member_count: self.truth.member_count,
                guild: Value::Null,
                channels: BTreeMap::new(),
                roles: BTreeMap::new(),
                members: BTreeMap::new(),
            },
            text_channels: Vec::new(),
            channel_ids: Vec::new(),
            role_ids: self.role_ids.clone(),
            member_ids: self.member_ids.clone(),
            owner_id: self.owner_id,
            joined_at: String::new(),
            author_cache: BTreeMap::new(),
        }
    }
}

fn dispatch(shard: u32, event: &'static str, guild_id: u64, d: &Value) -> Dispatch {
    Dispatch {
        shard,
        event,
        guild_id: Some(guild_id),
        payload: d.to_string().into(),
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        None
    } else {
        items.get(rng.random_range(0..items.len()))
    }
}

#[cfg(test)]
mod tests;

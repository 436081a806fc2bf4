//! Guilds coming and going: creation (at start and on joins), outages and
//! their end, removals, and the set of available guilds events pick from.

use super::entities::{
    self, Channel, Emoji, GUILD_CATEGORY, GUILD_TEXT, GUILD_VOICE, GuildFields, Member, Role,
};
use super::guild::{GuildState, MemberList};
use super::{BOT_USER_ID, BOT_USERNAME, Dispatch, Membership, World, json_text, names};
use rand::Rng;
use std::collections::BTreeMap;

/// Custom emojis per new guild.
const EMOJIS_PER_GUILD: u32 = 3;

impl World {
    /// Starts an outage of `guild_id` that lasts until [`World::end_outage`]:
    /// returns its GUILD_DELETE `unavailable:true`, or `None` when the guild
    /// is unknown or already unavailable.
    pub fn start_outage(&mut self, guild_id: u64) -> Option<Dispatch> {
        let slot = self.guilds.slot(guild_id)?;
        let g = self.guilds.at_mut(slot)?;
        if g.unavailable {
            return None;
        }
        g.unavailable = true;
        let shard = g.shard;
        self.guilds.set_available(slot, false);
        let mut d = String::with_capacity(48);
        d.push_str("{\"id\":");
        json_text::push_id(&mut d, guild_id);
        d.push_str(",\"unavailable\":true}");
        Some(Dispatch::new(shard, "GUILD_DELETE", guild_id, d))
    }

    /// Ends an outage: returns the guild's GUILD_CREATE, or `None` when the
    /// guild is unknown or available.
    pub fn end_outage(&mut self, guild_id: u64) -> Option<Dispatch> {
        let slot = self.guilds.slot(guild_id)?;
        let g = self.guilds.at_mut(slot)?;
        if !g.unavailable {
            return None;
        }
        g.unavailable = false;
        self.guilds.set_available(slot, true);
        let World { guilds, buf, .. } = self;
        guilds.at(slot).map(|g| create_dispatch(g, buf))
    }

    /// Creates a guild on `shard` (see [`World::new_guild`]); returns its
    /// slot.
    pub(super) fn add_guild(&mut self, shard: u32) -> usize {
        let g = self.new_guild(shard);
        self.guilds.insert(g)
    }

    /// A new guild on `shard` with its channels, roles, emojis and members
    /// (the owner first, then the bot).
    fn new_guild(&mut self, shard: u32) -> GuildState {
        let id = self.clock.next_id_for_shard(shard, self.cfg.shards);
        let rng = &mut self.rng;
        let clock = &mut self.clock;
        let joined_at = clock.iso_now();
        let mut roles = BTreeMap::new();
        roles.insert(id, Role::new(id, "@everyone".to_owned(), 0, rng));
        let mut role_ids = Vec::new();
        for pos in 1..=i64::from(self.cfg.roles_per_guild) {
            let rid = clock.next_id();
            roles.insert(rid, Role::new(rid, names::name(rng), pos, rng));
            role_ids.push(rid);
        }
        let mut channels = BTreeMap::new();
        let (mut channel_ids, mut text_channels) = (Vec::new(), Vec::new());
        let category = clock.next_id();
        channels.insert(
            category,
            Channel::new(category, id, GUILD_CATEGORY, "text".to_owned(), 0, None),
        );
        channel_ids.push(category);
        for pos in 1..i64::from(self.cfg.channels_per_guild) {
            let cid = clock.next_id();
            let voice = pos > 1 && rng.random_bool(0.2);
            let (kind, name) = if voice {
                (GUILD_VOICE, format!("voice-{pos}"))
            } else {
                (GUILD_TEXT, names::channel_name(rng))
            };
            channels.insert(cid, Channel::new(cid, id, kind, name, pos, Some(category)));
            channel_ids.push(cid);
            if !voice {
                text_channels.push(cid);
            }
        }
        let mut emojis = BTreeMap::new();
        for _ in 0..EMOJIS_PER_GUILD {
            let eid = clock.next_id();
            emojis.insert(
                eid,
                Emoji::new(eid, names::emoji_name(rng), rng.random_bool(0.1)),
            );
        }
        let name = names::name(rng);
        let mut g = GuildState {
            shard,
            unavailable: false,
            member_count: 0,
            fields: GuildFields {
                id,
                name,
                description: None,
                owner_id: 0,
            },
            channels,
            roles,
            members: Vec::new(),
            emojis,
            text_channels,
            channel_ids,
            role_ids,
            member_ids: Vec::new(),
            joined_at: joined_at.clone(),
        };
        for i in 0..self.cfg.members_per_guild {
            let uid = self.clock.next_id();
            let member = self.new_member(&g, uid);
            g.add_member(uid, member);
            if i == 0 {
                let bot = Member::new(
                    BOT_USERNAME.to_owned(),
                    &entities::user_json(BOT_USER_ID, BOT_USERNAME, None, true),
                    Vec::new(),
                    joined_at.clone(),
                );
                g.add_member(BOT_USER_ID, bot);
            }
        }
        g.fields.owner_id = g.member_ids[0];
        g.member_count = g.member_ids.len() as u64;
        g
    }

    pub(super) fn new_member(&mut self, g: &GuildState, uid: u64) -> Member {
        let (username, user) = entities::random_user(uid, &mut self.rng);
        let roles = self.random_roles(&g.role_ids);
        Member::new(username, &user, roles, self.clock.iso_now())
    }

    pub(super) fn random_roles(&mut self, role_ids: &[u64]) -> Vec<u64> {
        let n = self.rng.random_range(0..=2usize.min(role_ids.len()));
        let mut roles: Vec<u64> = (0..n)
            .map(|_| role_ids[self.rng.random_range(0..role_ids.len())])
            .collect();
        roles.sort_unstable();
        roles.dedup();
        roles
    }

    pub(super) fn join(&mut self) -> Dispatch {
        let shard = self.rng.random_range(0..self.cfg.shards);
        let g = self.new_guild(shard);
        let mut d = create_dispatch(&g, &mut self.buf);
        d.membership = Membership::Joined;
        self.guilds.insert(g);
        d
    }

    pub(super) fn guild_remove(&mut self, slot: usize) -> Option<Dispatch> {
        if self.guilds.available_len() < 2 {
            return None;
        }
        let g = self.guilds.remove(slot)?;
        let gid = g.fields.id;
        let mut d = String::with_capacity(32);
        d.push_str("{\"id\":");
        json_text::push_id(&mut d, gid);
        d.push('}');
        let mut d = Dispatch::new(g.shard, "GUILD_DELETE", gid, d);
        d.membership = Membership::Left;
        Some(d)
    }
}

/// GUILD_CREATE of an available guild, with its restricted variant.
/// (Written through `buf`: no large intermediate string per payload.)
fn create_dispatch(g: &GuildState, buf: &mut String) -> Dispatch {
    buf.clear();
    g.write_create_payload(buf, MemberList::All);
    let mut d = Dispatch::from_text(g.shard, "GUILD_CREATE", g.fields.id, buf);
    buf.clear();
    g.write_create_payload(buf, MemberList::BotOnly(BOT_USER_ID));
    d.restricted = Some(buf.as_str().into());
    d
}

//! Changes to a guild's contents: members, channels, roles, emojis and the
//! guild's own fields. Each applies the change to the stored entity,
//! re-serialises only that entity, and returns the dispatch describing it.

use super::entities::{Channel, Emoji, GUILD_TEXT, Member, Role};
use super::json_text::{push_array, push_id};
use super::{BOT_USER_ID, Dispatch, World, names, pick, pick_index};
use rand::Rng;

impl World {
    pub(super) fn member_add(&mut self, slot: usize) -> Option<Dispatch> {
        let uid = self.clock.next_id();
        let (username, user) = super::entities::random_user(uid, &mut self.rng);
        let role_ids = self.guilds.at(slot)?.role_ids.clone();
        let roles = self.random_roles(&role_ids);
        let member = Member::new(username, &user, roles, self.clock.iso_now());
        let World { guilds, buf, .. } = self;
        let g = guilds.at_mut(slot)?;
        let gid = g.fields.id;
        buf.clear();
        member.write_with_guild(buf, gid);
        g.add_member(uid, member);
        g.member_count += 1;
        Some(Dispatch::from_text(g.shard, "GUILD_MEMBER_ADD", gid, buf))
    }

    pub(super) fn member_update(&mut self, slot: usize) -> Option<Dispatch> {
        let World {
            guilds, rng, buf, ..
        } = self;
        let g = guilds.at_mut(slot)?;
        let gid = g.fields.id;
        let idx = pick_index(rng, g.member_ids.len())?;
        if g.member_ids[idx] == BOT_USER_ID {
            return None;
        }
        let n = rng.random_range(0..=2usize.min(g.role_ids.len()));
        let mut roles: Vec<u64> = (0..n)
            .map(|_| g.role_ids[rng.random_range(0..g.role_ids.len())])
            .collect();
        roles.sort_unstable();
        roles.dedup();
        let nick = rng.random_bool(0.6).then(|| names::name(rng));
        let m = g.members.get_mut(idx)?;
        m.nick = nick;
        m.roles = roles;
        m.refresh();
        buf.clear();
        m.write_with_guild(buf, gid);
        Some(Dispatch::from_text(
            g.shard,
            "GUILD_MEMBER_UPDATE",
            gid,
            buf,
        ))
    }

    pub(super) fn member_remove(&mut self, slot: usize) -> Option<Dispatch> {
        let World {
            guilds, rng, buf, ..
        } = self;
        let g = guilds.at_mut(slot)?;
        let gid = g.fields.id;
        if g.member_ids.len() < 3 {
            return None;
        }
        let idx = rng.random_range(0..g.member_ids.len());
        let uid = g.member_ids[idx];
        if uid == g.fields.owner_id || uid == BOT_USER_ID {
            return None;
        }
        let (_, member) = g.remove_member(idx)?;
        g.member_count = g.member_count.saturating_sub(1);
        buf.clear();
        buf.push_str("{\"guild_id\":");
        push_id(buf, gid);
        buf.push_str(",\"user\":");
        buf.push_str(member.user());
        buf.push('}');
        Some(Dispatch::from_text(
            g.shard,
            "GUILD_MEMBER_REMOVE",
            gid,
            buf,
        ))
    }

    pub(super) fn channel_create(&mut self, slot: usize) -> Option<Dispatch> {
        let cid = self.clock.next_id();
        let name = names::channel_name(&mut self.rng);
        let g = self.guilds.at_mut(slot)?;
        let gid = g.fields.id;
        let parent = g.channel_ids.first().copied();
        let pos = g.channel_ids.len() as i64;
        let c = Channel::new(cid, gid, GUILD_TEXT, name, pos, parent);
        let d = Dispatch::from_text(g.shard, "CHANNEL_CREATE", gid, &c.json);
        g.channels.insert(cid, c);
        g.channel_ids.push(cid);
        g.text_channels.push(cid);
        Some(d)
    }

    pub(super) fn channel_update(&mut self, slot: usize) -> Option<Dispatch> {
        let name = names::channel_name(&mut self.rng);
        let topic = names::sentence(&mut self.rng);
        let g = self.guilds.at_mut(slot)?;
        let gid = g.fields.id;
        let cid = *pick(&mut self.rng, &g.text_channels)?;
        let c = g.channels.get_mut(&cid)?;
        c.name = name;
        c.topic = Some(topic);
        c.refresh();
        Some(Dispatch::from_text(g.shard, "CHANNEL_UPDATE", gid, &c.json))
    }

    pub(super) fn channel_delete(&mut self, slot: usize) -> Option<Dispatch> {
        let g = self.guilds.at_mut(slot)?;
        let gid = g.fields.id;
        if g.text_channels.len() < 2 {
            return None;
        }
        let idx = self.rng.random_range(0..g.text_channels.len());
        let cid = g.text_channels.swap_remove(idx);
        g.channel_ids.retain(|&c| c != cid);
        let c = g.channels.remove(&cid)?;
        Some(Dispatch::new(g.shard, "CHANNEL_DELETE", gid, c.json))
    }

    pub(super) fn role_create(&mut self, slot: usize) -> Option<Dispatch> {
        let rid = self.clock.next_id();
        let name = names::name(&mut self.rng);
        let g = self.guilds.at_mut(slot)?;
        let gid = g.fields.id;
        let pos = g.role_ids.len() as i64 + 1;
        let role = Role::new(rid, name, pos, &mut self.rng);
        let d = role_payload(gid, &role.json);
        g.roles.insert(rid, role);
        g.role_ids.push(rid);
        Some(Dispatch::new(g.shard, "GUILD_ROLE_CREATE", gid, d))
    }

    pub(super) fn role_update(&mut self, slot: usize) -> Option<Dispatch> {
        let name = names::name(&mut self.rng);
        let color: u32 = self.rng.random_range(0..0x00FF_FFFF);
        let g = self.guilds.at_mut(slot)?;
        let gid = g.fields.id;
        let rid = *pick(&mut self.rng, &g.role_ids)?;
        let role = g.roles.get_mut(&rid)?;
        role.name = name;
        role.color = color;
        role.refresh();
        let d = role_payload(gid, &role.json);
        Some(Dispatch::new(g.shard, "GUILD_ROLE_UPDATE", gid, d))
    }

    pub(super) fn role_delete(&mut self, slot: usize) -> Option<Dispatch> {
        let g = self.guilds.at_mut(slot)?;
        let gid = g.fields.id;
        let candidates = g.unheld_roles();
        let rid = *pick(&mut self.rng, &candidates)?;
        g.role_ids.retain(|&r| r != rid);
        g.roles.remove(&rid);
        let mut d = String::with_capacity(64);
        d.push_str("{\"guild_id\":");
        push_id(&mut d, gid);
        d.push_str(",\"role_id\":");
        push_id(&mut d, rid);
        d.push('}');
        Some(Dispatch::new(g.shard, "GUILD_ROLE_DELETE", gid, d))
    }

    pub(super) fn guild_update(&mut self, slot: usize) -> Option<Dispatch> {
        let name = names::name(&mut self.rng);
        let described = self.rng.random_bool(0.5);
        let g = self.guilds.at_mut(slot)?;
        let gid = g.fields.id;
        g.fields.description = described.then(|| format!("the {name} community"));
        g.fields.name = name;
        Some(Dispatch::new(
            g.shard,
            "GUILD_UPDATE",
            gid,
            g.update_payload(),
        ))
    }

    /// GUILD_EMOJIS_UPDATE: one emoji added, renamed or removed; the
    /// payload carries the complete new list, as Discord's does.
    pub(super) fn emojis_update(&mut self, slot: usize) -> Option<Dispatch> {
        let eid = self.clock.next_id();
        let name = names::emoji_name(&mut self.rng);
        let action = self.rng.random_range(0..3u8);
        let g = self.guilds.at_mut(slot)?;
        let gid = g.fields.id;
        let ids: Vec<u64> = g.emojis.keys().copied().collect();
        match (action, pick(&mut self.rng, &ids)) {
            (0, Some(&old)) => {
                g.emojis.remove(&old);
            }
            (1, Some(&old)) => {
                let animated = g.emojis[&old].animated;
                g.emojis.insert(old, Emoji::new(old, name, animated));
            }
            _ => {
                g.emojis.insert(eid, Emoji::new(eid, name, false));
            }
        }
        let mut d = String::with_capacity(64 + 128 * g.emojis.len());
        d.push_str("{\"guild_id\":");
        push_id(&mut d, gid);
        d.push_str(",\"emojis\":");
        push_array(&mut d, g.emojis.values().map(|e| e.json.as_str()));
        d.push('}');
        Some(Dispatch::new(g.shard, "GUILD_EMOJIS_UPDATE", gid, d))
    }
}

fn role_payload(gid: u64, role_json: &str) -> String {
    let mut d = String::with_capacity(role_json.len() + 48);
    d.push_str("{\"guild_id\":");
    push_id(&mut d, gid);
    d.push_str(",\"role\":");
    d.push_str(role_json);
    d.push('}');
    d
}

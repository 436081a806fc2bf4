//! One guild's state, and the ground-truth view of it.
//!
//! Entities are stored typed with their pre-serialised JSON (see
//! [`super::entities`]); GUILD_CREATE and GUILD_UPDATE are assembled from
//! that text, and [`GuildTruth`] is parsed back from the same text, so the
//! truth a cache is compared against is literally what went over the wire.
//! Id lists beside the maps let the generator pick a random entity in O(1)
//! while the maps keep a deterministic (id) order for snapshots and truth.

use super::entities::{Channel, Emoji, GuildFields, Member, Role};
use super::json_text::push_array;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The exact state a perfect cache holds for one guild.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuildTruth {
    /// The shard the guild routes to.
    pub shard: u32,
    /// True while the guild is in an outage (after GUILD_DELETE
    /// `unavailable:true`, before the GUILD_CREATE that ends it).
    pub unavailable: bool,
    /// The member count (GUILD_CREATE's `member_count`, then +1 per
    /// GUILD_MEMBER_ADD and -1 per GUILD_MEMBER_REMOVE).
    pub member_count: u64,
    /// The guild's own fields as last sent (GUILD_CREATE or GUILD_UPDATE),
    /// without the nested lists (channels, roles, members, emojis, ...).
    pub guild: Value,
    /// Channels by id, each as last sent.
    pub channels: BTreeMap<u64, Value>,
    /// Roles by id, each as last sent.
    pub roles: BTreeMap<u64, Value>,
    /// Members by user id, each as last sent (without `guild_id`).
    pub members: BTreeMap<u64, Value>,
    /// Custom emojis by id, as last sent (GUILD_CREATE, GUILD_UPDATE or
    /// GUILD_EMOJIS_UPDATE, which all carry the complete list).
    pub emojis: BTreeMap<u64, Value>,
}

/// A guild as the world holds it.
///
/// `repr(C)` keeps declaration order: the fields every message, typing and
/// presence event reads come first, in the first two cache lines.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct GuildState {
    pub(crate) shard: u32,
    pub(crate) unavailable: bool,
    pub(crate) member_count: u64,
    /// Text channels (where messages and typing happen).
    pub(crate) text_channels: Vec<u64>,
    /// Member user ids, the owner first and the bot second.
    pub(crate) member_ids: Vec<u64>,
    /// Members, at the same index as their user id in `member_ids` (the
    /// hot paths pick an index and need no lookup; snapshots sort).
    pub(crate) members: Vec<Member>,
    pub(crate) fields: GuildFields,
    pub(crate) channels: BTreeMap<u64, Channel>,
    pub(crate) roles: BTreeMap<u64, Role>,
    pub(crate) emojis: BTreeMap<u64, Emoji>,
    /// All channel ids.
    pub(crate) channel_ids: Vec<u64>,
    /// Role ids except `@everyone`.
    pub(crate) role_ids: Vec<u64>,
    pub(crate) joined_at: String,
}

/// Which members a GUILD_CREATE lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberList {
    /// Every member (sessions with GUILD_MEMBERS).
    All,
    /// Only the bot's own member (Discord also lists members in voice
    /// channels; the world has no voice states).
    BotOnly(u64),
}

impl GuildState {
    /// Adds a member (last in `member_ids`).
    pub(crate) fn add_member(&mut self, user_id: u64, member: Member) {
        self.member_ids.push(user_id);
        self.members.push(member);
    }

    /// Removes the member at `index` of `member_ids`.
    pub(crate) fn remove_member(&mut self, index: usize) -> Option<(u64, Member)> {
        if index >= self.member_ids.len() || self.members.len() != self.member_ids.len() {
            return None;
        }
        Some((
            self.member_ids.swap_remove(index),
            self.members.swap_remove(index),
        ))
    }

    /// The members as (user id, member), ascending by user id.
    pub(crate) fn members_by_id(&self) -> Vec<(u64, &Member)> {
        let mut all: Vec<(u64, &Member)> =
            self.member_ids.iter().copied().zip(&self.members).collect();
        all.sort_unstable_by_key(|&(id, _)| id);
        all
    }

    /// Appends the role list as sent inside GUILD_CREATE / GUILD_UPDATE (by
    /// position), then the emoji list.
    fn write_roles_and_emojis(&self, out: &mut String) {
        let mut roles: Vec<&Role> = self.roles.values().collect();
        roles.sort_by_key(|r| (r.position, r.id));
        out.push_str(",\"roles\":");
        push_array(out, roles.iter().map(|r| r.json.as_str()));
        self.write_emojis(out);
    }

    /// Appends `,"emojis":[...]`.
    pub(crate) fn write_emojis(&self, out: &mut String) {
        out.push_str(",\"emojis\":");
        push_array(out, self.emojis.values().map(|e| e.json.as_str()));
    }

    /// GUILD_UPDATE's payload: guild fields plus roles and emojis.
    pub(crate) fn update_payload(&self) -> String {
        let mut s = String::with_capacity(2048 + 256 * self.roles.len());
        self.fields.write_open(&mut s);
        self.write_roles_and_emojis(&mut s);
        s.push('}');
        s
    }

    /// GUILD_CREATE's payload: the full snapshot, with `members` as
    /// `list` says.
    pub(crate) fn create_payload(&self, list: MemberList) -> String {
        let mut s = String::new();
        self.write_create_payload(&mut s, list);
        s
    }

    /// Appends [`Self::create_payload`] to `s`.
    pub(crate) fn write_create_payload(&self, s: &mut String, list: MemberList) {
        s.reserve(4096 + 300 * (self.channels.len() + self.roles.len()) + 400 * self.members.len());
        self.fields.write_open(s);
        self.write_roles_and_emojis(s);
        s.push_str(",\"joined_at\":");
        super::json_text::push_str(s, &self.joined_at);
        let _ = write!(
            s,
            ",\"large\":{},\"unavailable\":false,\"member_count\":{},\"channels\":",
            self.member_count > 50,
            self.member_count
        );
        push_array(s, self.channels.values().map(|c| c.json.as_str()));
        s.push_str(",\"members\":[");
        let mut first = true;
        for (id, m) in self.members_by_id() {
            if let MemberList::BotOnly(bot) = list
                && id != bot
            {
                continue;
            }
            if !first {
                s.push(',');
            }
            first = false;
            m.write_json(s);
        }
        s.push_str(
            "],\"threads\":[],\"presences\":[],\"voice_states\":[],\"stage_instances\":[],\
             \"guild_scheduled_events\":[],\"soundboard_sounds\":[]}",
        );
    }

    /// Ids of roles no member holds (and so can be deleted without making
    /// member objects stale).
    pub(crate) fn unheld_roles(&self) -> Vec<u64> {
        self.role_ids
            .iter()
            .copied()
            .filter(|rid| !self.members.iter().any(|m| m.roles.contains(rid)))
            .collect()
    }

    /// The ground truth, parsed from the JSON the guild's entities were
    /// last sent as.
    pub(crate) fn truth(&self) -> GuildTruth {
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
        GuildTruth {
            shard: self.shard,
            unavailable: self.unavailable,
            member_count: self.member_count,
            guild: parse(&self.fields.json()),
            channels: self
                .channels
                .iter()
                .map(|(&id, c)| (id, parse(&c.json)))
                .collect(),
            roles: self
                .roles
                .iter()
                .map(|(&id, r)| (id, parse(&r.json)))
                .collect(),
            members: self
                .members_by_id()
                .into_iter()
                .map(|(id, m)| (id, parse(&m.json())))
                .collect(),
            emojis: self
                .emojis
                .iter()
                .map(|(&id, e)| (id, parse(&e.json)))
                .collect(),
        }
    }
}

//! One guild's state, and the ground-truth view of it.
//!
//! Each entity is kept as the JSON object last sent for it, so the truth a
//! cache is compared against is literally what went over the wire. Id lists
//! beside the maps let the generator pick a random entity in O(1) while the
//! maps keep a deterministic (id) order for snapshots and truth.

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

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
}

/// A guild as the world holds it.
#[derive(Debug, Clone)]
pub(crate) struct GuildState {
    pub(crate) truth: GuildTruth,
    /// Text channels (where messages and typing happen).
    pub(crate) text_channels: Vec<u64>,
    /// All channel ids.
    pub(crate) channel_ids: Vec<u64>,
    /// Role ids except `@everyone`.
    pub(crate) role_ids: Vec<u64>,
    /// Member user ids.
    pub(crate) member_ids: Vec<u64>,
    pub(crate) owner_id: u64,
    pub(crate) joined_at: String,
    /// The `user` object and the partial member JSON of each member,
    /// pre-serialised for the hot MESSAGE_CREATE / TYPING_START path.
    pub(crate) author_cache: BTreeMap<u64, (String, String)>,
}

impl GuildState {
    /// Stores a member object and refreshes its pre-serialised forms.
    pub(crate) fn put_member(&mut self, user_id: u64, member: Value) {
        let user = member.get("user").map(Value::to_string).unwrap_or_default();
        let mut partial = member.clone();
        if let Some(o) = partial.as_object_mut() {
            o.remove("user");
        }
        self.author_cache
            .insert(user_id, (user, partial.to_string()));
        self.truth.members.insert(user_id, member);
    }

    pub(crate) fn remove_member(&mut self, index: usize) -> Option<Value> {
        let user_id = self.member_ids.swap_remove(index);
        self.author_cache.remove(&user_id);
        self.truth.members.remove(&user_id)
    }

    /// The role list as sent inside GUILD_CREATE / GUILD_UPDATE (by position).
    fn roles_json(&self) -> Value {
        let mut roles: Vec<&Value> = self.truth.roles.values().collect();
        roles.sort_by_key(|r| r.get("position").and_then(Value::as_i64).unwrap_or(0));
        json!(roles)
    }

    /// GUILD_UPDATE's payload: guild fields plus roles and emojis.
    pub(crate) fn update_payload(&self) -> Value {
        let mut g = self.truth.guild.clone();
        g["roles"] = self.roles_json();
        g["emojis"] = json!([]);
        g
    }

    /// GUILD_CREATE's payload: the full snapshot.
    pub(crate) fn create_payload(&self) -> Value {
        let mut g = self.update_payload();
        g["joined_at"] = json!(self.joined_at);
        g["large"] = json!(self.truth.member_count > 50);
        g["unavailable"] = json!(false);
        g["member_count"] = json!(self.truth.member_count);
        g["channels"] = json!(self.truth.channels.values().collect::<Vec<_>>());
        g["members"] = json!(self.truth.members.values().collect::<Vec<_>>());
        g["threads"] = json!([]);
        g["presences"] = json!([]);
        g["voice_states"] = json!([]);
        g["stage_instances"] = json!([]);
        g["guild_scheduled_events"] = json!([]);
        g["soundboard_sounds"] = json!([]);
        g
    }

    /// Ids of roles no member holds (and so can be deleted without making
    /// member objects stale).
    pub(crate) fn unheld_roles(&self) -> Vec<u64> {
        self.role_ids
            .iter()
            .copied()
            .filter(|rid| {
                let id = rid.to_string();
                !self.truth.members.values().any(|m| {
                    m.get("roles")
                        .and_then(Value::as_array)
                        .is_some_and(|rs| rs.iter().any(|r| r.as_str() == Some(id.as_str())))
                })
            })
            .collect()
    }
}

//! The entities the world sends (users, members, roles, channels, emojis and
//! the guild's own fields), stored typed and kept pre-serialised.
//!
//! Each entity holds the fields the world changes, plus the exact JSON text
//! last sent for it (`json`), rebuilt only when the entity changes. Payloads
//! are assembled from that text, and the ground truth is parsed back from
//! it, so "what a perfect cache holds" and "what was sent" cannot drift
//! apart. Field sets follow discord-api-docs and are checked against
//! twilight-model's deserialisers in the tests.

use super::json_text::{push_bool, push_i64, push_id, push_ids, push_opt_str, push_str, push_u64};
use super::names;
use rand::Rng;
use rand::rngs::StdRng;

/// Channel types the world generates.
pub(crate) const GUILD_TEXT: u8 = 0;
pub(crate) const GUILD_VOICE: u8 = 2;
pub(crate) const GUILD_CATEGORY: u8 = 4;

/// A user object's JSON.
pub(crate) fn user_json(id: u64, username: &str, global_name: Option<&str>, bot: bool) -> String {
    let mut s = String::with_capacity(160);
    s.push_str("{\"id\":");
    push_id(&mut s, id);
    s.push_str(",\"username\":");
    push_str(&mut s, username);
    s.push_str(",\"global_name\":");
    push_opt_str(&mut s, global_name);
    s.push_str(",\"discriminator\":\"0\",\"avatar\":null,\"bot\":");
    push_bool(&mut s, bot);
    s.push_str(",\"public_flags\":0}");
    s
}

/// A random (human) user: its username and its user object's JSON.
pub(crate) fn random_user(id: u64, rng: &mut StdRng) -> (String, String) {
    let mut username = String::with_capacity(24);
    names::push_name(&mut username, rng, '_');
    push_u64(&mut username, u64::from(rng.random_range(0..1000u32)));
    let json = user_json(id, &username, Some(&names::name(rng)), false);
    (username, json)
}

/// A guild member.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The member object without `guild_id`: `{"user":USER,REST` where
    /// REST is the fields after `user`, closing brace included. One
    /// allocation holds both parts the hot payloads copy (the user object,
    /// and REST, which opened with `{` is the partial member of
    /// MESSAGE_CREATE).
    json: String,
    /// Where USER ends in `json`.
    user_end: usize,
    /// The user's username (what member queries match).
    pub username: String,
    pub nick: Option<String>,
    /// Role ids, ascending.
    pub roles: Vec<u64>,
    pub joined_at: String,
}

/// `{"user":`, the start of every member's JSON.
const MEMBER_OPEN: &str = "{\"user\":";

impl Member {
    /// A member whose `user` object's JSON is `user`.
    pub(crate) fn new(username: String, user: &str, roles: Vec<u64>, joined_at: String) -> Self {
        let mut json = String::with_capacity(MEMBER_OPEN.len() + user.len() + 240);
        json.push_str(MEMBER_OPEN);
        json.push_str(user);
        let mut m = Member {
            user_end: json.len(),
            json,
            username,
            nick: None,
            roles,
            joined_at,
        };
        m.refresh();
        m
    }

    /// The `user` object's JSON.
    pub(crate) fn user(&self) -> &str {
        self.json
            .get(MEMBER_OPEN.len()..self.user_end)
            .unwrap_or_default()
    }

    /// The member's fields after `user`, closing brace included: the
    /// partial member is `{` followed by this.
    pub(crate) fn rest(&self) -> &str {
        self.json.get(self.user_end + 1..).unwrap_or_default()
    }

    /// Rebuilds the fields after `user` after a change.
    pub(crate) fn refresh(&mut self) {
        let s = &mut self.json;
        s.truncate(self.user_end);
        s.push_str(",\"nick\":");
        push_opt_str(s, self.nick.as_deref());
        s.push_str(",\"avatar\":null,\"roles\":");
        push_ids(s, &self.roles);
        s.push_str(",\"joined_at\":");
        push_str(s, &self.joined_at);
        s.push_str(
            ",\"premium_since\":null,\"deaf\":false,\"mute\":false,\"flags\":0,\
             \"pending\":false,\"communication_disabled_until\":null}",
        );
    }

    /// The member object (without `guild_id`).
    pub(crate) fn write_json(&self, out: &mut String) {
        out.push_str(&self.json);
    }

    /// The member object with `guild_id` first (GUILD_MEMBER_ADD/UPDATE).
    pub(crate) fn write_with_guild(&self, out: &mut String, guild_id: u64) {
        out.push_str("{\"guild_id\":");
        push_id(out, guild_id);
        out.push(',');
        out.push_str(self.json.get(1..).unwrap_or_default());
    }

    /// The member object as a string.
    pub(crate) fn json(&self) -> String {
        self.json.clone()
    }
}

/// A role.
#[derive(Debug, Clone)]
pub(crate) struct Role {
    pub id: u64,
    pub name: String,
    pub color: u32,
    pub hoist: bool,
    pub position: i64,
    pub mentionable: bool,
    /// The role object's JSON.
    pub json: String,
}

impl Role {
    /// A role at `position`; position 0 is `@everyone`, whose id is the
    /// guild's.
    pub(crate) fn new(id: u64, name: String, position: i64, rng: &mut StdRng) -> Self {
        let color: u32 = if position == 0 {
            0
        } else {
            rng.random_range(0..0x00FF_FFFF)
        };
        let mut r = Role {
            id,
            name,
            color,
            hoist: rng.random_bool(0.2),
            position,
            mentionable: rng.random_bool(0.3),
            json: String::new(),
        };
        r.refresh();
        r
    }

    pub(crate) fn refresh(&mut self) {
        let s = &mut self.json;
        s.clear();
        s.push_str("{\"id\":");
        push_id(s, self.id);
        s.push_str(",\"name\":");
        push_str(s, &self.name);
        let permissions = if self.position == 0 {
            "1071698660929"
        } else {
            "2248473465835073"
        };
        s.push_str(",\"color\":");
        push_u64(s, u64::from(self.color));
        s.push_str(",\"colors\":{\"primary_color\":");
        push_u64(s, u64::from(self.color));
        s.push_str(",\"secondary_color\":null,\"tertiary_color\":null},\"hoist\":");
        push_bool(s, self.hoist);
        s.push_str(",\"icon\":null,\"unicode_emoji\":null,\"position\":");
        push_i64(s, self.position);
        s.push_str(",\"permissions\":\"");
        s.push_str(permissions);
        s.push_str("\",\"managed\":false,\"mentionable\":");
        push_bool(s, self.mentionable);
        s.push_str(",\"flags\":0}");
    }
}

/// A guild channel.
#[derive(Debug, Clone)]
pub(crate) struct Channel {
    pub id: u64,
    pub guild_id: u64,
    pub kind: u8,
    pub name: String,
    pub position: i64,
    pub parent: Option<u64>,
    pub topic: Option<String>,
    /// The channel object's JSON.
    pub json: String,
}

impl Channel {
    pub(crate) fn new(
        id: u64,
        guild_id: u64,
        kind: u8,
        name: String,
        position: i64,
        parent: Option<u64>,
    ) -> Self {
        let mut c = Channel {
            id,
            guild_id,
            kind,
            name,
            position,
            parent,
            topic: None,
            json: String::new(),
        };
        c.refresh();
        c
    }

    pub(crate) fn refresh(&mut self) {
        let s = &mut self.json;
        s.clear();
        s.push_str("{\"id\":");
        push_id(s, self.id);
        s.push_str(",\"type\":");
        push_u64(s, u64::from(self.kind));
        s.push_str(",\"guild_id\":");
        push_id(s, self.guild_id);
        s.push_str(",\"name\":");
        push_str(s, &self.name);
        s.push_str(",\"position\":");
        push_i64(s, self.position);
        s.push_str(",\"permission_overwrites\":[],\"parent_id\":");
        match self.parent {
            Some(p) => push_id(s, p),
            None => s.push_str("null"),
        }
        s.push_str(",\"nsfw\":false,\"flags\":0");
        if self.kind == GUILD_TEXT {
            s.push_str(",\"topic\":");
            push_opt_str(s, self.topic.as_deref());
            s.push_str(",\"rate_limit_per_user\":0,\"last_message_id\":null");
        } else if self.kind == GUILD_VOICE {
            s.push_str(",\"bitrate\":64000,\"user_limit\":0,\"rtc_region\":null");
        }
        s.push('}');
    }
}

/// A custom guild emoji.
#[derive(Debug, Clone)]
pub(crate) struct Emoji {
    pub animated: bool,
    /// The emoji object's JSON.
    pub json: String,
}

impl Emoji {
    pub(crate) fn new(id: u64, name: String, animated: bool) -> Self {
        let mut s = String::with_capacity(128);
        s.push_str("{\"id\":");
        push_id(&mut s, id);
        s.push_str(",\"name\":");
        push_str(&mut s, &name);
        s.push_str(",\"roles\":[],\"require_colons\":true,\"managed\":false,\"animated\":");
        push_bool(&mut s, animated);
        s.push_str(",\"available\":true}");
        Emoji { animated, json: s }
    }
}

/// The guild's own fields (GUILD_UPDATE minus `roles` and `emojis`).
#[derive(Debug, Clone)]
pub(crate) struct GuildFields {
    pub id: u64,
    pub name: String,
    pub description: Option<String>,
    pub owner_id: u64,
}

impl GuildFields {
    /// Writes the fields as an object *without* its closing brace, so the
    /// caller can append the lists GUILD_UPDATE / GUILD_CREATE carry.
    pub(crate) fn write_open(&self, out: &mut String) {
        out.push_str("{\"id\":");
        push_id(out, self.id);
        out.push_str(",\"name\":");
        push_str(out, &self.name);
        out.push_str(
            ",\"icon\":null,\"splash\":null,\"discovery_splash\":null,\"banner\":null,\
             \"description\":",
        );
        push_opt_str(out, self.description.as_deref());
        out.push_str(",\"owner_id\":");
        push_id(out, self.owner_id);
        out.push_str(
            ",\"afk_channel_id\":null,\"afk_timeout\":300,\"widget_enabled\":false,\
             \"widget_channel_id\":null,\"verification_level\":1,\
             \"default_message_notifications\":1,\"explicit_content_filter\":0,\
             \"features\":[],\"mfa_level\":0,\"application_id\":null,\
             \"system_channel_id\":null,\"system_channel_flags\":0,\"rules_channel_id\":null,\
             \"max_presences\":null,\"max_members\":500000,\"vanity_url_code\":null,\
             \"premium_tier\":0,\"premium_subscription_count\":0,\"preferred_locale\":\"en-US\",\
             \"public_updates_channel_id\":null,\"max_video_channel_users\":25,\
             \"max_stage_video_channel_users\":50,\"nsfw_level\":0,\"stickers\":[],\
             \"premium_progress_bar_enabled\":false,\"safety_alerts_channel_id\":null",
        );
    }

    /// The fields as a complete object.
    pub(crate) fn json(&self) -> String {
        let mut s = String::with_capacity(1024);
        self.write_open(&mut s);
        s.push('}');
        s
    }
}

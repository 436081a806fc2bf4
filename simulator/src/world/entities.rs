//! JSON shapes of the entities the world sends: users, members, roles,
//! channels and guild fields, as Discord's gateway v10 documents them.
//!
//! Every builder returns the exact object that goes on the wire, and the world
//! stores that object as ground truth, so "what a perfect cache holds" and
//! "what was sent" cannot drift apart. Field sets follow discord-api-docs and
//! are checked against twilight-model's deserialisers in the tests.

use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Value, json};

const ADJECTIVES: &[&str] = &[
    "quiet", "rapid", "amber", "lucky", "brave", "cosmic", "dusty", "frozen", "golden", "hidden",
    "ivory", "jolly", "mellow", "neon", "odd", "pixel", "rusty", "silver", "tidy", "wild",
];
const NOUNS: &[&str] = &[
    "otter", "forge", "harbor", "lantern", "meadow", "nebula", "orchard", "parrot", "quarry",
    "river", "summit", "tundra", "valley", "walrus", "yard", "zephyr", "falcon", "garden",
    "island", "comet",
];
const TOPICS: &[&str] = &[
    "general",
    "memes",
    "help",
    "announcements",
    "off-topic",
    "music",
    "gaming",
    "art",
    "dev",
    "support",
];
const WORDS: &[&str] = &[
    "hello", "anyone", "around", "tonight", "the", "build", "is", "green", "again", "what", "did",
    "you", "think", "of", "patch", "notes", "lol", "nice", "shard", "ping",
];

/// A display name such as `lucky-otter`.
pub(crate) fn name(rng: &mut StdRng) -> String {
    format!(
        "{}-{}",
        ADJECTIVES[rng.random_range(0..ADJECTIVES.len())],
        NOUNS[rng.random_range(0..NOUNS.len())]
    )
}

/// A text channel name such as `help-3`.
pub(crate) fn channel_name(rng: &mut StdRng) -> String {
    format!(
        "{}-{}",
        TOPICS[rng.random_range(0..TOPICS.len())],
        rng.random_range(0..100u32)
    )
}

/// Message text of 3 to 12 words.
pub(crate) fn sentence(rng: &mut StdRng) -> String {
    let n = rng.random_range(3..=12);
    let mut s = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
}

/// A user object.
pub(crate) fn user(id: u64, rng: &mut StdRng) -> Value {
    let username = format!(
        "{}{}",
        name(rng).replace('-', "_"),
        rng.random_range(0..1000u32)
    );
    json!({
        "id": id.to_string(),
        "username": username,
        "global_name": name(rng),
        "discriminator": "0",
        "avatar": null,
        "bot": false,
        "public_flags": 0,
    })
}

/// A guild member object (without `guild_id`).
pub(crate) fn member(user: Value, roles: &[u64], joined_at: &str) -> Value {
    json!({
        "user": user,
        "nick": null,
        "avatar": null,
        "roles": roles.iter().map(u64::to_string).collect::<Vec<_>>(),
        "joined_at": joined_at,
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "communication_disabled_until": null,
    })
}

/// A role object. `guild_id` is the id of `@everyone`.
pub(crate) fn role(id: u64, name: &str, position: i64, rng: &mut StdRng) -> Value {
    let color: u32 = if position == 0 {
        0
    } else {
        rng.random_range(0..0x00FF_FFFF)
    };
    json!({
        "id": id.to_string(),
        "name": name,
        "color": color,
        "colors": {"primary_color": color, "secondary_color": null, "tertiary_color": null},
        "hoist": rng.random_bool(0.2),
        "icon": null,
        "unicode_emoji": null,
        "position": position,
        "permissions": if position == 0 { "1071698660929" } else { "2248473465835073" },
        "managed": false,
        "mentionable": rng.random_bool(0.3),
        "flags": 0,
    })
}

/// Channel types the world generates.
pub(crate) const GUILD_TEXT: u8 = 0;
pub(crate) const GUILD_VOICE: u8 = 2;
pub(crate) const GUILD_CATEGORY: u8 = 4;

/// A guild channel object.
pub(crate) fn channel(
    id: u64,
    guild_id: u64,
    kind: u8,
    name: &str,
    position: i64,
    parent: Option<u64>,
) -> Value {
    let mut c = json!({
        "id": id.to_string(),
        "type": kind,
        "guild_id": guild_id.to_string(),
        "name": name,
        "position": position,
        "permission_overwrites": [],
        "parent_id": parent.map(|p| p.to_string()),
        "nsfw": false,
        "flags": 0,
    });
    if kind == GUILD_TEXT {
        c["topic"] = Value::Null;
        c["rate_limit_per_user"] = json!(0);
        c["last_message_id"] = Value::Null;
    } else if kind == GUILD_VOICE {
        c["bitrate"] = json!(64000);
        c["user_limit"] = json!(0);
        c["rtc_region"] = Value::Null;
    }
    c
}

/// The guild's own fields, as GUILD_UPDATE sends them minus `roles` and
/// `emojis` (those are added when sending).
pub(crate) fn guild_fields(id: u64, name: &str, owner_id: u64) -> Value {
    json!({
        "id": id.to_string(),
        "name": name,
        "icon": null,
        "splash": null,
        "discovery_splash": null,
        "banner": null,
        "description": null,
        "owner_id": owner_id.to_string(),
        "afk_channel_id": null,
        "afk_timeout": 300,
        "widget_enabled": false,
        "widget_channel_id": null,
        "verification_level": 1,
        "default_message_notifications": 1,
        "explicit_content_filter": 0,
        "features": [],
        "mfa_level": 0,
        "application_id": null,
        "system_channel_id": null,
        "system_channel_flags": 0,
        "rules_channel_id": null,
        "max_presences": null,
        "max_members": 500000,
        "vanity_url_code": null,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "public_updates_channel_id": null,
        "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50,
        "nsfw_level": 0,
        "stickers": [],
        "premium_progress_bar_enabled": false,
        "safety_alerts_channel_id": null,
    })
}

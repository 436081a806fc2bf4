//! READY and GUILD_CREATE built from the versioned cache, in Discord's
//! shapes.
//!
//! The cache keeps what a bot's cache needs (names, owners, channels and
//! their order, roles with permissions, members with nicknames and roles,
//! emojis, presences and voice states when cached), not every field
//! Discord sends; the fields it does not keep get Discord's defaults, so a
//! library's model deserializes. The newest version in a guild's view is
//! returned with it: the floor below which held-back live events are
//! already in the snapshot (see [`crate::session`]).

use envelope::Version;
use serde_json::{Value, json};
use std::collections::HashMap;
use worker::{GuildView, RedisStore, Store, StoreError, User};

/// The id Discord gives the bot's application: for a bot, its user id.
fn id(v: u64) -> Value {
    Value::String(v.to_string())
}

/// A user object.
pub fn user_json(user_id: u64, user: Option<&User>) -> Value {
    match user {
        Some(u) => json!({
            "id": id(user_id), "username": u.name.as_str(), "discriminator": "0",
            "global_name": u.global_name.as_ref().map(|n| n.as_str()),
            "avatar": u.avatar.map(|h| h.to_hex()), "bot": u.bot,
        }),
        None => json!({"id": id(user_id), "username": "unknown", "discriminator": "0",
            "global_name": null, "avatar": null, "bot": false}),
    }
}

/// The newest version anything in the view carries.
fn floor(view: &GuildView) -> Version {
    let mut v = view.core.as_ref().map(|c| c.version).unwrap_or_default();
    let mut see = |x: Version| v = v.max(x);
    view.channels.values().for_each(|c| see(c.version));
    view.roles.values().for_each(|c| see(c.version));
    view.members.values().for_each(|c| see(c.version));
    view.emojis.values().for_each(|c| see(c.version));
    view.presences.values().for_each(|c| see(c.version));
    view.voice_states.values().for_each(|c| see(c.version));
    v
}

/// One member object of `guild`.
async fn member_json(
    store: &RedisStore,
    user_id: u64,
    m: &worker::Member,
) -> Result<Value, StoreError> {
    let user = store.user(user_id).await?;
    Ok(json!({
        "user": user_json(user_id, user.as_ref()),
        "nick": m.nick.as_ref().map(|n| n.as_str()),
        "roles": m.roles.iter().map(|r| id(*r)).collect::<Vec<_>>(),
        "joined_at": null, "deaf": false, "mute": false, "flags": 0, "avatar": null,
        "pending": false,
    }))
}

/// What a session's GUILD_CREATEs may hold: its intents, its IDENTIFY's
/// `large_threshold` and the bot's own user id.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub intents: u64,
    pub large_threshold: u64,
    pub bot_id: u64,
}

/// GUILD_CREATE's `d` for `guild_id` and its floor, or `None` when the
/// cache has no usable guild (never loaded, removed). Members as Discord
/// sends them: the bot's own always; every member only with GUILD_MEMBERS
/// and at most `large_threshold` members; in a larger guild only those
/// online (a cached presence not offline, with GUILD_PRESENCES). So a
/// guild of 100,000 members is not one multi-megabyte payload; bots load
/// the rest with op 8, in chunks. Presences only with GUILD_PRESENCES.
pub async fn guild_create(
    store: &RedisStore,
    guild_id: u64,
    shape: Shape,
) -> Result<Option<(String, Version)>, StoreError> {
    let intents = shape.intents;
    use gateway_protocol::intents::intent;
    let Some(view) = store.guild(guild_id).await? else {
        return Ok(None);
    };
    let Some(core) = &view.core else {
        return Ok(None);
    };
    let core = &core.value;
    let channels: Vec<Value> = view
        .channels
        .iter()
        .map(|(cid, c)| {
            let c = &c.value;
            json!({"id": id(*cid), "type": c.kind, "guild_id": id(guild_id),
                "name": c.name.as_ref().map(|n| n.as_str()), "position": c.position,
                "parent_id": c.parent_id.map(id), "permission_overwrites": [],
                "nsfw": false, "flags": 0})
        })
        .collect();
    let roles: Vec<Value> = view
        .roles
        .iter()
        .map(|(rid, r)| {
            let r = &r.value;
            json!({"id": id(*rid), "name": r.name.as_str(), "color": r.color,
                "hoist": false, "icon": null, "unicode_emoji": null, "position": r.position,
                "permissions": r.permissions.to_string(), "managed": false,
                "mentionable": false, "flags": 0})
        })
        .collect();
    let emojis: Vec<Value> = view
        .emojis
        .iter()
        .map(|(eid, e)| {
            json!({"id": id(*eid), "name": e.value.name.as_ref().map(|n| n.as_str()),
                "roles": [], "require_colons": true, "managed": false,
                "animated": e.value.animated, "available": true})
        })
        .collect();
    let large = u64::try_from(view.member_count).unwrap_or(0) > shape.large_threshold;
    let every = intents & intent::GUILD_MEMBERS != 0 && !large;
    let online = |uid: &u64| {
        intents & intent::GUILD_PRESENCES != 0
            && view
                .presences
                .get(uid)
                .is_some_and(|p| p.value.status != worker::Status::Offline)
    };
    let mut members = Vec::new();
    for (uid, m) in &view.members {
        if every || *uid == shape.bot_id || (large && online(uid)) {
            members.push(member_json(store, *uid, &m.value).await?);
        }
    }
    let presences: Vec<Value> = if intents & intent::GUILD_PRESENCES != 0 {
        view.presences
            .iter()
            .map(|(uid, p)| {
                json!({"user": {"id": id(*uid)}, "guild_id": id(guild_id),
                    "status": p.value.status, "activities": [], "client_status": {}})
            })
            .collect()
    } else {
        Vec::new()
    };
    let voice_states: Vec<Value> = view
        .voice_states
        .iter()
        .map(|(uid, v)| {
            json!({"guild_id": id(guild_id), "channel_id": id(v.value.channel_id),
                "user_id": id(*uid), "session_id": "", "deaf": false, "mute": false,
                "self_deaf": false, "self_mute": false, "self_video": false,
                "suppress": false, "request_to_speak_timestamp": null})
        })
        .collect();
    // Discord's defaults for what the cache does not keep.
    let mut d = json!({
        "splash": null, "discovery_splash": null, "banner": null, "description": null,
        "afk_channel_id": null, "afk_timeout": 300, "widget_enabled": false,
        "widget_channel_id": null, "verification_level": 0,
        "default_message_notifications": 0, "explicit_content_filter": 0, "features": [],
        "mfa_level": 0, "application_id": null, "system_channel_id": null,
        "system_channel_flags": 0, "rules_channel_id": null, "max_presences": null,
        "max_members": 500000, "vanity_url_code": null, "premium_tier": 0,
        "premium_subscription_count": 0, "preferred_locale": "en-US",
        "public_updates_channel_id": null, "max_video_channel_users": 25,
        "max_stage_video_channel_users": 50, "nsfw_level": 0, "stickers": [],
        "premium_progress_bar_enabled": false, "safety_alerts_channel_id": null,
        "threads": [], "stage_instances": [], "guild_scheduled_events": [],
        "soundboard_sounds": [], "joined_at": "1970-01-01T00:00:00.000000+00:00",
    });
    let cached = json!({
        "id": id(guild_id), "name": core.name.as_str(), "icon": core.icon.map(|h| h.to_hex()),
        "owner_id": id(core.owner_id), "roles": roles, "emojis": emojis,
        "large": large, "unavailable": !view.available,
        "member_count": view.member_count.max(0), "members": members, "channels": channels,
        "presences": presences, "voice_states": voice_states,
    });
    if let (Some(d), Value::Object(cached)) = (d.as_object_mut(), cached) {
        d.extend(cached);
    }
    Ok(Some((d.to_string(), floor(&view))))
}

/// What a session's snapshot holds.
pub struct Snapshot {
    pub ready: String,
    pub guilds: Vec<(u64, String)>,
    pub floors: HashMap<u64, Version>,
}

/// READY and the GUILD_CREATEs of the guilds of `[shard, count]`.
pub async fn load(
    store: &RedisStore,
    shard: crate::session::ClientShard,
    intents: u64,
    large_threshold: u64,
    session_id: &str,
    resume_url: &str,
) -> Result<Snapshot, StoreError> {
    let bot = match store.bot_user_id().await? {
        Some(b) => Some((b, store.user(b).await?)),
        None => None,
    };
    let shape = Shape {
        intents,
        large_threshold,
        bot_id: bot.as_ref().map_or(0, |(b, _)| *b),
    };
    let mut guilds = Vec::new();
    let mut floors = HashMap::new();
    for g in store.guild_ids().await? {
        if !shard.owns(Some(g)) {
            continue;
        }
        if let Some((d, v)) = guild_create(store, g, shape).await? {
            guilds.push((g, d));
            floors.insert(g, v);
        }
    }
    let (bot_id, bot_user) = bot.unwrap_or((0, None));
    let ready = json!({
        "v": 10,
        "user": user_json(bot_id, bot_user.as_ref()),
        "guilds": guilds.iter().map(|(g, _)| json!({"id": id(*g), "unavailable": true}))
            .collect::<Vec<_>>(),
        "session_id": session_id,
        "resume_gateway_url": resume_url,
        "shard": [shard.id, shard.count],
        "application": {"id": id(bot_id), "flags": 0},
        "private_channels": [], "presences": [], "relationships": [],
        "guild_join_requests": [], "geo_ordered_rtc_regions": [], "session_type": "normal",
        "auth": {}, "user_settings": {},
    });
    Ok(Snapshot {
        ready: ready.to_string(),
        guilds,
        floors,
    })
}

/// Members per GUILD_MEMBERS_CHUNK, as Discord splits them.
const CHUNK: usize = 1000;

/// The GUILD_MEMBERS_CHUNKs' `d` answering op 8 from the cache, [`CHUNK`]
/// members each: members whose name starts with `query` (every one for
/// `""`), or those of `user_ids`, at most `limit` (0: no limit).
pub async fn member_chunk(
    store: &RedisStore,
    guild_id: u64,
    query: Option<&str>,
    user_ids: &[u64],
    limit: usize,
    nonce: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let view = store.guild(guild_id).await?.unwrap_or_default();
    let mut members = Vec::new();
    let mut not_found = Vec::new();
    if user_ids.is_empty() {
        let query = query.unwrap_or("").to_lowercase();
        for (uid, m) in &view.members {
            if limit > 0 && members.len() >= limit {
                break;
            }
            let user = store.user(*uid).await?;
            let name = user
                .as_ref()
                .map(|u| u.name.to_lowercase())
                .unwrap_or_default();
            let nick = m.value.nick.as_ref().map(|n| n.to_lowercase());
            if query.is_empty()
                || name.starts_with(&query)
                || nick.is_some_and(|n| n.starts_with(&query))
            {
                members.push(member_json(store, *uid, &m.value).await?);
            }
        }
    } else {
        for uid in user_ids {
            match view.members.get(uid) {
                Some(m) => members.push(member_json(store, *uid, &m.value).await?),
                None => not_found.push(id(*uid)),
            }
        }
    }
    let parts: Vec<Vec<Value>> = if members.is_empty() {
        vec![Vec::new()]
    } else {
        members.chunks(CHUNK).map(<[Value]>::to_vec).collect()
    };
    let count = parts.len();
    let mut out = Vec::with_capacity(count);
    for (i, part) in parts.into_iter().enumerate() {
        let mut d = json!({"guild_id": id(guild_id), "members": part, "chunk_index": i,
            "chunk_count": count});
        if i == 0 && !not_found.is_empty() {
            d["not_found"] = Value::Array(std::mem::take(&mut not_found));
        }
        if let Some(n) = nonce {
            d["nonce"] = Value::String(n.to_owned());
        }
        out.push(d.to_string());
    }
    Ok(out)
}

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

use crate::commands::{MemberRequest, Selection};
use envelope::Version;
use futures_util::StreamExt;
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

/// One member object, its user from `users` (fetched together).
fn member_json(user_id: u64, m: &worker::Member, users: &HashMap<u64, User>) -> Value {
    json!({
        "user": user_json(user_id, users.get(&user_id)),
        "nick": m.nick.as_ref().map(|n| n.as_str()),
        "roles": m.roles.iter().map(|r| id(*r)).collect::<Vec<_>>(),
        "joined_at": null, "deaf": false, "mute": false, "flags": 0, "avatar": null,
        "pending": false,
    })
}

/// The member objects of `chosen`, their users read in one round trip.
async fn members_json(
    store: &RedisStore,
    view: &GuildView,
    chosen: &[u64],
) -> Result<Vec<Value>, StoreError> {
    let users = store.users(chosen).await?;
    Ok(chosen
        .iter()
        .filter_map(|uid| {
            view.members
                .get(uid)
                .map(|m| member_json(*uid, &m.value, &users))
        })
        .collect())
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
    let chosen: Vec<u64> = view
        .members
        .keys()
        .copied()
        .filter(|uid| every || *uid == shape.bot_id || (large && online(uid)))
        .collect();
    let members = members_json(store, &view, &chosen).await?;
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

/// Guilds a snapshot reads from the cache at once.
const SNAPSHOT_IN_FLIGHT: usize = 16;

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
    let ours: Vec<u64> = store
        .guild_ids()
        .await?
        .into_iter()
        .filter(|g| shard.owns(Some(*g)))
        .collect();
    // Several guilds in flight on the multiplexed connection: a snapshot
    // is bound by round trips, not by Redis, and `buffered` keeps the
    // order.
    let mut loads = futures_util::stream::iter(ours)
        .map(|g| async move { guild_create(store, g, shape).await.map(|c| (g, c)) })
        .buffered(SNAPSHOT_IN_FLIGHT);
    while let Some(loaded) = loads.next().await {
        if let (g, Some((d, v))) = loaded? {
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
/// members each, when the cache can answer it as Discord would: every
/// asked `user_id` is cached, or, for a query, every member of the guild
/// is (`member_count` of them). `None` otherwise (and for presences, which
/// the cache does not answer): the request goes to the real shard.
pub async fn member_chunks(
    store: &RedisStore,
    req: &MemberRequest,
) -> Result<Option<Vec<String>>, StoreError> {
    if req.presences {
        return Ok(None);
    }
    let Some(view) = store.guild(req.guild_id).await? else {
        return Ok(None);
    };
    let chosen: Vec<u64> = match &req.selection {
        Selection::Users(ids) => {
            if !ids.iter().all(|uid| view.members.contains_key(uid)) {
                return Ok(None);
            }
            ids.clone()
        }
        Selection::Query { prefix, limit } => {
            let complete = view.core.is_some()
                && view.member_count > 0
                && i64::try_from(view.members.len()).unwrap_or(i64::MAX) >= view.member_count;
            if !complete {
                return Ok(None);
            }
            let all: Vec<u64> = view.members.keys().copied().collect();
            let users = if prefix.is_empty() {
                HashMap::new()
            } else {
                store.users(&all).await?
            };
            let name_matches = |uid: &u64| {
                let name = users.get(uid).map(|u| u.name.to_lowercase());
                let nick = view
                    .members
                    .get(uid)
                    .and_then(|m| m.value.nick.as_ref())
                    .map(|n| n.to_lowercase());
                name.is_some_and(|n| n.starts_with(prefix.as_str()))
                    || nick.is_some_and(|n| n.starts_with(prefix.as_str()))
            };
            all.into_iter()
                .filter(|uid| prefix.is_empty() || name_matches(uid))
                .take(limit.unwrap_or(usize::MAX))
                .collect()
        }
    };
    let members = members_json(store, &view, &chosen).await?;
    let parts: Vec<Vec<Value>> = if members.is_empty() {
        vec![Vec::new()]
    } else {
        members.chunks(CHUNK).map(<[Value]>::to_vec).collect()
    };
    let count = parts.len();
    let mut out = Vec::with_capacity(count);
    for (i, part) in parts.into_iter().enumerate() {
        let mut d = json!({"guild_id": id(req.guild_id), "members": part, "chunk_index": i,
            "chunk_count": count});
        if let Some(n) = &req.nonce {
            d["nonce"] = Value::String(n.clone());
        }
        out.push(d.to_string());
    }
    Ok(Some(out))
}

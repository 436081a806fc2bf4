//! Gateway payloads (`d`) to [`Mutation`]s and a [`Class`].
//!
//! Only the fields the cache keeps are read; unknown fields are skipped by
//! serde without being built. Strings borrow from the message when they have
//! no escapes. An event the cache does not track is not parsed at all. The
//! simple deltas (channel, role and member updates) go through a scanner
//! first (`gateway/scan.rs`), with serde as the fallback for anything it
//! does not fully understand.
//!
//! This module holds the payload shapes and what they convert to;
//! [`parse`] (in `gateway/parse.rs`) picks the shape by event name.

use crate::model::{
    Channel, Emoji, Entity, GuildCore, ImageHash, Member, Name, Presence, Role, Status, User,
    UserVersion, VoiceState,
};
use crate::mutation::Mutation;
use crate::snowflake::{id, id_list, opt_id, u64_string};
use serde::Deserialize;
use std::borrow::Cow;

mod parse;
mod scan;
pub use parse::parse;
pub(crate) use parse::parse_into;

/// A payload the worker cannot use: invalid JSON or missing/mistyped fields.
#[derive(Debug, thiserror::Error)]
#[error("invalid {event} payload: {source}")]
pub struct PayloadError {
    pub event: String,
    #[source]
    pub source: serde_json::Error,
}

/// Optional collections. Presences and voice states are off by default:
/// they are the bulk of gateway traffic and memory for large bots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheOptions {
    pub presences: bool,
    pub voice_states: bool,
}

/// What an event means for the bot, before deduplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Joined,
    Available {
        initial: bool,
    },
    Unavailable,
    Removed,
    /// Any other event, forwarded as is.
    Other,
}

/// The parse of one event. For guild lifecycle events the guild-level
/// mutation (snapshot, removal, availability) is the last one.
#[derive(Debug, Default)]
pub struct Parsed {
    pub mutations: Vec<Mutation>,
    pub class: Option<Class>,
    pub guild_id: Option<u64>,
}

type Str<'a> = Cow<'a, str>;

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct UserP<'a> {
    #[serde(deserialize_with = "id")]
    id: u64,
    #[serde(borrow)]
    username: Str<'a>,
    #[serde(default, borrow)]
    global_name: Option<Str<'a>>,
    #[serde(default, borrow)]
    avatar: Option<Str<'a>>,
    #[serde(default)]
    bot: bool,
}

#[derive(Deserialize)]
struct MemberP<'a> {
    #[serde(borrow)]
    user: UserP<'a>,
    #[serde(default, borrow)]
    nick: Option<Str<'a>>,
    #[serde(deserialize_with = "id_list")]
    roles: Box<[u64]>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct ChannelP<'a> {
    #[serde(deserialize_with = "id")]
    id: u64,
    #[serde(default, deserialize_with = "opt_id")]
    guild_id: Option<u64>,
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default)]
    position: i32,
    #[serde(default, deserialize_with = "opt_id")]
    parent_id: Option<u64>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RoleP<'a> {
    #[serde(deserialize_with = "id")]
    id: u64,
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(deserialize_with = "u64_string")]
    permissions: u64,
    #[serde(default)]
    position: i32,
    #[serde(default)]
    color: u32,
}

#[derive(Deserialize)]
struct EmojiP<'a> {
    #[serde(deserialize_with = "id")]
    id: u64,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default)]
    animated: bool,
}

#[derive(Deserialize)]
struct PresenceP {
    user: UserIdP,
    #[serde(default, deserialize_with = "opt_id")]
    guild_id: Option<u64>,
    status: Status,
}

#[derive(Deserialize)]
struct VoiceP {
    #[serde(default, deserialize_with = "opt_id")]
    guild_id: Option<u64>,
    #[serde(default, deserialize_with = "opt_id")]
    channel_id: Option<u64>,
    #[serde(deserialize_with = "id")]
    user_id: u64,
    #[serde(default)]
    self_mute: bool,
    #[serde(default)]
    self_deaf: bool,
    #[serde(default)]
    mute: bool,
    #[serde(default)]
    deaf: bool,
    #[serde(default)]
    self_stream: bool,
    #[serde(default)]
    self_video: bool,
}

impl PresenceP {
    /// `(user id, presence or None when offline)`.
    fn entry(self) -> (u64, Option<Entity>) {
        let e = (self.status != Status::Offline).then_some(Entity::Presence(Presence {
            status: self.status,
        }));
        (self.user.id, e)
    }
}

impl VoiceP {
    /// `(user id, voice state or None when disconnected)`.
    fn entry(self) -> (u64, Option<Entity>) {
        let flags = u8::from(self.self_mute)
            | u8::from(self.self_deaf) << 1
            | u8::from(self.mute) << 2
            | u8::from(self.deaf) << 3
            | u8::from(self.self_stream) << 4
            | u8::from(self.self_video) << 5;
        let e = self
            .channel_id
            .map(|channel_id| Entity::Voice(VoiceState { channel_id, flags }));
        (self.user_id, e)
    }
}

#[derive(Deserialize)]
struct GuildP<'a> {
    #[serde(deserialize_with = "id")]
    id: u64,
    #[serde(default)]
    unavailable: Option<bool>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, deserialize_with = "opt_id")]
    owner_id: Option<u64>,
    #[serde(default, borrow)]
    icon: Option<Str<'a>>,
    #[serde(default)]
    member_count: Option<u64>,
    #[serde(default, borrow)]
    channels: Vec<ChannelP<'a>>,
    #[serde(default, borrow)]
    threads: Vec<ChannelP<'a>>,
    #[serde(default, borrow)]
    roles: Vec<RoleP<'a>>,
    #[serde(default, borrow)]
    members: Vec<MemberP<'a>>,
    #[serde(default, borrow)]
    emojis: Vec<EmojiP<'a>>,
    #[serde(default)]
    presences: Vec<PresenceP>,
    #[serde(default)]
    voice_states: Vec<VoiceP>,
}

#[derive(Deserialize)]
struct ReadyP<'a> {
    guilds: Vec<ReadyGuildP>,
    #[serde(default, borrow)]
    user: Option<UserP<'a>>,
}

#[derive(Deserialize)]
struct ReadyGuildP {
    #[serde(deserialize_with = "id")]
    id: u64,
}

#[derive(Deserialize)]
struct GuildIdP {
    #[serde(deserialize_with = "id")]
    guild_id: u64,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RoleEventP<'a> {
    #[serde(deserialize_with = "id")]
    guild_id: u64,
    #[serde(borrow)]
    role: RoleP<'a>,
}

#[derive(Deserialize)]
struct RoleDeleteP {
    #[serde(deserialize_with = "id")]
    guild_id: u64,
    #[serde(deserialize_with = "id")]
    role_id: u64,
}

/// GUILD_MEMBER_ADD/UPDATE: a member object plus `guild_id`. The member's
/// fields are repeated rather than `#[serde(flatten)]`ed: flatten buffers
/// the whole payload into an intermediate tree (an allocation per map and
/// list) before deserialising it again, which cost more than the rest of
/// the event's processing.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct MemberEventP<'a> {
    #[serde(deserialize_with = "id")]
    guild_id: u64,
    #[serde(borrow)]
    user: UserP<'a>,
    #[serde(default, borrow)]
    nick: Option<Str<'a>>,
    #[serde(deserialize_with = "id_list")]
    roles: Box<[u64]>,
}

impl<'a> MemberEventP<'a> {
    fn member(self) -> MemberP<'a> {
        MemberP {
            user: self.user,
            nick: self.nick,
            roles: self.roles,
        }
    }
}

#[derive(Deserialize)]
struct MemberRemoveP {
    #[serde(deserialize_with = "id")]
    guild_id: u64,
    user: UserIdP,
}

#[derive(Deserialize)]
struct UserIdP {
    #[serde(deserialize_with = "id")]
    id: u64,
}

#[derive(Deserialize)]
struct ChunkP<'a> {
    #[serde(deserialize_with = "id")]
    guild_id: u64,
    #[serde(borrow)]
    members: Vec<MemberP<'a>>,
}

#[derive(Deserialize)]
struct EmojisP<'a> {
    #[serde(deserialize_with = "id")]
    guild_id: u64,
    #[serde(borrow)]
    emojis: Vec<EmojiP<'a>>,
}

fn boxed(s: Str<'_>) -> Name {
    Name::from(&*s)
}

impl UserP<'_> {
    fn into_mutation(self, version: UserVersion) -> Mutation {
        Mutation::User {
            id: self.id,
            version,
            user: User {
                name: boxed(self.username),
                global_name: self.global_name.map(boxed),
                avatar: self.avatar.as_deref().and_then(ImageHash::parse),
                bot: self.bot,
            },
        }
    }
}

impl MemberP<'_> {
    /// `(user id, member, user mutation)`.
    fn split(self, uv: UserVersion) -> (u64, Entity, Mutation) {
        let member = Member {
            nick: self.nick.map(boxed),
            roles: self.roles,
        };
        let uid = self.user.id;
        (uid, Entity::Member(member), self.user.into_mutation(uv))
    }
}

impl ChannelP<'_> {
    fn entity(self) -> (u64, Entity) {
        (
            self.id,
            Entity::Channel(Channel {
                kind: self.kind,
                name: self.name.map(boxed),
                position: self.position,
                parent_id: self.parent_id,
            }),
        )
    }
}

impl RoleP<'_> {
    fn entity(self) -> (u64, Entity) {
        (
            self.id,
            Entity::Role(Role {
                name: boxed(self.name),
                permissions: self.permissions,
                position: self.position,
                color: self.color,
            }),
        )
    }
}

impl EmojiP<'_> {
    fn entity(self) -> (u64, Entity) {
        (
            self.id,
            Entity::Emoji(Emoji {
                name: self.name.map(boxed),
                animated: self.animated,
            }),
        )
    }
}

impl GuildP<'_> {
    /// The guild's own fields; `name` and `owner_id` are required (only an
    /// unavailable stub may omit them).
    fn core(&self) -> Result<GuildCore, serde_json::Error> {
        use serde::de::Error;
        let (Some(name), Some(owner_id)) = (&self.name, self.owner_id) else {
            return Err(serde_json::Error::custom(
                "a guild object needs `name` and `owner_id`",
            ));
        };
        Ok(GuildCore {
            name: Name::from(&**name),
            owner_id,
            icon: self.icon.as_deref().and_then(ImageHash::parse),
        })
    }
}

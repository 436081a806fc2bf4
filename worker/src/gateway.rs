//! Gateway payloads (`d`) to [`Mutation`]s and a [`Class`].
//!
//! Only the fields the cache keeps are read; unknown fields are skipped by
//! serde without being built. Strings borrow from the message when they have
//! no escapes. An event the cache does not track is not parsed at all.

use crate::model::{
    Channel, Emoji, Entity, GuildCore, ImageHash, Kind, Member, Name, Presence, Role, Status, User,
    UserVersion, VoiceState,
};
use crate::mutation::{Mutation, Snapshot};
use crate::snowflake::{id, id_list, opt_id, u64_string};
use envelope::{Event, GuildCreateKind};
use serde::Deserialize;
use std::borrow::Cow;

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

/// Deserialises a payload. The UTF-8 check runs once over the whole
/// payload and the parse then reads a `&str`: `serde_json::from_slice`
/// validates every string it meets instead, which cost about a tenth of a
/// simple event's processing.
fn json<'a, T: Deserialize<'a>>(d: &'a [u8]) -> Result<T, serde_json::Error> {
    let text = std::str::from_utf8(d).map_err(|e| {
        use serde::de::Error;
        serde_json::Error::custom(format!("payload is not UTF-8: {e}"))
    })?;
    serde_json::from_str(text)
}

/// A put, or a delete when the entity is gone (offline, disconnected).
fn entry_mutation(
    guild_id: u64,
    version: envelope::Version,
    at_ms: u64,
    kind: Kind,
    (id, entity): (u64, Option<Entity>),
) -> Mutation {
    match entity {
        Some(entity) => Mutation::Put {
            guild_id,
            version,
            id,
            entity,
        },
        None => Mutation::Delete {
            guild_id,
            version,
            kind,
            id,
            at_ms,
        },
    }
}

/// Parses `event` of shard `shard_id` into cache mutations and a class.
pub fn parse(
    shard_id: u32,
    event: &Event<'_>,
    options: &CacheOptions,
) -> Result<Parsed, PayloadError> {
    let version = event.version();
    let uv = UserVersion {
        received_at: event.received_at,
        shard_id,
        version,
    };
    let at_ms = event.received_at;
    let err = |source| PayloadError {
        event: event.t.to_owned(),
        source,
    };
    let d = event.d;
    let mut out = Parsed {
        guild_id: event.guild_id,
        class: Some(Class::Other),
        ..Parsed::default()
    };
    let m = &mut out.mutations;
    match event.t {
        "GUILD_CREATE" => {
            let g: GuildP<'_> = json(d).map_err(err)?;
            out.guild_id = Some(g.id);
            if g.unavailable == Some(true) {
                m.push(Mutation::Availability {
                    guild_id: g.id,
                    version,
                    available: false,
                });
                out.class = None;
                return Ok(out);
            }
            out.class = Some(match event.guild_create {
                Some(GuildCreateKind::Joined) => Class::Joined,
                Some(GuildCreateKind::Available) => Class::Available { initial: false },
                // The decoder guarantees a marker; `None` only in hand-built
                // events, where "initial" is the answer that never lies.
                Some(GuildCreateKind::Initial) | None => Class::Available { initial: true },
            });
            let core = g.core().map_err(err)?;
            let members_complete = g.member_count.is_some_and(|n| n == g.members.len() as u64);
            let mut entities = Vec::with_capacity(
                g.channels.len() + g.threads.len() + g.roles.len() + g.members.len(),
            );
            entities.extend(g.channels.into_iter().map(ChannelP::entity));
            entities.extend(g.threads.into_iter().map(ChannelP::entity));
            entities.extend(g.roles.into_iter().map(RoleP::entity));
            entities.extend(g.emojis.into_iter().map(EmojiP::entity));
            if options.presences {
                entities.extend(g.presences.into_iter().filter_map(|p| {
                    let (id, e) = p.entry();
                    e.map(|e| (id, e))
                }));
            }
            if options.voice_states {
                entities.extend(g.voice_states.into_iter().filter_map(|v| {
                    let (id, e) = v.entry();
                    e.map(|e| (id, e))
                }));
            }
            let mut users = Vec::with_capacity(g.members.len());
            for member in g.members {
                let (uid, entity, user) = member.split(uv);
                entities.push((uid, entity));
                users.push(user);
            }
            // The snapshot goes last: the processor announces the guild on
            // its result, so a failure before it is retried, never lost.
            m.extend(users);
            m.push(Mutation::Snapshot(Box::new(Snapshot {
                guild_id: g.id,
                version,
                core,
                member_count: g.member_count,
                // Presences list only online members, and all of them only
                // when all members are listed.
                complete: [
                    true,
                    true,
                    members_complete,
                    true,
                    options.presences && members_complete,
                    options.voice_states,
                ],
                entities,
            })));
        }
        "READY" => {
            // Every guild of a fresh session is unavailable until its
            // GUILD_CREATE (which has a higher seq) arrives; cached guilds
            // of the shard it does not list are gone.
            let r: ReadyP<'_> = json(d).map_err(err)?;
            let bot_id = r.user.as_ref().map(|u| u.id);
            if let Some(user) = r.user {
                m.push(user.into_mutation(uv));
            }
            m.push(Mutation::Ready {
                shard_id,
                version,
                at_ms,
                guilds: r.guilds.into_iter().map(|g| g.id).collect(),
                bot_id,
            });
        }
        "GUILD_UPDATE" => {
            let g: GuildP<'_> = json(d).map_err(err)?;
            out.guild_id = Some(g.id);
            m.push(Mutation::Core {
                guild_id: g.id,
                version,
                core: g.core().map_err(err)?,
            });
        }
        "GUILD_DELETE" => {
            let g: GuildP<'_> = json(d).map_err(err)?;
            out.guild_id = Some(g.id);
            if g.unavailable == Some(true) {
                m.push(Mutation::Availability {
                    guild_id: g.id,
                    version,
                    available: false,
                });
                out.class = Some(Class::Unavailable);
            } else {
                m.push(Mutation::Remove {
                    guild_id: g.id,
                    version,
                    at_ms,
                });
                out.class = Some(Class::Removed);
            }
        }
        "CHANNEL_CREATE" | "CHANNEL_UPDATE" | "THREAD_CREATE" | "THREAD_UPDATE" => {
            let c: ChannelP<'_> = json(d).map_err(err)?;
            if let Some(guild_id) = c.guild_id {
                out.guild_id = Some(guild_id);
                let (id, entity) = c.entity();
                m.push(Mutation::Put {
                    guild_id,
                    version,
                    id,
                    entity,
                });
            }
        }
        "CHANNEL_DELETE" | "THREAD_DELETE" => {
            let c: ChannelP<'_> = json(d).map_err(err)?;
            if let Some(guild_id) = c.guild_id {
                out.guild_id = Some(guild_id);
                m.push(Mutation::Delete {
                    guild_id,
                    version,
                    kind: Kind::Channel,
                    id: c.id,
                    at_ms,
                });
            }
        }
        "GUILD_ROLE_CREATE" | "GUILD_ROLE_UPDATE" => {
            let r: RoleEventP<'_> = json(d).map_err(err)?;
            out.guild_id = Some(r.guild_id);
            let (id, entity) = r.role.entity();
            m.push(Mutation::Put {
                guild_id: r.guild_id,
                version,
                id,
                entity,
            });
        }
        "GUILD_ROLE_DELETE" => {
            let r: RoleDeleteP = json(d).map_err(err)?;
            out.guild_id = Some(r.guild_id);
            m.push(Mutation::Delete {
                guild_id: r.guild_id,
                version,
                kind: Kind::Role,
                id: r.role_id,
                at_ms,
            });
        }
        "GUILD_MEMBER_ADD" | "GUILD_MEMBER_UPDATE" => {
            let p: MemberEventP<'_> = json(d).map_err(err)?;
            let guild_id = p.guild_id;
            out.guild_id = Some(guild_id);
            let (id, entity, user) = p.member().split(uv);
            m.push(Mutation::Put {
                guild_id,
                version,
                id,
                entity,
            });
            m.push(user);
            if event.t == "GUILD_MEMBER_ADD" {
                m.push(Mutation::MemberDelta {
                    guild_id,
                    version,
                    delta: 1,
                });
            }
        }
        "GUILD_MEMBER_REMOVE" => {
            let p: MemberRemoveP = json(d).map_err(err)?;
            out.guild_id = Some(p.guild_id);
            m.push(Mutation::Delete {
                guild_id: p.guild_id,
                version,
                kind: Kind::Member,
                id: p.user.id,
                at_ms,
            });
            m.push(Mutation::MemberDelta {
                guild_id: p.guild_id,
                version,
                delta: -1,
            });
        }
        "GUILD_MEMBERS_CHUNK" => {
            let p: ChunkP<'_> = json(d).map_err(err)?;
            out.guild_id = Some(p.guild_id);
            for member in p.members {
                let (id, entity, user) = member.split(uv);
                m.push(Mutation::Put {
                    guild_id: p.guild_id,
                    version,
                    id,
                    entity,
                });
                m.push(user);
            }
        }
        "PRESENCE_UPDATE" if options.presences => {
            let p: PresenceP = json(d).map_err(err)?;
            if let Some(guild_id) = p.guild_id {
                out.guild_id = Some(guild_id);
                m.push(entry_mutation(
                    guild_id,
                    version,
                    at_ms,
                    Kind::Presence,
                    p.entry(),
                ));
            }
        }
        "VOICE_STATE_UPDATE" if options.voice_states => {
            let v: VoiceP = json(d).map_err(err)?;
            if let Some(guild_id) = v.guild_id {
                out.guild_id = Some(guild_id);
                m.push(entry_mutation(
                    guild_id,
                    version,
                    at_ms,
                    Kind::Voice,
                    v.entry(),
                ));
            }
        }
        "GUILD_EMOJIS_UPDATE" => {
            let p: EmojisP<'_> = json(d).map_err(err)?;
            out.guild_id = Some(p.guild_id);
            m.push(Mutation::List {
                guild_id: p.guild_id,
                version,
                kind: Kind::Emoji,
                items: p.emojis.into_iter().map(EmojiP::entity).collect(),
            });
        }
        _ => {
            if out.guild_id.is_none() {
                // Cheap: only `guild_id` is read, the rest is skipped.
                out.guild_id = json::<GuildIdP>(d).ok().map(|g| g.guild_id);
            }
        }
    }
    Ok(out)
}

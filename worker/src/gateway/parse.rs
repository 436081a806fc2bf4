//! Event name to mutations: [`parse`] reads each tracked event's payload
//! (through the shapes in the parent module) into the store's writes and
//! the event's [`Class`].

use super::{
    CacheOptions, ChannelP, ChunkP, Class, EmojiP, EmojisP, GuildIdP, GuildP, MemberEventP,
    MemberRemoveP, Parsed, PayloadError, PresenceP, ReadyP, RoleDeleteP, RoleEventP, RoleP, VoiceP,
    scan,
};
use crate::model::{Entity, Kind, UserVersion};
use crate::mutation::{Mutation, Snapshot};
use envelope::{Event, GuildCreateKind, ShardRef};
use serde::Deserialize;

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

/// Deserialises a simple-delta payload through its `scan` fast path, or
/// with serde ([`json`]) when the scanner does not answer (which includes
/// every invalid payload, so errors are serde's).
fn scanned<'a, T: Deserialize<'a>>(
    d: &'a [u8],
    scan: fn(&'a str) -> Option<T>,
) -> Result<T, serde_json::Error> {
    if let Ok(text) = std::str::from_utf8(d)
        && let Some(v) = scan(text)
    {
        return Ok(v);
    }
    json(d)
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

/// Parses `event` of `shard` into cache mutations and a class.
pub fn parse(
    shard: ShardRef,
    event: &Event<'_>,
    options: &CacheOptions,
) -> Result<Parsed, PayloadError> {
    let mut out = Parsed::default();
    parse_into(shard, event, options, &mut out)?;
    Ok(out)
}

/// [`parse`] into `out`, overwriting it but reusing its mutation vector's
/// allocation (the processor parses a message's events through one).
pub(crate) fn parse_into(
    shard: ShardRef,
    event: &Event<'_>,
    options: &CacheOptions,
    out: &mut Parsed,
) -> Result<(), PayloadError> {
    let version = event.version();
    let uv = UserVersion {
        received_at: event.received_at,
        shard_id: shard.id,
        version,
    };
    let at_ms = event.received_at;
    let err = |source| PayloadError {
        event: event.t.to_owned(),
        source,
    };
    let d = event.d;
    out.mutations.clear();
    out.guild_id = event.guild_id;
    out.class = Some(Class::Other);
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
                return Ok(());
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
                shard,
                version,
                at_ms,
                guilds: r.guilds.into_iter().map(|g| g.id).collect(),
                bot_id,
                handover: false,
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
            let c: ChannelP<'_> = scanned(d, scan::channel).map_err(err)?;
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
            let c: ChannelP<'_> = scanned(d, scan::channel).map_err(err)?;
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
            let r: RoleEventP<'_> = scanned(d, scan::role_event).map_err(err)?;
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
            let p: MemberEventP<'_> = scanned(d, scan::member_event).map_err(err)?;
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
    Ok(())
}

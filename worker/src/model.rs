//! The cached entities, reduced to the fields a bot reads, in compact form.
//!
//! Why not keep the gateway JSON: a `serde_json::Value` per member costs
//! hundreds of bytes and several heap blocks. Here ids are `u64`, names are
//! a [`Name`] (short ones inline, no heap block), role lists a sorted `Box<[u64]>`, and
//! image hashes 16 bytes inline. A member without a nick costs its role
//! slice and nothing else on the heap.

pub use crate::name::Name;
use envelope::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which per-guild collection an entity belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Channel,
    Role,
    Member,
    Emoji,
    /// Optional (`CacheOptions::presences`), keyed by user id.
    Presence,
    /// Optional (`CacheOptions::voice_states`), keyed by user id.
    Voice,
}

/// Number of [`Kind`]s.
pub const KINDS: usize = 6;

impl Kind {
    pub(crate) const ALL: [Kind; KINDS] = [
        Kind::Channel,
        Kind::Role,
        Kind::Member,
        Kind::Emoji,
        Kind::Presence,
        Kind::Voice,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A guild's own fields (GUILD_CREATE / GUILD_UPDATE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuildCore {
    pub name: Name,
    pub owner_id: u64,
    pub icon: Option<ImageHash>,
}

/// A guild channel or thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Discord channel type (0 text, 2 voice, 4 category, 11 public thread...).
    pub kind: u8,
    pub name: Option<Name>,
    pub position: i32,
    pub parent_id: Option<u64>,
}

/// A guild role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: Name,
    pub permissions: u64,
    pub position: i32,
    pub color: u32,
}

/// A guild member; the user's own fields live once in the user table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub nick: Option<Name>,
    /// Sorted, deduplicated role ids.
    pub roles: Box<[u64]>,
}

/// A user, shared by all the guilds the bot sees them in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: Name,
    pub global_name: Option<Name>,
    pub avatar: Option<ImageHash>,
    pub bot: bool,
}

/// A custom emoji.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emoji {
    pub name: Option<Name>,
    pub animated: bool,
}

/// A member's presence, reduced to its status (activities are large and
/// change constantly; a bot that needs them should subscribe to the events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub status: Status,
}

/// Online status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Idle,
    Dnd,
    Offline,
    Invisible,
}

/// A member's voice connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceState {
    pub channel_id: u64,
    /// Bits: 1 self_mute, 2 self_deaf, 4 mute, 8 deaf, 16 streaming,
    /// 32 video.
    pub flags: u8,
}

/// An image hash (`a_` + 32 hex digits for animated ones) in 17 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageHash {
    pub animated: bool,
    pub bytes: [u8; 16],
}

impl ImageHash {
    /// Parses Discord's hex form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let (animated, hex) = match s.strip_prefix("a_") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if hex.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self { animated, bytes })
    }

    /// Discord's text form: 32 hex digits, `a_` first when animated.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(34);
        if self.animated {
            s.push_str("a_");
        }
        for b in self.bytes {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// One cached entity of a guild collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entity {
    Channel(Channel),
    Role(Role),
    Member(Member),
    Emoji(Emoji),
    Presence(Presence),
    Voice(VoiceState),
}

impl Entity {
    /// The collection it belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            Entity::Channel(_) => Kind::Channel,
            Entity::Role(_) => Kind::Role,
            Entity::Member(_) => Kind::Member,
            Entity::Emoji(_) => Kind::Emoji,
            Entity::Presence(_) => Kind::Presence,
            Entity::Voice(_) => Kind::Voice,
        }
    }
}

/// Version of a user record. Users are shared across guilds, hence across
/// shards, whose `(epoch, seq)` are not comparable; so the sharder's receive
/// time orders them first and `(shard_id, version)` breaks ties. This is a
/// total order fixed by the events themselves, so the last write is the
/// same whatever the delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UserVersion {
    pub received_at: u64,
    pub shard_id: u32,
    pub version: Version,
}

/// A value with the version of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    pub version: Version,
    pub value: T,
}

/// Everything the cache holds about one guild, in a canonical form: live
/// entities only (no tombstones), sorted by id. Both stores produce it, so
/// tests compare stores and orders with `==`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuildView {
    /// `None` until a GUILD_CREATE or GUILD_UPDATE was applied.
    pub core: Option<Versioned<GuildCore>>,
    pub available: bool,
    /// Latest snapshot's member_count plus the joins and leaves after it.
    pub member_count: i64,
    pub channels: BTreeMap<u64, Versioned<Channel>>,
    pub roles: BTreeMap<u64, Versioned<Role>>,
    pub members: BTreeMap<u64, Versioned<Member>>,
    pub emojis: BTreeMap<u64, Versioned<Emoji>>,
    /// Empty unless presences are cached.
    pub presences: BTreeMap<u64, Versioned<Presence>>,
    /// Empty unless voice states are cached.
    pub voice_states: BTreeMap<u64, Versioned<VoiceState>>,
}

impl GuildView {
    pub(crate) fn insert(&mut self, id: u64, version: Version, entity: Entity) {
        match entity {
            Entity::Channel(value) => {
                self.channels.insert(id, Versioned { version, value });
            }
            Entity::Role(value) => {
                self.roles.insert(id, Versioned { version, value });
            }
            Entity::Member(value) => {
                self.members.insert(id, Versioned { version, value });
            }
            Entity::Emoji(value) => {
                self.emojis.insert(id, Versioned { version, value });
            }
            Entity::Presence(value) => {
                self.presences.insert(id, Versioned { version, value });
            }
            Entity::Voice(value) => {
                self.voice_states.insert(id, Versioned { version, value });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_hashes() {
        let h = ImageHash::parse("a_0123456789abcdef0123456789ABCDEF");
        assert_eq!(
            h.map(|h| (h.animated, h.bytes[0], h.bytes[15])),
            Some((true, 0x01, 0xef))
        );
        assert_eq!(ImageHash::parse("0123"), None);
        assert_eq!(ImageHash::parse("zz23456789abcdef0123456789abcdef"), None);
        assert_eq!(ImageHash::parse("é123456789abcdef0123456789abcde"), None);
    }

    #[test]
    fn user_versions_order_by_time_then_shard_then_version() {
        let a = UserVersion {
            received_at: 2,
            shard_id: 0,
            version: Version::new(1, 1),
        };
        let b = UserVersion {
            received_at: 1,
            shard_id: 9,
            version: Version::new(9, 9),
        };
        assert!(a > b);
    }
}

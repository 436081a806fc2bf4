//! The store's write vocabulary: what a gateway event does to the cache.
//!
//! Every mutation is a pure function of one event (never of the cache's
//! current state), and each one is applied by the store as a versioned
//! last-writer-wins step. That is what makes the cache independent of
//! delivery order: the final value of every register is the write with the
//! highest version among all writes it received.
//!
//! # Algorithm
//!
//! * Entities (channels, roles, members, emojis) are registers keyed by
//!   `(guild, kind, id)`, holding `(version, live value | tombstone)`. A write
//!   applies if its version is above the stored one and not below the
//!   collection's floor.
//! * A collection's floor is the version of the last event that listed the
//!   collection completely (a GUILD_CREATE, GUILD_EMOJIS_UPDATE, or a
//!   removal). Raising the floor deletes every entity stored below it: an
//!   entity absent from a complete list at version `s` is deleted at `s`,
//!   and writes older than `s` can never resurrect it. Entities newer than
//!   the snapshot survive it.
//! * GUILD_CREATE members are a complete list only when their number equals
//!   `member_count` (small guilds); for large guilds they are upserts.
//! * member_count = the last snapshot's count plus one delta (+1 join, -1
//!   leave) per membership event newer than that snapshot, kept in a map
//!   keyed by the event's version. A duplicate maps to the same key, an
//!   event older than the snapshot is already included in its count, and a
//!   newer snapshot drops the deltas it includes; so the count is exact
//!   under any order and any duplication.
//! * READY lists every guild of its shard. A guild of that shard it does not
//!   list was removed while the worker missed the GUILD_DELETE (a session
//!   gap): it is removed as of READY's version, whether the cache saw the
//!   guild before READY or sees it (through an older write) after.

use crate::model::{Entity, GuildCore, KINDS, Kind, User, UserVersion};
use envelope::{ShardRef, Version};

/// A complete GUILD_CREATE.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub guild_id: u64,
    pub version: Version,
    pub core: GuildCore,
    pub member_count: Option<u64>,
    /// Which kinds (by `Kind::index`) are listed completely.
    pub complete: [bool; KINDS],
    pub entities: Vec<(u64, Entity)>,
}

/// One versioned write to the cache.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// GUILD_CREATE: replace the guild's subtree as of `version`.
    Snapshot(Box<Snapshot>),
    /// The complete list of one kind (GUILD_EMOJIS_UPDATE).
    List {
        guild_id: u64,
        version: Version,
        kind: Kind,
        items: Vec<(u64, Entity)>,
    },
    /// GUILD_DELETE without `unavailable`: the bot left or was removed.
    Remove {
        guild_id: u64,
        version: Version,
        at_ms: u64,
    },
    /// READY of a fresh session: the shard's complete guild list, and the
    /// bot's own user id (never collected, see `collect_users`).
    Ready {
        shard: ShardRef,
        version: Version,
        at_ms: u64,
        guilds: Vec<u64>,
        bot_id: Option<u64>,
        /// The new shard total of a live reshard loading guilds the old
        /// total serves: their availability is left as it is (they are not
        /// unavailable until the new GUILD_CREATE; the old total serves
        /// them). Set by the processor inside a reshard window.
        handover: bool,
    },
    /// GUILD_DELETE `unavailable: true` (false) or GUILD_CREATE (true).
    Availability {
        guild_id: u64,
        version: Version,
        available: bool,
    },
    /// GUILD_UPDATE.
    Core {
        guild_id: u64,
        version: Version,
        core: GuildCore,
    },
    /// Create or update one entity.
    Put {
        guild_id: u64,
        version: Version,
        id: u64,
        entity: Entity,
    },
    /// Delete one entity, leaving a tombstone stamped `at_ms`.
    Delete {
        guild_id: u64,
        version: Version,
        kind: Kind,
        id: u64,
        at_ms: u64,
    },
    /// GUILD_MEMBER_ADD (+1) or GUILD_MEMBER_REMOVE (-1).
    MemberDelta {
        guild_id: u64,
        version: Version,
        delta: i8,
    },
    /// A user's own fields, from any member or user object.
    User {
        id: u64,
        version: UserVersion,
        user: User,
    },
}

//! The store trait: one versioned cache, two implementations
//! ([`MemoryStore`](crate::MemoryStore) and [`RedisStore`](crate::RedisStore)).
//!
//! Each call is one atomic, idempotent step (see [`crate::Mutation`] for the
//! rules), so several consumers, redeliveries and replays may interleave
//! freely: the end state depends only on the set of events applied.

use crate::model::{GuildView, Member, User, Versioned};
use crate::mutation::Mutation;
use envelope::{ReshardMarker, ShardRef, Version};
use std::future::Future;

/// A store operation that failed (not a stale write: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("corrupt cache entry {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0}")]
    Unsupported(&'static str),
}

/// How many sequence numbers above the lowest one still tracked a shard's
/// delivery window remembers; older redeliveries count as duplicates.
pub const DELIVERY_WINDOW: usize = 1024;

/// Member-count deltas kept per guild above its last snapshot. Beyond it
/// the older half is folded into the count, and a membership event that
/// arrives later than that many newer ones of its guild is ignored.
pub const MAX_COUNT_DELTAS: usize = 4096;

/// One store call of an event's processing. A message's steps run as one
/// batch, in order (see [`Store::run`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// [`Store::admit`]; its result is always `true`.
    Admit { shard: ShardRef, guild_id: u64 },
    /// [`Store::apply`].
    Apply(Mutation),
    /// [`Store::first_delivery`].
    FirstDelivery { shard: ShardRef, version: Version },
    /// Whether the guild-level lifecycle write at `version` (a snapshot,
    /// removal or availability change) was once applied as the guild's
    /// newest, i.e. announced. Asked for redelivered messages only, to
    /// re-derive an announcement whose output a crash may have lost.
    Announced { guild_id: u64, version: Version },
    /// [`Store::gap_join`]: whether the snapshot at `version` (applied just
    /// before in the same batch) was a join the gateway never marked.
    GapJoin { guild_id: u64, version: Version },
    /// A reshard marker: kept as the window when it is newer than the one
    /// held; `true` only the first time this phase of this reshard is seen
    /// (every partition carries the marker; it is announced once).
    Marker(ReshardMarker),
    /// In a reshard window: `true` when this copy of a guild event is the
    /// first of its fingerprint, `false` when it pairs with an unmatched
    /// copy from another shard total (see [`crate::reshard`]).
    Pair {
        guild_id: u64,
        total: u32,
        fingerprint: u64,
        at_ms: u64,
    },
}

/// A versioned cache of guilds, their channels, roles, members and emojis,
/// and users.
pub trait Store: Send + Sync + 'static {
    /// Applies one mutation; `true` when it changed the cache, `false` when
    /// every write in it was stale or a duplicate. For a snapshot or a
    /// removal, `true` means it is the newest of its guild (the guild floor
    /// moved): that is what decides whether a join is announced.
    fn apply(&self, mutation: Mutation) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records that event `version` of `shard` was delivered; `true` only
    /// the first time (within [`DELIVERY_WINDOW`] of the shard's session).
    fn first_delivery(
        &self,
        shard: ShardRef,
        version: Version,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Called before the writes of an event of `shard` about `guild_id`.
    /// The first time a guild is seen, applies the removal implied by the
    /// shard's latest READY not listing it (see [`Mutation::Ready`]).
    fn admit(
        &self,
        shard: ShardRef,
        guild_id: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Runs `steps` in order, one result per step. Each step stays one
    /// atomic, idempotent operation; a batch only saves round trips (the
    /// Redis store pipelines it, the memory store takes its lock once). On
    /// an error some steps may have run: the caller retries the whole
    /// batch, which idempotence makes safe.
    fn run(&self, steps: Vec<Step>) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(steps.len());
            for step in steps {
                out.push(match step {
                    Step::Admit { shard, guild_id } => {
                        self.admit(shard, guild_id).await?;
                        true
                    }
                    Step::Apply(m) => self.apply(m).await?,
                    Step::FirstDelivery { shard, version } => {
                        self.first_delivery(shard, version).await?
                    }
                    Step::Announced { guild_id, version } => {
                        self.announced(guild_id, version).await?
                    }
                    Step::GapJoin { guild_id, version } => self.gap_join(guild_id, version).await?,
                    Step::Marker(m) => self.reshard_mark(m).await?,
                    Step::Pair {
                        guild_id,
                        total,
                        fingerprint,
                        at_ms,
                    } => self.pair(guild_id, total, fingerprint, at_ms).await?,
                });
            }
            Ok(out)
        }
    }

    /// The guild's canonical view; `None` when unknown or removed.
    fn guild(
        &self,
        guild_id: u64,
    ) -> impl Future<Output = Result<Option<GuildView>, StoreError>> + Send;

    /// Drops users no cached member refers to, except the bot's own user
    /// (from READY) and users written at or after `cutoff_ms` (their
    /// `received_at`, unix ms); returns how many. Run it periodically with a
    /// cutoff a horizon in the past (see `worker.tombstone_horizon`).
    /// The default collects nothing.
    fn collect_users(
        &self,
        cutoff_ms: u64,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let _ = cutoff_ms;
        async { Ok(0) }
    }

    /// [`Step::Announced`]. The default remembers nothing (`false`): a
    /// crash can then lose an announcement's output.
    fn announced(
        &self,
        guild_id: u64,
        version: Version,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (guild_id, version);
        async { Ok(false) }
    }

    /// Whether the GUILD_CREATE snapshot at `version` is a join made while
    /// the shard had no session (a session gap): its shard's previous
    /// READY did not list the guild (or the cache saw it removed), the
    /// next READY did, and this is the guild's first snapshot since. The
    /// sharder marks such a GUILD_CREATE `initial` (it is listed in the new
    /// READY), so without this the join is never announced. The answer is
    /// stable (a redelivery gets the same one). A store without a previous
    /// READY of the shard (a cold start, a purged cache) infers nothing.
    /// The default infers nothing.
    fn gap_join(
        &self,
        guild_id: u64,
        version: Version,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (guild_id, version);
        async { Ok(false) }
    }

    /// [`Step::Marker`]. The default keeps nothing and announces every
    /// copy.
    fn reshard_mark(
        &self,
        marker: ReshardMarker,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = marker;
        async { Ok(true) }
    }

    /// The newest reshard marker kept ([`Step::Marker`]), shared by every
    /// worker of the store. The default keeps none.
    fn reshard_window(
        &self,
    ) -> impl Future<Output = Result<Option<ReshardMarker>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// [`Step::Pair`]. The default pairs nothing (every copy is first).
    fn pair(
        &self,
        guild_id: u64,
        total: u32,
        fingerprint: u64,
        at_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = (guild_id, total, fingerprint, at_ms);
        async { Ok(true) }
    }

    /// A cached user.
    fn user(&self, user_id: u64) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;

    /// One member of a cached guild; `None` when the guild or the member
    /// is unknown. The default reads the whole guild view; stores override
    /// it with a direct lookup (the read API calls it per request).
    fn member(
        &self,
        guild_id: u64,
        user_id: u64,
    ) -> impl Future<Output = Result<Option<Versioned<Member>>, StoreError>> + Send {
        async move {
            Ok(self
                .guild(guild_id)
                .await?
                .filter(|g| g.core.is_some())
                .and_then(|mut g| g.members.remove(&user_id)))
        }
    }
}

//! The cache worker: consumes envelopes, keeps a versioned cache that
//! duplicates, redeliveries and reordering cannot corrupt, and hands the bot
//! clean events, telling a real guild join from a guild loading after READY.
//!
//! * [`Worker`] is the embedding API: `Worker::new(store).on("GUILD_JOINED",
//!   |ev| ..)` then [`Worker::process_message`] per queue message.
//! * [`Store`] is the cache: [`MemoryStore`] (default) or [`RedisStore`]
//!   (shared by replicas; every versioned write is one Lua script, and a
//!   message's writes go in one pipelined round trip, see [`Step`]).
//! * [`Mutation`] documents the cache rules; [`GuildView`] is the canonical
//!   read form both stores return.
//! * [`run`] is the whole process (HTTP API, store, reconnecting
//!   consumers) until a cancellation token fires, then a bounded drain; the
//!   `worker` binary is configuration, logging and a signal around it.
#![forbid(unsafe_code)]

mod assignment;
mod consumer;
mod delivery;
mod gate;
mod gateway;
pub mod http;
mod lease;
mod membership;
mod memory;
mod model;
mod mutation;
mod name;
pub mod output;
mod processor;
mod queued;
pub mod readiness;
mod redis_scripts;
mod redis_store;
pub mod reshard;
mod runtime;
mod snowflake;
mod store;
mod supervisor;
mod sweep;
mod users;

pub use consumer::{
    AmqpTopology, ConsumeError, ConsumeStats, consume_partition, consume_partition_with,
};
pub use gateway::{CacheOptions, Class, Parsed, PayloadError, parse};
pub use memory::{CacheStats, MemoryStore};
pub use model::{
    Channel, Emoji, Entity, GuildCore, GuildView, ImageHash, KINDS, Kind, Member, Name, Presence,
    Role, Status, User, UserVersion, Versioned, VoiceState,
};
pub use mutation::{Mutation, Snapshot};
pub use processor::{CleanEvent, CleanKind, ProcessError, Report, Worker};
pub use redis_store::RedisStore;
pub use runtime::{DRAIN_GRACE, RunError, RunReport, prometheus, run};
pub use store::{DELIVERY_WINDOW, MAX_COUNT_DELTAS, Step, Store, StoreError};

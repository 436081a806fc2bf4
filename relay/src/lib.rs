//! The relay: a Discord gateway v10 server for bot processes, fed by the
//! clean event stream of the workers and by their versioned cache.
//!
//! A bot sets its library's gateway URL to the relay and changes nothing
//! else. It IDENTIFYs with any `[shard_id, shard_count]` it likes,
//! independent of Bulwark's real shard count, and gets the guilds with
//! `(guild_id >> 22) % shard_count == shard_id`: READY and one
//! GUILD_CREATE per guild built from the cache, then the live events, in
//! order per guild, with its own `s`, filtered by its intents. A bot
//! process that restarts and RESUMEs within `relay.resume_window` gets
//! exactly what it missed. Restarts of sharders and workers are invisible
//! to it: a guild it has is never sent again.
//!
//! The boxes: `feed` (the output exchange into the `hub`), `session`
//! (one bot session: its ring of dispatches and the stream's
//! translation), `snapshot` (READY, GUILD_CREATE and member chunks from
//! the cache), `connection` (the protocol toward one bot), `commands`
//! (a bot's op 3, 4 and 8, checked and forwarded to the real shards),
//! `replies` (their answers, back to the asker), `handover` (a
//! stopping relay's sessions, resumed on another), `http`
//! (the port: gateway, `/api/v10/gateway/bot`, probes), `runtime`.
#![forbid(unsafe_code)]

mod commands;
mod compression;
mod connection;
mod feed;
mod handover;
mod http;
mod hub;
mod identify_limit;
mod incoming;
mod replies;
mod runtime;
mod session;
mod snapshot;

pub use incoming::Incoming;
pub use runtime::{RelayError, run, run_with};

use std::sync::atomic::AtomicBool;

/// What every connection and the feed share.
pub(crate) struct Ctx {
    pub cfg: config::RelayConfig,
    /// The bot token bots must present.
    pub token: config::Secret,
    /// `discord.intents`: what the real shards receive.
    pub intents: u64,
    pub hub: hub::Hub,
    /// Identify buckets and the daily session start budget.
    pub identify_limit: identify_limit::IdentifyLimit,
    pub store: worker::RedisStore,
    /// The store's connection, for readiness.
    pub redis: dnscache::RedisConnection,
    /// Every bot connection, so shutdown can let them send their close.
    pub connections: tokio_util::task::TaskTracker,
    pub resolver: dnscache::Resolver,
    pub amqp_url: config::Secret,
    /// The workers' output exchange.
    pub exchange: String,
    /// Where bots' op 3, 4 and 8 go to the real shards.
    pub commands: commands::Publisher,
    /// READY's `resume_gateway_url`.
    pub resume_url: String,
    /// The feed consumes (readiness).
    pub feed_up: AtomicBool,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Cancelled at shutdown: connections close with 4000 (resumable).
    pub stop: tokio_util::sync::CancellationToken,
    /// This relay process, in the sessions it hands over at shutdown.
    pub pod: String,
    /// `redis.key_prefix`.
    pub prefix: String,
    /// The seen ids of relays that handed sessions over.
    pub seen: handover::SeenCache,
}

/// A new session id: 32 random hex digits, as unguessable as Discord's.
pub(crate) fn new_session_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! Discord gateway sharder: identify batches, parallel resumes, events to RabbitMQ.
//!
//! # Public surface, by concept
//! What an embedder needs; everything else (the shard layout planner
//! itself, backoff, the connect gate, the HTTP router, the confirmed-seq tracker,
//! the load-shedding sink) is private to the crate.
//! - **The process**: [`run`] (configuration in, every shard of this
//!   process, drain on shutdown) and [`run_with`] ([`RunOptions`]: an
//!   in-process [`SinkChoice::Channel`] instead of RabbitMQ), ending in a
//!   [`RunReport`] or a [`RunError`] (a layout [`PlanError`], a
//!   [`GatewayBotError`], ...). Its command-line helpers for `main`:
//!   [`apply_shard_args`], [`ordinal_process_index`], [`PROCESS_INDEX_ENV`].
//!   HTTP endpoints: [`serve`] with an [`AdminState`], metrics through
//!   [`prometheus`]; runtime load shedding by event name: [`ShedList`]
//!   ([`ShedError`]).
//! - **One shard**: [`Shard`] (one task per shard) with its
//!   [`ShardConfig`], controlled through a [`ShardHandle`] that publishes
//!   its [`ShardState`] and ends with a [`ShardExit`]. It dials through a
//!   [`Connector`] ([`ResolverConnector`] resolves through `dnscache`,
//!   [`PlainConnector`] through the system; [`ConnectError`]), paced by
//!   one process-wide [`ConnectRate`] through a [`PacedConnector`].
//! - **Identifying**: [`IdentifyScheduler`] (per-key windows, runtime
//!   throttle, session-start reserve; [`IdentifySettings`],
//!   [`SessionStartLimit`]), shared across pods with [`RedisIdentifyLock`],
//!   one cluster-wide budget ([`SharedBudget`], [`BudgetMark`]) and an
//!   identify circuit breaker ([`BreakerPolicy`]);
//!   gateway discovery and the identify budget: [`fetch_gateway_bot`]
//!   ([`GatewayBot`]).
//! - **Events out**: an [`EventSink`] ([`TrySend`], [`SinkClosed`]) takes
//!   each [`ShardEvent`] and confirms it back through its [`Ack`];
//!   [`ChannelSink`] is the in-process one, [`AmqpSink`] the production
//!   one ([`AmqpSinkConfig`], [`AmqpSinkStats`]; what [`SinkChoice::Amqp`]
//!   runs), on the shared topology ([`AmqpTopology`]).
//!   GUILD_CREATE is classified ([`GuildCreateKind`]) by a
//!   [`GuildTracker`] ([`GuildSnapshot`]).
//! - **Live resharding**: [`plan_reshard`] checks a [`ReshardRequest`]
//!   against a [`ReshardContext`] (the running [`ClusterLayout`] and its
//!   [`ShardAssignment`], partitions, session start budget) and answers a
//!   [`ReshardPlan`] or a [`ReshardRefused`] saying what to ask for
//!   instead; [`DISCORD_IDENTIFY_WINDOW`] is its default window.
//! - **Persisted sessions**: [`Session`] (owned by a [`SessionOwner`],
//!   ordered by [`next_epoch`], at most [`MAX_SESSION_BYTES`], refused with
//!   a [`SessionRejected`]) in a [`SessionStore`] ([`FileSessionStore`],
//!   [`RedisSessionStore`]; [`StoreError`]) under its generation's
//!   [`SessionKey`], read and written through [`load_session`] and
//!   [`save_session`].
//! - **The gateway protocol** itself (decompression, reading frames in
//!   place, opcodes and close codes, event names, the send budget) is the
//!   `gateway_protocol` crate; only [`Compression`], which
//!   [`ShardConfig`] names, is re-exported here.
//!
//! # Inside a shard
//! `shard.rs` (the loop over connections, state, persistence) drives
//! `connection_loop.rs` (one connection's `select!`), which joins
//! `connection.rs` (socket, inflate, heartbeats, send limiter) and
//! `live_session.rs` (what each frame means, down to `deliver` to the
//! sink); `outcome.rs` lists every way a connection ends.
#![forbid(unsafe_code)]

mod amqp_publisher;
mod amqp_sink;
mod assignment;
mod backoff;
mod cli;
mod clock;
mod commands;
mod connect;
mod connect_gate;
mod connect_rate;
mod connection;
mod connection_loop;
mod event_counters;
mod gateway_bot;
mod generation;
mod guilds;
mod http;
mod identify;
mod identify_breaker;
mod identify_budget;
mod identify_lock;
mod live_session;
mod outcome;
mod recovery;
mod reshard_cli;
mod reshard_cluster;
mod reshard_marker;
mod reshard_plan;
mod reshard_triggers;
mod resharder;
mod runtime;
mod session;
mod session_redis;
mod session_store;
mod shard;
mod shard_config;
mod shard_vitals;
mod shed;
mod sink;
mod startup;
mod status;

pub use amqp_sink::{AmqpSink, AmqpSinkConfig, AmqpSinkStats};
pub use assignment::{ClusterLayout, PlanError, ShardAssignment};
pub use cli::{PROCESS_INDEX_ENV, apply_shard_args, ordinal_process_index};
pub use commands::{Presence, PresenceRecord};
pub use connect::{ConnectError, Connector, PlainConnector, ResolverConnector};
pub use connect_rate::{ConnectRate, PacedConnector};
pub use envelope::topology::AmqpTopology;
pub use gateway_bot::{GatewayBot, GatewayBotError, fetch_gateway_bot};
/// What [`ShardConfig::compression`] names; the rest of the protocol is
/// `gateway_protocol`'s.
pub use gateway_protocol::Compression;
pub use generation::{GenerationRecord, Resolved, load_record, resolve, save_record};
pub use guilds::{GuildCreateKind, GuildSnapshot, GuildTracker};
pub use http::{AdminState, prometheus, serve};
pub use identify::{IdentifyScheduler, IdentifySettings, SessionStartLimit};
pub use identify_breaker::BreakerPolicy;
pub use identify_budget::{BudgetMark, SharedBudget};
pub use identify_lock::RedisIdentifyLock;
pub use reshard_cli::{
    ReshardCli, ReshardCliError, admin_url, request_reshard, reshard_command, reshard_status,
};
pub use reshard_marker::{MarkerPublishError, publish_marker};
pub use reshard_plan::{
    DISCORD_IDENTIFY_WINDOW, ReshardContext, ReshardPlan, ReshardRefused, ReshardRequest,
    plan_reshard,
};
pub use runtime::{RunError, RunOptions, RunReport, SinkChoice, run, run_with};
pub use session::{MAX_SESSION_BYTES, Session, SessionOwner, SessionRejected, next_epoch};
pub use session_redis::RedisSessionStore;
pub use session_store::{
    FileSessionStore, SessionKey, SessionStore, StoreError, load_session, save_session,
};
pub use shard::{Shard, ShardExit, ShardHandle, ShardState};
pub use shard_vitals::{LastClose, ShardVitals, VitalsSnapshot};

pub use shard_config::ShardConfig;
pub use shed::{ShedError, ShedList};
pub use sink::{Ack, ChannelSink, EventSink, ShardEvent, SinkClosed, TrySend};

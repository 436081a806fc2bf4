//! Discord gateway sharder: identify batches, parallel resumes, events to RabbitMQ.
//!
//! The gateway protocol itself (decompression, reading frames in place,
//! close codes, the send budget) is the `gateway_protocol` crate.
//!
//! Building blocks, each in its own module:
//! - identify scheduling ([`IdentifyScheduler`]: per-key windows, runtime
//!   throttle, session-start reserve; shared across pods with
//!   [`RedisIdentifyLock`]) and the start-up layout check ([`plan_shards`]);
//! - persisted sessions ([`Session`] in a [`FileSessionStore`] or
//!   [`RedisSessionStore`], checked by [`load_session`]) and GUILD_CREATE
//!   classification ([`GuildTracker`]);
//! - the shard itself ([`Shard`], one task per shard, [`ShardState`]),
//!   dialling through a [`Connector`] ([`ResolverConnector`] uses
//!   `dnscache`), with its reconnect [`Backoff`], handing events to an
//!   [`EventSink`] that confirms them back ([`Ack`]).
//!
//! - gateway discovery and the identify budget ([`fetch_gateway_bot`]).
//!
//! - the AMQP sink ([`AmqpSink`]: bounded buffer, batches, publisher
//!   confirms, reconnect and republish) on the shared topology
//!   ([`AmqpTopology`]), runtime load shedding ([`ShedSink`]);
//! - the process ([`run`]: discovery, layout, scheduler, store, sink, one
//!   task per shard, drain on shutdown) and its HTTP endpoints ([`router`]).
#![forbid(unsafe_code)]

mod amqp_sink;
mod assignment;
mod backoff;
mod cli;
mod connect;
mod connect_gate;
mod connection;
mod dispatch;
mod event_counters;
mod gateway_bot;
mod guilds;
mod http;
mod identify;
mod identify_lock;
mod runtime;
mod session;
mod session_redis;
mod session_store;
mod shard;
mod shed;
mod sink;

pub use amqp_sink::{AmqpSink, AmqpSinkConfig, AmqpSinkStats};
pub use assignment::{
    ClusterLayout, PlanError, ShardAssignment, check_assignment, plan_cluster, plan_shards,
};
pub use backoff::Backoff;
pub use cli::{
    PROCESS_INDEX_ENV, apply_shard_args, check_shard_range, ordinal_process_index,
    parse_shard_range, pod_ordinal,
};
pub use connect::{ConnectError, Connector, PlainConnector, ResolverConnector, gateway_url};
pub use connect_gate::ConnectSlot;
pub use envelope::topology::AmqpTopology;
pub use gateway_bot::{GatewayBot, GatewayBotError, fetch_gateway_bot, parse_gateway_bot};
/// What [`ShardConfig::compression`] names; the rest of the protocol is
/// `gateway_protocol`'s.
pub use gateway_protocol::Compression;
pub use guilds::{GuildCreateKind, GuildSnapshot, GuildTracker};
pub use http::{AdminState, MAX_IDENTIFY_THROTTLE, prometheus, router, serve};
pub use identify::{IdentifyPermit, IdentifyScheduler, IdentifySettings, SessionStartLimit};
pub use identify_lock::RedisIdentifyLock;
pub use runtime::{RunError, RunOptions, RunReport, SinkChoice, run, run_with};
pub use session::{
    MAX_SESSION_BYTES, Session, SessionOwner, SessionRejected, next_epoch, token_fingerprint,
};
pub use session_redis::RedisSessionStore;
pub use session_store::{FileSessionStore, SessionStore, StoreError, load_session, save_session};
pub use shard::{Shard, ShardConfig, ShardExit, ShardHandle, ShardState};
pub use shed::{NEVER_SHED, ShedError, ShedList, ShedSink};
pub use sink::{
    Ack, ChannelSink, Confirmation, ConfirmedSeq, EventSink, ShardEvent, SinkClosed, TrySend,
};

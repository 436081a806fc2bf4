//! A faithful Discord gateway v10 simulator for tests, benchmarks and demos.
//!
//! Everything in Bulwark is tested against this simulator, so it must be
//! faithful enough that a client that works here works against Discord, and
//! strict enough that a client that breaks Discord's rules fails here:
//! identify concurrency, the session start budget, the 120/60 s send limit,
//! heartbeat timeouts, resume with replay, close codes, and transport
//! compression are all enforced, and every violation is counted.
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> Result<(), discord_sim::SimError> {
//! use discord_sim::{SimConfig, Simulator};
//! use std::time::Duration;
//! let sim = Simulator::start(SimConfig {
//!     shards: 4,
//!     guilds: 40,
//!     identify_window: Duration::from_millis(5),
//!     heartbeat_interval: Duration::from_millis(200),
//!     ..SimConfig::default()
//! })
//! .await?;
//! let url = format!("{}/?v=10&encoding=json&compress=zlib-stream", sim.gateway_url());
//! // ... connect a client to `url`, then:
//! sim.emit(100); // exactly 100 dispatches now
//! let truth = sim.truth(); // what a perfect cache holds
//! let ledger = sim.ledger(); // every (session, seq, event, guild) dispatched
//! sim.drop_connections(&[1]); // fault injection
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # URLs and JSON (for clients and tests)
//! - Gateway: `ws://127.0.0.1:PORT/?v=10&encoding=json[&compress=zlib-stream|zstd-stream]`;
//!   READY's `resume_gateway_url` is `ws://127.0.0.1:PORT/resume`. Connections
//!   are counted per path in [`Counters::connections`] (`"/"` and `"/resume"`).
//! - `GET /api/v10/gateway/bot` with `Authorization: Bot <token>`; its
//!   `shards` is [`SimConfig::shards`] until changed at run time
//!   ([`SimHandle::set_recommended_shards`], `POST /sim/recommended_shards`).
//! - `GET /sim/truth` -> [`Truth`]: `{"guilds": {"<id>": {shard, unavailable,
//!   member_count, guild, channels: {"<id>": obj}, roles: {...}, members:
//!   {"<user id>": member obj}}}}`. `guild` is the guild object without
//!   `roles`, `emojis` and GUILD_CREATE's extra lists (`joined_at`, `large`,
//!   `unavailable`, `member_count`, `channels`, `members`, `threads`,
//!   `presences`, `voice_states`, `stage_instances`, `guild_scheduled_events`,
//!   `soundboard_sounds`). Members are stored without `guild_id`.
//! - `GET /sim/ledger` -> [`Ledger`]: `{"shards": {"<shard>": [{session_id,
//!   seq, event, guild_id, shard_total, event_id}]}}` (`event_id` is null
//!   for READY, RESUMED and READY's GUILD_CREATE snapshots; see
//!   [`Ledger::logical_events`]).
//! - `GET /sim/counters` -> [`Counters`].
//! - `GET /sim/attached` -> `{"attached": {"<total>": n}}`: connections
//!   attached now, per shard total with a session (no session is touched).
//! - `POST /sim/faults/<name>` with a JSON body `{"shards": [..]}` (empty or
//!   absent = all shards; those shard ids in every connected total, or only
//!   in `"total": n` when given): `reconnect`, `drop`, `zombie`, `heartbeat-request`,
//!   `invalid-session` (`"resumable": bool`), `malformed` (`"kind":
//!   "invalid_json" | "truncated" | "unknown_op" | "invalid_data"`; the last
//!   is a dispatch with a seq whose `d` is not JSON, replayed on every
//!   resume); `slow-resume` (`"ms": n`: the next RESUME of each session
//!   reached waits n ms before RESUMED); `outage` and `restore`
//!   take `{"guild_id": "<id>"}`. `POST /sim/event-rate {"events_per_sec": f}`,
//!   `POST /sim/emit {"count": n}`. Each answers `{"affected": n}`.
//!   `POST /sim/recommended_shards {"shards": n}` answers `{"shards": n}`.
//!
//! # Resharding
//! As Discord, the simulator serves sessions of several shard totals at
//! once: IDENTIFY `[shard, total]` is accepted for any `total` from the
//! minimum the bot needs up to [`MAX_SHARD_TOTAL`], and each guild event is
//! buffered into the owning session ([`shard_of`]) of every connected total,
//! with the same `d` bytes in each. The minimum is [`SimConfig::shards`]
//! unless [`SimConfig::guild_cap`] (`--guild-cap`) is set; then a shard may
//! own at most that many guilds, and IDENTIFY over it, or a join that takes
//! a live session's shard over it, is closed with 4011 (fatal: the session
//! ends). The recommendation of `/gateway/bot` never changes what is
//! accepted. The ledger gives every world event a logical id, so a test can
//! count how many of the bot's sessions one event reached
//! ([`Ledger::logical_events`]); fault methods taking `shards` mean those ids
//! in every total, and the `_of` variants
//! ([`SimHandle::connected_sessions_of`]) one total.
//!
//! # Pure world model
//! [`World`] generates guilds and dispatches deterministically from a seed,
//! with no sockets, for property tests that need realistic event logs.
//!
//! # Intents
//! Dispatches are filtered by the session's intents as Discord does
//! (GUILD_MEMBER_* need GUILD_MEMBERS, PRESENCE_UPDATE needs GUILD_PRESENCES,
//! MESSAGE_CREATE needs GUILD_MESSAGES, TYPING_START GUILD_MESSAGE_TYPING,
//! GUILD_EMOJIS_UPDATE GUILD_EMOJIS_AND_STICKERS, guild/channel/role events
//! GUILDS). Without MESSAGE_CONTENT, MESSAGE_CREATE's `content`, `embeds`,
//! `attachments` and `components` are empty unless the message mentions the
//! bot. Without GUILD_MEMBERS, GUILD_CREATE's `members` lists only the bot's
//! own member (every guild has the bot as a member; `member_count` stays
//! exact). A cache compared with [`Truth`] must identify with at least
//! GUILDS | GUILD_MEMBERS (and GUILD_EMOJIS_AND_STICKERS for `emojis`).
//!
//! # Client requests
//! IDENTIFY `compress: true` (plain transport) sends payloads of 1 KiB or
//! more as binary messages holding one whole zlib stream each. Request Guild
//! Members (op 8) is answered with GUILD_MEMBERS_CHUNKs (at most 1000
//! members each, `chunk_index`/`chunk_count`/`nonce`, `not_found` for
//! `user_ids`); the whole member list needs GUILD_MEMBERS (else 4013), and
//! a second request for one guild within half the send window gets a
//! RATE_LIMITED dispatch instead ([`Counters::member_requests_rate_limited`]).
#![forbid(unsafe_code)]

mod config;
mod error;
mod gateway;
mod handle;
pub mod world;

pub use config::{MAX_SHARD_TOTAL, PRIVILEGED_INTENTS, SimConfig, VALID_INTENTS};
pub use error::SimError;
pub use gateway::hostility::Hostility;
pub use gateway::records::{Counters, Delivery, Ledger, LedgerEntry, LogicalEvent};
pub use gateway::sessions::Malformed;
pub use handle::{SimHandle, Simulator};
pub use world::{
    Dispatch, EventKind, EventMix, GuildTruth, Membership, Truth, World, WorldConfig, shard_of,
};

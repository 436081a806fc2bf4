//! The envelope: how one shard's gateway events travel from the sharder,
//! through RabbitMQ, to the cache workers, with their provenance intact.
//!
//! Consumers can only order and deduplicate what they can identify, so every
//! event keeps its shard, its session `epoch` and its gateway `seq`; together
//! they form its [`Version`]. The payload `d` is carried as the exact bytes
//! the gateway sent (never re-encoded), so the worker parses it once, with
//! borrowed strings.
//!
//! * [`Event`] is one dispatch; [`BatchEncoder`] frames one or more
//!   consecutive events of one shard into a message; [`decode`] checks a
//!   message completely and returns a [`Batch`] that borrows from it;
//!   [`Decoder`] does the same one event at a time.
//! * [`Command`] is a bot's gateway command (op 3, 4, 8) on its way from
//!   a relay back to the real shard that owns the guild.
//! * [`topology`] holds the RabbitMQ names and rules (exchange, routing key,
//!   partition queues, dead-lettering) that the sharder and worker share.
//!
//! The byte layout follows.
//!
//! # Wire format
//!
//! All integers little-endian. A message is a header followed by
//! `count` events:
//!
//! ```text
//! header: magic "BW" (2) | format version = 1 (1) | shard_id u32 | num_shards u32 | count u16
//! event:  flags u8 | epoch u64 | seq u64 | received_at u64 (unix ms)
//!         | [guild_id u64, only when flags bit 0]
//!         | t_len u8 | t (ASCII A-Z 0-9 _) | d_len u32 | d (raw JSON bytes)
//! flags:  bit 0 = guild_id present; bits 1-2 = GUILD_CREATE marker
//!         (0 none, 1 initial, 2 available, 3 joined); bits 3-7 must be 0
//! ```
//!
//! A `GUILD_CREATE` must carry a marker and no other event may. A live
//! reshard is announced in band by a message of one `BULWARK_RESHARD` event
//! ([`ReshardMarker`]). Messages longer than [`MAX_MESSAGE_LEN`], with
//! trailing bytes, an unknown format version or any field out of bounds
//! are rejected with a [`DecodeError`]; decoding never panics.
//!
//! ```
//! use envelope::{BatchEncoder, Event, GuildCreateKind, decode};
//! let d = br#"{"id":"81384788765712384","name":"x"}"#;
//! let event = Event {
//!     epoch: 7, seq: 42, received_at: 1_700_000_000_000,
//!     t: "GUILD_CREATE", guild_id: Some(81384788765712384),
//!     guild_create: Some(GuildCreateKind::Joined), d,
//! };
//! let mut enc = BatchEncoder::new(3, 16).unwrap();
//! enc.push(&event).unwrap();
//! let bytes = enc.finish();
//! let batch = decode(&bytes).unwrap();
//! assert_eq!(batch.shard_id, 3);
//! assert_eq!(batch.events, vec![event]);
//! ```
#![forbid(unsafe_code)]

mod codec;
pub mod command;
mod error;
mod event;
mod reshard;
mod shard;
pub mod topology;
mod version;

pub use codec::{
    Batch, BatchEncoder, Decoder, FORMAT_VERSION, MAGIC, MAX_BATCH_EVENTS, MAX_EVENT_NAME_LEN,
    MAX_MESSAGE_LEN, decode,
};
pub use command::{Command, CommandError};
pub use error::{DecodeError, EncodeError};
pub use event::{Event, GuildCreateKind, unix_ms, unix_now_ms};
pub use reshard::{MARKER_EVENT, MarkerError, ReshardMarker, ReshardPhase};
pub use shard::ShardRef;
pub use version::Version;

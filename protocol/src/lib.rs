//! The Discord gateway v10 protocol, as the sharder, the worker and the
//! simulator speak it.
//!
//! - what a payload's `op` and a close code mean ([`op`], [`close`],
//!   [`close_action`]);
//! - transport compression: the client's zlib-stream and zstd-stream
//!   decoder ([`Decompressor`]) and the server's small zlib-stream
//!   compressor ([`ZlibStream`]);
//! - reading a payload in place ([`Frame`]: `op`, `s`, `t`, `d`'s range and
//!   routing keys in one validating pass), on the JSON [`Lexer`] that the
//!   worker's payload readers use too;
//! - dispatch names as a closed set ([`EventName`], [`KNOWN_EVENTS`]);
//! - which dispatches a session's intents cover ([`intents`]);
//! - a connection's send budget, 120 commands per 60 s with a share kept
//!   for heartbeats ([`SendLimiter`]).
#![forbid(unsafe_code)]

mod close_code;
mod deflate;
mod event_names;
mod frame;
mod frame_scan;
mod inflate;
pub mod intents;
mod lexer;
pub mod op;
mod send_limiter;

pub use close_code::{
    CloseAction, RESUMABLE_CLOSE, close, close_action, is_authentication_failure,
};
pub use deflate::ZlibStream;
pub use event_names::{EventName, KNOWN_EVENTS, OTHER_EVENT};
pub use frame::{DispatchKeys, Frame, FrameError, parse_snowflake};
pub use inflate::{Compression, DEFAULT_MAX_PAYLOAD, Decompressor, InflateError};
pub use lexer::{LexFailed, Lexer};
pub use send_limiter::{GATEWAY_SEND_LIMIT, GATEWAY_SEND_WINDOW, SendKind, SendLimiter};

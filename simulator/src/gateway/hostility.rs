//! Misbehaviours the gateway keeps up until told to stop.
//!
//! The one-shot faults (`/sim/faults/reconnect`, `invalid-session`, ...)
//! test how a client recovers from one failure. A client must also survive
//! a gateway that fails the same way on every attempt, without turning it
//! into a reconnect storm or draining its session start budget: PROTOCOL.md,
//! "Resetting the reconnect backoff on every successful handshake". These
//! settings stay on for every connection until changed, so a test can
//! count the attempts per minute a client makes against them.

use serde::{Deserialize, Serialize};

/// What the gateway does wrong on every connection while set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hostility {
    /// Close every connection with 4000 (resumable: the session lives on)
    /// right after it sent READY or RESUMED.
    #[serde(default)]
    pub break_after_handshake: bool,
    /// Answer every IDENTIFY with op 9 `d:false` after spending its session
    /// start, as Discord counts one.
    #[serde(default)]
    pub refuse_identify: bool,
}

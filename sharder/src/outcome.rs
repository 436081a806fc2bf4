//! How one connection of a shard ended, and what the shard does next.
//!
//! Every end is one [`Outcome`]: resume, identify afresh (the session is
//! over), stop for good (a fatal close code), shut down, or stop because
//! the sink closed. The live session produces the protocol's outcomes
//! (op 7, op 9, READY it cannot use; `live_session.rs`); the ends the
//! connection itself sees ([`Ended`]) map here:
//! - a close frame by the close-code table (`close_code.rs`): resume,
//!   identify (4007, 4009) or fatal (4004, 4010-4014);
//! - a close frame without a code, a zombie, a dropped socket or a corrupt
//!   payload: resume, since Discord replays from the confirmed seq.

use crate::connection::Ended;
use gateway_protocol::{CloseAction, close_action};
use std::time::Duration;

/// What ended one connection.
#[derive(Debug)]
pub(crate) enum Outcome {
    Resume(String),
    /// The session is over; identify afresh, after `wait` if the protocol
    /// asks for one (op 9).
    Identify {
        reason: String,
        wait: Option<Duration>,
    },
    Fatal {
        code: u16,
        reason: &'static str,
    },
    Shutdown,
    SinkClosed(String),
}

impl Outcome {
    pub(crate) fn identify(reason: impl Into<String>) -> Self {
        Self::Identify {
            reason: reason.into(),
            wait: None,
        }
    }
}

impl From<Ended> for Outcome {
    /// Close codes by their table; every other end of a connection resumes.
    fn from(ended: Ended) -> Self {
        match ended {
            Ended::Closed { code, reason } => match close_action(code) {
                CloseAction::Resume => Self::Resume(format!("closed with {code} {reason}")),
                CloseAction::Identify => Self::identify(format!("closed with {code} {reason}")),
                CloseAction::Fatal(reason) => Self::Fatal { code, reason },
            },
            Ended::ClosedWithoutCode => Self::Resume("closed without a code".into()),
            Ended::Zombie => Self::Resume("zombie connection (no heartbeat ACK)".into()),
            Ended::Dropped(reason) | Ended::Corrupt(reason) => Self::Resume(reason),
        }
    }
}

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
use std::fmt;
use std::time::Duration;

/// Why a connection ended, in words, and the code of Discord's close frame
/// when one ended it (the status page shows both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reason {
    pub(crate) text: String,
    pub(crate) close_code: Option<u16>,
}

impl Reason {
    /// A close frame with `code` and `reason`.
    fn closed(code: u16, reason: &str) -> Self {
        Self {
            text: format!("closed with {code} {reason}"),
            close_code: Some(code),
        }
    }
}

impl From<String> for Reason {
    fn from(text: String) -> Self {
        Self {
            text,
            close_code: None,
        }
    }
}

impl From<&str> for Reason {
    fn from(text: &str) -> Self {
        text.to_owned().into()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What ended one connection.
#[derive(Debug)]
pub(crate) enum Outcome {
    Resume(Reason),
    /// The session is over; identify afresh, after `wait` if the protocol
    /// asks for one (op 9).
    Identify {
        reason: Reason,
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
    pub(crate) fn identify(reason: impl Into<Reason>) -> Self {
        Self::Identify {
            reason: reason.into(),
            wait: None,
        }
    }

    /// How the connection ended, for the status page: the close code when
    /// Discord's close frame carried one, and the reason. `None` for a
    /// shutdown.
    pub(crate) fn close(&self) -> Option<(Option<u16>, &str)> {
        match self {
            Self::Resume(r) | Self::Identify { reason: r, .. } => Some((r.close_code, &r.text)),
            Self::SinkClosed(r) => Some((None, r)),
            Self::Fatal { code, reason } => Some((Some(*code), reason)),
            Self::Shutdown => None,
        }
    }
}

impl From<Ended> for Outcome {
    /// Close codes by their table; every other end of a connection resumes.
    fn from(ended: Ended) -> Self {
        match ended {
            Ended::Closed { code, reason } => match close_action(code) {
                CloseAction::Resume => Self::Resume(Reason::closed(code, &reason)),
                CloseAction::Identify => Self::identify(Reason::closed(code, &reason)),
                CloseAction::Fatal(reason) => Self::Fatal { code, reason },
            },
            Ended::ClosedWithoutCode => Self::Resume("closed without a code".into()),
            Ended::Zombie => Self::Resume("zombie connection (no heartbeat ACK)".into()),
            Ended::Dropped(reason) | Ended::Corrupt(reason) => Self::Resume(reason.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_frame_s_code_is_kept() {
        let closed = |code, reason: &str| {
            Outcome::from(Ended::Closed {
                code,
                reason: reason.into(),
            })
        };
        let o = closed(4000, "unknown error");
        assert_eq!(
            o.close(),
            Some((Some(4000), "closed with 4000 unknown error"))
        );
        assert_eq!(closed(4009, "").close().unwrap().0, Some(4009));
        let fatal = closed(4014, "disallowed intents");
        assert_eq!(fatal.close().unwrap().0, Some(4014));
        assert_eq!(Outcome::from(Ended::Zombie).close().unwrap().0, None);
        assert_eq!(
            Outcome::Resume("op 7 reconnect".into()).close().unwrap().0,
            None
        );
        // Words that look like a close frame's are not one.
        assert_eq!(
            Outcome::Resume("closed with 4000 by hand".into())
                .close()
                .unwrap()
                .0,
            None
        );
        assert_eq!(Outcome::Shutdown.close(), None);
    }
}

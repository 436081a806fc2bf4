//! Gateway close codes and what each means for a client.
//!
//! Peers treat 4009 as resumable and loop on RESUME until the budget is
//! gone, or treat every code alike and retry 4004 (a bad token) forever.
//!
//! # Algorithm
//! A fixed table (PROTOCOL.md, "Close codes"): each code either keeps the
//! session ([`CloseAction::Resume`]), ends it ([`CloseAction::Identify`]),
//! or cannot be fixed by reconnecting ([`CloseAction::Fatal`], with the
//! reason for the operator). Codes outside the table, including 1000/1001
//! sent by the server and a drop without a close frame, try to resume: if
//! the session is really gone, Discord answers op 9 `d:false` and the shard
//! identifies then.

/// The close codes of gateway v10 (PROTOCOL.md, "Close codes"): the server
/// sends them; a client sends [`close::UNKNOWN_ERROR`] to close and resume.
pub mod close {
    pub const UNKNOWN_ERROR: u16 = 4000;
    pub const UNKNOWN_OPCODE: u16 = 4001;
    pub const DECODE_ERROR: u16 = 4002;
    pub const NOT_AUTHENTICATED: u16 = 4003;
    pub const AUTHENTICATION_FAILED: u16 = 4004;
    pub const ALREADY_AUTHENTICATED: u16 = 4005;
    pub const INVALID_SEQ: u16 = 4007;
    pub const RATE_LIMITED: u16 = 4008;
    pub const SESSION_TIMED_OUT: u16 = 4009;
    pub const INVALID_SHARD: u16 = 4010;
    pub const SHARDING_REQUIRED: u16 = 4011;
    pub const INVALID_API_VERSION: u16 = 4012;
    pub const INVALID_INTENTS: u16 = 4013;
    pub const DISALLOWED_INTENTS: u16 = 4014;
}

/// What the shard does after the server closed the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Reconnect and RESUME.
    Resume,
    /// The session is gone: reconnect and IDENTIFY.
    Identify,
    /// Stop the shard; reconnecting cannot help.
    Fatal(&'static str),
}

/// The action for a close code from the server.
pub fn close_action(code: u16) -> CloseAction {
    match code {
        close::INVALID_SEQ | close::SESSION_TIMED_OUT => CloseAction::Identify,
        close::AUTHENTICATION_FAILED => CloseAction::Fatal(
            "authentication failed (4004): the bot token is invalid or was reset; \
             the whole process must stop and the token be replaced",
        ),
        close::INVALID_SHARD => {
            CloseAction::Fatal("invalid shard (4010): shard id or total_shards is wrong")
        }
        close::SHARDING_REQUIRED => CloseAction::Fatal(
            "sharding required (4011): too many guilds per shard; raise total_shards",
        ),
        close::INVALID_API_VERSION => CloseAction::Fatal("invalid API version (4012)"),
        close::INVALID_INTENTS => {
            CloseAction::Fatal("invalid intents (4013): check discord.intents")
        }
        close::DISALLOWED_INTENTS => CloseAction::Fatal(
            "disallowed intents (4014): enable the privileged intents in the developer portal \
             or remove them from discord.intents",
        ),
        _ => CloseAction::Resume,
    }
}

/// True for 4004, which means every shard of the bot will fail too.
pub fn is_authentication_failure(code: u16) -> bool {
    code == close::AUTHENTICATION_FAILED
}

/// The code the shard closes with when it wants to resume: anything but
/// 1000/1001, which would end the session.
pub const RESUMABLE_CLOSE: u16 = close::UNKNOWN_ERROR;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_protocol() {
        for code in [4000, 4001, 4002, 4003, 4005, 4008, 1000, 1001, 1006, 4999] {
            assert_eq!(close_action(code), CloseAction::Resume, "{code}");
        }
        for code in [4007, 4009] {
            assert_eq!(close_action(code), CloseAction::Identify, "{code}");
        }
        for code in [4004, 4010, 4011, 4012, 4013, 4014] {
            assert!(
                matches!(close_action(code), CloseAction::Fatal(m) if m.contains(&code.to_string())),
                "{code}"
            );
        }
        assert!(is_authentication_failure(4004) && !is_authentication_failure(4010));
        assert!(!matches!(RESUMABLE_CLOSE, 1000 | 1001));
    }
}

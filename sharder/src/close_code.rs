//! What a gateway close code means for the shard.
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
        4007 | 4009 => CloseAction::Identify,
        4004 => CloseAction::Fatal(
            "authentication failed (4004): the bot token is invalid or was reset; \
             the whole process must stop and the token be replaced",
        ),
        4010 => CloseAction::Fatal("invalid shard (4010): shard id or total_shards is wrong"),
        4011 => CloseAction::Fatal(
            "sharding required (4011): too many guilds per shard; raise total_shards",
        ),
        4012 => CloseAction::Fatal("invalid API version (4012)"),
        4013 => CloseAction::Fatal("invalid intents (4013): check discord.intents"),
        4014 => CloseAction::Fatal(
            "disallowed intents (4014): enable the privileged intents in the developer portal \
             or remove them from discord.intents",
        ),
        _ => CloseAction::Resume,
    }
}

/// True for 4004, which means every shard of the bot will fail too.
pub fn is_authentication_failure(code: u16) -> bool {
    code == 4004
}

/// The code the shard closes with when it wants to resume: anything but
/// 1000/1001, which would end the session.
pub const RESUMABLE_CLOSE: u16 = 4000;

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

//! One gateway dispatch with its provenance.

use crate::Version;
use std::time::{SystemTime, UNIX_EPOCH};

/// `t` in the unit of [`Event::received_at`]: unix milliseconds, which
/// processes on different nodes compare (0 before 1970, saturating).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, in [`unix_ms`].
pub fn unix_now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// How the sharder saw a `GUILD_CREATE` arrive. Only the sharder can tell:
/// it knows the session's READY guild set and which guilds went through an
/// outage (`GUILD_DELETE` with `unavailable: true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuildCreateKind {
    /// Listed in this session's READY: lazy loading, not a join.
    Initial,
    /// Back from an outage: not a join.
    Available,
    /// Neither: the bot was added to the guild.
    Joined,
}

impl GuildCreateKind {
    pub(crate) fn to_bits(self) -> u8 {
        match self {
            GuildCreateKind::Initial => 1,
            GuildCreateKind::Available => 2,
            GuildCreateKind::Joined => 3,
        }
    }

    pub(crate) fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            1 => Some(GuildCreateKind::Initial),
            2 => Some(GuildCreateKind::Available),
            3 => Some(GuildCreateKind::Joined),
            _ => None,
        }
    }
}

/// One dispatch (op 0) of one shard. Borrowed: the encoder reads it, and the
/// decoder returns it pointing into the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// Session epoch of the shard.
    pub epoch: u64,
    /// Gateway `s`.
    pub seq: u64,
    /// When the sharder received the frame, unix milliseconds.
    pub received_at: u64,
    /// Gateway `t`, e.g. `GUILD_CREATE`.
    pub t: &'a str,
    /// `d.guild_id` (or `d.id` for guild events) when the payload has one.
    pub guild_id: Option<u64>,
    /// Set on `GUILD_CREATE` (required there), `None` on every other event.
    pub guild_create: Option<GuildCreateKind>,
    /// The raw `d` bytes exactly as the gateway sent them.
    pub d: &'a [u8],
}

impl Event<'_> {
    /// `(epoch, seq)`.
    pub fn version(&self) -> Version {
        Version::new(self.epoch, self.seq)
    }
}

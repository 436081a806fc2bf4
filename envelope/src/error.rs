//! Why a message could not be framed or read.

/// A message that cannot be decoded. Each variant says what was wrong and
/// where, so a dead-letter reason is enough to diagnose a bad producer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    #[error("bad magic: not a bulwark envelope")]
    BadMagic,
    #[error("unsupported envelope format version {0}")]
    UnsupportedVersion(u8),
    #[error("truncated {field} at byte {offset}")]
    Truncated { field: &'static str, offset: usize },
    #[error("invalid {field} at byte {offset}: {reason}")]
    Invalid {
        field: &'static str,
        offset: usize,
        reason: &'static str,
    },
    #[error("{0} trailing bytes after the last event")]
    TrailingBytes(usize),
}

/// An event or batch the encoder refuses to frame (it would not decode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("num_shards must be at least 1 and above shard_id (shard {shard_id} of {num_shards})")]
    BadShard { shard_id: u32, num_shards: u32 },
    #[error("event name `{0}` must be 1-64 characters of A-Z, 0-9 and _")]
    BadEventName(String),
    #[error(
        "a GUILD_CREATE needs its initial/available/joined marker, and only a GUILD_CREATE may have one (event {0})"
    )]
    BadMarker(String),
    #[error("the message would exceed {max} bytes")]
    TooLarge { max: usize },
    #[error("a batch holds at most {max} events")]
    TooManyEvents { max: usize },
}

//! Which shard, of which shard total, an event came from.
//!
//! A shard id alone names a shard only within one total: during a live
//! reshard shard 3 of 64 and shard 3 of 128 are two sessions, with their
//! own READY guild lists and their own sequence numbers, both publishing at
//! once. Everything a consumer keeps per shard (the READY that implies
//! removals, the delivery window) must be kept per [`ShardRef`], or one
//! generation's READY would remove the other generation's guilds.

use std::fmt;

/// A shard of a shard total: the `[shard_id, num_shards]` pair of IDENTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardRef {
    /// The shard id, `0..total`.
    pub id: u32,
    /// The shard total of the session's IDENTIFY (the generation).
    pub total: u32,
}

impl ShardRef {
    pub const fn new(id: u32, total: u32) -> Self {
        Self { id, total }
    }
}

impl fmt::Display for ShardRef {
    /// `id/total`, e.g. `3/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.id, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_of_two_totals_differs() {
        assert_ne!(ShardRef::new(3, 64), ShardRef::new(3, 128));
        assert_eq!(ShardRef::new(3, 64).to_string(), "3/64");
    }
}

//! The version of an event: `(epoch, seq)`, compared lexicographically.
//!
//! `seq` restarts at 1 on every fresh gateway session, so alone it cannot
//! order events across reconnects; the sharder's `epoch` increases strictly
//! for every fresh session of a shard (resumes keep it). The sharder should
//! take `epoch = max(previous + 1, unix milliseconds at IDENTIFY)`, so that
//! epochs also increase across a reshard, when a guild moves to a shard with
//! a different history.

use std::fmt;

/// Version of a gateway event, `(epoch, seq)`. Field order makes the derived
/// `Ord` lexicographic: epoch first, then seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// Session epoch of the shard (strictly increasing per fresh session).
    pub epoch: u64,
    /// Gateway sequence number `s` within the session.
    pub seq: u64,
}

impl Version {
    /// The version below every real event.
    pub const ZERO: Version = Version { epoch: 0, seq: 0 };

    /// Builds a version.
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_dominates_seq() {
        assert!(Version::new(2, 1) > Version::new(1, 999_999));
        assert!(Version::new(1, 2) > Version::new(1, 1));
        assert_eq!(Version::new(3, 4), Version::new(3, 4));
        assert!(Version::ZERO < Version::new(0, 1));
        assert_eq!(Version::new(5, 6).to_string(), "5:6");
    }
}

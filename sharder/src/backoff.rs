//! Reconnect delays: capped exponential backoff with jitter.
//!
//! When Discord or the network fails, hundreds of shards reconnect at once;
//! without jitter they retry in lockstep, and without a cap a long outage
//! leaves them asleep long after it ended.
//!
//! # Algorithm
//! Attempt `n` (from 0) waits a uniformly random time in
//! `[d/2, d]`, where `d = min(max, base * 2^n)` ("equal jitter"): never
//! zero, so a crash loop cannot spin, and spread enough to break lockstep.
//! The shard resets `n` only after a connection proved healthy (READY or
//! RESUMED, then `reconnect_healthy_after` up), never on a handshake alone.

use rand::Rng;
use std::time::Duration;

/// Backoff state of one shard.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        let cap = self.base.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = cap / 2;
        let spread = u64::try_from((cap - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=spread))
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        for (n, d) in d.iter().enumerate() {
            let cap = (Duration::from_millis(100) * 2u32.pow(n as u32)).min(Duration::from_secs(2));
            assert!(*d >= cap / 2 && *d <= cap, "attempt {n}: {d:?}");
        }
        assert!(d[9] >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        // Jitter: many draws are not all equal.
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let draws: std::collections::BTreeSet<_> = (0..50).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 1);
    }
}

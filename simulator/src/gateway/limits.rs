//! Discord's gateway rate limits: identify concurrency, the session start
//! budget, and the per-connection send limit.
//!
//! # Algorithm
//! Identify: bucket `shard_id % max_concurrency` remembers when it last
//! admitted an IDENTIFY; another within `window` is a violation. Budget:
//! `remaining` starts at `total`, each admitted IDENTIFY spends one, and it
//! refills when `reset_after` has elapsed since the period began. Send limit:
//! a fixed window per connection starting at the first command; command
//! number `limit + 1` inside one window is a violation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One identify per bucket per window.
#[derive(Debug)]
pub(crate) struct IdentifyLimiter {
    max_concurrency: u32,
    window: Duration,
    last: HashMap<u32, Instant>,
}

impl IdentifyLimiter {
    pub(crate) fn new(max_concurrency: u32, window: Duration) -> Self {
        Self {
            max_concurrency: max_concurrency.max(1),
            window,
            last: HashMap::new(),
        }
    }

    /// Admits an identify of `shard` at `now`, or returns the bucket that is
    /// still cooling down.
    pub(crate) fn admit(&mut self, shard: u32, now: Instant) -> Result<(), u32> {
        let key = shard % self.max_concurrency;
        // `now` is when the IDENTIFY arrived; connections take turns at the
        // core, so one that arrived earlier can be handled later: the gap
        // counts in either direction, and the newest arrival stays.
        match self.last.get(&key) {
            Some(&t) if now.max(t) - now.min(t) < self.window => Err(key),
            last => {
                let newest = last.map_or(now, |&t| t.max(now));
                self.last.insert(key, newest);
                Ok(())
            }
        }
    }
}

/// The session start budget of `/gateway/bot`.
#[derive(Debug)]
pub(crate) struct SessionBudget {
    pub(crate) total: u32,
    remaining: u32,
    reset: Duration,
    period_start: Instant,
}

impl SessionBudget {
    pub(crate) fn new(total: u32, reset: Duration, now: Instant) -> Self {
        Self {
            total,
            remaining: total,
            reset,
            period_start: now,
        }
    }

    fn roll(&mut self, now: Instant) {
        while now.saturating_duration_since(self.period_start) >= self.reset {
            self.period_start += self.reset;
            self.remaining = self.total;
        }
    }

    /// `(remaining, reset_after)` as of `now`.
    pub(crate) fn status(&mut self, now: Instant) -> (u32, Duration) {
        self.roll(now);
        let elapsed = now.saturating_duration_since(self.period_start);
        (self.remaining, self.reset.saturating_sub(elapsed))
    }

    /// Spends one session start; false when none is left.
    pub(crate) fn spend(&mut self, now: Instant) -> bool {
        self.roll(now);
        if self.remaining == 0 {
            return false;
        }
        self.remaining -= 1;
        true
    }
}

/// Commands per connection per window.
#[derive(Debug)]
pub(crate) struct SendLimiter {
    limit: u32,
    window: Duration,
    window_start: Option<Instant>,
    count: u32,
}

impl SendLimiter {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            window_start: None,
            count: 0,
        }
    }

    /// Counts one command at `now`; false when it exceeds the limit.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < self.window => {}
            _ => {
                self.window_start = Some(now);
                self.count = 0;
            }
        }
        self.count += 1;
        self.count <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_buckets_are_shard_mod_concurrency() {
        let t0 = Instant::now();
        let w = Duration::from_secs(5);
        let mut l = IdentifyLimiter::new(4, w);
        assert!(l.admit(0, t0).is_ok());
        assert!(l.admit(1, t0).is_ok());
        assert_eq!(l.admit(4, t0 + Duration::from_secs(4)), Err(0));
        assert!(l.admit(5, t0).is_err());
        assert!(l.admit(4, t0 + w).is_ok());
    }

    #[test]
    fn identifies_handled_out_of_arrival_order_are_judged_by_arrival() {
        let t0 = Instant::now();
        let w = Duration::from_secs(5);
        let mut l = IdentifyLimiter::new(2, w);
        // Shard 2 arrived at t0 + 6 s but was handled first.
        assert!(l.admit(2, t0 + Duration::from_secs(6)).is_ok());
        // Shard 0 arrived at t0 + 2 s, handled after: 4 s apart.
        assert_eq!(l.admit(0, t0 + Duration::from_secs(2)), Err(0));
        // One that arrived a whole window earlier is fine, and does not
        // move the bucket's window back.
        assert!(l.admit(4, t0).is_ok());
        assert_eq!(l.admit(6, t0 + Duration::from_secs(10)), Err(0));
        assert!(l.admit(6, t0 + Duration::from_secs(11)).is_ok());
    }

    #[test]
    fn budget_spends_and_resets() {
        let t0 = Instant::now();
        let mut b = SessionBudget::new(2, Duration::from_secs(10), t0);
        assert!(b.spend(t0));
        assert!(b.spend(t0));
        assert!(!b.spend(t0));
        assert_eq!(
            b.status(t0 + Duration::from_secs(4)),
            (0, Duration::from_secs(6))
        );
        assert!(b.spend(t0 + Duration::from_secs(10)));
        assert_eq!(b.status(t0 + Duration::from_secs(10)).0, 1);
    }

    #[test]
    fn send_limit_is_per_window() {
        let t0 = Instant::now();
        let mut s = SendLimiter::new(3, Duration::from_secs(60));
        assert!((0..3).all(|_| s.admit(t0)));
        assert!(!s.admit(t0 + Duration::from_secs(59)));
        assert!(s.admit(t0 + Duration::from_secs(60)));
    }
}

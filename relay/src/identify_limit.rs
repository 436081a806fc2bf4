//! The relay's own session start limits, told to bots by `/gateway/bot`
//! and enforced as Discord enforces its: one IDENTIFY per bucket
//! (`shard_id % max_concurrency`) per window, and a daily budget.
//!
//! An IDENTIFY here costs no Discord session, but it reads every guild of
//! the shard from the cache; a fleet of bots crash-looping on IDENTIFY
//! would otherwise reload the cache without end. A refused IDENTIFY gets
//! op 9 (`d: false`), which libraries answer by waiting and identifying
//! again; the bucket's slot is not spent by a refusal.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Why an IDENTIFY was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its bucket identified less than a window ago.
    Bucket,
    /// The day's session starts are spent.
    Budget,
}

/// Buckets and the daily budget.
pub struct IdentifyLimit {
    max_concurrency: u32,
    window: Duration,
    total: u32,
    state: Mutex<State>,
}

struct State {
    last: HashMap<u32, Instant>,
    day_started: Instant,
    used: u32,
}

impl IdentifyLimit {
    pub fn new(max_concurrency: u32, window: Duration, total: u32, now: Instant) -> Self {
        Self {
            max_concurrency: max_concurrency.max(1),
            window,
            total,
            state: Mutex::new(State {
                last: HashMap::new(),
                day_started: now,
                used: 0,
            }),
        }
    }

    /// Admits an IDENTIFY of `shard_id` at `now`, spending its slot.
    pub fn admit(&self, shard_id: u32, now: Instant) -> Result<(), Refused> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if now.duration_since(st.day_started) >= DAY {
            st.day_started = now;
            st.used = 0;
        }
        if st.used >= self.total {
            return Err(Refused::Budget);
        }
        let bucket = shard_id % self.max_concurrency;
        if st
            .last
            .get(&bucket)
            .is_some_and(|at| now.duration_since(*at) < self.window)
        {
            return Err(Refused::Bucket);
        }
        st.last.insert(bucket, now);
        st.used += 1;
        Ok(())
    }

    /// `session_start_limit` as `/gateway/bot` tells it.
    pub fn limit_json(&self, now: Instant) -> serde_json::Value {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.duration_since(st.day_started);
        let (remaining, reset_after) = if elapsed >= DAY {
            (self.total, 0)
        } else {
            (
                self.total.saturating_sub(st.used),
                (DAY - elapsed).as_millis(),
            )
        };
        serde_json::json!({"total": self.total, "remaining": remaining,
            "reset_after": reset_after, "max_concurrency": self.max_concurrency})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_identify_per_bucket_per_window_and_a_daily_budget() {
        let t0 = Instant::now();
        let l = IdentifyLimit::new(4, Duration::from_secs(5), 6, t0);
        for shard in 0..4 {
            assert_eq!(l.admit(shard, t0), Ok(()), "shard {shard}");
        }
        assert_eq!(l.admit(4, t0), Err(Refused::Bucket), "bucket 0 again");
        assert_eq!(
            l.admit(8, t0 + Duration::from_secs(4)),
            Err(Refused::Bucket)
        );
        assert_eq!(l.admit(8, t0 + Duration::from_secs(5)), Ok(()));
        assert_eq!(l.admit(1, t0 + Duration::from_secs(5)), Ok(()));
        assert_eq!(l.limit_json(t0)["remaining"], 0);
        assert_eq!(
            l.admit(2, t0 + Duration::from_secs(10)),
            Err(Refused::Budget)
        );
        let tomorrow = t0 + DAY + Duration::from_secs(1);
        assert_eq!(l.limit_json(tomorrow)["remaining"], 6);
        assert_eq!(l.admit(2, tomorrow), Ok(()));
        assert_eq!(l.limit_json(tomorrow)["max_concurrency"], 4);
    }
}

//! One cached answer for one host, and when it must be refreshed, expires
//! and is evicted.
//!
//! # Algorithm
//! An entry is immutable once built except for one atomic: the earliest
//! time the next background refresh may start. The first lookup that finds
//! the entry inside its refresh window moves that time forward by the retry
//! interval with a compare-and-swap, so at most one refresh is started per
//! retry interval however many callers are hitting the name, and a failed
//! refresh is retried (once per interval) while the entry is still fresh.
//!
//! Timeline of a positive entry fetched at `t` with TTL `T`:
//! `[t, t + f*T)` fresh; `[t + f*T, t + T)` fresh, refreshed in the
//! background; `[t + T, t + T + max_stale)` stale, served only when the
//! upstream fails or is slow; then evicted. Negative entries have no stale
//! phase.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the upstream said about a host.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Positive(Arc<[IpAddr]>),
    Negative,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) answer: Answer,
    fetched: Instant,
    pub(crate) refresh_at: Instant,
    pub(crate) expires: Instant,
    pub(crate) evict_at: Instant,
    /// Nanoseconds after `fetched` before which no refresh may start.
    next_refresh_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Entry {
    pub(crate) fn positive(
        addrs: Arc<[IpAddr]>,
        ttl: Duration,
        refresh_ahead: f64,
        max_stale: Duration,
        now: Instant,
    ) -> Self {
        let refresh_at = now + ttl.mul_f64(refresh_ahead.clamp(0.0, 1.0));
        let expires = now + ttl;
        Self {
            answer: Answer::Positive(addrs),
            fetched: now,
            refresh_at,
            expires,
            evict_at: expires + max_stale,
            next_refresh_ns: AtomicU64::new(nanos(refresh_at - now)),
        }
    }

    pub(crate) fn negative(ttl: Duration, now: Instant) -> Self {
        let expires = now + ttl;
        Self {
            answer: Answer::Negative,
            fetched: now,
            refresh_at: expires,
            expires,
            evict_at: expires,
            next_refresh_ns: AtomicU64::new(u64::MAX),
        }
    }

    /// True for exactly one caller per `retry_interval` while the entry is
    /// in its refresh window: that caller starts the refresh.
    pub(crate) fn claim_refresh(&self, now: Instant, retry_interval: Duration) -> bool {
        let at = nanos(now.saturating_duration_since(self.fetched));
        let next = self.next_refresh_ns.load(Ordering::Relaxed);
        if at < next {
            return false;
        }
        self.next_refresh_ns
            .compare_exchange(
                next,
                at.saturating_add(nanos(retry_interval)),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_refresh_claim_per_interval() {
        let t0 = Instant::now();
        let e = Entry::positive(
            Arc::from(vec![IpAddr::from([127, 0, 0, 1])]),
            Duration::from_secs(10),
            0.5,
            Duration::from_secs(60),
            t0,
        );
        let retry = Duration::from_secs(1);
        assert!(!e.claim_refresh(t0 + Duration::from_secs(4), retry));
        assert!(e.claim_refresh(t0 + Duration::from_secs(5), retry));
        assert!(!e.claim_refresh(t0 + Duration::from_millis(5500), retry));
        assert!(e.claim_refresh(t0 + Duration::from_millis(6100), retry));
        assert_eq!(e.evict_at, t0 + Duration::from_secs(70));
    }

    #[test]
    fn negative_entries_never_refresh_or_go_stale() {
        let t0 = Instant::now();
        let e = Entry::negative(Duration::from_secs(5), t0);
        assert!(!e.claim_refresh(t0 + Duration::from_secs(4), Duration::from_millis(10)));
        assert_eq!(e.evict_at, e.expires);
    }
}

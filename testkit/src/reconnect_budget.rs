//! How many connection attempts a client with "equal jitter" capped
//! exponential backoff may make in a window: the bound a test holds the
//! attempts a [`crate::CutProxy`] counted against.
//!
//! # Algorithm
//! One attempt at once, then attempt `n` waits at least half its cap,
//! `min(max, base * 2^n) / 2`: count the shortest waits that fit in the
//! window, plus the first attempt.

use std::time::Duration;

/// The most attempts backoff from `base` doubling to `max` allows in
/// `window` after a loss.
pub fn max_attempts(window: Duration, base: Duration, max: Duration) -> usize {
    let (mut spent, mut attempts, mut cap) = (Duration::ZERO, 1, base.min(max));
    loop {
        spent += cap / 2;
        if spent > window {
            return attempts;
        }
        attempts += 1;
        cap = cap.saturating_mul(2).min(max);
        if cap.is_zero() {
            // No wait at all: no bound either.
            return usize::MAX;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn counts_the_minimum_waits() {
        // 200 ms base: waits >= 100, 200, 400, 800 ms ... within 1 s: 1 + 3.
        assert_eq!(max_attempts(ms(1_000), ms(200), ms(15_000)), 4);
        // A 10 ms cap cannot make a storm vanish: 5 ms each.
        assert_eq!(max_attempts(ms(100), ms(10), ms(10)), 21);
        // Shortest delays 0.1, 0.2, 0.4, 0.8, 1.6 s: attempts at 0, 0.1,
        // 0.3, 0.7 and 1.5 s fit in 3 s; the next comes no sooner than
        // 3.1 s. The cap halves to 7.5 s: ten fit in 30 s.
        assert_eq!(max_attempts(ms(3_000), ms(200), ms(15_000)), 5);
        assert_eq!(max_attempts(ms(3_200), ms(200), ms(15_000)), 6);
        assert_eq!(max_attempts(ms(30_000), ms(200), ms(15_000)), 10);
    }
}

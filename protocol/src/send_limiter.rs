//! The per-connection send budget: 120 gateway commands per 60 s.
//!
//! Exceeding Discord's send limit closes the connection with 4008, and
//! heartbeats count toward it: a shard that spends its budget on presence
//! updates or request-guild-members misses a heartbeat and turns into a
//! zombie. So heartbeats get a share of their own that commands cannot
//! touch, sized from HELLO's interval.
//!
//! # Algorithm
//! Built after HELLO, with the budget `limit` per `window` and the heartbeat
//! `interval`:
//! - heartbeats need `ceil(window / interval) + 1` scheduled beats per window
//!   (the first comes early, after `interval * jitter`), plus 4 for answers
//!   to the server's op 1: that is the heartbeat share `h`;
//! - commands get `limit - h - 1` (one spare for rounding).
//!
//! Each share is a `governor` GCRA limiter with a burst `b` and one new cell
//! per `window / (share - b)`, so at most `share` cells pass in any window
//! (`b` at once, then the replenished ones). Heartbeats use a burst of 4,
//! commands of 5. The clock is tokio's, so tests with paused time see exact
//! schedules. A caller over budget waits for its next cell; it is never
//! refused. For Discord (41.25 s interval) heartbeats get 7 and commands
//! 112 of the 120.

use governor::clock::Clock;
use governor::{
    Quota, RateLimiter, middleware::NoOpMiddleware, state::InMemoryState, state::NotKeyed,
};
use std::num::NonZeroU32;
use std::time::Duration;

/// Discord's limit: commands per window.
pub const GATEWAY_SEND_LIMIT: u32 = 120;
/// Discord's window.
pub const GATEWAY_SEND_WINDOW: Duration = Duration::from_secs(60);

const HEARTBEAT_BURST: u32 = 4;
const COMMAND_BURST: u32 = 5;

/// Governor clock on tokio time: elapsed time since the limiter was made.
#[derive(Debug, Clone)]
struct TokioClock(tokio::time::Instant);

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// What is being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// op 1.
    Heartbeat,
    /// Every other command.
    Command,
}

/// The send budget of one connection.
#[derive(Debug)]
pub struct SendLimiter {
    clock: TokioClock,
    commands: Limiter,
    heartbeats: Limiter,
    shares: (u32, u32),
}

/// A limiter letting at most `share` cells through per `window`.
fn limiter(window: Duration, share: u32, burst: u32, clock: &TokioClock) -> Limiter {
    let burst = burst.clamp(1, share.max(1));
    let steady = share.saturating_sub(burst).max(1);
    let period = (window / steady).max(Duration::from_nanos(1));
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
    RateLimiter::direct_with_clock(quota, clock.clone())
}

impl SendLimiter {
    /// A full budget for a new connection whose HELLO said `interval`.
    pub fn new(limit: u32, window: Duration, interval: Duration) -> Self {
        let clock = TokioClock(tokio::time::Instant::now());
        let interval = interval.max(Duration::from_millis(1));
        let scheduled = u32::try_from(window.as_nanos().div_ceil(interval.as_nanos()))
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let heartbeat_share = scheduled
            .saturating_add(HEARTBEAT_BURST)
            .min(limit / 2)
            .max(2);
        let command_share = limit
            .saturating_sub(heartbeat_share)
            .saturating_sub(1)
            .max(2);
        if scheduled + HEARTBEAT_BURST > limit / 2 {
            tracing::warn!(
                ?interval,
                ?window,
                limit,
                "heartbeat interval too short for the send budget; heartbeats will be delayed"
            );
        }
        Self {
            commands: limiter(window, command_share, COMMAND_BURST, &clock),
            heartbeats: limiter(window, heartbeat_share, HEARTBEAT_BURST, &clock),
            clock,
            shares: (heartbeat_share, command_share),
        }
    }

    /// `(heartbeat share, command share)` per window.
    pub fn shares(&self) -> (u32, u32) {
        self.shares
    }

    /// Waits until one message of `kind` may be sent, and takes it.
    pub async fn acquire(&self, kind: SendKind) {
        while let Err(wait) = self.try_acquire(kind) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes one message of `kind` if it may be sent now; else how long
    /// until it may (at least 1 ms, so a rounding edge cannot spin).
    pub fn try_acquire(&self, kind: SendKind) -> Result<(), Duration> {
        let limiter = match kind {
            SendKind::Heartbeat => &self.heartbeats,
            SendKind::Command => &self.commands,
        };
        limiter.check().map_err(|not_until| {
            metrics::counter!("sharder_send_limited_total").increment(1);
            not_until
                .wait_time_from(self.clock.now())
                .max(Duration::from_millis(1))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::Instant;

    /// Hammers both kinds for five windows; returns the send times.
    async fn hammer(l: Arc<SendLimiter>, window: Duration) -> Vec<Duration> {
        let start = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for kind in [SendKind::Command, SendKind::Heartbeat] {
            let (l, tx) = (l.clone(), tx.clone());
            tokio::spawn(async move {
                loop {
                    l.acquire(kind).await;
                    if tx.send(start.elapsed()).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut sent = Vec::new();
        while let Some(at) = rx.recv().await {
            if at > window * 5 {
                break;
            }
            sent.push(at);
        }
        sent.sort();
        sent
    }

    fn worst_window(sent: &[Duration], window: Duration) -> usize {
        (0..sent.len())
            .map(|i| {
                sent[i..]
                    .iter()
                    .take_while(|&&u| u < sent[i] + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn hammering_both_stays_under_the_limit() {
        for (window, interval) in [
            (GATEWAY_SEND_WINDOW, Duration::from_millis(41_250)),
            (Duration::from_secs(6), Duration::from_millis(300)),
        ] {
            let l = Arc::new(SendLimiter::new(GATEWAY_SEND_LIMIT, window, interval));
            let sent = hammer(l, window).await;
            let worst = worst_window(&sent, window);
            assert!(
                worst <= GATEWAY_SEND_LIMIT as usize,
                "{worst} sends per {window:?}"
            );
            assert!(worst >= 100, "the budget is used, not starved: {worst}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn discord_shares() {
        let l = SendLimiter::new(120, GATEWAY_SEND_WINDOW, Duration::from_millis(41_250));
        assert_eq!(l.shares(), (7, 112));
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_heartbeats_are_never_delayed_by_commands() {
        let interval = Duration::from_millis(300);
        let l = Arc::new(SendLimiter::new(120, Duration::from_secs(6), interval));
        let spam = {
            let l = l.clone();
            tokio::spawn(async move {
                loop {
                    l.acquire(SendKind::Command).await;
                }
            })
        };
        // 100 heartbeats, one per interval, plus an op 1 answer every 25th
        // (the surplus of the share refills the burst in about 20 beats).
        for i in 0..100 {
            let t = Instant::now();
            l.acquire(SendKind::Heartbeat).await;
            if i % 25 == 0 {
                l.acquire(SendKind::Heartbeat).await;
            }
            assert_eq!(t.elapsed(), Duration::ZERO, "heartbeat {i} waited");
            tokio::time::sleep(interval).await;
        }
        spam.abort();
    }
}

//! A process-wide cap on new gateway connections per second.
//!
//! Each shard backs off on its own, but when every shard of a process
//! fails at once (a network blip, a gateway that breaks every session, a
//! node coming back) their first attempts still land together, and with
//! hundreds of shards a loop of such failures is a connection storm at
//! Discord: how retry storms start (../shared/incidents 000 and 003). One
//! [`ConnectRate`] per process bounds what all its shards dial together.
//!
//! # Algorithm
//! A token bucket on tokio's clock: it holds `burst` tokens (the process's
//! shard count, so a restart still resumes every shard at once) and gains
//! `per_second` a second. A dial takes a token; without one it *reserves*
//! the next (the count goes below zero) and sleeps until that token
//! exists, so waiters are served in order and none of them polls. A
//! shutdown during the wait drops the dial; its reservation is not given
//! back (it only delays a later dial by one token).

use crate::connect::{ConnectError, Connector};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;

/// New connections per second of one process, after a burst.
#[derive(Debug)]
pub struct ConnectRate {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens at `at`; below zero when dials wait for reserved tokens.
    tokens: f64,
    at: Instant,
}

impl ConnectRate {
    /// `per_second` new connections (at least 1) after a burst of `burst`
    /// (at least 1), the bucket full.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: f64::from(per_second.max(1)),
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// Takes a token now, or reserves the next one and returns how long to
    /// wait for it.
    fn reserve(&self) -> Duration {
        let Ok(mut b) = self.bucket.lock() else {
            // A poisoned lock means a panic elsewhere; never block a dial on it.
            return Duration::ZERO;
        };
        let now = Instant::now();
        let gained = now.saturating_duration_since(b.at).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + gained).min(self.burst);
        b.at = now;
        b.tokens -= 1.0;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / self.per_second)
        }
    }

    /// Waits for this dial's token.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            metrics::counter!("sharder_connects_delayed_total").increment(1);
            tracing::debug!(
                wait_ms = wait.as_millis(),
                "connection rate cap: waiting for a connect token"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// A [`Connector`] whose every dial first takes a token of a shared
/// [`ConnectRate`].
#[derive(Debug, Clone)]
pub struct PacedConnector<C> {
    inner: C,
    rate: Arc<ConnectRate>,
}

impl<C> PacedConnector<C> {
    /// Dials through `inner` at most as fast as `rate` allows.
    pub fn new(inner: C, rate: Arc<ConnectRate>) -> Self {
        Self { inner, rate }
    }
}

impl<C: Connector> Connector for PacedConnector<C> {
    type Stream = C::Stream;

    async fn connect(
        &self,
        url: &str,
        max_message: usize,
    ) -> Result<WebSocketStream<Self::Stream>, ConnectError> {
        self.rate.acquire().await;
        self.inner.connect(url, max_message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The burst is immediate; after it, dials are spaced `1 / per_second`
    /// apart in arrival order; an idle bucket fills up again, to `burst`.
    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate_then_a_full_bucket_again() {
        let rate = Arc::new(ConnectRate::new(4, 3));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..7 {
            let rate = rate.clone();
            tasks.push(tokio::spawn(async move {
                rate.acquire().await;
                Instant::now()
            }));
        }
        let mut at = Vec::new();
        for t in tasks {
            at.push(t.await.unwrap().duration_since(start));
        }
        at.sort();
        let ms: Vec<u128> = at.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 0, 0, 250, 500, 750, 1000]);

        tokio::time::advance(Duration::from_secs(10)).await;
        let before = Instant::now();
        for _ in 0..3 {
            rate.acquire().await;
        }
        assert_eq!(Instant::now(), before, "the bucket holds `burst` again");
        rate.acquire().await;
        assert_eq!(
            Instant::now().duration_since(before),
            Duration::from_millis(250)
        );
    }
}

//! Sharing identify rate-limit keys between processes through Redis.
//!
//! When several sharder pods own shards of the same rate-limit key, each
//! process's local windows are not enough: two pods could identify on one
//! key within 5 s and one of them gets op 9. This lock makes the window a
//! cluster-wide fact.
//!
//! # Algorithm
//! Claiming key `b` of `max_concurrency` is one atomic
//! `SET {prefix}:identify:{max_concurrency}:{b} {owner} NX PX {window}`.
//! Success means nobody identified on that key in the last window; the
//! entry expires on its own, so a crashed pod never holds a key. On failure
//! the caller sleeps for the key's remaining TTL (`PTTL`, at least 10 ms) and
//! tries again. Redis errors are logged and retried with capped exponential
//! backoff: identifying without the lock could violate the limit, and
//! waiting is what a rate limit asks for anyway. The maximum concurrency is
//! part of the key so a change of Discord's value never mixes two layouts.
//!
//! Discord's window runs from the IDENTIFY it receives, not from the claim:
//! a shard that claims the key and then takes a while to connect (a busy
//! pod mid-reshard) would let the next pod's IDENTIFY in less than a window
//! after its own. So when the IDENTIFY has left, its owner restarts the
//! key's expiry at a whole window ([`RedisIdentifyLock::sent`], a
//! compare-and-`PEXPIRE` script: only while it still holds the key).

use std::time::Duration;

/// Longest wait between two attempts while Redis fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A cross-process identify lock on a Redis server.
#[derive(Clone)]
pub struct RedisIdentifyLock {
    conn: dnscache::RedisConnection,
    prefix: String,
    owner: String,
}

impl std::fmt::Debug for RedisIdentifyLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisIdentifyLock")
            .field("prefix", &self.prefix)
            .field("owner", &self.owner)
            .finish()
    }
}

impl RedisIdentifyLock {
    /// A lock on keys under `prefix`, held as `owner` (e.g. the pod name; it
    /// only shows up in Redis for debugging).
    pub fn new(
        conn: dnscache::RedisConnection,
        prefix: impl Into<String>,
        owner: impl Into<String>,
    ) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            owner: owner.into(),
        }
    }

    /// The IDENTIFY on key `bucket` has left: the key is held for `window`
    /// from now, if this process still holds it (module docs). Errors are
    /// logged: the claim's own expiry still bounds the window.
    pub async fn sent(&self, bucket: u16, max_concurrency: u16, window: Duration) {
        const REFRESH: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";
        let px = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let r: redis::RedisResult<i64> = redis::cmd("EVAL")
            .arg(REFRESH)
            .arg(1)
            .arg(self.key(bucket, max_concurrency))
            .arg(&self.owner)
            .arg(px)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = r {
            tracing::warn!(bucket, error = %e, "cannot restart the identify key's window in Redis");
        }
    }

    fn key(&self, bucket: u16, max_concurrency: u16) -> String {
        format!("{}:identify:{max_concurrency}:{bucket}", self.prefix)
    }

    /// Waits until this process holds key `bucket` for `window`.
    pub async fn acquire(&self, bucket: u16, max_concurrency: u16, window: Duration) {
        let key = self.key(bucket, max_concurrency);
        let px = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&key)
                .arg(&self.owner)
                .arg("NX")
                .arg("PX")
                .arg(px)
                .query_async(&mut conn)
                .await;
            match attempt {
                Ok(Some(_)) => return,
                Ok(None) => {
                    let ttl: i64 = redis::cmd("PTTL")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .unwrap_or(10);
                    let ms = u64::try_from(ttl).unwrap_or(10).clamp(10, px);
                    metrics::counter!("sharder_identify_lock_waits_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(
                        bucket,
                        error = %e,
                        retry_in = ?backoff,
                        "cannot claim the identify key in Redis; retrying"
                    );
                    metrics::counter!("sharder_identify_lock_errors_total").increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{IdentifyScheduler, IdentifySettings, SessionStartLimit};
    use std::time::Instant;

    async fn conn() -> dnscache::RedisConnection {
        let c = dnscache::RedisConnection::with_client(
            redis::Client::open("redis://127.0.0.1:6379/").unwrap(),
            redis::AsyncConnectionConfig::new(),
        );
        c.ready().await.unwrap();
        c
    }

    fn scheduler(lock: RedisIdentifyLock, window: Duration) -> IdentifyScheduler {
        IdentifyScheduler::new(
            SessionStartLimit {
                total: 1000,
                remaining: 1000,
                reset_after: Duration::from_secs(3600),
                max_concurrency: 4,
            },
            IdentifySettings {
                window,
                reserve: 0,
                min_interval: Duration::ZERO,
            },
            Some(lock),
        )
    }

    /// Schedulers of two pods, each with its own connection, sharing keys
    /// under `prefix`.
    async fn two_pods(prefix: &str, window: Duration) -> (IdentifyScheduler, IdentifyScheduler) {
        let pod = async |owner: &str| {
            scheduler(RedisIdentifyLock::new(conn().await, prefix, owner), window)
        };
        (pod("pod-a").await, pod("pod-b").await)
    }

    /// Discord's window runs from the IDENTIFY it receives: a pod that
    /// claims the key and sends its IDENTIFY 200 ms later (a slow connect)
    /// holds the key a whole window from the send, so the other pod's turn
    /// comes no sooner than that. The 200 ms stand for the connect; no
    /// readiness is waited on.
    #[tokio::test]
    async fn the_shared_window_runs_from_the_identify_sent() {
        let prefix = testkit::unique_name("lock-sent");
        let window = Duration::from_millis(400);
        let (a, b) = two_pods(&prefix, window).await;
        let permit = a.acquire(0).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.identify_sent(permit);
        let sent = Instant::now();
        b.acquire(4).await;
        let gap = sent.elapsed();
        assert!(
            gap >= window - Duration::from_millis(20),
            "pod b identified {gap:?} after pod a's IDENTIFY left"
        );
    }

    /// Two "processes" (two schedulers, two connections) share key 0 through
    /// the real Redis: the second waits out the first one's window, while a
    /// different key is not delayed. Real time, with a scaled 400 ms window,
    /// because the window is measured by the Redis server's clock.
    #[tokio::test]
    async fn processes_sharing_a_key_take_turns() {
        let prefix = testkit::unique_name("lock");
        let window = Duration::from_millis(400);
        let (a, b) = two_pods(&prefix, window).await;
        let start = Instant::now();
        a.acquire(0).await;
        let first = start.elapsed();
        b.acquire(5).await; // key 1: free
        let other_key = start.elapsed();
        b.acquire(4).await; // key 0: held by pod-a
        let second = start.elapsed();
        assert!(
            other_key < first + Duration::from_millis(200),
            "{other_key:?}"
        );
        assert!(
            second >= first + window - Duration::from_millis(5),
            "{first:?} then {second:?}"
        );
        assert!(second < first + window * 3, "{second:?}");
        let mut c = conn().await;
        let owner: Option<String> = redis::cmd("GET")
            .arg(format!("{prefix}:identify:4:0"))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(owner.as_deref(), Some("pod-b"));
    }
}

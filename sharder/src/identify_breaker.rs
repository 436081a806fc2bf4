//! The identify circuit breaker: stop identifying while identifies keep
//! failing, instead of draining the session start budget.
//!
//! Every IDENTIFY spends one session start, whether or not it ends in
//! READY. A gateway (or a token, or an intents setting) that refuses every
//! IDENTIFY with op 9, or closes the connection between IDENTIFY and READY,
//! turns each shard's retry into a spent start; with 288 shards the daily
//! budget is gone within the hour. The shard's own backoff slows one shard;
//! the breaker stops them all, cluster-wide when the processes share Redis.
//!
//! # Algorithm
//! State: failures in a row, the last cool-down, and `open_until`.
//! - **Failure** (op 9 or a close after IDENTIFY, before READY): the count
//!   grows. At `failures` in a row, if the breaker is not already open, it
//!   trips: cool-down = `cooldown` on the first trip, else twice the last
//!   one, capped at `cooldown_max`; `open_until = now + cool-down`. One
//!   loud error per trip, `sharder_identify_circuit_trips_total` + 1.
//!   Failures while open (IDENTIFYs already in flight) count, but do not
//!   trip again; the first failure after the cool-down does (half-open:
//!   one more failed probe doubles the pause).
//! - **Success** (READY after IDENTIFY): count and cool-down back to zero,
//!   the breaker closes.
//! - **Asking** ([`IdentifyBreaker::open_for`], before every grant): the time
//!   left until `open_until`, or `None`. `sharder_identify_circuit_open` is
//!   1 while this process sees it open.
//!
//! Without Redis the state is this process's ([`BreakerState`]); with Redis
//! it is one hash `{prefix}:identify_breaker` updated by Lua scripts on the
//! Redis server's clock, so every pod's failures count towards one trip and
//! every pod pauses. A Redis error counts as "closed": the budget's
//! reserve still holds, and a Redis outage must not stop identifies by
//! itself.

use crate::clock::millis;
use std::sync::{Mutex as StdMutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// When the breaker trips and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Failed identifies in a row that trip it.
    pub failures: u32,
    /// First cool-down.
    pub cooldown: Duration,
    /// Longest cool-down.
    pub cooldown_max: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures: 10,
            cooldown: Duration::from_secs(30),
            cooldown_max: Duration::from_secs(15 * 60),
        }
    }
}

impl From<&config::SharderConfig> for BreakerPolicy {
    fn from(c: &config::SharderConfig) -> Self {
        Self {
            failures: c.identify_breaker_failures,
            cooldown: c.identify_breaker_cooldown,
            cooldown_max: c.identify_breaker_cooldown_max,
        }
    }
}

/// One process's breaker state (the module's state machine).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct BreakerState {
    failures: u32,
    last_cooldown: Duration,
    open_until: Option<Instant>,
}

impl BreakerState {
    /// A failed identify at `now`; the cool-down when it trips.
    pub(crate) fn failed(&mut self, now: Instant, policy: &BreakerPolicy) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        let open = self.open_until.is_some_and(|t| t > now);
        if self.failures < policy.failures.max(1) || open {
            return None;
        }
        let cooldown = if self.last_cooldown.is_zero() {
            policy.cooldown
        } else {
            (self.last_cooldown * 2).min(policy.cooldown_max)
        };
        self.last_cooldown = cooldown;
        self.open_until = Some(now + cooldown);
        Some(cooldown)
    }

    /// READY after IDENTIFY: the gateway accepts identifies again.
    pub(crate) fn succeeded(&mut self) {
        *self = Self::default();
    }

    /// Time left open at `now`.
    pub(crate) fn open_for(&self, now: Instant) -> Option<Duration> {
        self.open_until
            .filter(|&t| t > now)
            .map(|t| t.duration_since(now))
    }
}

/// `KEYS[1]` the hash; `ARGV` threshold, cooldown ms, cooldown max ms.
/// Returns the cool-down in ms when this failure tripped it, else 0.
const FAIL_SCRIPT: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local last = tonumber(redis.call('HGET', KEYS[1], 'cooldown') or '0')
local tripped = 0
if failures >= tonumber(ARGV[1]) and open_until <= now then
  if last == 0 then tripped = tonumber(ARGV[2]) else tripped = math.min(last * 2, tonumber(ARGV[3])) end
  redis.call('HSET', KEYS[1], 'cooldown', tripped, 'open_until', now + tripped)
  redis.call('HINCRBY', KEYS[1], 'trips', 1)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 4 + 3600000)
return tripped
";

/// `KEYS[1]` the hash. Returns the ms left open (0: closed).
const OPEN_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until > now then return open_until - now end
return 0
";

/// The breaker of one scheduler: this process's, or the cluster's in Redis.
pub(crate) enum IdentifyBreaker {
    Local(StdMutex<BreakerState>),
    Redis {
        conn: dnscache::RedisConnection,
        key: String,
    },
}

impl IdentifyBreaker {
    pub(crate) fn local() -> Self {
        Self::Local(StdMutex::new(BreakerState::default()))
    }

    /// The cluster's breaker under `prefix`.
    pub(crate) fn redis(conn: dnscache::RedisConnection, prefix: &str) -> Self {
        Self::Redis {
            conn,
            key: format!("{prefix}:identify_breaker"),
        }
    }

    /// An identify failed (op 9, or a close before READY).
    pub(crate) async fn failed(&self, shard_id: u32, policy: &BreakerPolicy) {
        metrics::counter!("sharder_identify_failures_total").increment(1);
        let tripped = match self {
            Self::Local(m) => m
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .failed(Instant::now(), policy),
            Self::Redis { conn, key } => {
                let r: redis::RedisResult<u64> = redis::cmd("EVAL")
                    .arg(FAIL_SCRIPT)
                    .arg(1)
                    .arg(key)
                    .arg(policy.failures.max(1))
                    .arg(millis(policy.cooldown))
                    .arg(millis(policy.cooldown_max))
                    .query_async(&mut conn.clone())
                    .await;
                match r {
                    Ok(0) => None,
                    Ok(ms) => Some(Duration::from_millis(ms)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot record a failed identify in Redis");
                        None
                    }
                }
            }
        };
        if let Some(cooldown) = tripped {
            metrics::counter!("sharder_identify_circuit_trips_total").increment(1);
            metrics::gauge!("sharder_identify_circuit_open").set(1.0);
            tracing::error!(
                shard_id,
                failures = policy.failures,
                cooldown_secs = cooldown.as_secs_f64(),
                "IDENTIFY CIRCUIT BREAKER OPEN: identifies keep failing (op 9 or a close before \
                 READY); every identify pauses instead of spending the session start budget \
                 (check the token, intents and Discord's status)"
            );
        }
    }

    /// An identify reached READY.
    pub(crate) async fn succeeded(&self) {
        match self {
            Self::Local(m) => m.lock().unwrap_or_else(PoisonError::into_inner).succeeded(),
            Self::Redis { conn, key } => {
                let r: redis::RedisResult<()> = redis::cmd("DEL")
                    .arg(key)
                    .query_async(&mut conn.clone())
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot record a successful identify in Redis");
                }
            }
        }
    }

    /// How long identifies must still pause, if the breaker is open.
    pub(crate) async fn open_for(&self) -> Option<Duration> {
        let open = match self {
            Self::Local(m) => m
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .open_for(Instant::now()),
            Self::Redis { conn, key } => {
                let r: redis::RedisResult<u64> = redis::cmd("EVAL")
                    .arg(OPEN_SCRIPT)
                    .arg(1)
                    .arg(key)
                    .query_async(&mut conn.clone())
                    .await;
                match r {
                    Ok(0) => None,
                    Ok(ms) => Some(Duration::from_millis(ms)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the identify breaker in Redis");
                        None
                    }
                }
            }
        };
        metrics::gauge!("sharder_identify_circuit_open").set(if open.is_some() {
            1.0
        } else {
            0.0
        });
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failures: 3,
            cooldown: Duration::from_secs(10),
            cooldown_max: Duration::from_secs(35),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trips_after_failures_in_a_row_and_doubles_to_the_cap() {
        let p = policy();
        let mut b = BreakerState::default();
        let t0 = Instant::now();
        assert_eq!(b.failed(t0, &p), None);
        assert_eq!(b.failed(t0, &p), None);
        assert_eq!(b.open_for(t0), None, "two failures keep it closed");
        assert_eq!(
            b.failed(t0, &p),
            Some(Duration::from_secs(10)),
            "third trips"
        );
        assert_eq!(b.open_for(t0), Some(Duration::from_secs(10)));
        // IDENTIFYs already in flight fail while open: no second trip.
        assert_eq!(b.failed(t0 + Duration::from_secs(1), &p), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        let t1 = Instant::now();
        assert_eq!(b.open_for(t1), None, "cool-down over: half-open");
        assert_eq!(
            b.failed(t1, &p),
            Some(Duration::from_secs(20)),
            "probe failed"
        );
        let t2 = t1 + Duration::from_secs(20);
        assert_eq!(b.failed(t2, &p), Some(Duration::from_secs(35)), "capped");
        let t3 = t2 + Duration::from_secs(35);
        assert_eq!(
            b.failed(t3, &p),
            Some(Duration::from_secs(35)),
            "stays capped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_closes_it_and_restarts_the_count() {
        let p = policy();
        let mut b = BreakerState::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.failed(t0, &p);
        }
        assert!(b.open_for(t0).is_some());
        b.succeeded();
        assert_eq!(b.open_for(t0), None);
        assert_eq!(b.failed(t0, &p), None);
        assert_eq!(b.failed(t0, &p), None);
        assert_eq!(
            b.failed(t0, &p),
            Some(Duration::from_secs(10)),
            "the next trip starts from the first cool-down again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn interleaved_successes_never_trip() {
        let p = policy();
        let mut b = BreakerState::default();
        for _ in 0..20 {
            let now = Instant::now();
            assert_eq!(b.failed(now, &p), None);
            assert_eq!(b.failed(now, &p), None);
            b.succeeded();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_breaker_reports_the_time_left() {
        let p = policy();
        let b = IdentifyBreaker::local();
        for _ in 0..3 {
            b.failed(7, &p).await;
        }
        assert_eq!(b.open_for().await, Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.open_for().await, Some(Duration::from_secs(6)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.open_for().await, None);
    }
}

//! One session start budget for every sharder process, in Redis.
//!
//! Discord counts session starts per bot, not per pod. A pod that counts
//! only its own identifies down from the figure it read at start-up lets
//! 8 pods spend the reserve 8 times over, and its gauge shows the alert
//! too late. With Redis, the count is one hash every pod decrements.
//!
//! # Algorithm
//! `{prefix}:session_start` holds `total`, `remaining`, `reset_at` (ms on
//! the Redis server's clock, so pods' clocks never matter) and `taken`
//! (identifies granted through it, ever). Two Lua scripts, each atomic:
//! - **take** (`reserve`): when `reset_at` has passed, the period is over:
//!   `remaining = total`, `reset_at = now + 24 h` (what a pod without Redis
//!   does too). Then, if `remaining > reserve`, decrement it and `taken`
//!   and grant; otherwise refuse. No interleaving of pods can spend the
//!   reserve: the test and the decrement are one script.
//! - **refresh** (a `GET /gateway/bot` answer and the `taken` mark read
//!   just before the request was sent, or none at start-up): Discord's
//!   figure is the truth, but it may be stale by the time it arrives:
//!   other pods identified while the request was in flight. So
//!   1. `corrected = remaining_read - (taken_now - taken_mark)`: the
//!      identifies granted since the request left may be missing from it;
//!   2. if the hash is missing, its period is over (`now >= reset_at`), or
//!      the answer is from a later period (`now + reset_after` is more than
//!      [`NEW_PERIOD_SLACK`] after `reset_at`: within one period Discord's
//!      `reset_at` only moves by the request's latency), the answer starts
//!      the period: `remaining = corrected`, `reset_at = now + reset_after`;
//!   3. otherwise (same period) a refresh only **lowers** the figure:
//!      `remaining = min(remaining, corrected)`. A stale read taken before
//!      other pods' identifies can therefore never raise it; a read that
//!      counts identifies we did not (another client of the same token,
//!      a restart that lost the hash) lowers it.
//!
//!   The hash expires a day after its reset, so a retired prefix cleans
//!   itself up.
//!
//! The rule's one weak spot is a period boundary: an answer of the new
//! period cannot know identifies granted but not yet sent when the request
//! left (at most one identify window of grants). The reserve is what
//! absorbs that.

use crate::clock::millis;
use std::time::Duration;

/// How far `now + reset_after` may move between two reads of one period
/// (request latency; the request deadline is 10 s) before the answer is
/// taken as a new period.
pub(crate) const NEW_PERIOD_SLACK: Duration = Duration::from_secs(60);

/// What the take script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// One identify granted; the shared remaining after it, and the time
    /// to the reset (a new period when the take found the old one over).
    Granted { remaining: u32, reset_in: Duration },
    /// Refused: at or below the reserve until the reset.
    AtReserve { remaining: u32, reset_in: Duration },
    /// No budget in Redis yet (expired): refresh first.
    Missing,
}

/// `KEYS[1]` hash; `ARGV[1]` reserve, `ARGV[2]` period ms.
/// Returns `{granted (1/0/-1 missing), remaining, reset_in_ms}`.
const TAKE_SCRIPT: &str = r"
redis.replicate_commands()
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reset_at = tonumber(redis.call('HGET', KEYS[1], 'reset_at'))
local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining'))
if now >= reset_at then
  remaining = tonumber(redis.call('HGET', KEYS[1], 'total'))
  reset_at = now + tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'remaining', remaining, 'reset_at', reset_at)
end
if remaining > tonumber(ARGV[1]) then
  remaining = redis.call('HINCRBY', KEYS[1], 'remaining', -1)
  redis.call('HINCRBY', KEYS[1], 'taken', 1)
  return {1, remaining, reset_at - now}
end
return {0, remaining, reset_at - now}
";

/// `KEYS[1]` hash; `ARGV` total, remaining read, reset_after ms, taken
/// mark (-1: none), slack ms, expiry after reset ms.
/// Returns `{remaining, reset_in_ms, new_period (1/0)}`.
const REFRESH_SCRIPT: &str = r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local taken = tonumber(redis.call('HGET', KEYS[1], 'taken') or '0')
local mark = tonumber(ARGV[4])
local corrected = tonumber(ARGV[2])
if mark >= 0 and taken > mark then corrected = corrected - (taken - mark) end
if corrected < 0 then corrected = 0 end
local fresh_reset = now + tonumber(ARGV[3])
local reset_at = tonumber(redis.call('HGET', KEYS[1], 'reset_at') or '-1')
local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '-1')
local new_period = 0
if reset_at < 0 or remaining < 0 or now >= reset_at or fresh_reset > reset_at + tonumber(ARGV[5]) then
  new_period = 1
  remaining = corrected
  reset_at = fresh_reset
elseif corrected < remaining then
  remaining = corrected
end
redis.call('HSET', KEYS[1], 'total', ARGV[1], 'remaining', remaining, 'reset_at', reset_at, 'taken', taken)
redis.call('PEXPIREAT', KEYS[1], reset_at + tonumber(ARGV[6]))
return {remaining, reset_at - now, new_period}
";

/// The identifies granted so far, read before a `GET /gateway/bot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetMark(Option<u64>);

/// The cluster's session start budget in Redis.
#[derive(Clone)]
pub struct SharedBudget {
    conn: dnscache::RedisConnection,
    prefix: String,
    key: String,
}

impl std::fmt::Debug for SharedBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBudget")
            .field("key", &self.key)
            .finish()
    }
}

impl SharedBudget {
    /// The budget under `prefix` (`[redis].key_prefix`).
    pub fn new(conn: dnscache::RedisConnection, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            key: format!("{prefix}:session_start"),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key (tests delete it).
    pub fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn connection(&self) -> &dnscache::RedisConnection {
        &self.conn
    }

    /// Read before sending `GET /gateway/bot`; passed to `refresh`.
    pub async fn mark(&self) -> BudgetMark {
        let r: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
            .arg(&self.key)
            .arg("taken")
            .query_async(&mut self.conn.clone())
            .await;
        BudgetMark(r.ok().map(Option::unwrap_or_default))
    }

    /// A mark that corrects nothing (the start-up read, taken before Redis
    /// was dialled).
    pub fn no_mark() -> BudgetMark {
        BudgetMark(None)
    }

    /// Applies a `GET /gateway/bot` answer (module docs, refresh); returns
    /// the shared remaining and the time to its reset.
    pub(crate) async fn refresh(
        &self,
        total: u32,
        remaining: u32,
        reset_after: Duration,
        mark: BudgetMark,
    ) -> redis::RedisResult<(u32, Duration)> {
        let mark = mark.0.and_then(|m| i64::try_from(m).ok()).unwrap_or(-1);
        let (left, reset_in, new_period): (i64, i64, i64) = redis::cmd("EVAL")
            .arg(REFRESH_SCRIPT)
            .arg(1)
            .arg(&self.key)
            .arg(total)
            .arg(remaining)
            .arg(millis(reset_after))
            .arg(mark)
            .arg(millis(NEW_PERIOD_SLACK))
            .arg(millis(Duration::from_secs(24 * 3600)))
            .query_async(&mut self.conn.clone())
            .await?;
        let left = u32::try_from(left.max(0)).unwrap_or(u32::MAX);
        tracing::info!(
            read = remaining,
            shared = left,
            new_period = new_period == 1,
            "shared session start budget refreshed from GET /gateway/bot"
        );
        Ok((left, ms(reset_in)))
    }

    /// One identify, unless that would spend the reserve.
    pub(crate) async fn take(&self, reserve: u32, period: Duration) -> redis::RedisResult<Take> {
        let (granted, remaining, reset_in): (i64, i64, i64) = redis::cmd("EVAL")
            .arg(TAKE_SCRIPT)
            .arg(1)
            .arg(&self.key)
            .arg(reserve)
            .arg(millis(period))
            .query_async(&mut self.conn.clone())
            .await?;
        let remaining = u32::try_from(remaining.max(0)).unwrap_or(u32::MAX);
        Ok(match granted {
            1 => Take::Granted {
                remaining,
                reset_in: ms(reset_in),
            },
            0 => Take::AtReserve {
                remaining,
                reset_in: ms(reset_in),
            },
            _ => Take::Missing,
        })
    }
}

fn ms(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn budget(name: &str) -> SharedBudget {
        let c = dnscache::RedisConnection::with_client(
            redis::Client::open("redis://127.0.0.1:6379/").unwrap(),
            redis::AsyncConnectionConfig::new(),
        );
        c.ready().await.unwrap();
        SharedBudget::new(c, &testkit::unique_name(name))
    }

    async fn delete(b: &SharedBudget) {
        let _: () = redis::cmd("DEL")
            .arg(b.key())
            .query_async(&mut b.conn.clone())
            .await
            .unwrap();
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[tokio::test]
    async fn takes_stop_at_the_reserve_across_clients() {
        let b = budget("take").await;
        assert_eq!(b.take(2, DAY).await.unwrap(), Take::Missing);
        b.refresh(100, 12, DAY, SharedBudget::no_mark())
            .await
            .unwrap();
        // Two "pods" (clones share nothing but Redis) race for 20 grants.
        let other = SharedBudget::new(b.conn.clone(), b.prefix());
        let mut tasks = Vec::new();
        for pod in [b.clone(), other] {
            tasks.push(tokio::spawn(async move {
                let mut granted = 0;
                for _ in 0..20 {
                    if let Take::Granted { .. } = pod.take(2, DAY).await.unwrap() {
                        granted += 1;
                    }
                }
                granted
            }));
        }
        let mut granted = 0;
        for t in tasks {
            granted += t.await.unwrap();
        }
        assert_eq!(granted, 10, "12 remaining, reserve 2");
        match b.take(2, DAY).await.unwrap() {
            Take::AtReserve {
                remaining,
                reset_in,
            } => {
                assert_eq!(remaining, 2);
                assert!(reset_in > DAY - Duration::from_secs(60), "{reset_in:?}");
            }
            other => panic!("{other:?}"),
        }
        delete(&b).await;
    }

    #[tokio::test]
    async fn a_stale_read_never_raises_the_figure_within_a_period() {
        let b = budget("refresh").await;
        b.refresh(100, 50, DAY, SharedBudget::no_mark())
            .await
            .unwrap();
        let mark = b.mark().await;
        // Other pods identify 5 times while this pod's request is in flight.
        for _ in 0..5 {
            b.take(0, DAY).await.unwrap();
        }
        // The answer was read before those 5: 50 - 5 = 45 at most.
        let (left, _) = b.refresh(100, 50, DAY, mark).await.unwrap();
        assert_eq!(left, 45);
        // Same period, a read that counted 2 more identifies than we did
        // (another client of the token): lowers.
        let mark = b.mark().await;
        let (left, _) = b.refresh(100, 43, DAY, mark).await.unwrap();
        assert_eq!(left, 43);
        // A higher read of the same period (stale, unmarked) never raises.
        let (left, _) = b
            .refresh(100, 90, DAY, SharedBudget::no_mark())
            .await
            .unwrap();
        assert_eq!(left, 43);
        // An answer from a later period (its reset an hour later) does.
        let (left, reset_in) = b
            .refresh(100, 99, DAY + Duration::from_secs(3600), b.mark().await)
            .await
            .unwrap();
        assert_eq!(left, 99);
        assert!(reset_in > DAY, "{reset_in:?}");
        delete(&b).await;
    }

    #[tokio::test]
    async fn a_passed_reset_refills_to_total() {
        let b = budget("reset").await;
        b.refresh(30, 3, Duration::from_millis(50), SharedBudget::no_mark())
            .await
            .unwrap();
        assert!(matches!(
            b.take(3, DAY).await.unwrap(),
            Take::AtReserve { .. }
        ));
        tokio::time::sleep(Duration::from_millis(80)).await;
        match b.take(3, DAY).await.unwrap() {
            Take::Granted {
                remaining,
                reset_in,
            } => {
                assert_eq!(remaining, 29);
                assert!(reset_in > DAY - Duration::from_secs(60), "a new period");
            }
            other => panic!("{other:?}"),
        }
        delete(&b).await;
    }
}

//! A live reshard across several sharder processes: its shared state in
//! Redis (issue #17). One process alone needs none of this
//! ([`crate::resharder`] runs the same steps in-process).
//!
//! Each process runs its own part of both totals (the layout rules,
//! [`crate::plan_shards`], applied to the old and to the new total), so
//! every step that must hold for the whole bot (every new shard loaded,
//! every old shard stopped) is a barrier over the processes.
//!
//! # Algorithm
//! One hash per bot, `{prefix}:reshard`:
//! * `id`, `from`, `to`: claimed by the process that admitted the request,
//!   atomically ([`CLAIM`]): a second reshard is refused while one runs,
//!   whichever process is asked.
//! * `announced`: the claimer set it once `started` was confirmed on every
//!   partition. Every process polls the hash ([`POLL`]) and joins an
//!   announced reshard: it starts its part of the new total.
//! * `loaded:{i}`: process `i`'s new shards are READY and received the
//!   GUILD_CREATE of every guild they list.
//! * `committed` or `aborted`: decided once, by a script ([`DECIDE`]): the
//!   first process that sees every `loaded:{i}` commits the hand-over; a
//!   process whose new shard stopped for good before that aborts it. A
//!   commit and an abort cannot both win.
//! * `retired:{i}` (or `rolled_back:{i}`): process `i` closed its old (or,
//!   aborted, its new) shards, and their events are in the broker.
//! * `finisher`: the first process to see every process retired (or
//!   rolled back) publishes the end marker (`completed`, `aborted`) behind
//!   all of those events, retires the closed total's sessions and records
//!   the running total; then `finished`. A finisher that dies is the same
//!   process index when its pod comes back, which finishes again (the
//!   workers announce a phase once).
//!
//! Every write after the claim names the reshard's `id` and is ignored if
//! the hash holds another one. A process restarted mid-reshard reads the
//! hash and carries on from it ([`crate::runtime`]): it resumes its part of
//! both totals, so a rolling restart of the StatefulSet does not undo a
//! reshard. A process that stays down stalls the barrier; the stall is
//! reported (`sharder_reshard_stalled`) and the reshard goes on when the
//! pod is back.

use envelope::{ReshardMarker, ReshardPhase};
use std::collections::HashMap;
use std::time::Duration;

/// How often a process reads the hash while it waits on a barrier or for
/// a reshard to join.
pub(crate) const POLL: Duration = Duration::from_millis(200);

/// How long the hash outlives its last write: a running reshard for a
/// week, a finished one for an hour (for `GET /admin/reshard` and late
/// readers).
const RUNNING_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
const FINISHED_TTL_MS: u64 = 3600 * 1000;

/// KEYS[1] the hash; ARGV id, from, to, ttl, processes. Returns {1} when
/// claimed, else {0, id, from, to} of the reshard that runs.
const CLAIM: &str = r"
local running = redis.call('HGET', KEYS[1], 'id')
if running and redis.call('HEXISTS', KEYS[1], 'finished') == 0 then
  return {0, running, redis.call('HGET', KEYS[1], 'from'), redis.call('HGET', KEYS[1], 'to')}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'from', ARGV[2], 'to', ARGV[3], 'processes', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1}
";

/// KEYS[1] the hash; ARGV id, field, value, ttl. Sets the field if the
/// hash holds reshard `id`; returns 1 then, 0 otherwise.
const MARK: &str = r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// KEYS[1] the hash; ARGV id, wanted ('committed' or 'aborted'), reason.
/// The first decision stands; returns it ('gone' if the hash holds
/// another reshard).
const DECIDE: &str = r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 'gone' end
if redis.call('HEXISTS', KEYS[1], 'committed') == 1 then return 'committed' end
if redis.call('HEXISTS', KEYS[1], 'aborted') == 1 then return 'aborted' end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return ARGV[2]
";

/// KEYS[1] the hash; ARGV id, process. The first caller becomes the
/// finisher; returns the finisher's index (-1 if the hash holds another
/// reshard).
const ELECT: &str = r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return -1 end
redis.call('HSETNX', KEYS[1], 'finisher', ARGV[2])
return tonumber(redis.call('HGET', KEYS[1], 'finisher'))
";

/// Errors of the shared reshard state.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "busy: a live reshard from {from} to {to} shards is in progress in this cluster; \
         wait for it (GET /admin/reshard)"
    )]
    Busy { from: u32, to: u32 },
    #[error("the reshard's state in Redis was replaced by another reshard")]
    Gone,
    #[error("redis (reshard state): {0}; check that Redis is reachable")]
    Redis(#[from] redis::RedisError),
}

/// How the hand-over was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Committed,
    Aborted,
}

/// The hash, read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClusterView {
    /// The reshard it holds, if any.
    pub id: Option<u64>,
    pub from: u32,
    pub to: u32,
    /// The process count both totals were laid out for.
    pub processes: u32,
    pub announced: bool,
    pub loaded: u32,
    pub committed: bool,
    pub aborted: Option<String>,
    pub retired: u32,
    pub rolled_back: u32,
    pub finished: bool,
}

impl ClusterView {
    fn parse(h: &HashMap<String, String>) -> Self {
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        let count = |prefix: &str| {
            let n = h.keys().filter(|k| k.starts_with(prefix)).count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        Self {
            id: h.get("id").and_then(|v| v.parse().ok()),
            from: num("from"),
            to: num("to"),
            processes: num("processes"),
            announced: h.contains_key("announced"),
            loaded: count("loaded:"),
            committed: h.contains_key("committed"),
            aborted: h.get("aborted").cloned(),
            retired: count("retired:"),
            rolled_back: count("rolled_back:"),
            finished: h.contains_key("finished"),
        }
    }

    /// A reshard the processes are running (announced, not finished).
    pub(crate) fn running(&self) -> Option<u64> {
        self.id.filter(|_| self.announced && !self.finished)
    }

    /// The `started` marker of the reshard it holds.
    pub(crate) fn marker(&self) -> Option<ReshardMarker> {
        self.id.map(|id| ReshardMarker {
            id,
            phase: ReshardPhase::Started,
            from: self.from,
            to: self.to,
            at_ms: id,
        })
    }
}

/// This process's handle on the shared reshard state.
#[derive(Clone)]
pub(crate) struct ReshardCluster {
    conn: dnscache::RedisConnection,
    key: String,
    /// This process's index, and how many processes run the bot.
    pub process: u32,
    pub processes: u32,
}

impl std::fmt::Debug for ReshardCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReshardCluster")
            .field("key", &self.key)
            .field("process", &self.process)
            .field("processes", &self.processes)
            .finish_non_exhaustive()
    }
}

impl ReshardCluster {
    pub(crate) fn new(
        conn: dnscache::RedisConnection,
        prefix: &str,
        process: u32,
        processes: u32,
    ) -> Self {
        Self {
            conn,
            key: format!("{prefix}:reshard"),
            process,
            processes,
        }
    }

    /// Claims the cluster for `marker`'s reshard, or says which one runs.
    pub(crate) async fn claim(&self, marker: &ReshardMarker) -> Result<(), ClusterError> {
        let answer: Vec<redis::Value> = redis::cmd("EVAL")
            .arg(CLAIM)
            .arg(1)
            .arg(&self.key)
            .arg(marker.id)
            .arg(marker.from)
            .arg(marker.to)
            .arg(RUNNING_TTL_MS)
            .arg(self.processes)
            .query_async(&mut self.conn.clone())
            .await?;
        let int = |i: usize| {
            answer.get(i).and_then(|v| match v {
                redis::Value::Int(n) => u32::try_from(*n).ok(),
                redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                _ => None,
            })
        };
        match int(0) {
            Some(1) => Ok(()),
            _ => Err(ClusterError::Busy {
                from: int(2).unwrap_or(0),
                to: int(3).unwrap_or(0),
            }),
        }
    }

    async fn mark(&self, id: u64, field: &str, value: &str, ttl: u64) -> Result<(), ClusterError> {
        let set: i64 = redis::cmd("EVAL")
            .arg(MARK)
            .arg(1)
            .arg(&self.key)
            .arg(id)
            .arg(field)
            .arg(value)
            .arg(ttl)
            .query_async(&mut self.conn.clone())
            .await?;
        if set == 1 {
            Ok(())
        } else {
            Err(ClusterError::Gone)
        }
    }

    /// `started` is confirmed on every partition: the others may join.
    pub(crate) async fn announce(&self, id: u64) -> Result<(), ClusterError> {
        self.mark(id, "announced", "1", RUNNING_TTL_MS).await
    }

    /// This process's step `what` (`loaded`, `retired`, `rolled_back`) is
    /// done.
    pub(crate) async fn report(&self, id: u64, what: &str) -> Result<(), ClusterError> {
        let field = format!("{what}:{}", self.process);
        self.mark(id, &field, "1", RUNNING_TTL_MS).await
    }

    /// [`Self::report`], retrying while Redis is unreachable: the other
    /// processes wait on this report, so giving up would stall them (and a
    /// process that went on alone would leave the cluster split).
    pub(crate) async fn report_surely(&self, id: u64, what: &str) -> Result<(), ClusterError> {
        self.surely(what, || self.report(id, what)).await
    }

    /// [`Self::decide`], retrying while Redis is unreachable.
    pub(crate) async fn decide_surely(
        &self,
        id: u64,
        wanted: Decision,
        reason: &str,
    ) -> Result<Decision, ClusterError> {
        self.surely("the hand-over decision", || self.decide(id, wanted, reason))
            .await
    }

    async fn surely<T, F: Future<Output = Result<T, ClusterError>>>(
        &self,
        what: &str,
        attempt: impl Fn() -> F,
    ) -> Result<T, ClusterError> {
        let mut warned = false;
        loop {
            match attempt().await {
                Err(ClusterError::Redis(e)) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, step = what, "cannot write the reshard state in Redis; retrying");
                    }
                    tokio::time::sleep(POLL).await;
                }
                other => return other,
            }
        }
    }

    /// Ends a reshard that never got going (its `started` could not be
    /// published), so the next one may be claimed.
    pub(crate) async fn give_up(&self, id: u64, reason: &str) -> Result<(), ClusterError> {
        self.mark(id, "aborted", reason, RUNNING_TTL_MS).await?;
        self.finish(id).await
    }

    /// Commits the hand-over, or aborts the reshard; the first decision
    /// stands and is returned.
    pub(crate) async fn decide(
        &self,
        id: u64,
        wanted: Decision,
        reason: &str,
    ) -> Result<Decision, ClusterError> {
        let field = match wanted {
            Decision::Committed => "committed",
            Decision::Aborted => "aborted",
        };
        let answer: String = redis::cmd("EVAL")
            .arg(DECIDE)
            .arg(1)
            .arg(&self.key)
            .arg(id)
            .arg(field)
            .arg(reason)
            .query_async(&mut self.conn.clone())
            .await?;
        match answer.as_str() {
            "committed" => Ok(Decision::Committed),
            "aborted" => Ok(Decision::Aborted),
            _ => Err(ClusterError::Gone),
        }
    }

    /// Whether this process finishes the reshard (module docs).
    pub(crate) async fn elect_finisher(&self, id: u64) -> Result<bool, ClusterError> {
        let finisher: i64 = redis::cmd("EVAL")
            .arg(ELECT)
            .arg(1)
            .arg(&self.key)
            .arg(id)
            .arg(self.process)
            .query_async(&mut self.conn.clone())
            .await?;
        if finisher < 0 {
            return Err(ClusterError::Gone);
        }
        Ok(finisher == i64::from(self.process))
    }

    /// The reshard is over: the next may be claimed.
    pub(crate) async fn finish(&self, id: u64) -> Result<(), ClusterError> {
        self.mark(id, "finished", "1", FINISHED_TTL_MS).await
    }

    /// The hash as it is now.
    pub(crate) async fn view(&self) -> Result<ClusterView, ClusterError> {
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.key)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(ClusterView::parse(&h))
    }

    /// Polls until `done` holds for reshard `id`'s view (a Redis error is
    /// logged and retried: the barrier waits for Redis as for a process).
    pub(crate) async fn wait(
        &self,
        id: u64,
        what: &str,
        done: impl Fn(&ClusterView) -> bool,
    ) -> Result<ClusterView, ClusterError> {
        let mut warned = false;
        loop {
            match self.view().await {
                Ok(v) if v.id != Some(id) => return Err(ClusterError::Gone),
                Ok(v) if done(&v) => return Ok(v),
                Ok(_) => {}
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, waiting_for = what, "cannot read the reshard state; retrying");
                }
                Err(_) => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn cluster(prefix: &str, process: u32) -> ReshardCluster {
        let conn = dnscache::RedisConnection::with_client(
            redis::Client::open(testkit::services::REDIS_URL).unwrap(),
            redis::AsyncConnectionConfig::new(),
        );
        conn.ready().await.unwrap();
        ReshardCluster::new(conn, prefix, process, 2)
    }

    fn marker(id: u64) -> ReshardMarker {
        ReshardMarker {
            id,
            phase: ReshardPhase::Started,
            from: 4,
            to: 8,
            at_ms: id,
        }
    }

    #[tokio::test]
    async fn one_reshard_at_a_time_and_one_decision() {
        let prefix = testkit::unique_name("reshard-cluster");
        let (a, b) = (cluster(&prefix, 0).await, cluster(&prefix, 1).await);
        a.claim(&marker(1)).await.unwrap();
        assert!(matches!(
            b.claim(&marker(2)).await,
            Err(ClusterError::Busy { from: 4, to: 8 })
        ));
        assert_eq!(a.view().await.unwrap().running(), None, "not announced");
        a.announce(1).await.unwrap();
        let v = b.view().await.unwrap();
        assert_eq!((v.running(), v.processes), (Some(1), 2));
        // Writes for another reshard are ignored.
        assert!(matches!(
            b.report(2, "loaded").await,
            Err(ClusterError::Gone)
        ));
        a.report(1, "loaded").await.unwrap();
        b.report(1, "loaded").await.unwrap();
        b.report(1, "loaded").await.unwrap();
        assert_eq!(a.view().await.unwrap().loaded, 2, "a report counts once");
        assert_eq!(
            b.decide(1, Decision::Committed, "").await.unwrap(),
            Decision::Committed
        );
        assert_eq!(
            a.decide(1, Decision::Aborted, "shard 3 stopped")
                .await
                .unwrap(),
            Decision::Committed,
            "the first decision stands"
        );
        // One finisher, the same when asked again.
        assert!(a.elect_finisher(1).await.unwrap());
        assert!(!b.elect_finisher(1).await.unwrap());
        assert!(a.elect_finisher(1).await.unwrap());
        a.finish(1).await.unwrap();
        let v = b.view().await.unwrap();
        assert!(v.finished && v.committed && v.aborted.is_none());
        // Finished: the next reshard may be claimed, and starts clean.
        b.claim(&marker(3)).await.unwrap();
        let v = a.view().await.unwrap();
        assert_eq!((v.id, v.loaded, v.committed), (Some(3), 0, false));
        assert_eq!(
            a.decide(3, Decision::Aborted, "shard 3 stopped")
                .await
                .unwrap(),
            Decision::Aborted
        );
        assert_eq!(
            b.decide(3, Decision::Committed, "").await.unwrap(),
            Decision::Aborted
        );
        a.give_up(3, "x").await.unwrap();
        redis::cmd("DEL")
            .arg(&a.key)
            .query_async::<()>(&mut a.conn.clone())
            .await
            .unwrap();
    }
}

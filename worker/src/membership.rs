//! Replicas that share the partitions: membership and leases in Redis.
//!
//! # Algorithm
//! Every [`TICK`], each replica:
//! 1. heartbeats: one script adds its id to the members sorted set with a
//!    score of Redis's own clock plus [`MEMBER_TTL`], drops members whose
//!    score has passed, and returns the live ids (server time, so pod clock
//!    skew does not matter);
//! 2. computes the partitions it should own with [`crate::assignment`];
//! 3. runs one [`LeaseBook::plan`]: acquires free leases it should own
//!    (`SET NX PX` [`LEASE_TTL`]), renews those it has, tells the session
//!    (through the [`PartitionGate`]) to stop those it should not own or
//!    could not renew for [`LEASE_VALID`], and deletes a lease only after
//!    its consumer has stopped.
//!
//! A replica that joins appears in the others' member sets within one tick
//! and they hand over its share; one that dies stops heartbeating, drops
//! out of the set after [`MEMBER_TTL`], and its leases expire after
//! [`LEASE_TTL`], so its partitions move within about six seconds. On
//! shutdown a replica releases its leases and leaves the set once its
//! consumers have drained, so the others take over at their next tick.
//!
//! # Why this is safe
//! See [`crate::lease`]: a lease is acquired only when free, released only
//! after the consumer stopped, and a consumer stops on its own when its
//! lease may be about to expire ([`LEASE_VALID`] is half the TTL). Each
//! queue keeps single-active-consumer, so even a replica paused past its
//! lease cannot receive a partition at the same time as the next owner.
//! No broker feature newer than RabbitMQ 3.8 is needed (no consumer
//! priorities), and Kubernetes is not asked for anything.

use crate::gate::PartitionGate;
use crate::lease::LeaseBook;
use dnscache::RedisConnection;
use rand::Rng;
use redis::Script;
use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a replica heartbeats and reconciles its leases.
pub(crate) const TICK: Duration = Duration::from_millis(1_000);
/// How long a member counts as alive after its last heartbeat.
pub(crate) const MEMBER_TTL: Duration = Duration::from_millis(3_000);
/// A lease's TTL in Redis.
pub(crate) const LEASE_TTL: Duration = Duration::from_millis(5_000);
/// How long a lease counts as ours locally after a sent renew.
pub(crate) const LEASE_VALID: Duration = Duration::from_millis(2_500);

static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
",
    )
});

static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// One replica's membership and leases.
pub(crate) struct Membership {
    con: RedisConnection,
    /// This run's id: the pod name (HOSTNAME), the pid and a random suffix,
    /// so a restarted pod never inherits its previous leases.
    id: String,
    members_key: String,
    lease_prefix: String,
    partitions: Vec<u32>,
    gate: Arc<PartitionGate>,
}

impl Membership {
    /// Members and leases of the topology `base`, under `prefix`.
    pub(crate) fn new(
        con: RedisConnection,
        prefix: &str,
        base: &str,
        partitions: Vec<u32>,
        gate: Arc<PartitionGate>,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        let id = format!(
            "{host}-{}-{:08x}",
            std::process::id(),
            rand::rng().random::<u32>()
        );
        Self {
            con,
            id,
            members_key: format!("{prefix}:workers:{base}:members"),
            lease_prefix: format!("{prefix}:workers:{base}:lease:"),
            partitions,
            gate,
        }
    }

    fn lease_key(&self, p: u32) -> String {
        format!("{}{p}", self.lease_prefix)
    }

    async fn heartbeat(&self) -> Result<Vec<String>, redis::RedisError> {
        let mut con = self.con.clone();
        HEARTBEAT
            .key(&self.members_key)
            .arg(&self.id)
            .arg(MEMBER_TTL.as_millis() as u64)
            .invoke_async(&mut con)
            .await
    }

    async fn lease(&self, script: &Script, p: u32) -> Result<bool, redis::RedisError> {
        let mut con = self.con.clone();
        let n: i64 = script
            .key(self.lease_key(p))
            .arg(&self.id)
            .arg(LEASE_TTL.as_millis() as u64)
            .invoke_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// Heartbeats and reconciles until `stop`, then waits for the
    /// consumers to stop (the caller bounds that), releases every lease
    /// and leaves the member set.
    pub(crate) async fn run(self, stop: CancellationToken) {
        tracing::info!(id = %self.id, partitions = self.partitions.len(), "sharing partitions through Redis leases");
        let mut book = LeaseBook::new(LEASE_VALID);
        let mut members: Vec<String> = Vec::new();
        let mut changes = self.gate.subscribe();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match self.heartbeat().await {
                        Ok(live) => {
                            if live != members {
                                tracing::info!(members = ?live, "worker members changed");
                                members = live;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "worker heartbeat failed"),
                    }
                }
                // A consumer stopped: release its lease without waiting a tick.
                r = changes.changed() => if r.is_err() { break },
                () = stop.cancelled() => break,
            }
            changes.borrow_and_update();
            let desired = crate::assignment::assign(&self.partitions, &members, &self.id);
            self.reconcile(&mut book, &desired).await;
        }
        self.leave(&mut book).await;
    }

    /// One plan of `book` towards `desired`, carried out.
    async fn reconcile(&self, book: &mut LeaseBook, desired: &BTreeSet<u32>) {
        let plan = book.plan(desired, &self.gate.running(), Instant::now());
        for &p in &plan.renew {
            let sent = Instant::now();
            match self.lease(&RENEW, p).await {
                Ok(ours) => {
                    if book.renewed(p, sent, ours) {
                        tracing::warn!(partition = p, "lease taken by another replica; stopping");
                        metrics::counter!("worker_partition_handovers_total", "direction" => "lost")
                            .increment(1);
                    }
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "renewing a lease failed"),
            }
        }
        for &p in &plan.acquire {
            let sent = Instant::now();
            match self.lease(&ACQUIRE, p).await {
                Ok(true) => {
                    book.acquired(p, sent);
                    metrics::counter!("worker_partition_handovers_total", "direction" => "acquired")
                        .increment(1);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(partition = p, error = %e, "acquiring a lease failed"),
            }
        }
        // Stops (and drops a lost lease) before any release is checked.
        self.gate.set_allowed(book.held());
        for &p in &plan.release {
            self.release(book, p).await;
        }
        self.publish(book);
    }

    /// Releases `p` if its consumer is gone (checked after it was
    /// disallowed, so none can start).
    async fn release(&self, book: &mut LeaseBook, p: u32) {
        if self.gate.is_running(p) {
            return;
        }
        match self.lease(&RELEASE, p).await {
            Ok(_) => {
                book.released(p);
                metrics::counter!("worker_partition_handovers_total", "direction" => "released")
                    .increment(1);
            }
            // Kept: retried next tick; it expires in Redis anyway.
            Err(e) => tracing::warn!(partition = p, error = %e, "releasing a lease failed"),
        }
    }

    fn publish(&self, book: &LeaseBook) {
        let held = book.held();
        metrics::gauge!("worker_partitions_held").set(held.len() as f64);
        for &p in &self.partitions {
            let v = if held.contains(&p) { 1.0 } else { 0.0 };
            metrics::gauge!("worker_partition_held", "partition" => p.to_string()).set(v);
        }
    }

    /// Shutdown: the consumers have been told to stop by the process's
    /// token; release each lease once its consumer is gone, then leave.
    async fn leave(&self, book: &mut LeaseBook) {
        self.gate.set_allowed(BTreeSet::new());
        let mut changes = self.gate.subscribe();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            for p in book.owned() {
                self.release(book, p).await;
            }
            if book.owned().is_empty() {
                break;
            }
            // Bounded by the caller's drain grace. The leases of consumers
            // still draining stay renewed, so they do not expire under them.
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = tick.tick() => {
                    for p in book.owned() {
                        let sent = Instant::now();
                        if let Ok(ours) = self.lease(&RENEW, p).await {
                            book.renewed(p, sent, ours);
                        }
                    }
                }
            }
        }
        self.publish(book);
        let mut con = self.con.clone();
        let left: Result<i64, _> = redis::cmd("ZREM")
            .arg(&self.members_key)
            .arg(&self.id)
            .query_async(&mut con)
            .await;
        if let Err(e) = left {
            tracing::warn!(error = %e, "leaving the worker members failed; it expires");
        }
        tracing::info!(id = %self.id, "left the worker members");
    }
}

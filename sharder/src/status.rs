//! The status page's data: every shard of the bot at a glance, for an
//! operator in the middle of an incident (`GET /` and `GET /status.json`,
//! see `http.rs`).
//!
//! # Algorithm
//! Each process builds a [`ProcessReport`] of its own shards once per
//! `sharder.status_interval` ([`publish`]): each shard's state and vitals
//! (`shard_vitals.rs`), its events per second from the change of its event
//! count since the previous report, and the process's sink, DNS cache,
//! identify throttle, session start budget and reshard in progress. While
//! starting it reports what start-up waits for and no shards.
//!
//! With `[redis]` the report goes to `{prefix}:status:{process}`, expiring
//! after [`TTL_INTERVALS`] intervals, and the process's name to the sorted
//! set `{prefix}:status` (an index, scored by report time and trimmed of
//! names an hour old). A view reads the index and every report in one
//! round trip each; a process that stopped reporting drops out when its key
//! expires (Redis's clock, not the reader's), and its shards show as
//! `unreported`. Any process serves the whole cluster. Without Redis, or
//! when Redis fails, the view holds this process's report only and says so
//! (`scope: "process"`, with a `notice`).
//!
//! The view ([`view`]) merges the reports of the serving total: one entry
//! per shard (the newest report wins while a restarted pod's old report
//! has not expired yet), the counts by state, the identify queue (shards
//! waiting for or sending an IDENTIFY, longest first), the budget of the
//! newest report (the cluster's own when it is shared) and the reshard in
//! progress. No secret is in any of it: tokens, passwords and URLs are not
//! read here.

use crate::clock::{millis, now_ms};
use crate::http::AdminState;
use crate::shard::ShardState;
use crate::shard_vitals::LastClose;
use crate::{AmqpSinkStats, IdentifyScheduler};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A report lives this many intervals in Redis without a newer one.
pub const TTL_INTERVALS: u32 = 3;

/// Names in the index older than this are trimmed.
const INDEX_KEEP: Duration = Duration::from_secs(3600);

/// One shard, as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    pub id: u32,
    pub total: u32,
    /// A `sharder_shard_state` label (`active`, `resuming`, ...).
    pub state: String,
    pub process: String,
    /// Its identify rate-limit key (`id % max_concurrency`).
    pub bucket: u16,
    pub guilds: u32,
    pub rtt_ms: Option<f64>,
    pub events_per_sec: f64,
    pub state_since_ms: u64,
    /// Since when it waits for a new session (its identify turn, then the
    /// identify itself). Absent from older reports.
    #[serde(default)]
    pub queued_since_ms: Option<u64>,
    pub last_identify_ms: Option<u64>,
    pub last_resume_ms: Option<u64>,
    pub last_close: Option<LastClose>,
}

/// The event sink of a process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkReport {
    /// `None`: not a broker (the demo's and tests' channel sink).
    pub connected: Option<bool>,
    pub buffered: u64,
    pub unconfirmed: u64,
}

/// The process's DNS cache, since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsReport {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    /// Lookups of IP literals, which need no DNS (a process configured with
    /// addresses only has no hits or misses). Absent from older reports.
    #[serde(default)]
    pub literals: u64,
}

/// The session start budget as the process last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetReport {
    pub total: u32,
    pub remaining: u32,
    pub reset_in_ms: u64,
    /// Shared by the cluster through Redis.
    pub shared: bool,
    pub max_concurrency: u16,
}

/// What one process reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessReport {
    pub name: String,
    /// The pod (`HOSTNAME`), when known.
    pub host: String,
    pub at_ms: u64,
    /// The shard total it serves (0 while unknown).
    pub total: u32,
    /// What start-up waits for, until the shards run.
    pub phase: Option<String>,
    pub shards: Vec<ShardReport>,
    pub events_per_sec: f64,
    pub sink: SinkReport,
    pub dns: DnsReport,
    pub identify_throttle_ms: u64,
    pub budget: Option<BudgetReport>,
    pub reshard: Option<serde_json::Value>,
}

/// What the status board reads besides the shards; set as start-up
/// creates each.
#[derive(Default)]
struct Sources {
    resolver: OnceLock<dnscache::Resolver>,
    sink: OnceLock<Arc<AmqpSinkStats>>,
    redis: OnceLock<(dnscache::RedisConnection, String)>,
}

/// The process's reports and where they go. Cheap to clone.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Board>,
}

struct Board {
    name: String,
    host: String,
    interval: Duration,
    sources: Sources,
    /// The last report, and each shard's event count and when it was read.
    latest: Mutex<Option<ProcessReport>>,
    counts: Mutex<HashMap<(u32, u32), (u64, u64)>>,
}

impl StatusBoard {
    /// The board of the process `cfg` describes.
    pub(crate) fn new(cfg: &config::SharderConfig) -> Self {
        let name = match &cfg.process_shards {
            Some(r) if *r != (0..cfg.total_shards) => {
                format!("sharder-shards-{}-{}", r.start, r.end)
            }
            _ => format!("sharder-{}", cfg.process_index),
        };
        Self {
            inner: Arc::new(Board {
                name,
                host: std::env::var("HOSTNAME").unwrap_or_default(),
                interval: cfg.status_interval,
                sources: Sources::default(),
                latest: Mutex::new(None),
                counts: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub(crate) fn set_resolver(&self, resolver: dnscache::Resolver) {
        let _ = self.inner.sources.resolver.set(resolver);
    }

    pub(crate) fn set_sink(&self, stats: Arc<AmqpSinkStats>) {
        let _ = self.inner.sources.sink.set(stats);
    }

    /// Reports go to the cluster's view under `prefix` from now on.
    pub(crate) fn set_redis(&self, conn: dnscache::RedisConnection, prefix: &str) {
        let _ = self.inner.sources.redis.set((conn, prefix.to_owned()));
    }

    pub(crate) fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// This process's report now.
    pub(crate) fn report(&self, admin: &AdminState) -> ProcessReport {
        let at_ms = now_ms();
        let sched = admin.scheduler();
        let mut counts = self.inner.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashMap::with_capacity(counts.len());
        let shards: Vec<ShardReport> = admin
            .serving_shards()
            .iter()
            .map(|(id, h)| {
                let v = h.vitals().snapshot();
                let key = (h.total(), *id);
                let eps = counts.get(&key).map_or(0.0, |&(n, at)| {
                    let secs = at_ms.saturating_sub(at) as f64 / 1000.0;
                    if secs > 0.0 {
                        v.events.saturating_sub(n) as f64 / secs
                    } else {
                        0.0
                    }
                });
                seen.insert(key, (v.events, at_ms));
                ShardReport {
                    id: *id,
                    total: h.total(),
                    state: h.state().metric_label().to_owned(),
                    process: self.inner.name.clone(),
                    bucket: sched.map_or(0, |s| s.bucket_of(*id)),
                    guilds: v.guilds,
                    rtt_ms: v.rtt_ms,
                    events_per_sec: eps,
                    state_since_ms: v.state_since_ms,
                    queued_since_ms: v.queued_since_ms,
                    last_identify_ms: v.last_identify_ms,
                    last_resume_ms: v.last_resume_ms,
                    last_close: v.last_close,
                }
            })
            .collect();
        *counts = seen;
        drop(counts);
        let generation = admin.generation();
        let sink = self
            .inner
            .sources
            .sink
            .get()
            .map_or_else(SinkReport::default, |s| SinkReport {
                connected: Some(s.connected.load(Ordering::Relaxed)),
                buffered: s.buffered_events.load(Ordering::Relaxed),
                unconfirmed: s.held_events.load(Ordering::Relaxed),
            });
        let dns = self
            .inner
            .sources
            .resolver
            .get()
            .map_or_else(DnsReport::default, |r| {
                let s = r.stats();
                DnsReport {
                    hits: s.hits,
                    misses: s.misses,
                    stale: s.stale_served,
                    literals: s.literals,
                }
            });
        ProcessReport {
            name: self.inner.name.clone(),
            host: self.inner.host.clone(),
            at_ms,
            total: generation["total"]
                .as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(0),
            phase: sched.is_none().then(|| admin.phase().to_owned()),
            events_per_sec: shards.iter().map(|s| s.events_per_sec).sum(),
            shards,
            sink,
            dns,
            identify_throttle_ms: sched.map_or(0, |s| millis(s.min_interval())),
            budget: sched.map(budget),
            reshard: Some(generation["reshard"].clone()).filter(|r| !r.is_null()),
        }
    }

    /// Keeps `report` as the latest, and publishes it to the cluster.
    async fn store(&self, report: ProcessReport) {
        if let Some((conn, prefix)) = self.inner.sources.redis.get() {
            let ttl = millis(self.inner.interval * TTL_INTERVALS);
            let json = serde_json::to_string(&report).unwrap_or_default();
            let index = format!("{prefix}:status");
            let r: redis::RedisResult<()> = redis::pipe()
                .cmd("SET")
                .arg(format!("{index}:{}", report.name))
                .arg(json)
                .arg("PX")
                .arg(ttl)
                .ignore()
                .cmd("ZADD")
                .arg(&index)
                .arg(report.at_ms)
                .arg(&report.name)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(report.at_ms.saturating_sub(millis(INDEX_KEEP)))
                .ignore()
                .query_async(&mut conn.clone())
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "cannot publish the status report to Redis");
            }
        }
        *self.inner.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    /// What `GET /status.json` answers.
    pub(crate) async fn view(&self, admin: &AdminState) -> StatusView {
        let own = self
            .inner
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| self.report(admin));
        let now = now_ms();
        let interval = millis(self.inner.interval);
        let Some((conn, prefix)) = self.inner.sources.redis.get() else {
            return view(
                vec![own],
                &self.inner.name,
                now,
                interval,
                Scope::Process,
                None,
            );
        };
        match cluster_reports(conn, prefix).await {
            Ok(mut reports) => {
                reports.retain(|r| r.name != own.name);
                reports.push(own);
                view(
                    reports,
                    &self.inner.name,
                    now,
                    interval,
                    Scope::Cluster,
                    None,
                )
            }
            Err(e) => {
                let notice = format!("Redis unreachable ({e}): this process's shards only");
                view(
                    vec![own],
                    &self.inner.name,
                    now,
                    interval,
                    Scope::Process,
                    Some(notice),
                )
            }
        }
    }
}

fn budget(s: &IdentifyScheduler) -> BudgetReport {
    let (total, remaining, reset_in) = s.budget();
    BudgetReport {
        total,
        remaining,
        reset_in_ms: millis(reset_in),
        shared: s.shares_budget(),
        max_concurrency: s.max_concurrency(),
    }
}

/// Every report in Redis whose key has not expired.
async fn cluster_reports(
    conn: &dnscache::RedisConnection,
    prefix: &str,
) -> redis::RedisResult<Vec<ProcessReport>> {
    let index = format!("{prefix}:status");
    let names: Vec<String> = redis::cmd("ZRANGE")
        .arg(&index)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn.clone())
        .await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = names.iter().map(|n| format!("{index}:{n}")).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut conn.clone())
        .await?;
    Ok(values
        .into_iter()
        .flatten()
        .filter_map(|json| match serde_json::from_str(&json) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(error = %e, "skipping an unreadable status report");
                None
            }
        })
        .collect())
}

/// Reports this process every interval until `stop`.
pub(crate) async fn publish(admin: AdminState, stop: CancellationToken) {
    let board = admin.status().clone();
    let mut tick = tokio::time::interval(board.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let report = board.report(&admin);
        board.store(report).await;
    }
}

/// Whose shards a view holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every process that reports to Redis.
    Cluster,
    /// The serving process only.
    Process,
}

/// A process's line on the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessLine {
    pub name: String,
    pub host: String,
    pub age_ms: u64,
    pub phase: Option<String>,
    pub shards: usize,
    pub active: usize,
    pub events_per_sec: f64,
    pub sink: SinkReport,
    pub dns: DnsReport,
    pub identify_throttle_ms: u64,
}

/// A shard waiting for, or sending, its IDENTIFY.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueuedIdentify {
    pub shard: u32,
    pub bucket: u16,
    pub process: String,
    pub state: String,
    pub waiting_ms: u64,
}

/// The counts at the top of the page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub shards: usize,
    pub active: usize,
    pub by_state: BTreeMap<String, usize>,
}

/// What `GET /status.json` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusView {
    pub scope: Scope,
    pub served_by: String,
    pub now_ms: u64,
    pub interval_ms: u64,
    pub total: u32,
    pub notice: Option<String>,
    pub summary: Summary,
    pub budget: Option<BudgetReport>,
    pub identify_queue: Vec<QueuedIdentify>,
    pub reshard: Option<serde_json::Value>,
    pub processes: Vec<ProcessLine>,
    pub shards: Vec<ShardReport>,
}

/// Merges `reports` into one view (see the module docs).
pub fn view(
    mut reports: Vec<ProcessReport>,
    served_by: &str,
    now_ms: u64,
    interval_ms: u64,
    scope: Scope,
    notice: Option<String>,
) -> StatusView {
    reports.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
    // The serving process's total, else the newest report's that knows one.
    let total = reports
        .iter()
        .find(|r| r.name == served_by && r.total > 0)
        .or_else(|| reports.iter().find(|r| r.total > 0))
        .map_or(0, |r| r.total);
    let mut shards: BTreeMap<u32, ShardReport> = BTreeMap::new();
    for r in &reports {
        for s in r.shards.iter().filter(|s| s.total == total && s.id < total) {
            shards.entry(s.id).or_insert_with(|| s.clone());
        }
    }
    let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
    for s in shards.values() {
        *by_state.entry(s.state.clone()).or_default() += 1;
    }
    let unreported = usize::try_from(total).unwrap_or(usize::MAX) - shards.len();
    if unreported > 0 {
        by_state.insert("unreported".into(), unreported);
    }
    let active = |ss: &mut dyn Iterator<Item = &ShardReport>| {
        ss.filter(|s| s.state == ShardState::Active.metric_label())
            .count()
    };
    let mut identify_queue: Vec<QueuedIdentify> = shards
        .values()
        .filter(|s| s.state == "waiting_for_identify" || s.state == "identifying")
        .map(|s| QueuedIdentify {
            shard: s.id,
            bucket: s.bucket,
            process: s.process.clone(),
            state: s.state.clone(),
            waiting_ms: now_ms.saturating_sub(s.queued_since_ms.unwrap_or(s.state_since_ms)),
        })
        .collect();
    identify_queue.sort_by_key(|q| (std::cmp::Reverse(q.waiting_ms), q.shard));
    // A steady order for the table (sharder-2 before sharder-10), not the
    // newest-first order the merge needs, which changes every interval.
    let mut processes: Vec<ProcessLine> = reports
        .iter()
        .map(|r| ProcessLine {
            name: r.name.clone(),
            host: r.host.clone(),
            age_ms: now_ms.saturating_sub(r.at_ms),
            phase: r.phase.clone(),
            shards: r.shards.len(),
            active: active(&mut r.shards.iter()),
            events_per_sec: r.events_per_sec,
            sink: r.sink.clone(),
            dns: r.dns.clone(),
            identify_throttle_ms: r.identify_throttle_ms,
        })
        .collect();
    processes.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
    StatusView {
        scope,
        served_by: served_by.to_owned(),
        now_ms,
        interval_ms,
        total,
        notice,
        summary: Summary {
            shards: shards.len() + unreported,
            active: active(&mut shards.values()),
            by_state,
        },
        budget: reports.iter().find_map(|r| r.budget.clone()),
        identify_queue,
        reshard: reports.iter().find_map(|r| r.reshard.clone()),
        processes,
        shards: shards.into_values().collect(),
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;

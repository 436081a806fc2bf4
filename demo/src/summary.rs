//! The demo's result: what ran, how fast against the protocol floor, what
//! flowed, and the verdict, printed as a table.

use crate::verdict::{Comparison, JoinAudit, StreamCheck};
use std::fmt::Write as _;
use std::time::Duration;

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Summary {
    pub shards: u32,
    pub batches: u32,
    /// The simulator's identify window.
    pub window: Duration,
    /// e.g. `in-process channel` or `RabbitMQ (4 partitions)`.
    pub queue: String,
    /// e.g. `memory` or `Redis`.
    pub cache: String,
    /// First READY to last READY, as the worker saw them.
    pub ready_span: Duration,
    /// `(batches - 1) x window`.
    pub floor: Duration,
    /// IDENTIFYs the simulator admitted, and those it refused for breaking
    /// the concurrency limit.
    pub identifies: u64,
    pub identify_violations: u64,
    /// Dispatches the simulator sent to sessions.
    pub dispatched: u64,
    /// Dispatches the shards forwarded to the queue.
    pub forwarded: u64,
    /// Events the worker processed (applied or deduplicated).
    pub processed: u64,
    /// Events whose writes changed the cache.
    pub applied: u64,
    pub joins: JoinAudit,
    pub cache_check: Comparison,
    /// The sharder drained within its shutdown grace.
    pub drained: bool,
    /// The whole run.
    pub elapsed: Duration,
    /// The live reshard of `--reshard-to`, if one ran.
    pub reshard: Option<ReshardFigures>,
    /// The clean stream against the ledger, for the whole run.
    pub stream: StreamCheck,
    /// `--relay`: what the bot connected through the relay received.
    pub relay: Option<crate::RelayFigures>,
}

/// What a live reshard cost and kept.
#[derive(Debug, Clone, PartialEq)]
pub struct ReshardFigures {
    pub from: u32,
    pub to: u32,
    /// Request to both totals' hand-over done.
    pub took: Duration,
    /// `identify windows x window` of the new total (the plan's).
    pub floor: Duration,
    /// Identifies the simulator admitted from the request on.
    pub identifies: u64,
    /// GUILD_AVAILABLE `initial` announcements after the request: guilds
    /// the bot had, announced as loading again.
    pub reannounced: u64,
}

impl Summary {
    /// READY span over the floor; `None` with a single batch (no floor).
    pub fn floor_ratio(&self) -> Option<f64> {
        (!self.floor.is_zero()).then(|| self.ready_span.as_secs_f64() / self.floor.as_secs_f64())
    }

    /// No false join and a cache equal to the ground truth (and, after a
    /// live reshard, no guild announced again).
    pub fn passed(&self) -> bool {
        self.joins.false_joins == 0
            && self.cache_check.equal()
            && self.stream.lost == 0
            && self.stream.twice == 0
            && self.reshard.as_ref().is_none_or(|r| r.reannounced == 0)
            && self.relay.as_ref().is_none_or(crate::RelayFigures::ok)
    }

    /// The table printed at the end.
    pub fn table(&self) -> String {
        let ok = |good: bool| if good { "ok" } else { "FAIL" };
        let boot = match self.floor_ratio() {
            Some(r) => format!(
                "{:.2}s READY span / {:.2}s floor = {r:.3}",
                self.ready_span.as_secs_f64(),
                self.floor.as_secs_f64()
            ),
            None => format!(
                "{:.2}s READY span (one batch: no floor)",
                self.ready_span.as_secs_f64()
            ),
        };
        let cache = if self.cache_check.equal() {
            format!("yes ({} guilds compared)", self.cache_check.guilds)
        } else {
            format!(
                "NO: {} of {} guilds differ",
                self.cache_check.mismatched, self.cache_check.guilds
            )
        };
        let rows = [
            (
                "shards",
                format!(
                    "{} in {} batches of {} (identify window {:?})",
                    self.shards,
                    self.batches,
                    crate::MAX_CONCURRENCY,
                    self.window
                ),
                "",
            ),
            (
                "queue / cache",
                format!("{} / {}", self.queue, self.cache),
                "",
            ),
            (
                "identifies",
                format!(
                    "{} admitted, {} refused by the simulator",
                    self.identifies, self.identify_violations
                ),
                if self.identify_violations == 0 {
                    "ok"
                } else {
                    "warn"
                },
            ),
            ("cold boot vs floor", boot, ""),
            (
                "events forwarded",
                format!(
                    "{} (simulator dispatched {})",
                    self.forwarded, self.dispatched
                ),
                // A live reshard closes the old total with dispatches still
                // unread (their twins came through the new one): the row
                // below checks each event instead.
                if self.reshard.is_some() {
                    ""
                } else {
                    ok(self.forwarded == self.dispatched)
                },
            ),
            (
                "events applied",
                format!(
                    "{} processed by the worker, {} changed the cache",
                    self.processed, self.applied
                ),
                ok(self.processed >= self.forwarded),
            ),
            (
                "false joins",
                format!(
                    "{} ({} real joins, {} announced, {} missed)",
                    self.joins.false_joins,
                    self.joins.real,
                    self.joins.announced,
                    self.joins.missed
                ),
                ok(self.joins.false_joins == 0),
            ),
            ("cache = ground truth", cache, ok(self.cache_check.equal())),
            (
                "live reshard",
                match &self.reshard {
                    Some(r) => format!(
                        "{} -> {} shards in {:.2}s (new total's floor {:.2}s), {} identifies, \
                         {} guilds announced again",
                        r.from,
                        r.to,
                        r.took.as_secs_f64(),
                        r.floor.as_secs_f64(),
                        r.identifies,
                        r.reannounced
                    ),
                    None => "not asked (--reshard-to N)".into(),
                },
                match &self.reshard {
                    Some(r) => ok(r.reannounced == 0),
                    None => "",
                },
            ),
            (
                "each event once",
                format!(
                    "{} lost, {} twice of {} guild events in the clean stream ({} reached two totals)",
                    self.stream.lost, self.stream.twice, self.stream.events, self.stream.both
                ),
                ok(self.stream.lost == 0 && self.stream.twice == 0),
            ),
            (
                "bot via the relay",
                match &self.relay {
                    Some(r) if r.loaded => format!(
                        "twilight shard [0, 1]: {} READY, {} of {} guilds; {} of {} guild events \
                         after its snapshot, once and in order",
                        r.readies, r.guilds.0, r.guilds.1, r.received, r.events
                    ),
                    Some(r) => format!(
                        "twilight shard [0, 1]: its snapshot never completed ({} of {} guilds)",
                        r.guilds.0, r.guilds.1
                    ),
                    None => "not asked (--relay)".into(),
                },
                match &self.relay {
                    Some(r) => ok(r.ok()),
                    None => "",
                },
            ),
            (
                "total time",
                format!(
                    "{:.1}s{}",
                    self.elapsed.as_secs_f64(),
                    if self.drained {
                        ""
                    } else {
                        " (sharder did not drain in time)"
                    }
                ),
                "",
            ),
        ];
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
        let rule = format!("+-{}-+-{}-+------+\n", "-".repeat(w0), "-".repeat(w1));
        let mut out = rule.clone();
        for (name, value, verdict) in &rows {
            let _ = writeln!(out, "| {name:<w0$} | {value:<w1$} | {verdict:<4} |");
        }
        out.push_str(&rule);
        for m in &self.stream.examples {
            let _ = writeln!(out, "  stream: {m}");
        }
        for m in &self.cache_check.mismatches {
            let _ = writeln!(out, "  mismatch: {m}");
        }
        if self.joins.sessions_without_ready > 0 {
            let _ = writeln!(
                out,
                "  note: {} session(s) whose READY never reached the worker",
                self.joins.sessions_without_ready
            );
        }
        let _ = writeln!(
            out,
            "{}",
            if self.passed() {
                "PASS: no false joins, and the cache equals the simulator's ground truth"
            } else {
                "FAIL: see the rows marked FAIL"
            }
        );
        out
    }
}

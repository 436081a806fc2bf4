//! Whether a live reshard to a requested shard total may start, and what it
//! will take: checked before a single new shard connects.
//!
//! A live reshard runs a second generation of shards beside the first until
//! every new shard is READY, then closes the old one. Started with a total
//! Discord refuses, with a layout that cannot run, or on a budget it will
//! exhaust, it fails halfway: hundreds of identifies spent, a new generation
//! that never completes, and the old one still needed. Worse, with the
//! wrong total the bot keeps running while its events are reordered (see
//! the partitions rule below). So every rule is checked up front by one
//! pure function, [`plan_reshard`], and each refusal
//! ([`ReshardRefused`]) says what to ask for instead.
//!
//! # Algorithm
//! From the running layout ([`ClusterLayout`]: total `C`, `max_concurrency`,
//! processes and assignment), the requested total `N`, `amqp.partitions`
//! `P` and the session start budget, refuse, in this order:
//! 1. `N == C`: nothing to do.
//! 2. `N` outside `1..=MAX_TOTAL_SHARDS` (the configuration's bound).
//! 3. `N < C` without `force_shrink`: fewer shards means more guilds per
//!    shard, and a shard past 2,500 guilds is closed with 4011.
//! 4. `N` not a multiple of `max_concurrency` when it is above 1 (Discord
//!    requires it).
//! 5. `P` not dividing both `N` and `C`. A shard's events go to partition
//!    `shard_id % P`, and guild `g` is on shard `g % total` (`g` being the
//!    guild id shifted right by 22), so its partition is
//!    `(g % total) % P`, which is `g % P` exactly when `P` divides `total`.
//!    When `P` divides both totals, a guild's events from both generations
//!    reach the same partition queue, where one consumer applies them in
//!    order; otherwise the two generations' copies race through two queues.
//! 6. `assignment = "ranges"`: explicit ranges of `C` shards say nothing
//!    about `N`.
//! 7. The new generation's layout fails [`plan_cluster`] (for `N`, with the
//!    same processes and assignment).
//! 8. `remaining - N < identify_reserve`: the new generation spends one
//!    session start per shard, and the reserve is never spent.
//!
//! Otherwise the plan: the new generation's shards per process (the same
//! layout rules as [`plan_cluster`]; with `assignment = "buckets"` every
//! identify key stays with the process that has it now, since a process's
//! keys depend only on `max_concurrency` and the process count), the
//! identifies (`N`), the identify keys used (`min(N, max_concurrency)`),
//! the identify windows a key needs (`ceil(N / max_concurrency)`) and the
//! floor of the new generation's cold boot: that many windows of the
//! configured `identify_window` (Discord's 5 s when none is given). The
//! last IDENTIFY leaves one window before that floor; the floor counts its
//! window too, as the least time for its shards to come up.

use crate::assignment::{ClusterLayout, PlanError, ShardAssignment, plan_cluster};
use config::MAX_TOTAL_SHARDS;
use std::time::Duration;

/// Discord's identify window per rate-limit key.
pub const DISCORD_IDENTIFY_WINDOW: Duration = Duration::from_secs(5);

/// What an operator (or the automatic trigger) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReshardRequest {
    /// The new generation's shard total.
    pub to_total: u32,
    /// Allow a total below the running one.
    pub force_shrink: bool,
}

/// What a reshard is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReshardContext {
    /// The running generation's layout (its `total_shards` is the current
    /// total; its `max_concurrency` is Discord's).
    pub current: ClusterLayout,
    /// `amqp.partitions`, at least 1.
    pub partitions: u32,
    /// Session starts left (the cluster's, with Redis).
    pub session_starts_remaining: u32,
    /// Until the session start budget resets.
    pub budget_reset_in: Duration,
    /// `sharder.identify_reserve`.
    pub identify_reserve: u32,
    /// `sharder.identify_window`; `None`: [`DISCORD_IDENTIFY_WINDOW`].
    pub identify_window: Option<Duration>,
}

impl ReshardContext {
    /// The context of `cfg`'s running layout, with Discord's
    /// `max_concurrency` and the session start budget as the identify
    /// scheduler sees it.
    pub fn from_config(
        cfg: &config::Config,
        max_concurrency: u16,
        session_starts_remaining: u32,
        budget_reset_in: Duration,
    ) -> Self {
        Self {
            current: ClusterLayout::from_config(&cfg.sharder, max_concurrency, cfg.redis.enabled()),
            partitions: cfg.amqp.partitions,
            session_starts_remaining,
            budget_reset_in,
            identify_reserve: cfg.sharder.identify_reserve,
            identify_window: Some(cfg.sharder.identify_window),
        }
    }
}

/// A reshard that may start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReshardPlan {
    /// The running total.
    pub from_total: u32,
    /// The new generation's total.
    pub to_total: u32,
    /// The new generation's shards of each process, in process order.
    pub shards_per_process: Vec<Vec<u32>>,
    /// Session starts the new generation spends: one per shard.
    pub identifies: u32,
    /// Identify keys (`shard_id % max_concurrency`) the new generation uses.
    pub buckets: u32,
    /// Identify windows the busiest key needs: `ceil(to_total / max_concurrency)`.
    pub identify_windows: u32,
    /// The window of one identify per key.
    pub identify_window: Duration,
    /// The least time the new generation's cold boot takes:
    /// `identify_windows × identify_window`.
    pub cold_boot_floor: Duration,
    /// Session starts left once the new generation identified.
    pub session_starts_after: u32,
}

/// Why a reshard may not start, and what to ask for instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReshardRefused {
    #[error("the bot already runs {total} shards; ask for another total")]
    Unchanged { total: u32 },
    #[error("{requested} shards is outside 1..={MAX_TOTAL_SHARDS}; ask for a total in that range")]
    OutOfRange { requested: u32 },
    #[error(
        "{requested} shards is fewer than the {current} running: each shard would hold more \
         guilds, and Discord closes a shard past 2500 guilds (4011); ask for at least {current}, \
         or set force_shrink if the bot really needs fewer"
    )]
    Shrink { current: u32, requested: u32 },
    #[error(
        "{requested} shards is not a multiple of max_concurrency {max_concurrency}, which Discord \
         requires; ask for {}",
        multiples_near(*.current, *.requested, *.max_concurrency)
    )]
    NotMultipleOfConcurrency {
        current: u32,
        requested: u32,
        max_concurrency: u16,
    },
    #[error("{}", partitions_message(*.partitions, *.current, *.requested, *.max_concurrency))]
    PartitionsSplitGuilds {
        partitions: u32,
        current: u32,
        requested: u32,
        max_concurrency: u16,
    },
    #[error(
        "assignment = \"ranges\" lists shard ranges of the {current} running shards, which say \
         nothing about the new total; switch [sharder].assignment to \"buckets\" or \
         \"contiguous\" before a live reshard"
    )]
    ExplicitRanges { current: u32 },
    #[error("the new generation's layout cannot run: {0}")]
    Layout(#[from] PlanError),
    #[error(
        "the new generation needs {needed} identifies (one per shard), but {remaining} session \
         starts remain and identify_reserve keeps {reserve} of them; wait for the budget's reset \
         (in {}s) or ask for fewer shards",
        .reset_in.as_secs()
    )]
    Budget {
        needed: u32,
        remaining: u32,
        reserve: u32,
        reset_in: Duration,
    },
}

/// The multiples of `mc` next to `requested` worth suggesting: not 0, not
/// the running total, and above it when the request grows the bot.
fn multiples_near(current: u32, requested: u32, mc: u16) -> String {
    let mc = u32::from(mc.max(1));
    let below = requested / mc * mc;
    let above = below.saturating_add(mc);
    let fits = |n: u32| n >= 1 && n != current && (requested < current || n > current);
    match (fits(below), fits(above)) {
        (true, true) => format!("{below} or {above}"),
        (true, false) => format!("{below}"),
        _ => format!("{above}"),
    }
}

/// The smallest multiple of `step` at or above `n`.
fn next_multiple(n: u32, step: u64) -> u64 {
    u64::from(n).div_ceil(step).max(1) * step
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn partitions_message(p: u32, current: u32, requested: u32, mc: u16) -> String {
    let why = format!(
        "a shard's events go to partition shard_id % {p} (amqp.partitions), and a guild's \
         shard is (guild_id >> 22) % total, so only when {p} divides both totals do a guild's \
         events from the old and the new generation reach the same partition queue, where the \
         worker applies them in order"
    );
    if !current.is_multiple_of(p) {
        let not_requested = if requested.is_multiple_of(p) {
            String::new()
        } else {
            format!(" (nor {requested})")
        };
        return format!(
            "the running {current} shards are not divisible by amqp.partitions {p}{not_requested}: \
             {why}; no new total can fix that: first change amqp.partitions to a divisor of \
             both totals (a drain-first change, see docs/configuration.md), then reshard"
        );
    }
    let step = {
        let (p, mc) = (u64::from(p), u64::from(mc.max(1)));
        p / gcd(p, mc) * mc
    };
    format!(
        "{requested} shards is not divisible by amqp.partitions {p} (the running {current} is): \
         {why}; ask for a multiple of {step} (of both amqp.partitions and max_concurrency), \
         such as {}",
        next_multiple(requested, step)
    )
}

/// Checks a reshard of `context.current` to `request.to_total` (module docs).
pub fn plan_reshard(
    request: &ReshardRequest,
    context: &ReshardContext,
) -> Result<ReshardPlan, ReshardRefused> {
    let current = context.current.total_shards;
    let requested = request.to_total;
    let mc = context.current.max_concurrency;
    // `amqp.partitions` is validated to 1..=1024; 1 queue keeps every order.
    let partitions = context.partitions.max(1);
    if requested == current {
        return Err(ReshardRefused::Unchanged { total: current });
    }
    if !(1..=MAX_TOTAL_SHARDS).contains(&requested) {
        return Err(ReshardRefused::OutOfRange { requested });
    }
    if requested < current && !request.force_shrink {
        return Err(ReshardRefused::Shrink { current, requested });
    }
    if mc > 1 && !requested.is_multiple_of(u32::from(mc)) {
        return Err(ReshardRefused::NotMultipleOfConcurrency {
            current,
            requested,
            max_concurrency: mc,
        });
    }
    if !requested.is_multiple_of(partitions) || !current.is_multiple_of(partitions) {
        return Err(ReshardRefused::PartitionsSplitGuilds {
            partitions,
            current,
            requested,
            max_concurrency: mc,
        });
    }
    if let ShardAssignment::Ranges(_) = context.current.assignment {
        return Err(ReshardRefused::ExplicitRanges { current });
    }
    let remaining = context.session_starts_remaining;
    let reserve = context.identify_reserve;
    let plan = layout_plan(context, requested)?;
    if u64::from(remaining) < u64::from(requested) + u64::from(reserve) {
        return Err(ReshardRefused::Budget {
            needed: requested,
            remaining,
            reserve,
            reset_in: context.budget_reset_in,
        });
    }
    Ok(plan)
}

/// The plan of a reshard another process admitted (`reshard_cluster.rs`):
/// the same layout of `to` over the processes, without the admission
/// checks (the budget was checked, and spent since, by the claimer).
pub(crate) fn joined_plan(
    context: &ReshardContext,
    to: u32,
) -> Result<ReshardPlan, ReshardRefused> {
    layout_plan(context, to)
}

fn layout_plan(context: &ReshardContext, requested: u32) -> Result<ReshardPlan, ReshardRefused> {
    let current = context.current.total_shards;
    let mc = context.current.max_concurrency;
    let remaining = context.session_starts_remaining;
    let next = ClusterLayout {
        total_shards: requested,
        ..context.current.clone()
    };
    let shards_per_process = plan_cluster(&next)?;
    let keys = u32::from(mc.max(1));
    let identify_windows = requested.div_ceil(keys);
    let identify_window = context.identify_window.unwrap_or(DISCORD_IDENTIFY_WINDOW);
    Ok(ReshardPlan {
        from_total: current,
        to_total: requested,
        shards_per_process,
        identifies: requested,
        buckets: requested.min(keys),
        identify_windows,
        identify_window,
        cold_boot_floor: identify_window.saturating_mul(identify_windows),
        session_starts_after: remaining.saturating_sub(requested),
    })
}

#[cfg(test)]
#[path = "reshard_plan_tests.rs"]
mod tests;

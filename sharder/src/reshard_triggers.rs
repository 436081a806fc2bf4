//! What starts a live reshard, and whether it may: the operator
//! (`POST /admin/reshard`), Discord's recommendation (`GET /gateway/bot`
//! polled every `sharder.reshard.poll_interval`, above `auto_factor` times
//! the running total), or a shard closed with 4011 (sharding required).
//! All three send one [`ReshardCommand`] to the runtime, which admits it
//! here ([`admit`]) and runs it ([`crate::resharder`]).
//!
//! # Algorithm
//! An automatic target is Discord's recommendation rounded up to the next
//! total every rule accepts: a multiple of `max_concurrency` (when that is
//! above one) and of `amqp.partitions` (so a guild's events stay in one
//! partition queue across the generations). After a 4011 the target is at
//! least twice the running total: Discord closed a shard for holding too
//! many guilds, and its recommendation may lag.

use crate::gateway_bot::fetch_gateway_bot;
use crate::identify::IdentifyScheduler;
use crate::reshard_plan::{ReshardContext, ReshardPlan, ReshardRequest, plan_reshard};
use crate::resharder::{ReshardCommand, Resharder, Trigger};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Validates `command` against the running process: one reshard at a
/// time, one process, and the plan's rules.
pub(crate) fn admit<K, S, C>(
    resharder: &Resharder<K, S, C>,
    cfg: &config::Config,
    max_concurrency: u16,
    scheduler: &IdentifyScheduler,
    command: &ReshardCommand,
) -> Result<ReshardPlan, String> {
    if let Some(r) = &resharder.running {
        return Err(format!(
            "busy: a live reshard from {} to {} shards is in progress; wait for it (GET /admin/reshard)",
            r.plan.from_total, r.plan.to_total
        ));
    }
    if cfg.sharder.process_shards.is_some() {
        return Err(
            "live resharding is not built for processes started with --shards (explicit \
             ranges): reshard this cluster cold as docs/operations.md describes"
                .to_owned(),
        );
    }
    if cfg.sharder.process_count > 1 && resharder.cluster.is_none() {
        return Err(format!(
            "a live reshard across {} sharder processes keeps its state in Redis: set \
             sharder.session_store = \"redis\" and [redis] (or reshard cold as \
             docs/operations.md describes)",
            cfg.sharder.process_count
        ));
    }
    let context = ReshardContext::from_config(
        cfg,
        max_concurrency,
        scheduler.remaining(),
        scheduler.budget_reset_in(),
    );
    plan_reshard(&command.request, &context).map_err(|e| e.to_string())
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The smallest total at least `wanted` that is a multiple of
/// `max_concurrency` and of `partitions`.
pub(crate) fn next_total(wanted: u32, max_concurrency: u16, partitions: u32) -> u32 {
    let mc = u32::from(max_concurrency.max(1));
    let p = partitions.max(1);
    let step = mc / gcd(mc, p) * p;
    wanted.max(1).div_ceil(step).saturating_mul(step)
}

/// After a 4011: asks Discord for its recommendation and requests a
/// reshard to at least twice `running`.
pub(crate) fn sharding_required(
    resolver: dnscache::Resolver,
    cfg: config::Config,
    token: config::Secret,
    running: u32,
    tx: mpsc::Sender<ReshardCommand>,
) {
    tokio::spawn(async move {
        let recommended = fetch_gateway_bot(
            &resolver,
            &cfg.discord.api_base,
            &token,
            Duration::from_secs(10),
        )
        .await
        .map(|b| b.shards)
        .unwrap_or(0);
        let mc = cfg.sharder.max_concurrency.unwrap_or(1);
        let to = next_total(
            recommended.max(running.saturating_mul(2)),
            mc,
            cfg.amqp.partitions,
        );
        tracing::warn!(
            running,
            recommended,
            to,
            "a shard was closed with 4011 (sharding required): requesting a live reshard"
        );
        let _ = tx
            .send(ReshardCommand {
                request: ReshardRequest {
                    to_total: to,
                    force_shrink: false,
                },
                trigger: Trigger::ShardingRequired,
                reply: None,
            })
            .await;
    });
}

/// Polls `GET /gateway/bot` every `poll_interval` and requests a reshard
/// when the recommendation is above `auto_factor` times the running total.
pub(crate) async fn poll_recommended(
    resolver: dnscache::Resolver,
    cfg: config::Config,
    token: config::Secret,
    running: Arc<AtomicU32>,
    tx: mpsc::Sender<ReshardCommand>,
) {
    let every = cfg.sharder.reshard.poll_interval;
    let mc = cfg.sharder.max_concurrency.unwrap_or(1);
    loop {
        tokio::time::sleep(every).await;
        let bot = match fetch_gateway_bot(
            &resolver,
            &cfg.discord.api_base,
            &token,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "GET /gateway/bot for the recommended shard count failed; asking again at the next poll");
                continue;
            }
        };
        let total = running.load(Ordering::Relaxed);
        metrics::gauge!("sharder_recommended_shards").set(f64::from(bot.shards));
        if !cfg.sharder.reshard.auto_reshard_due(total, bot.shards) {
            continue;
        }
        let mc = bot.session_start_limit.max_concurrency.max(mc);
        let to = next_total(bot.shards, mc, cfg.amqp.partitions);
        tracing::info!(
            running = total,
            recommended = bot.shards,
            to,
            "Discord recommends more shards: requesting a live reshard"
        );
        let command = ReshardCommand {
            request: ReshardRequest {
                to_total: to,
                force_shrink: false,
            },
            trigger: Trigger::Recommended,
            reply: None,
        };
        if tx.send(command).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_multiples_of_concurrency_and_partitions() {
        assert_eq!(next_total(100, 16, 16), 112);
        assert_eq!(next_total(128, 16, 16), 128);
        assert_eq!(next_total(9, 1, 4), 12);
        assert_eq!(next_total(9, 16, 4), 16);
        assert_eq!(next_total(17, 6, 4), 24);
        assert_eq!(next_total(0, 1, 1), 1);
    }
}

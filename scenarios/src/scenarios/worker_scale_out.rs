//! Workers that scale out (issue 18): replicas share the partitions.
//!
//! # Algorithm
//! 1. 16 partitions, a sharder under a steady event rate, one worker (Redis
//!    store, so the replicas share the partitions through Redis leases).
//! 2. Workers 1 -> 4: three more start; every step waits until each live
//!    worker's `worker_partition_held{partition}` gauges show a balanced
//!    split: every partition held by exactly one worker, none holding more
//!    than `ceil(16 / R)`.
//! 3. Workers 4 -> 2: one is stopped with SIGTERM (drained: hands over at
//!    once), one killed with SIGKILL (its leases expire); balance again.
//! 4. Events stop; every partition queue drains; the cache equals the
//!    simulator's truth.
//!
//! Asserts: balance after each step within `HANDOVER`, zero poison
//! messages and store retries, zero out-of-order applies (no stale or
//! duplicate event in a message the broker delivered for the first time),
//! every queue drained (nothing left behind by a hand-over), cache ==
//! truth. Figures: time to balance per step, hand-overs, duplicates or
//! stale versions dropped by the versioned cache (redeliveries included).

use super::{Env, ScenarioInfo};
use crate::bulwark::Process;
use crate::prometheus;
use crate::report::{ScenarioReport, Size};
use crate::sim::{STEADY_MIX, SimArgs};
use crate::{Result, wait_until};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "worker-scale-out",
    incident: "workers 1 -> 4 -> 2 (one SIGKILLed) under load, 16 partitions",
    asserts: "each partition held by exactly one worker, none over ceil(P/R), after each step; \
              0 poison, queues drained, cache == truth",
};

const PARTITIONS: u32 = 16;
const WAIT: Duration = Duration::from_secs(60);
/// Bound on a step's rebalance: a tick to see the member change, a tick to
/// release, a tick to acquire; a SIGKILLed member's leases take their 5 s
/// TTL to expire. Generous for a debug build on two shared cores.
const HANDOVER: Duration = Duration::from_secs(20);

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut env = Env::new(INFO.name, PARTITIONS).await?;
    let outcome = body(&mut env, size).await;
    env.finish(outcome).await
}

/// The partitions each worker's gauges say it holds.
async fn holdings(workers: &[&Process]) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for w in workers {
        let text = w.metrics().await;
        let mut held: Vec<u32> = prometheus::samples(&text)
            .iter()
            .filter(|s| s.name == "worker_partition_held" && s.value == 1.0)
            .filter_map(|s| {
                s.labels
                    .iter()
                    .find(|(k, _)| k == "partition")
                    .and_then(|(_, v)| v.parse().ok())
            })
            .collect();
        held.sort_unstable();
        out.push(held);
    }
    out
}

/// Whether `held` is a balanced split of every partition.
fn balanced(held: &[Vec<u32>]) -> bool {
    let share = (PARTITIONS as usize).div_ceil(held.len().max(1));
    let mut owners: BTreeMap<u32, usize> = BTreeMap::new();
    for h in held {
        for &p in h {
            *owners.entry(p).or_default() += 1;
        }
    }
    held.iter().all(|h| h.len() <= share)
        && owners.len() == PARTITIONS as usize
        && owners.values().all(|&n| n == 1)
}

/// Waits for a balanced split over `workers`; records the time it took.
async fn expect_balance(env: &mut Env, step: &str, workers: &[&Process]) {
    let start = Instant::now();
    let mut last = Vec::new();
    let ok = wait_until(step, HANDOVER, async || {
        last = holdings(workers).await;
        balanced(&last)
    })
    .await;
    env.checks.expect(
        &format!("{step}: balanced within {HANDOVER:?}"),
        ok.is_ok(),
        format!("holdings {last:?}"),
    );
    env.checks.figure(
        &format!("{step}: time to balance (ms)"),
        start.elapsed().as_millis(),
    );
    let counts: Vec<usize> = last.iter().map(Vec::len).collect();
    env.checks
        .figure(&format!("{step}: partitions held"), format!("{counts:?}"));
}

async fn body(env: &mut Env, size: Size) -> Result<()> {
    let shards = size.pick(16, 64);
    let sim = env.sim(SimArgs {
        shards,
        guilds: shards * 2,
        event_rate: size.pick(200.0, 1000.0),
        event_mix: Some(STEADY_MIX.into()),
        ..SimArgs::default()
    })?;
    let start_worker = |env: &Env, name: &str| -> Result<Process> {
        let mut cfg = env.worker_config()?;
        cfg.set_str("worker", "store", "redis")
            .set_str("redis", "url", "redis://127.0.0.1:6379")
            .set_str("redis", "key_prefix", &env.redis_prefix);
        env.start_worker(name, &cfg)
    };
    let w1 = start_worker(env, "worker-1")?;
    let mut sharder = env.start_sharder("sharder", &env.sharder_config(&sim, 50)?, &[])?;
    sharder.wait_ready(WAIT).await?;
    wait_until("worker-1 applying events", WAIT, async || {
        w1.counter("worker_events_applied_total", &[]).await > 0
    })
    .await?;
    expect_balance(env, "1 worker", &[&w1]).await;

    let w2 = start_worker(env, "worker-2")?;
    let w3 = start_worker(env, "worker-3")?;
    let mut w4 = start_worker(env, "worker-4")?;
    expect_balance(env, "4 workers", &[&w1, &w2, &w3, &w4]).await;
    let applied = |text: &str| prometheus::count(text, "worker_events_applied_total", &[]);
    env.checks.expect(
        "every one of 4 workers applies events",
        {
            let mut all = true;
            for w in [&w1, &w2, &w3, &w4] {
                let before = applied(&w.metrics().await);
                let grew = wait_until("a worker applying", WAIT, async || {
                    applied(&w.metrics().await) > before
                })
                .await;
                all &= grew.is_ok();
            }
            all
        },
        "a worker with partitions applied nothing",
    );

    // 4 -> 2: one drained, one killed.
    let mut w3 = w3;
    w3.child.terminate()?;
    w4.child.kill();
    let exit = w3.child.wait_exit(WAIT).await?;
    env.checks.expect(
        "SIGTERMed worker exits 0",
        exit.success(),
        format!("{exit}"),
    );
    expect_balance(env, "2 workers", &[&w1, &w2]).await;

    // Drain and compare.
    sim.set_event_rate(0.0).await?;
    let drained = env.wait_drained(WAIT).await;
    env.checks.expect(
        "every partition queue drained by the 2 workers",
        drained.is_ok(),
        format!("{drained:?}"),
    );
    let truth = sim.truth().await?;
    env.expect_cache_equal(w1.http, &truth, Duration::from_secs(30))
        .await;
    let mut poison = 0;
    let mut retries = 0;
    let mut dropped = 0;
    let mut out_of_order = 0;
    let mut handovers = 0;
    for w in [&w1, &w2] {
        let m = w.metrics().await;
        poison += prometheus::count(&m, "worker_poison_messages_total", &[]);
        retries += prometheus::count(&m, "worker_store_retries_total", &[]);
        dropped += prometheus::count(&m, "worker_events_dropped_total", &[]);
        out_of_order +=
            prometheus::count(&m, "worker_events_dropped_total", &[("delivery", "first")]);
        handovers += prometheus::count(&m, "worker_partition_handovers_total", &[]);
    }
    env.checks.expect_eq("poison messages", poison, 0);
    env.checks.expect_eq("store retries", retries, 0);
    env.checks.figure(
        "duplicates or stale versions dropped (surviving workers)",
        dropped,
    );
    // The sharder never resumes here, so its first deliveries never repeat
    // a version: a stale or duplicate event in a message the broker had not
    // delivered before means two consumers applied one partition out of
    // order. Redeliveries (the SIGKILLed worker's unacked messages, a
    // hand-over's returned prefetch) are expected duplicates.
    env.checks.expect_eq(
        "out-of-order applies (stale in a first delivery, surviving workers)",
        out_of_order,
        0,
    );
    env.checks
        .figure("hand-overs counted (surviving workers)", handovers);
    let (mut a, mut b) = (w1, w2);
    env.checks.expect(
        "the surviving workers are running",
        a.child.running() && b.child.running() && sharder.child.running(),
        format!("{} / {}", a.child.log_tail(3), b.child.log_tail(3)),
    );
    Ok(())
}

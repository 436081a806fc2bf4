//! Incident 6: RabbitMQ and Redis outages under load (Discord, 2022:
//! retries on an overloaded dependency became a retry storm).
//!
//! # Algorithm
//! 1. A sharder and a worker (Redis store) under a steady event rate; each
//!    dials RabbitMQ through its own fault proxy, the worker dials Redis
//!    through a third. A tap on the exchange (direct, not proxied) copies
//!    every confirmed event.
//! 2. RabbitMQ outage: both broker proxies cut every connection and refuse
//!    service for `outage`; the sharder's memory and its sink gauges are
//!    sampled throughout. Then service returns.
//! 3. Redis outage: the Redis proxy does the same.
//! 4. Events stop; the ledger is compared with the tap, the worker's cache
//!    with the truth.
//!
//! Asserts: zero ledger events missing from RabbitMQ, the worker's cache
//! equal to the truth, the sharder's RSS growth bounded and its sink within
//! `sink_buffer + confirm_window` events, the connection attempts each
//! client made during each outage within its documented backoff's budget
//! (capped exponential, equal jitter: no storm), and zero process exits.

use super::{Env, ScenarioInfo};
use crate::prometheus;
use crate::report::{ScenarioReport, Size};
use crate::sim::{STEADY_MIX, SimArgs};
use crate::{Result, wait_until};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use testkit::CutProxy;
use testkit::reconnect_budget::max_attempts;
use testkit::services::{AMQP_ADDR, REDIS_ADDR};

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "broker-outage",
    incident: "RabbitMQ cut, then Redis cut, under load, behind fault proxies",
    asserts: "0 events lost, cache == truth, bounded RSS and sink, reconnect attempts within the \
              backoff budget (no storm), 0 process exits",
};

const WAIT: Duration = Duration::from_secs(60);
const SINK_BUFFER: u64 = 2000;
const CONFIRM_WINDOW: u64 = 256;
/// Allowed RSS growth of the sharder during an outage.
const RSS_GROWTH_KIB: u64 = 64 * 1024;

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut env = Env::new(INFO.name, 4).await?;
    let outcome = body(&mut env, size).await;
    env.finish(outcome).await
}

async fn body(env: &mut Env, size: Size) -> Result<()> {
    let shards = size.pick(16, 64);
    let outage = Duration::from_secs(size.pick(5, 30));
    let sim = env.sim(SimArgs {
        shards,
        guilds: shards * 2,
        event_rate: size.pick(300.0, 1000.0),
        event_mix: Some(STEADY_MIX.into()),
        ..SimArgs::default()
    })?;
    let tap = env.broker.tap(&env.topo).await?;
    let sharder_mq = CutProxy::start(AMQP_ADDR)
        .await
        .map_err(|e| crate::ScenarioError::io("starting a fault proxy", e))?;
    let worker_mq = CutProxy::start(AMQP_ADDR)
        .await
        .map_err(|e| crate::ScenarioError::io("starting a fault proxy", e))?;
    let worker_redis = CutProxy::start(REDIS_ADDR)
        .await
        .map_err(|e| crate::ScenarioError::io("starting a fault proxy", e))?;
    let mut wcfg = env.worker_config()?;
    wcfg.set_str(
        "amqp",
        "url",
        &format!("amqp://guest:guest@{}/%2f", worker_mq.addr()),
    )
    .set_str("worker", "store", "redis")
    .set_str("redis", "url", &format!("redis://{}", worker_redis.addr()))
    .set_str("redis", "key_prefix", &env.redis_prefix);
    let mut worker = env.start_worker("worker", &wcfg)?;
    let mut scfg = env.sharder_config(&sim, 50)?;
    scfg.set_str(
        "amqp",
        "url",
        &format!("amqp://guest:guest@{}/%2f", sharder_mq.addr()),
    )
    .set("sharder", "sink_buffer", SINK_BUFFER.to_string())
    .set("sharder", "confirm_window", CONFIRM_WINDOW.to_string());
    let mut sharder = env.start_sharder("sharder", &scfg, &[])?;
    sharder.wait_ready(WAIT).await?;
    wait_until("worker applying events", WAIT, async || {
        worker.counter("worker_events_applied_total", &[]).await > 0
    })
    .await?;
    let rss0 = sharder.child.rss_kib().unwrap_or(0);
    env.checks.figure("sharder RSS before (KiB)", rss0);

    // RabbitMQ.
    let down = Instant::now();
    sharder_mq.cut();
    worker_mq.cut();
    let mut rss_peak = rss0;
    let mut held_peak = 0;
    while down.elapsed() < outage {
        rss_peak = rss_peak.max(sharder.child.rss_kib().unwrap_or(0));
        let m = sharder.metrics().await;
        let held = prometheus::count(&m, "sharder_sink_buffered_events", &[])
            + prometheus::count(&m, "sharder_sink_unconfirmed_events", &[]);
        held_peak = held_peak.max(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let up = Instant::now();
    sharder_mq.restore();
    worker_mq.restore();
    let window = up - down;
    env.checks.expect_at_most(
        "sharder RSS growth in the broker outage (KiB)",
        rss_peak.saturating_sub(rss0),
        RSS_GROWTH_KIB,
    );
    env.checks.expect_at_most(
        "sharder sink events held (peak)",
        held_peak,
        SINK_BUFFER + CONFIRM_WINDOW,
    );
    // Sharder sink: 200 ms doubling to 15 s; worker session: 200 ms
    // doubling to 30 s (both equal jitter).
    env.checks.expect_at_most(
        "sharder AMQP attempts in the outage",
        sharder_mq.attempts_between(down, up),
        max_attempts(
            window,
            Duration::from_millis(200),
            Duration::from_millis(15_000),
        ),
    );
    env.checks.expect_at_most(
        "worker AMQP attempts in the outage",
        worker_mq.attempts_between(down, up),
        max_attempts(
            window,
            Duration::from_millis(200),
            Duration::from_millis(30_000),
        ),
    );
    sharder.wait_ready(WAIT).await?;

    // Redis.
    let applied0 = worker.counter("worker_events_applied_total", &[]).await;
    let down = Instant::now();
    worker_redis.cut();
    tokio::time::sleep(outage).await;
    let up = Instant::now();
    worker_redis.restore();
    let window = up - down;
    let partitions = env.topo.partitions as usize;
    // Each partition consumer retries its store write with 50 ms doubling
    // to 10 s (full jitter in [d/2, d]); the read API is not called.
    let redis_budget = partitions
        * max_attempts(
            window,
            Duration::from_millis(50),
            Duration::from_millis(10_000),
        );
    env.checks.expect_at_most(
        "worker Redis attempts in the outage",
        worker_redis.attempts_between(down, up),
        redis_budget,
    );
    let resumed = wait_until(
        "worker applying again after Redis returned",
        WAIT,
        async || worker.counter("worker_events_applied_total", &[]).await > applied0,
    )
    .await;
    env.checks.expect(
        "worker applies events again after the Redis outage",
        resumed.is_ok(),
        format!("{resumed:?}"),
    );
    env.checks.figure(
        "worker store retries",
        worker.counter("worker_store_retries_total", &[]).await,
    );

    // Nothing lost.
    sim.set_event_rate(0.0).await?;
    let ledger = sim.ledger().await?;
    let expected: BTreeSet<(u32, u64)> = ledger
        .shards
        .iter()
        .flat_map(|(s, entries)| entries.iter().map(move |e| (*s, e.seq)))
        .collect();
    let seen = |tap: &crate::broker::Tap| -> BTreeSet<(u32, u64)> {
        tap.events().iter().map(|e| (e.shard_id, e.seq)).collect()
    };
    let _ = wait_until(
        "every ledger event in RabbitMQ",
        Duration::from_secs(30),
        async || expected.is_subset(&seen(&tap)),
    )
    .await;
    env.checks.figure("ledger events", expected.len());
    env.checks
        .expect_eq("events lost", expected.difference(&seen(&tap)).count(), 0);
    // Both outages leave the worker a backlog (at the full size about a
    // minute of 1,000 events/s) to apply through the Redis store once
    // Redis is back; the cache is compared once the partition queues are
    // drained, and the catch-up time is reported.
    let catch_up = Instant::now();
    let drained = env
        .wait_drained(Duration::from_secs(size.pick(30, 240)))
        .await;
    env.checks.expect(
        "worker drains its partition queues",
        drained.is_ok(),
        format!("{drained:?}"),
    );
    env.checks.figure(
        "worker catch-up after the events stopped (s)",
        format!("{:.1}", catch_up.elapsed().as_secs_f64()),
    );
    let truth = sim.truth().await?;
    env.expect_cache_equal(worker.http, &truth, Duration::from_secs(30))
        .await;
    env.checks.expect(
        "no process exited",
        sharder.child.running() && worker.child.running(),
        format!(
            "sharder: {} / worker: {}",
            sharder.child.log_tail(3),
            worker.child.log_tail(3)
        ),
    );
    Ok(())
}

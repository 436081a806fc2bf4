//! Incident 2: the cluster DNS goes away and comes back (Vexera, 2019: a
//! DNS restart made a stats library hard-fail and crashed every sharder).
//!
//! # Algorithm
//! 1. dnsmasq serves the gateway, API and broker names with a 1 s TTL; a
//!    sharder and a worker resolve everything through it, the broker
//!    through a fault proxy per process, under a steady event rate.
//! 2. Kill dnsmasq and wait past the TTL, so every cached answer is stale.
//! 3. During the outage: invalidate every session (every shard must
//!    reconnect to the gateway by name), and cut both broker connections
//!    (both processes must redial RabbitMQ by name).
//! 4. Restart dnsmasq on the same port, make every shard redial once more
//!    and check dnsmasq is asked again.
//!
//! Asserts: every shard reconnected with exactly one connection (zero
//! failed connects: `sharder_reconnects_total` and
//! `sharder_connections_total` both grew by the shard count), exactly one
//! AMQP reconnect of the sharder, stale answers were served, zero process
//! exits, `/metrics` answered throughout and events kept flowing into the
//! worker during the outage, and the resolver queries dnsmasq again after
//! its restart.

use super::dns_storm::{AMQP_HOST, GATEWAY_HOST, by_name, start_dns};
use super::{Env, ScenarioInfo};
use crate::prometheus;
use crate::report::{ScenarioReport, Size};
use crate::sim::{STEADY_MIX, SimArgs};
use crate::{Result, wait_until};
use std::time::{Duration, Instant};
use testkit::CutProxy;

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "dns-outage",
    incident: "dnsmasq killed while shards and broker connections redial by name, then restarted",
    asserts: "0 failed connects (reconnects == connections == shards), 1 AMQP reconnect, stale \
              answers served, 0 process exits, metrics and events flowing, queries resume after \
              restart",
};

const WAIT: Duration = Duration::from_secs(60);

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut env = Env::new(INFO.name, 2).await?;
    let outcome = body(&mut env, size).await;
    env.finish(outcome).await
}

async fn body(env: &mut Env, size: Size) -> Result<()> {
    let shards = size.pick(16, 64);
    let outage = Duration::from_secs(size.pick(4, 20));
    let mut dns = start_dns(env, 1)?;
    // At the full size the shards identify in four batches, so the
    // identify window is crossed: a 100 ms window with a 10 ms margin drew
    // identify violations from a debug-build simulator on a loaded machine
    // (it stamps IDENTIFYs late), which is timing noise, not DNS. The full
    // size uses a 1 s window with a 100 ms margin instead.
    let (window_ms, margin_ms) = size.pick((100, 10), (1000, 100));
    let sim = env.sim(SimArgs {
        shards,
        guilds: shards * 2,
        event_rate: size.pick(100.0, 300.0),
        event_mix: Some(STEADY_MIX.into()),
        identify_window_ms: window_ms,
        ..SimArgs::default()
    })?;
    let amqp = testkit::services::AMQP_ADDR;
    let sharder_mq = CutProxy::start(amqp)
        .await
        .map_err(|e| crate::ScenarioError::io("starting a fault proxy", e))?;
    let worker_mq = CutProxy::start(amqp)
        .await
        .map_err(|e| crate::ScenarioError::io("starting a fault proxy", e))?;
    let mut wcfg = env.worker_config()?;
    by_name(&mut wcfg, &sim, &dns, worker_mq.port());
    let mut worker = env.start_worker("worker", &wcfg)?;
    let mut scfg = env.sharder_config(&sim, margin_ms)?;
    by_name(&mut scfg, &sim, &dns, sharder_mq.port());
    let mut sharder = env.start_sharder("sharder", &scfg, &[])?;
    sharder.wait_ready(WAIT).await?;
    let applied =
        async |w: &crate::bulwark::Process| w.counter("worker_events_applied_total", &[]).await;
    wait_until("worker applying events", WAIT, async || {
        applied(&worker).await > 0
    })
    .await?;

    // The outage.
    dns.stop();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await; // past the 1 s TTL
    let m0 = sharder.metrics().await;
    let count = |m: &str, n: &str| prometheus::count(m, n, &[]);
    let (reconnects0, connections0, amqp0, stale0) = (
        count(&m0, "sharder_reconnects_total"),
        count(&m0, "sharder_connections_total"),
        count(&m0, "sharder_amqp_reconnects_total"),
        count(&m0, "dnscache_stale_served_total"),
    );
    let identifies0 = sim.counters().await?.identifies;
    let applied0 = applied(&worker).await;
    sim.control("faults/invalid-session", "{\"resumable\": false}")
        .await?;
    sharder_mq.cut();
    worker_mq.cut();
    tokio::time::sleep(Duration::from_millis(50)).await;
    sharder_mq.restore();
    worker_mq.restore();
    let mut scrapes_failed = 0u32;
    let mut scrapes = 0u32;
    while down_at.elapsed() < outage {
        for p in [&sharder, &worker] {
            scrapes += 1;
            if p.metrics().await.is_empty() {
                scrapes_failed += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let back = wait_until(
        "every shard identified again during the outage",
        WAIT,
        async || {
            sim.counters()
                .await
                .is_ok_and(|c| c.identifies >= identifies0 + u64::from(shards))
        },
    )
    .await;
    env.checks.expect(
        "every shard reconnected during the outage",
        back.is_ok(),
        format!("{back:?}"),
    );
    let m1 = sharder.metrics().await;
    env.checks.expect_eq(
        "gateway reconnects during the outage",
        count(&m1, "sharder_reconnects_total") - reconnects0,
        u64::from(shards),
    );
    env.checks.expect_eq(
        "gateway connections during the outage",
        count(&m1, "sharder_connections_total") - connections0,
        u64::from(shards),
    );
    env.checks.expect_eq(
        "sharder AMQP reconnects",
        count(&m1, "sharder_amqp_reconnects_total") - amqp0,
        1,
    );
    env.checks.expect_at_least(
        "stale answers served",
        count(&m1, "dnscache_stale_served_total") - stale0,
        1,
    );
    let applied1 = applied(&worker).await;
    env.checks.expect_at_least(
        "events applied by the worker during the outage",
        applied1 - applied0,
        1,
    );
    env.checks
        .expect_eq("failed /metrics scrapes", scrapes_failed, 0);
    env.checks.figure("scrapes during the outage", scrapes);
    env.checks.expect(
        "no process exited",
        sharder.child.running() && worker.child.running(),
        "a process exited during the DNS outage",
    );
    let c = sim.counters().await?;
    env.checks
        .expect_eq("identify violations", c.identify_violations, 0);

    // The restart: the resolver asks dnsmasq again.
    let before = dns.count("A", GATEWAY_HOST)? + dns.count("A", AMQP_HOST)?;
    dns.restart()?;
    let identifies1 = sim.counters().await?.identifies;
    sim.control("faults/invalid-session", "{\"resumable\": false}")
        .await?;
    wait_until(
        "every shard identified after the restart",
        WAIT,
        async || {
            sim.counters()
                .await
                .is_ok_and(|c| c.identifies >= identifies1 + u64::from(shards))
        },
    )
    .await?;
    let mut after = before;
    let asked = wait_until(
        "queries after the restart",
        Duration::from_secs(10),
        async || {
            after =
                dns.count("A", GATEWAY_HOST).unwrap_or(0) + dns.count("A", AMQP_HOST).unwrap_or(0);
            after > before
        },
    )
    .await;
    env.checks.expect(
        "dnsmasq queried again after its restart",
        asked.is_ok(),
        format!("{before} queries before, {after} after"),
    );
    env.checks.figure("queries after restart", after - before);
    sharder.wait_ready(WAIT).await?;
    env.checks.expect(
        "no process exited after the restart",
        sharder.child.running() && worker.child.running(),
        "a process exited",
    );
    Ok(())
}

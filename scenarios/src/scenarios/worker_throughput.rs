//! A measurement, not an incident: applied events per second against the
//! number of worker replicas sharing the partitions (Redis store). Not in
//! `run all` nor in the tests; run it by name
//! (`bulwark-scenarios run worker-throughput`).
//!
//! # Algorithm
//! For R in 1, 2, 4: a fresh topology of 16 partitions; the simulator and a
//! sharder fill the queues with no worker running (a fixed time at a high
//! event rate), then the events stop; R workers start at once and the
//! clock runs until every partition queue is empty and the workers' applied
//! counters stop moving. Figure: applied events / that time. The start-up
//! of the workers and their first hand-overs are inside the time, as they
//! would be in a scale-up.

use super::{Env, ScenarioInfo};
use crate::bulwark::Process;
use crate::report::{ScenarioReport, Size};
use crate::sim::{STEADY_MIX, SimArgs};
use crate::{Result, wait_until};
use std::time::{Duration, Instant};

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "worker-throughput",
    incident: "(measurement) a backlog drained by 1, 2 and 4 workers sharing 16 partitions",
    asserts: "each run drains its backlog; figures: applied events per second per replica count",
};

const PARTITIONS: u32 = 16;
const WAIT: Duration = Duration::from_secs(300);

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut checks = crate::Checks::new(INFO.name);
    for replicas in [1usize, 2, 4] {
        let mut env = Env::new(INFO.name, PARTITIONS).await?;
        let outcome = measure(&mut env, size, replicas).await;
        let report = env.finish(outcome).await?;
        for f in report.failures() {
            checks.expect(&format!("{replicas} workers"), false, f);
        }
        for (k, v) in &report.figures {
            checks.figure(&format!("{replicas} workers: {k}"), v);
        }
    }
    Ok(checks.finish())
}

async fn measure(env: &mut Env, size: Size, replicas: usize) -> Result<()> {
    let fill = Duration::from_secs(size.pick(10, 30));
    let sim = env.sim(SimArgs {
        shards: 16,
        guilds: 32,
        event_rate: 3000.0,
        event_mix: Some(STEADY_MIX.into()),
        ..SimArgs::default()
    })?;
    let mut sharder = env.start_sharder("sharder", &env.sharder_config(&sim, 50)?, &[])?;
    sharder.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(fill).await;
    sim.set_event_rate(0.0).await?;
    // The sharder's last publishes settle: the backlog stops growing.
    let mut last = u64::MAX;
    wait_until("the backlog settled", WAIT, async || {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now: u64 = env
            .broker
            .backlog(&env.topo)
            .await
            .map(|b| b.iter().map(|&n| u64::from(n)).sum())
            .unwrap_or(0);
        let settled = now == last;
        last = now;
        settled
    })
    .await?;
    env.checks.figure("backlog messages", last);

    let started = Instant::now();
    let mut workers: Vec<Process> = Vec::new();
    for i in 0..replicas {
        let mut cfg = env.worker_config()?;
        cfg.set_str("worker", "store", "redis")
            .set_str("redis", "url", "redis://127.0.0.1:6379")
            .set_str("redis", "key_prefix", &env.redis_prefix);
        workers.push(env.start_worker(&format!("worker-{i}"), &cfg)?);
    }
    let applied = async |ws: &[Process]| {
        let mut n = 0;
        for w in ws {
            n += w.counter("worker_events_applied_total", &[]).await;
        }
        n
    };
    let drained = env.wait_drained(WAIT).await;
    // What was delivered last is applied once the counters stop moving.
    let mut before = u64::MAX;
    let mut done = started.elapsed();
    let _ = wait_until("applied counters settled", WAIT, async || {
        let now = applied(&workers).await;
        let settled = now == before;
        if !settled {
            done = started.elapsed();
        }
        before = now;
        tokio::time::sleep(Duration::from_millis(200)).await;
        settled
    })
    .await;
    env.checks
        .expect("backlog drained", drained.is_ok(), format!("{drained:?}"));
    let total = applied(&workers).await;
    env.checks.figure("events applied", total);
    env.checks.figure("drain time (ms)", done.as_millis());
    env.checks.figure(
        "applied events/s",
        format!("{:.0}", total as f64 / done.as_secs_f64().max(0.001)),
    );
    Ok(())
}

//! Incident 3: a rolling restart of a sharder running 36 shards (Vexera,
//! 2019: sequential resumes behind a slow DNS outlived their sessions).
//!
//! # Algorithm
//! 1. Simulator with `shards` shards and a steady event rate; the sharder
//!    boots them all (one identify each), publishing to RabbitMQ; a tap on
//!    the exchange copies every confirmed event.
//! 2. Once events flow and every session file exists, `SIGTERM` (as the
//!    StatefulSet does) and wait for exit 0, then start a new process.
//! 3. Measure from the new process's start until the simulator has counted
//!    a RESUME of every shard; keep the events flowing a little longer.
//! 4. Stop the events and compare the ledger with the tap.
//!
//! Asserts: every shard resumed within 2 s of the new process starting,
//! zero identifies spent by the restart, zero failed resumes, and every
//! `(shard, seq)` of the ledger present in RabbitMQ (zero lost).

use super::{Env, ScenarioInfo};
use crate::report::{ScenarioReport, Size};
use crate::sim::{STEADY_MIX, SimArgs};
use crate::{Result, wait_until};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "rolling-restart",
    incident: "SIGTERM and restart of a 36-shard sharder under traffic",
    asserts: "all shards resumed <= 2 s after start, 0 identifies spent, 0 failed resumes, \
              0 ledger seqs missing from RabbitMQ",
};

const WAIT: Duration = Duration::from_secs(60);

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut env = Env::new(INFO.name, 4).await?;
    let outcome = body(&mut env, size).await;
    env.finish(outcome).await
}

async fn body(env: &mut Env, size: Size) -> Result<()> {
    let shards = size.pick(36, 144);
    let rate = size.pick(200.0, 600.0);
    let sim = env.sim(SimArgs {
        shards,
        guilds: shards * 2,
        event_rate: rate,
        event_mix: Some(STEADY_MIX.into()),
        ..SimArgs::default()
    })?;
    let tap = env.broker.tap(&env.topo).await?;
    let cfg = env.sharder_config(&sim, 10)?;
    let mut first = env.start_sharder("sharder-1", &cfg, &[])?;
    first.wait_ready(WAIT).await?;
    let boot_identifies = sim.counters().await?.identifies;
    env.checks
        .expect_eq("identifies at boot", boot_identifies, u64::from(shards));
    let want = (rate * 2.0) as usize;
    wait_until("events flowing", WAIT, async || {
        sim.ledger().await.map(|l| l.len()).unwrap_or(0) > want
    })
    .await?;
    // One directory per generation (shard total) in the file store.
    let sessions = env.dir.join("sessions").join(format!("total-{shards}"));
    wait_until("every session saved", WAIT, async || {
        (0..shards).all(|s| sessions.join(format!("shard-{s}.json")).exists())
    })
    .await?;

    let stop = Instant::now();
    first.child.terminate()?;
    let status = first.child.wait_exit(WAIT).await?;
    env.checks
        .expect_eq("old process exit code", status.code().unwrap_or(-1), 0);
    env.checks
        .figure("old process shutdown ms", stop.elapsed().as_millis());

    let start = Instant::now();
    let mut second = env.start_sharder("sharder-2", &cfg, &[])?;
    wait_until("every shard resumed", WAIT, async || {
        sim.counters()
            .await
            .is_ok_and(|c| c.resumes >= u64::from(shards))
    })
    .await?;
    let resumed_ms = start.elapsed().as_millis();
    env.checks
        .expect_at_most("all resumed after start (ms)", resumed_ms, 2000);
    second.wait_ready(WAIT).await?;
    env.checks
        .figure("ready after start (ms)", start.elapsed().as_millis());

    let mark = sim.ledger().await?.len();
    wait_until("events after the restart", WAIT, async || {
        sim.ledger().await.map(|l| l.len()).unwrap_or(0) > mark + want / 2
    })
    .await?;
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
        Duration::from_secs(20),
        async || expected.is_subset(&seen(&tap)),
    )
    .await;
    let got = seen(&tap);
    let lost = expected.difference(&got).count();
    env.checks.figure("ledger events", expected.len());
    env.checks.expect_eq("lost events", lost, 0);
    env.checks.figure(
        "duplicates in RabbitMQ",
        tap.len().saturating_sub(got.len()),
    );
    let c = sim.counters().await?;
    env.checks.expect_eq(
        "identifies spent by the restart",
        c.identifies - boot_identifies,
        0,
    );
    env.checks.expect_eq("failed resumes", c.failed_resumes, 0);
    env.checks.figure("replayed on resume", c.replayed_events);
    let resumed = second
        .counter("sharder_resumes_total", &[("result", "resumed")])
        .await;
    env.checks
        .expect_eq("sharder_resumes_total{resumed}", resumed, u64::from(shards));
    second.child.terminate()?;
    second.child.wait_exit(WAIT).await?;
    Ok(())
}

//! Incident 7: shedding load and throttling identifies at runtime (Discord,
//! 2022: typing events were turned off to relieve the overloaded cluster;
//! 2020: the connection throttle was raised step by step during recovery).
//!
//! # Algorithm
//! 1. A sharder under a MESSAGE_CREATE + TYPING_START stream; a tap on the
//!    exchange records every event with the sharder's receive time.
//! 2. `POST /admin/shed {"events": ["TYPING_START"]}`; later an empty list.
//! 3. `POST /admin/identify-throttle {"min_interval_ms": T}` (T = 1 s),
//!    then the sessions of some shards are invalidated so they must
//!    identify again.
//!
//! Asserts: the last TYPING_START received after the shed was set is at
//! most 1 s later, none after that, MESSAGE_CREATE keeps flowing; after the
//! shed is cleared TYPING_START is back within 1 s; the throttle gauge
//! shows T at once and consecutive READYs after it are at least `0.9 x T`
//! apart; the same process (pid) throughout, and zero identifies or
//! resumes caused by the shed.

use super::{Env, ScenarioInfo};
use crate::prometheus;
use crate::report::{ScenarioReport, Size};
use crate::sim::SimArgs;
use crate::{Result, unix_ms, wait_until};
use std::time::Duration;

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "runtime-controls",
    incident: "TYPING_START shed and identifies throttled through the admin API, no restart",
    asserts: "shed visible <= 1 s and nothing shed published after, unshed back <= 1 s, READY gaps \
              >= 0.9 x throttle, same pid, 0 identifies/resumes from the shed",
};

const WAIT: Duration = Duration::from_secs(60);
const SHED: &str = "TYPING_START";

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut env = Env::new(INFO.name, 2).await?;
    let outcome = body(&mut env, size).await;
    env.finish(outcome).await
}

async fn body(env: &mut Env, size: Size) -> Result<()> {
    let shards = size.pick(16, 64);
    // A recovery throttle of a second: the READY receive time the gaps are
    // measured on trails each IDENTIFY by a few tens of ms of jitter in a
    // debug build, a small share of this interval.
    let throttle_ms: u64 = 1000;
    let rethrottled: u32 = size.pick(6, 12);
    let sim = env.sim(SimArgs {
        shards,
        guilds: shards,
        event_rate: size.pick(300.0, 1000.0),
        event_mix: Some("MESSAGE_CREATE=3,TYPING_START=1".into()),
        ..SimArgs::default()
    })?;
    let tap = env.broker.tap(&env.topo).await?;
    let cfg = env.sharder_config(&sim, 50)?;
    let mut sharder = env.start_sharder("sharder", &cfg, &[])?;
    sharder.wait_ready(WAIT).await?;
    let pid = sharder.child.pid();
    wait_until("typing events flowing", WAIT, async || {
        tap.events().iter().any(|e| e.t == SHED)
    })
    .await?;
    let c0 = sim.counters().await?;

    // Shed.
    let set_at = unix_ms();
    let status = sharder
        .admin("/admin/shed", &format!("{{\"events\": [\"{SHED}\"]}}"))
        .await?;
    env.checks.expect_eq("POST /admin/shed status", status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events = tap.events();
    let last_shed = events
        .iter()
        .filter(|e| e.t == SHED)
        .map(|e| e.received_at)
        .max()
        .unwrap_or(0);
    let effect_ms = last_shed.saturating_sub(set_at);
    env.checks
        .expect_at_most("last TYPING_START after the shed (ms)", effect_ms, 1000);
    let late = events
        .iter()
        .filter(|e| e.t == SHED && e.received_at > set_at + 1000)
        .count();
    env.checks
        .expect_eq("TYPING_START published > 1 s after the shed", late, 0);
    let messages_after = events
        .iter()
        .filter(|e| e.t == "MESSAGE_CREATE" && e.received_at > set_at + 1000)
        .count();
    env.checks
        .expect_at_least("MESSAGE_CREATE published while shedding", messages_after, 1);
    let shed_total = sharder.counter("sharder_events_shed_total", &[]).await;
    env.checks
        .expect_at_least("sharder_events_shed_total", shed_total, 1);

    // Unshed.
    let unset_at = unix_ms();
    let status = sharder.admin("/admin/shed", "{\"events\": []}").await?;
    env.checks
        .expect_eq("POST /admin/shed [] status", status, 200);
    let mut back_ms = u64::MAX;
    let _ = wait_until("typing events back", Duration::from_secs(5), async || {
        if let Some(t) = tap
            .events()
            .iter()
            .filter(|e| e.t == SHED && e.received_at >= unset_at)
            .map(|e| e.received_at)
            .min()
        {
            back_ms = t - unset_at;
            return true;
        }
        false
    })
    .await;
    env.checks
        .expect_at_most("first TYPING_START after unshedding (ms)", back_ms, 1000);
    let c1 = sim.counters().await?;
    env.checks.expect_eq(
        "identifies + resumes caused by the shed",
        (c1.identifies + c1.resumes) - (c0.identifies + c0.resumes),
        0,
    );

    // Throttle.
    let status = sharder
        .admin(
            "/admin/identify-throttle",
            &format!("{{\"min_interval_ms\": {throttle_ms}}}"),
        )
        .await?;
    env.checks
        .expect_eq("POST /admin/identify-throttle status", status, 200);
    let gauge = prometheus::sum(
        &sharder.metrics().await,
        "sharder_identify_min_interval_seconds",
        &[],
    );
    env.checks.expect_eq(
        "throttle gauge (ms) right after",
        (gauge * 1000.0).round() as u64,
        throttle_ms,
    );
    let throttled_at = unix_ms();
    let which: Vec<u32> = (0..rethrottled).collect();
    sim.control(
        "faults/invalid-session",
        &format!("{{\"resumable\": false, \"shards\": {which:?}}}"),
    )
    .await?;
    wait_until(
        "the invalidated shards identified again",
        WAIT,
        async || {
            sim.counters()
                .await
                .is_ok_and(|c| c.identifies >= c1.identifies + u64::from(rethrottled))
        },
    )
    .await?;
    sharder.wait_ready(WAIT).await?;
    let mut readies: Vec<u64> = tap
        .events()
        .iter()
        .filter(|e| e.t == "READY" && e.received_at > throttled_at)
        .map(|e| e.received_at)
        .collect();
    readies.sort_unstable();
    let min_gap = readies.windows(2).map(|w| w[1] - w[0]).min().unwrap_or(0);
    env.checks
        .figure("READYs after the throttle", readies.len());
    env.checks
        .expect_at_least("smallest READY gap (ms)", min_gap, throttle_ms * 9 / 10);
    let c2 = sim.counters().await?;
    env.checks
        .expect_eq("identify violations", c2.identify_violations, 0);
    env.checks
        .expect_eq("sharder pid unchanged", sharder.child.pid(), pid);
    env.checks.expect(
        "sharder still running",
        sharder.child.running(),
        "it exited",
    );
    Ok(())
}

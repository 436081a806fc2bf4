//! Incident 8: a rolling update that takes a second pod down before the
//! first is back (Discord, 2022: nodes were restarted before their caches
//! had warmed; a zone was taken down while another was degraded).
//!
//! # Algorithm
//! 1. Two sharder pods (`process_count = 2`, whole identify keys each), an
//!    identify throttle so a cold pod takes seconds to become ready.
//! 2. Roll pod 0: `SIGTERM`, its volume lost (session files deleted), new
//!    process. While pod 0 is still not ready, roll pod 1 (`SIGTERM`, new
//!    process). Both probes are sampled every 20 ms, each `200` checked
//!    against the simulator: are all the pod's shards connected?
//! 3. A worker started against the queue backlog the pods left behind:
//!    its probe is sampled with the backlog measured just before.
//!
//! Asserts: no sharder `/readyz` 200 while any of its shards is not
//! connected; pod 0 was observed not ready when pod 1 was stopped, and both
//! were observed not ready at once (what a rollout controller must see to
//! stop); both ready at the end; the worker never ready while the backlog
//! is at or above `ready_backlog`, ready once drained, and its cache equal
//! to the truth when it first says ready.

use super::{Env, ScenarioInfo};
use crate::bulwark::{Process, TomlConfig};
use crate::cache_check;
use crate::report::{ScenarioReport, Size};
use crate::sim::{SimArgs, SimProcess};
use crate::{Result, ScenarioError, wait_until};
use std::time::{Duration, Instant};

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "rollout-safety",
    incident: "rolling restart of two sharder pods, the second while the first is not ready; a \
               worker started on a backlog",
    asserts: "0 ready answers with shards missing, both pods seen not-ready at once, worker not \
              ready while backlog >= threshold, cache == truth when first ready",
};

const WAIT: Duration = Duration::from_secs(90);
const READY_BACKLOG: u32 = 5;

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut env = Env::new(INFO.name, 4).await?;
    let outcome = body(&mut env, size).await;
    env.finish(outcome).await
}

fn pod_config(env: &Env, sim: &SimProcess, index: u32, throttle_ms: u64) -> Result<TomlConfig> {
    let mut c = env.sharder_config(sim, 50)?;
    c.set("sharder", "process_count", "2")
        .set("sharder", "process_index", index.to_string())
        .set_str("sharder", "assignment", "buckets")
        .set_str(
            "sharder",
            "session_dir",
            &env.dir
                .join(&format!("sessions-{index}"))
                .display()
                .to_string(),
        )
        .set_str(
            "sharder",
            "identify_min_interval",
            &format!("{throttle_ms}ms"),
        );
    Ok(c)
}

/// The shards of pod `index` with whole identify keys (`buckets`).
fn pod_shards(index: u32, shards: u32, concurrency: u32) -> Vec<u32> {
    (0..shards)
        .filter(|s| (s % concurrency) % 2 == index)
        .collect()
}

/// Samples of one pod's probe.
#[derive(Debug, Default)]
struct Probe {
    samples: u32,
    not_ready: u32,
    /// `200` answered while some of the pod's shards were not connected.
    early: u32,
}

async fn sample(pod: &Process, sim: &SimProcess, shards: &[u32], p: &mut Probe) -> bool {
    let ready = pod.readyz().await == Some(200);
    p.samples += 1;
    if ready {
        let body = format!("{{\"shards\": {shards:?}}}");
        let attached = sim
            .control("faults/heartbeat-request", &body)
            .await
            .unwrap_or(0);
        if attached < shards.len() as u64 {
            p.early += 1;
        }
    } else {
        p.not_ready += 1;
    }
    ready
}

async fn body(env: &mut Env, size: Size) -> Result<()> {
    let shards = size.pick(32, 128);
    let concurrency = 16;
    let throttle_ms = size.pick(150, 300);
    let sim = env.sim(SimArgs {
        shards,
        guilds: shards * 2,
        max_concurrency: concurrency,
        ..SimArgs::default()
    })?;
    let cfg0 = pod_config(env, &sim, 0, throttle_ms)?;
    let cfg1 = pod_config(env, &sim, 1, throttle_ms)?;
    let shards0 = pod_shards(0, shards, concurrency);
    let shards1 = pod_shards(1, shards, concurrency);
    let mut pod0 = env.start_sharder("pod-0", &cfg0, &[])?;
    let mut pod1 = env.start_sharder("pod-1", &cfg1, &[])?;
    pod0.wait_ready(WAIT).await?;
    pod1.wait_ready(WAIT).await?;
    let sessions0 = env.dir.join("sessions-0");
    // One directory per generation (shard total) in the file store.
    let generation0 = sessions0.join(format!("total-{shards}"));
    wait_until("pod 0 sessions saved", WAIT, async || {
        shards0
            .iter()
            .all(|s| generation0.join(format!("shard-{s}.json")).exists())
    })
    .await?;

    // Roll pod 0 onto a fresh volume: it must identify, slowly.
    pod0.child.terminate()?;
    pod0.child.wait_exit(WAIT).await?;
    let _ = std::fs::remove_dir_all(&sessions0);
    let mut pod0 = env.start_sharder("pod-0b", &cfg0, &[])?;
    let (mut p0, mut p1) = (Probe::default(), Probe::default());
    // Roll pod 1 as soon as pod 0 answers (not ready) — the mistake a
    // rollout controller must be able to see.
    wait_until("pod 0 answering", WAIT, async || {
        pod0.readyz().await.is_some()
    })
    .await?;
    let pod0_ready_when_pod1_stopped = sample(&pod0, &sim, &shards0, &mut p0).await;
    pod1.child.terminate()?;
    pod1.child.wait_exit(WAIT).await?;
    let pod1b = env.start_sharder("pod-1b", &cfg1, &[])?;
    let mut both_not_ready = 0;
    let deadline = Instant::now() + WAIT;
    loop {
        let r0 = sample(&pod0, &sim, &shards0, &mut p0).await;
        let r1 = sample(&pod1b, &sim, &shards1, &mut p1).await;
        if !r0 && !r1 {
            both_not_ready += 1;
        }
        if r0 && r1 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(ScenarioError::Timeout {
                what: "both pods ready after the rollout".into(),
                after: WAIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.checks.expect(
        "pod 0 not ready when pod 1 was stopped",
        !pod0_ready_when_pod1_stopped,
        "pod 0 said ready with an empty session volume",
    );
    env.checks
        .expect_at_least("samples with both pods not ready", both_not_ready, 1);
    env.checks
        .expect_eq("pod 0 ready with shards missing", p0.early, 0);
    env.checks
        .expect_eq("pod 1 ready with shards missing", p1.early, 0);
    env.checks.figure(
        "probe samples (not ready) pod 0 / pod 1",
        format!(
            "{} ({}) / {} ({})",
            p0.samples, p0.not_ready, p1.samples, p1.not_ready
        ),
    );
    let c = sim.counters().await?;
    env.checks
        .expect_eq("identify violations", c.identify_violations, 0);
    let _ = &mut pod0;

    // A worker started on the backlog the pods left.
    let backlog0: u32 = env.broker.backlog(&env.topo).await?.iter().sum();
    env.checks
        .expect_at_least("backlog before the worker", backlog0, READY_BACKLOG);
    let truth = sim.truth().await?;
    let mut wcfg = env.worker_config()?;
    wcfg.set("worker", "ready_backlog", READY_BACKLOG.to_string())
        .set("worker", "prefetch", "8");
    let worker = env.start_worker("worker", &wcfg)?;
    let mut early = 0;
    let mut not_ready = 0;
    let mut first_ready_diff = None;
    let deadline = Instant::now() + WAIT;
    while first_ready_diff.is_none() {
        let backlog = env.broker.backlog(&env.topo).await?;
        let ready = worker.readyz().await == Some(200);
        if ready {
            if backlog.iter().any(|&n| n >= READY_BACKLOG) {
                early += 1;
            }
            first_ready_diff = Some(cache_check::compare(worker.http, &truth).await?);
        } else {
            not_ready += 1;
        }
        if Instant::now() >= deadline {
            return Err(ScenarioError::Timeout {
                what: "worker ready after the backlog".into(),
                after: WAIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.checks
        .expect_eq("worker ready while backlog >= threshold", early, 0);
    env.checks
        .expect_at_least("worker not-ready samples", not_ready, 1);
    if let Some(diff) = first_ready_diff {
        env.checks.expect(
            "worker cache == truth when first ready",
            diff.equal(),
            format!(
                "{}/{} guilds; {}",
                diff.matching,
                diff.guilds,
                diff.differences.join(" | ")
            ),
        );
    }
    Ok(())
}

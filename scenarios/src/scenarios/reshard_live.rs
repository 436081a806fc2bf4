//! Live resharding (issue #17): the bot grows from `N` to `2N` shards while
//! it stays online, across two sharder processes, with traffic on all the
//! time.
//!
//! # Algorithm
//! 1. The simulator at `N` shards, `max_concurrency` 16, a scaled identify
//!    window; two sharder processes (StatefulSet pods 0 and 1: sessions,
//!    identify lock and the reshard's state in Redis), two workers (Redis
//!    store), a tap on the workers' clean stream (`<base>.events`).
//! 2. Cold boot; then the reshard starts one of three ways:
//!    * `reshard-live`: `POST /admin/reshard {"total": 2N}` to pod 0;
//!    * `reshard-4011`: the simulator caps guilds per shard at the boot's
//!      largest shard (`--guild-cap`), and joins in the traffic take a shard
//!      over it: Discord closes it with 4011 and the sharder reshards by
//!      itself;
//!    * `reshard-kill`: as `reshard-live`, and pod 1 is `kill -9`ed once
//!      the first new shard is READY, then started again.
//! 3. Both pods report the new total with no reshard running; traffic
//!    stops; the partition queues drain.
//!
//! Against the simulator's ledger (one logical id per world event, however
//! many sessions it reached) and the clean stream (one message per
//! `message_id`), per guild and clean name: events lost 0 and delivered
//! twice 0; no GUILD_JOINED but the real joins (false joins 0); no
//! GUILD_AVAILABLE beyond the boot's (re-announced guilds 0); the reshard
//! announced once; the cache equals the truth; identifies spent on the new
//! total = `2N` (the kill may cost one window's worth more); the reshard's
//! time within 5 % of the new total's cold-boot floor (the plan's
//! `identify windows x window`; not for the kill, whose restart it waits
//! for); 0 identify violations. The dark time is bounded from
//! `GET /sim/attached`, sampled every 50 ms: the longest stretch in which
//! neither total had every shard attached (0 when the generations overlap;
//! an upper bound on any guild's time without a live shard).

use super::{Env, ScenarioInfo};
use crate::broker::CleanTap;
use crate::bulwark::Process;
use crate::cache_check;
use crate::prometheus;
use crate::report::{ScenarioReport, Size};
use crate::sim::{Ledger, STEADY_MIX, SimArgs, SimProcess};
use crate::{Result, ScenarioError, wait_until};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "reshard-live",
    incident: "live reshard N -> 2N over two sharder pods, traffic on, asked for by an operator",
    asserts: "0 lost, 0 twice, 0 false joins, 0 re-announced, cache == truth, identifies = 2N, \
              time <= 1.05 x floor, 0 ms with neither total attached",
};

pub const INFO_4011: ScenarioInfo = ScenarioInfo {
    name: "reshard-4011",
    incident: "a join takes a shard over Discord's guild cap: closed 4011, the sharder reshards itself",
    asserts: "the 4011 starts it; 0 lost of what Discord sent, 0 twice, 0 false joins, \
              0 re-announced, cache == truth, identifies = 2N",
};

pub const INFO_KILL: ScenarioInfo = ScenarioInfo {
    name: "reshard-kill",
    incident: "live reshard N -> 2N with sharder pod 1 killed (SIGKILL) midway and restarted",
    asserts: "it carries on (no rollback); 0 lost, 0 twice, 0 false joins, 0 re-announced, \
              cache == truth, identifies <= 2N + 16",
};

/// How the reshard starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Operator,
    GuildCap,
    KillMidway,
}

const WAIT: Duration = Duration::from_secs(60);
const CONCURRENCY: u32 = 16;
const PARTITIONS: u32 = 4;

pub async fn run(size: Size, trigger: Trigger) -> Result<ScenarioReport> {
    let name = match trigger {
        Trigger::Operator => INFO.name,
        Trigger::GuildCap => INFO_4011.name,
        Trigger::KillMidway => INFO_KILL.name,
    };
    let mut env = Env::new(name, PARTITIONS).await?;
    let outcome = body(&mut env, size, trigger).await;
    env.finish(outcome).await
}

/// The guilds each shard of `total` owns in `truth`.
fn largest_shard(truth: &serde_json::Value, total: u64) -> u64 {
    let mut per: BTreeMap<u64, u64> = BTreeMap::new();
    for id in cache_check::guild_ids(truth) {
        *per.entry((id >> 22) % total).or_default() += 1;
    }
    per.values().copied().max().unwrap_or(0)
}

/// `GET /admin/reshard` of `pod`.
async fn reshard_state(pod: &Process) -> Option<serde_json::Value> {
    let a = crate::http::get(pod.http, "/admin/reshard").await.ok()?;
    serde_json::from_str(&a.body).ok()
}

/// Samples `GET /sim/attached` until `stop`; returns the longest stretch
/// (ms) in which neither `from` nor `to` had every shard attached.
fn sample_dark(
    sim: Arc<SimProcess>,
    from: u32,
    to: u32,
    stop: Arc<AtomicBool>,
    longest: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut dark_since: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            if let Ok(a) = sim.attached_by_total().await {
                let full = |t: u32| a.get(&t).copied().unwrap_or(0) >= u64::from(t);
                if full(from) || full(to) {
                    dark_since = None;
                } else {
                    let since = *dark_since.get_or_insert_with(Instant::now);
                    let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
                    longest.fetch_max(ms.max(1), Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

async fn body(env: &mut Env, size: Size, trigger: Trigger) -> Result<()> {
    let from = size.pick(32, 64);
    let to = from * 2;
    // With the guild cap (4011) many guilds per shard: the cap is the
    // boot's largest shard, which the new total's shards (half as many
    // guilds each) stay far below while joins arrive.
    let guilds = match trigger {
        Trigger::GuildCap => from * 32,
        _ => from * 4,
    };
    let window_ms = 1000;
    let mut args = SimArgs {
        shards: from,
        guilds,
        members_per_guild: 4,
        max_concurrency: CONCURRENCY,
        identify_window_ms: window_ms,
        event_rate: 0.0,
        event_mix: Some(match trigger {
            // A join now and then: one takes a shard over the cap.
            Trigger::GuildCap => format!("{STEADY_MIX},GUILD_JOIN=1"),
            _ => STEADY_MIX.to_owned(),
        }),
        ..SimArgs::default()
    };
    if trigger == Trigger::GuildCap {
        // The world is generated from the seed: read its guilds once, and
        // cap at the boot's largest shard.
        let probe = SimProcess::start(&env.bins.sim, args.clone(), &env.dir.join("probe-sim.log"))?;
        args.guild_cap =
            Some(u32::try_from(largest_shard(&probe.truth().await?, u64::from(from))).unwrap_or(1));
        drop(probe);
    }
    let cap = args.guild_cap;
    let sim = Arc::new(env.sim(args)?);
    let tap: CleanTap = env.broker.clean_tap(&env.topo).await?;
    let worker = |env: &Env, name: &str| -> Result<Process> {
        let mut cfg = env.worker_config()?;
        cfg.set_str("worker", "store", "redis")
            .set_str("redis", "url", "redis://127.0.0.1:6379")
            .set_str("redis", "key_prefix", &env.redis_prefix);
        env.start_worker(name, &cfg)
    };
    let w1 = worker(env, "worker-1")?;
    let w2 = worker(env, "worker-2")?;
    // The workers split the partitions before any event: a partition
    // moving between them mid-boot is the scale-out scenario's subject,
    // not this one's.
    let held = async |w: &Process| {
        prometheus::samples(&w.metrics().await)
            .iter()
            .filter(|s| s.name == "worker_partition_held" && s.value == 1.0)
            .count()
    };
    wait_until("the two workers split the partitions", WAIT, async || {
        held(&w1).await == PARTITIONS as usize / 2 && held(&w2).await == PARTITIONS as usize / 2
    })
    .await?;
    let cfg0 = env.redis_pod_config(&sim, 150, 0)?;
    let cfg1 = env.redis_pod_config(&sim, 150, 1)?;
    let mut pod0 = env.start_sharder("sharder-0", &cfg0, &[])?;
    let mut pod1 = env.start_sharder("sharder-1", &cfg1, &[])?;
    pod0.wait_ready(WAIT).await?;
    pod1.wait_ready(WAIT).await?;
    wait_until(
        "every guild loaded into the clean stream",
        WAIT,
        async || tap.count("GUILD_AVAILABLE") >= guilds as usize,
    )
    .await?;
    let boot_identifies = sim.counters().await?.identifies;
    // Not synchronisation: the boot's identify windows must close before
    // the reshard's time is measured against its floor, or its first
    // batch would wait for them (a protocol window, not an event).
    tokio::time::sleep(Duration::from_millis(window_ms + 100)).await;

    let rss_before: u64 = [&pod0, &pod1]
        .iter()
        .filter_map(|p| p.child.rss_kib())
        .sum();
    let cpu_before: u64 = [&pod0, &pod1]
        .iter()
        .filter_map(|p| p.child.cpu_ticks())
        .sum();
    let mut rss_peak = rss_before;
    let stop = Arc::new(AtomicBool::new(false));
    let longest_dark = Arc::new(AtomicU64::new(0));
    let sampler = sample_dark(sim.clone(), from, to, stop.clone(), longest_dark.clone());
    sim.set_event_rate(match trigger {
        // About one join a second (1 in 46 of the mix).
        Trigger::GuildCap => 46.0,
        _ => size.pick(200.0, 500.0),
    })
    .await?;
    let started = Instant::now();
    let floor_s;
    if trigger == Trigger::GuildCap {
        wait_until(
            "a shard closed with 4011 starts a reshard",
            WAIT,
            async || {
                let r = reshard_state(&pod0).await;
                r.is_some_and(|v| v["reshard"]["to"] == to)
            },
        )
        .await?;
        floor_s = reshard_state(&pod0).await.map_or(0.0, |v| {
            v["reshard"]["floor_seconds"].as_f64().unwrap_or(0.0)
        });
        let closed = pod0.counter("sharder_fatal_closes_total", &[]).await
            + pod1.counter("sharder_fatal_closes_total", &[]).await;
        env.checks
            .expect_at_least("shards closed with 4011 (fatal)", closed, 1);
        env.checks.figure("guild cap per shard", cap.unwrap_or(0));
    } else {
        let answer =
            crate::http::post(pod0.http, "/admin/reshard", &format!("{{\"total\": {to}}}"))
                .await
                .map_err(|e| ScenarioError::Setup(e.to_string()))?;
        env.checks
            .expect_eq("POST /admin/reshard status", answer.status, 202);
        let plan: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
        floor_s = plan["cold_boot_floor_s"].as_f64().unwrap_or(0.0);
        // Another pod refuses a second one.
        let second = crate::http::post(
            pod1.http,
            "/admin/reshard",
            &format!("{{\"total\": {}}}", to * 2),
        )
        .await
        .map_err(|e| ScenarioError::Setup(e.to_string()))?;
        env.checks
            .expect_eq("a second reshard, asked of pod 1", second.status, 409);
    }
    if trigger == Trigger::KillMidway {
        wait_until("the first new shard READY", WAIT, async || {
            sim.attached_by_total()
                .await
                .is_ok_and(|a| a.get(&to).copied().unwrap_or(0) > 0)
        })
        .await?;
        pod1.child.kill();
        let in_progress = reshard_state(&pod0)
            .await
            .is_some_and(|v| !v["reshard"].is_null());
        env.checks.expect(
            "pod 1 killed with the reshard in progress",
            in_progress,
            "it had already finished",
        );
        pod1 = env.start_sharder("sharder-1b", &cfg1, &[])?;
    }
    let done_in = {
        let mut done = None;
        let _ = wait_until("both pods at the new total", WAIT, async || {
            let mut all = true;
            let rss: u64 = [&pod0, &pod1]
                .iter()
                .filter_map(|p| p.child.rss_kib())
                .sum();
            rss_peak = rss_peak.max(rss);
            for pod in [&pod0, &pod1] {
                all &= reshard_state(pod)
                    .await
                    .is_some_and(|v| v["total"] == to && v["reshard"].is_null());
            }
            if all {
                done = Some(started.elapsed());
            }
            all
        })
        .await;
        done
    };
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    sim.set_event_rate(0.0).await?;
    env.checks.expect(
        "both pods run the new total",
        done_in.is_some(),
        format!("not within {WAIT:?}"),
    );
    let took = done_in.unwrap_or(WAIT).as_secs_f64();
    env.checks.figure("reshard took (s)", format!("{took:.2}"));
    env.checks.figure(
        "cold-boot floor of the new total (s)",
        format!("{floor_s:.2}"),
    );
    if trigger == Trigger::Operator {
        env.checks
            .expect_at_most("reshard time / floor", took / floor_s.max(0.001), 1.05);
    }
    if trigger != Trigger::KillMidway {
        // Both pods' RSS and CPU while both totals ran (a killed pod's
        // counters would start again).
        let cpu_after: u64 = [&pod0, &pod1]
            .iter()
            .filter_map(|p| p.child.cpu_ticks())
            .sum();
        env.checks.figure(
            "sharder RSS, both pods: before -> peak during the overlap (MiB)",
            format!(
                "{:.1} -> {:.1}",
                rss_before as f64 / 1024.0,
                rss_peak as f64 / 1024.0
            ),
        );
        env.checks.figure(
            "sharder CPU during the reshard, both pods (s)",
            format!("{:.2}", cpu_after.saturating_sub(cpu_before) as f64 / 100.0),
        );
    }
    // The retired shards are not "stopped" shards of the bot (that pages
    // someone: BulwarkShardStopped), and each new one is active: read off
    // each pod's own registry (the in-process tests share one).
    let mut stopped = 0;
    let mut active_new = 0;
    for pod in [&pod0, &pod1] {
        let text = pod.metrics().await;
        for sample in prometheus::samples(&text) {
            if sample.name != "sharder_shard_state" || sample.value != 1.0 {
                continue;
            }
            let label = |k: &str| {
                sample
                    .labels
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
            };
            match label("state").as_deref() {
                Some("stopped") => stopped += 1,
                Some("active") if label("total") == Some(to.to_string()) => active_new += 1,
                _ => {}
            }
        }
    }
    env.checks
        .expect_eq("shards reported stopped after the hand-over", stopped, 0);
    if trigger != Trigger::GuildCap {
        env.checks
            .expect_eq("new shards reported active", active_new, to);
    }
    let dark = longest_dark.load(Ordering::Relaxed);
    env.checks
        .figure("longest time neither total fully attached (ms)", dark);
    if trigger == Trigger::Operator {
        env.checks
            .expect_eq("ms with neither total fully attached", dark, 0);
    }

    // Drained, then the truth.
    let drained = env.wait_drained(WAIT).await;
    env.checks.expect(
        "partition queues drained",
        drained.is_ok(),
        format!("{drained:?}"),
    );
    let truth = sim.truth().await?;
    env.expect_cache_equal(w1.http, &truth, Duration::from_secs(30))
        .await;

    let ledger = sim.ledger().await?;
    let stream = compare_stream(&ledger, &tap, WAIT).await;
    env.checks.figure("logical guild events", stream.events);
    env.checks
        .figure("events both totals received", stream.both);
    env.checks.figure(
        "events no session received (Discord's, not ours)",
        stream.dark,
    );
    env.checks
        .expect_eq("events lost (ledger vs clean stream)", stream.lost, 0);
    env.checks.expect_eq(
        "events delivered twice to the clean stream",
        stream.twice,
        0,
    );
    if !stream.examples.is_empty() {
        env.checks
            .figure("first differences", stream.examples.join("; "));
    }
    if trigger != Trigger::GuildCap {
        env.checks
            .expect_eq("events that reached no session", stream.dark, 0);
    }
    let real_joins = stream.joins;
    env.checks.expect_eq(
        "false joins (GUILD_JOINED beyond the real joins)",
        tap.count("GUILD_JOINED").saturating_sub(real_joins),
        0,
    );
    env.checks.expect_eq(
        "re-announced guilds (GUILD_AVAILABLE beyond the boot's)",
        tap.count("GUILD_AVAILABLE").saturating_sub(guilds as usize),
        0,
    );
    env.checks
        .expect_eq("RESHARD_STARTED announced", tap.count("RESHARD_STARTED"), 1);
    env.checks.expect_eq(
        "RESHARD_COMPLETED announced",
        tap.count("RESHARD_COMPLETED"),
        1,
    );
    env.checks
        .expect_eq("RESHARD_ABORTED announced", tap.count("RESHARD_ABORTED"), 0);
    let c = sim.counters().await?;
    let spent = c.identifies - boot_identifies;
    env.checks
        .figure("identifies spent on the new total", spent);
    match trigger {
        Trigger::KillMidway => {
            env.checks
                .expect_at_most("identifies spent", spent, u64::from(to + CONCURRENCY))
        }
        _ => env
            .checks
            .expect_eq("identifies spent", spent, u64::from(to)),
    }
    env.checks
        .expect_eq("identify violations", c.identify_violations, 0);
    let mut poison = 0;
    for w in [&w1, &w2] {
        poison += prometheus::count(&w.metrics().await, "worker_poison_messages_total", &[]);
    }
    env.checks.expect_eq("poison messages", poison, 0);
    let (mut a, mut b) = (pod0, pod1);
    env.checks.expect(
        "both sharder pods running",
        a.child.running() && b.child.running(),
        format!("{} / {}", a.child.log_tail(3), b.child.log_tail(3)),
    );
    Ok(())
}

/// The clean stream against the ledger.
#[derive(Debug, Default)]
struct StreamCheck {
    events: usize,
    both: usize,
    dark: usize,
    lost: usize,
    twice: usize,
    joins: usize,
    examples: Vec<String>,
}

/// The clean name of a simulator event.
fn clean_name(event: &str) -> &str {
    match event {
        "GUILD_CREATE" => "GUILD_JOINED",
        "GUILD_DELETE" => "GUILD_REMOVED",
        other => other,
    }
}

/// Per guild and clean name, the logical events of the ledger against the
/// clean stream (waiting, with a deadline, for the last to arrive).
async fn compare_stream(ledger: &Ledger, tap: &CleanTap, within: Duration) -> StreamCheck {
    let mut logical: BTreeMap<u64, (u64, String, Vec<u32>)> = BTreeMap::new();
    for entries in ledger.shards.values() {
        for e in entries {
            let (Some(id), Some(g)) = (
                e.event_id,
                e.guild_id.as_deref().and_then(|g| g.parse().ok()),
            ) else {
                continue;
            };
            logical
                .entry(id)
                .or_insert_with(|| (g, e.event.clone(), Vec::new()))
                .2
                .push(e.shard_total);
        }
    }
    let mut check = StreamCheck {
        events: logical.len(),
        ..StreamCheck::default()
    };
    let mut want: BTreeMap<(u64, String), usize> = BTreeMap::new();
    for (g, event, totals) in logical.values() {
        if totals.is_empty() {
            check.dark += 1;
            continue;
        }
        let mut distinct = totals.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() > 1 {
            check.both += 1;
        }
        if event == "GUILD_CREATE" {
            check.joins += 1;
        }
        *want.entry((*g, clean_name(event).to_owned())).or_default() += 1;
    }
    let expected: usize = want.values().sum();
    let got = |tap: &CleanTap| {
        let mut got: BTreeMap<(u64, String), usize> = BTreeMap::new();
        for e in tap.events() {
            let Some(g) = e.guild_id else { continue };
            if e.name.starts_with("RESHARD_") || e.name == "GUILD_AVAILABLE" {
                continue;
            }
            *got.entry((g, e.name)).or_default() += 1;
        }
        got
    };
    let _ = wait_until("the clean stream caught up", within, async || {
        got(tap).values().sum::<usize>() >= expected
    })
    .await;
    let got = got(tap);
    let keys: std::collections::BTreeSet<&(u64, String)> = want.keys().chain(got.keys()).collect();
    for k in keys {
        let (w, g) = (
            want.get(k).copied().unwrap_or(0),
            got.get(k).copied().unwrap_or(0),
        );
        if w == g {
            continue;
        }
        if check.examples.len() < 5 {
            check.examples.push(format!("{k:?}: sent {w}, emitted {g}"));
        }
        check.lost += w.saturating_sub(g);
        check.twice += g.saturating_sub(w);
    }
    check
}

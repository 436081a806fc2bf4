//! Issue 19's proof as an incident: bots on a real library (discord.js's
//! `@discordjs/ws`, npm, run by node) connect through the `relay` binary,
//! and the sharder behind it is killed with SIGKILL under traffic.
//!
//! # Algorithm
//! 1. Simulator (no traffic yet), a sharder, a worker on the Redis store
//!    publishing its clean stream, and the relay, all real processes.
//! 2. Once the cache holds every guild, a node process runs three client
//!    shards (`[i, 3]`: not the real count) through the relay.
//! 3. Traffic starts; after a while the sharder is SIGKILLed and a new one
//!    started on its sessions (every shard resumes); traffic goes on.
//! 4. The relay is rolled over as Kubernetes does it: the bots connect
//!    through a Service's stand-in (a TCP proxy, also READY's resume URL);
//!    a second relay starts and gets ready, new connections go to it, and
//!    the first gets SIGTERM: it hands its sessions over, and the bots
//!    RESUME on the second. Traffic goes on, then stops.
//! 5. Per client shard, what it received after its snapshot is compared
//!    with the simulator's ledger (the world events of its guilds).
//!
//! Asserts: each client shard's READY and GUILD_CREATEs equal its split of
//! the truth; 0 events lost, 0 delivered twice, order per guild kept;
//! one READY per client shard (the kill and the rollover are invisible: no
//! new session, no GUILD_CREATE again); every client shard resumed on the
//! second relay; 0 identifies spent by the restart.

use super::{Env, ScenarioInfo};
use crate::bulwark::{INTENTS, Process, TomlConfig, free_addr};
use crate::report::{ScenarioReport, Size};
use crate::sim::{STEADY_MIX, SimArgs};
use crate::{Result, ScenarioError, wait_until};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "relay-clients",
    incident: "bots on @discordjs/ws through the relay while the sharder is SIGKILLed \
               and the relay is rolled over",
    asserts: "snapshots == truth, 0 lost, 0 twice, order per guild, 1 READY per client \
              shard, every client shard resumed on the new relay, 0 identifies spent",
};

const WAIT: Duration = Duration::from_secs(60);
/// Client shards, on purpose not the real count.
const CLIENT_SHARDS: u32 = 3;

/// `(t, d)` per client shard, in arrival order.
type Received = Arc<Mutex<BTreeMap<u32, Vec<(String, Value)>>>>;

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut env = Env::new(INFO.name, 4).await?;
    let outcome = body(&mut env, size).await;
    env.finish(outcome).await
}

fn guild_of(t: &str, d: &Value) -> Option<u64> {
    let raw = match t {
        "GUILD_CREATE" | "GUILD_DELETE" | "GUILD_UPDATE" => &d["id"],
        _ => &d["guild_id"],
    };
    raw.as_str().and_then(|g| g.parse().ok())
}

async fn body(env: &mut Env, size: Size) -> Result<()> {
    let shards = size.pick(4, 16);
    let rate = size.pick(200.0, 800.0);
    let client_js = super::node_project("../relay/tests/discordjs", "@discordjs/ws")?;
    let sim = env.sim(SimArgs {
        shards,
        guilds: shards * 3,
        event_rate: 0.0,
        event_mix: Some(STEADY_MIX.into()),
        ..SimArgs::default()
    })?;
    let redis = |cfg: &mut TomlConfig, prefix: &str| {
        cfg.set_str("redis", "url", "redis://127.0.0.1:6379")
            .set_str("redis", "key_prefix", prefix);
    };
    let sharder_cfg = env.sharder_config(&sim, 10)?;
    let mut sharder = env.start_sharder("sharder-1", &sharder_cfg, &[])?;
    let mut worker_cfg = env.worker_config()?;
    worker_cfg.set_str("worker", "store", "redis");
    redis(&mut worker_cfg, &env.redis_prefix);
    let worker_http = free_addr()?;
    worker_cfg.set_str("worker", "http_listen", &worker_http.to_string());
    let mut worker = env.start_worker("worker", &worker_cfg)?;
    let relay_addr = free_addr()?;
    // The Service: what the bots dial and what READY tells them to resume on.
    let service = testkit::CutProxy::start(relay_addr)
        .await
        .map_err(|e| ScenarioError::io("starting the relay Service's stand-in", e))?;
    let mut relay_cfg = TomlConfig::default();
    relay_cfg
        .set("discord", "intents", INTENTS.to_string())
        .set_str("amqp", "url", crate::AMQP_URL)
        .set("amqp", "partitions", env.topo.partitions.to_string())
        .set_str("relay", "listen", &relay_addr.to_string())
        .set_str("relay", "public_url", &format!("ws://{}", service.addr()))
        .set("relay", "shards", CLIENT_SHARDS.to_string())
        .set_str("relay", "amqp_topology_base", &env.topo.exchange);
    redis(&mut relay_cfg, &env.redis_prefix);
    let mut relay = Process::start(
        &env.bins.relay,
        "relay",
        &env.dir.0,
        &relay_cfg,
        relay_addr,
        &[],
    )?;
    sharder.wait_ready(WAIT).await?;
    worker.wait_ready(WAIT).await?;
    relay.wait_ready(WAIT).await?;
    let truth = sim.truth().await?;
    env.expect_cache_equal(worker_http, &truth, WAIT).await;
    let truth_guilds: BTreeMap<u64, &Value> = truth["guilds"]
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
                .collect()
        })
        .unwrap_or_default();
    let split = |id: u32| -> BTreeSet<u64> {
        truth_guilds
            .keys()
            .copied()
            .filter(|g| (g >> 22) % u64::from(CLIENT_SHARDS) == u64::from(id))
            .collect()
    };

    // The bots.
    let mut node = tokio::process::Command::new("node");
    node.arg(client_js.join("client.mjs"))
        .env("RELAY_HTTP", format!("http://{}", service.addr()))
        .env("BOT_TOKEN", crate::sim::TOKEN)
        .env("INTENTS", INTENTS.to_string())
        .env("SHARD_COUNT", CLIENT_SHARDS.to_string())
        .env("COMPRESSION", "zlib")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut bots = node
        .spawn()
        .map_err(|e| ScenarioError::io("starting node (Debian's nodejs)", e))?;
    let received: Received = Arc::default();
    let lines = bots.stdout.take().map(|o| BufReader::new(o).lines());
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            let Some(mut lines) = lines else { return };
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let shard = v["shard"].as_u64().unwrap_or(u64::MAX) as u32;
                let t = v["t"].as_str().unwrap_or("").to_owned();
                if let Ok(mut r) = received.lock() {
                    r.entry(shard).or_default().push((t, v["d"].clone()));
                }
            }
        })
    };
    let snapshot_len = |id: u32| split(id).len() + 1;
    let started = Instant::now();
    wait_until("every client shard's snapshot", WAIT, async || {
        let r = received.lock().map(|r| r.clone()).unwrap_or_default();
        (0..CLIENT_SHARDS).all(|id| r.get(&id).is_some_and(|d| d.len() >= snapshot_len(id)))
    })
    .await?;
    env.checks.figure(
        "snapshots of 3 client shards (ms)",
        started.elapsed().as_millis(),
    );
    let snap = received.lock().map(|r| r.clone()).unwrap_or_default();
    for id in 0..CLIENT_SHARDS {
        let got = &snap[&id];
        let creates: BTreeSet<u64> = got[1..snapshot_len(id)]
            .iter()
            .filter(|(t, _)| t == "GUILD_CREATE")
            .filter_map(|(t, d)| guild_of(t, d))
            .collect();
        let names_ok = got[1..snapshot_len(id)].iter().all(|(t, d)| {
            guild_of(t, d).is_some_and(|g| {
                truth_guilds
                    .get(&g)
                    .is_some_and(|tg| tg["guild"]["name"] == d["name"])
            })
        });
        env.checks.expect(
            &format!("client shard {id}: READY then its guilds, equal to the truth"),
            got[0].0 == "READY" && creates == split(id) && names_ok,
            format!(
                "{} GUILD_CREATEs for {} guilds",
                creates.len(),
                split(id).len()
            ),
        );
    }

    // Traffic, a SIGKILL of the sharder, traffic.
    let mark = max_event_id(&sim.ledger().await?);
    let identifies = sim.counters().await?.identifies;
    sim.set_event_rate(rate).await?;
    let received_total = || {
        received
            .lock()
            .map(|r| r.values().map(Vec::len).sum::<usize>())
            .unwrap_or(0)
    };
    // Each step waits for half a second of traffic more to reach the bots.
    let half_second = (rate as usize) / 2;
    let before_kill = snap.values().map(Vec::len).sum::<usize>() + half_second;
    wait_until("events reaching the bots", WAIT, async || {
        received_total() >= before_kill
    })
    .await?;
    sharder.child.kill();
    let restart = Instant::now();
    let mut second = env.start_sharder("sharder-2", &sharder_cfg, &[])?;
    wait_until("every shard resumed", WAIT, async || {
        sim.counters()
            .await
            .is_ok_and(|c| c.resumes >= u64::from(shards))
    })
    .await?;
    env.checks.figure(
        "sharder restart to every shard resumed (ms)",
        restart.elapsed().as_millis(),
    );
    second.wait_ready(WAIT).await?;
    let after = received_total() + half_second;
    wait_until("events after the restart", WAIT, async || {
        received_total() >= after
    })
    .await?;

    // The relay's rolling update.
    let next_addr = free_addr()?;
    relay_cfg.set_str("relay", "listen", &next_addr.to_string());
    let mut next = Process::start(
        &env.bins.relay,
        "relay-2",
        &env.dir.0,
        &relay_cfg,
        next_addr,
        &[],
    )?;
    next.wait_ready(WAIT).await?;
    service.retarget(next_addr);
    let rolled = Instant::now();
    if let Some(status) = relay.child.exited() {
        return Err(ScenarioError::Setup(format!(
            "the first relay exited before its rollover ({status}):\n{}",
            relay.child.log_tail(20)
        )));
    }
    relay.child.terminate()?;
    relay.child.wait_exit(WAIT).await?;
    let resumed = async || {
        next.counter("relay_resumes_total", &[("result", "resumed")])
            .await
    };
    let all_resumed = wait_until(
        "every client shard resumed on the new relay",
        WAIT,
        async || resumed().await >= u64::from(CLIENT_SHARDS),
    )
    .await;
    env.checks.expect_eq(
        "client shards resumed on the new relay",
        resumed().await,
        u64::from(CLIENT_SHARDS),
    );
    if all_resumed.is_ok() {
        env.checks.figure(
            "relay SIGTERM to every client shard resumed on the next (ms)",
            rolled.elapsed().as_millis(),
        );
    }
    let after = received_total() + half_second;
    wait_until("events after the relay's rollover", WAIT, async || {
        received_total() >= after
    })
    .await?;
    sim.set_event_rate(0.0).await?;

    // What the bots must have: the world events of their guilds after the mark.
    let ledger = sim.ledger().await?;
    let mut want: BTreeMap<u32, BTreeMap<u64, Vec<String>>> = BTreeMap::new();
    let mut seen_ids = BTreeSet::new();
    for entries in ledger.shards.values() {
        for e in entries {
            let (Some(id), Some(g)) = (
                e.event_id,
                e.guild_id.as_deref().and_then(|g| g.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if id > mark && seen_ids.insert(id) {
                let shard = ((g >> 22) % u64::from(CLIENT_SHARDS)) as u32;
                want.entry(shard)
                    .or_default()
                    .entry(id)
                    .or_default()
                    .push(format!("{g}:{}", e.event));
            }
        }
    }
    // Ordered per guild by world order (event id).
    let want: BTreeMap<u32, BTreeMap<u64, Vec<String>>> = want
        .into_iter()
        .map(|(shard, by_id)| {
            let mut per_guild: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            for v in by_id.into_values().flatten() {
                if let Some((g, name)) = v.split_once(':') {
                    per_guild
                        .entry(g.parse().unwrap_or(0))
                        .or_default()
                        .push(name.to_owned());
                }
            }
            (shard, per_guild)
        })
        .collect();
    let got_after =
        |r: &BTreeMap<u32, Vec<(String, Value)>>, id: u32| -> BTreeMap<u64, Vec<String>> {
            let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            for (t, d) in r
                .get(&id)
                .map(|v| &v[snapshot_len(id)..])
                .unwrap_or_default()
            {
                if let Some(g) = guild_of(t, d) {
                    out.entry(g).or_default().push(t.clone());
                }
            }
            out
        };
    let total = |m: &BTreeMap<u64, Vec<String>>| m.values().map(Vec::len).sum::<usize>();
    let _ = wait_until("the bots caught up", Duration::from_secs(20), async || {
        let r = received.lock().map(|r| r.clone()).unwrap_or_default();
        (0..CLIENT_SHARDS).all(|id| total(&got_after(&r, id)) >= want.get(&id).map_or(0, total))
    })
    .await;
    let r = received.lock().map(|r| r.clone()).unwrap_or_default();
    let (mut lost, mut twice, mut out_of_order, mut expected) = (0usize, 0usize, 0usize, 0usize);
    for id in 0..CLIENT_SHARDS {
        let empty = BTreeMap::new();
        let w = want.get(&id).unwrap_or(&empty);
        let g = got_after(&r, id);
        expected += total(w);
        for guild in w.keys().chain(g.keys()).collect::<BTreeSet<_>>() {
            let (a, b) = (
                w.get(guild).cloned().unwrap_or_default(),
                g.get(guild).cloned().unwrap_or_default(),
            );
            let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
            for n in &a {
                *counts.entry(n).or_default() += 1;
            }
            for n in &b {
                *counts.entry(n).or_default() -= 1;
            }
            lost += counts
                .values()
                .filter(|c| **c > 0)
                .map(|c| *c as usize)
                .sum::<usize>();
            twice += counts
                .values()
                .filter(|c| **c < 0)
                .map(|c| (-*c) as usize)
                .sum::<usize>();
            if counts.values().all(|c| *c == 0) && a != b {
                out_of_order += 1;
            }
        }
        let readies = r
            .get(&id)
            .map_or(0, |v| v.iter().filter(|(t, _)| t == "READY").count());
        env.checks
            .expect_eq(&format!("client shard {id}: READY count"), readies, 1);
    }
    env.checks
        .figure("world events of the bots' guilds", expected);
    env.checks.expect(
        "enough traffic to judge",
        expected > 50,
        format!("{expected} events"),
    );
    env.checks.expect_eq("events lost", lost, 0);
    env.checks.expect_eq("events delivered twice", twice, 0);
    env.checks.expect_eq("guilds out of order", out_of_order, 0);
    let spent = sim.counters().await?.identifies - identifies;
    env.checks
        .expect_eq("identifies spent by the restart", spent, 0);
    let sent = next.counter("relay_dispatches_sent_total", &[]).await;
    env.checks.figure("dispatches the second relay sent", sent);

    drop(bots.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), bots.wait()).await;
    reader.abort();
    for p in [&mut second, &mut worker, &mut next] {
        p.child.terminate()?;
        p.child.wait_exit(WAIT).await?;
    }
    Ok(())
}

fn max_event_id(ledger: &crate::sim::Ledger) -> u64 {
    ledger
        .shards
        .values()
        .flatten()
        .filter_map(|e| e.event_id)
        .max()
        .unwrap_or(0)
}

//! One session start budget and one identify circuit breaker for a whole
//! cluster: four sharder processes (in-process `run_with` tasks with
//! `process_index` 0..4 of `process_count = 4`) share Redis and one
//! simulator, as four pods share Redis and Discord.
//!
//! Each test has its own Redis key prefix, deleted at the end. The
//! recorder is global to this test binary, so the metrics read here are
//! the four processes' together.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TempDir, http, run_config, until};
use discord_sim::{Hostility, SimConfig, SimHandle, Simulator};
use sharder::{ChannelSink, RunOptions, SinkChoice};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const PROCESSES: u32 = 4;

fn prefix(name: &str) -> String {
    testkit::unique_name(name)
}

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379/")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn delete_prefix(prefix: &str) {
    let mut c = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    for k in keys {
        let _: () = redis::cmd("DEL").arg(k).query_async(&mut c).await.unwrap();
    }
}

async fn hget(key: &str, field: &str) -> Option<i64> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(&mut redis().await)
        .await
        .unwrap()
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

struct Cluster {
    runs: Vec<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
    /// One process's HTTP address (the recorder is shared).
    addr: SocketAddr,
    _dirs: Vec<TempDir>,
}

/// Four processes on every shard of `sim`, sharing Redis under `prefix`.
async fn cluster(sim: &SimHandle, name: &str, prefix: &str, sharder_keys: &str) -> Cluster {
    let stop = CancellationToken::new();
    let mut runs = Vec::new();
    let mut dirs = Vec::new();
    let mut addrs = Vec::new();
    for index in 0..PROCESSES {
        let dir = TempDir::new(&format!("{name}-{index}")).unwrap();
        let extra = format!(
            "process_count = {PROCESSES}\nprocess_index = {index}\n{sharder_keys}\
             [redis]\nurl = \"redis://127.0.0.1:6379/\"\nkey_prefix = \"{prefix}\"\n"
        );
        let cfg = run_config(sim, &dir, &extra);
        let (sink, mut events) = ChannelSink::new(1024, true);
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let (tx, rx) = oneshot::channel();
        let stop = stop.clone();
        runs.push(tokio::spawn(async move {
            sharder::run_with(
                cfg,
                stop,
                RunOptions {
                    sink: SinkChoice::Channel(sink),
                    on_listening: Some(tx),
                },
            )
            .await
            .unwrap();
        }));
        addrs.push(rx);
        dirs.push(dir);
    }
    let mut first = None;
    for rx in addrs {
        let a = timeout(WAIT, rx).await.unwrap().unwrap();
        first.get_or_insert(a);
    }
    Cluster {
        runs,
        stop,
        addr: first.unwrap(),
        _dirs: dirs,
    }
}

impl Cluster {
    async fn metrics(&self) -> String {
        http(self.addr, "GET", "/metrics", None, "").await.1
    }

    async fn stop(self) {
        self.stop.cancel();
        for r in self.runs {
            timeout(WAIT, r).await.unwrap().unwrap();
        }
    }
}

/// 8 shards over 4 processes, a budget of 40 with a reserve of 10: a cold
/// boot spends 8, then every connected session is invalidated (op 9
/// `d:false`) round after round, so every shard identifies again, from
/// four processes at once, until the shared budget is at the reserve. The
/// simulator (Discord's count) must have spent exactly `total - reserve`,
/// never more, and the shards left over wait with the budget-wait counter
/// up. Per-process budgets would each have spent 30 of their own 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_never_spend_the_shared_reserve() {
    const TOTAL: u32 = 40;
    const RESERVE: u32 = 10;
    let sim = Simulator::start(SimConfig {
        shards: 8,
        guilds: 8,
        max_concurrency: 8,
        identify_window: Duration::from_millis(50),
        session_start_total: TOTAL,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let prefix = prefix("cluster-budget");
    let c = cluster(
        &sim,
        "cluster-budget",
        &prefix,
        &format!(
            "identify_window = \"60ms\"\nidentify_reserve = {RESERVE}\n\
             reconnect_base = \"50ms\"\nreconnect_max = \"200ms\"\n"
        ),
    )
    .await;
    let all: Vec<u32> = (0..8).collect();
    until("cold boot: 8 sessions", WAIT, async || {
        sim.connected_sessions(&all) == 8
    })
    .await;
    let budget_key = format!("{prefix}:session_start");
    let mut rounds = 0;
    // Invalidate every connected session until the shards left over are
    // held at the reserve (the budget-wait counter moves).
    loop {
        let waits =
            sample(&c.metrics().await, "sharder_identify_budget_waits_total").unwrap_or(0.0);
        if waits > 0.0 && hget(&budget_key, "remaining").await == Some(i64::from(RESERVE)) {
            break;
        }
        assert!(
            rounds < 10,
            "still not at the reserve after {rounds} rounds"
        );
        rounds += 1;
        let before = sim.counters().identifies;
        let invalidated = sim.invalid_session(&all, false);
        // Each invalidated shard identifies again, or is held at the reserve.
        until(
            "the round's identifies or a budget wait",
            WAIT,
            async || {
                let spent = sim.counters().identifies - before;
                let waits = sample(&c.metrics().await, "sharder_identify_budget_waits_total")
                    .unwrap_or(0.0);
                spent >= invalidated as u64 || waits > 0.0
            },
        )
        .await;
        let counters = sim.counters();
        assert!(
            counters.identifies <= u64::from(TOTAL - RESERVE),
            "round {rounds}: Discord counted {} identifies; the reserve of {RESERVE} of {TOTAL} was spent",
            counters.identifies
        );
    }
    let counters = sim.counters();
    assert_eq!(
        counters.identifies,
        u64::from(TOTAL - RESERVE),
        "every identify but the reserve: {counters:?}"
    );
    assert_eq!(counters.budget_exhausted, 0, "{counters:?}");
    assert_eq!(
        hget(&budget_key, "taken").await,
        Some(i64::from(TOTAL - RESERVE))
    );
    let body = c.metrics().await;
    assert_eq!(
        sample(&body, "sharder_session_start_remaining"),
        Some(f64::from(RESERVE)),
        "the gauge shows the shared figure"
    );
    assert!(
        sim.connected_sessions(&all) < 8,
        "the shards left over wait at the reserve"
    );
    eprintln!(
        "rounds {rounds}, identifies {}, connected {}",
        counters.identifies,
        sim.connected_sessions(&all)
    );
    c.stop().await;
    delete_prefix(&prefix).await;
    sim.shutdown().await;
}

/// A gateway that answers every IDENTIFY with op 9: after
/// `identify_breaker_failures` failures cluster-wide the breaker opens
/// (in Redis, for all four processes) and identifies pause for the
/// cool-down: at most one IDENTIFY per shard was already on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_identifies_trip_the_cluster_breaker() {
    const SHARDS: u32 = 8;
    const FAILURES: u64 = 3;
    let sim = Simulator::start(SimConfig {
        shards: SHARDS,
        guilds: 8,
        max_concurrency: 8,
        identify_window: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.set_hostility(Hostility {
        refuse_identify: true,
        ..Hostility::default()
    });
    let prefix = prefix("cluster-breaker");
    let c = cluster(
        &sim,
        "cluster-breaker",
        &prefix,
        &format!(
            "identify_window = \"60ms\"\nreconnect_base = \"50ms\"\nreconnect_max = \"200ms\"\n\
             identify_breaker_failures = {FAILURES}\nidentify_breaker_cooldown = \"60s\"\n\
             identify_breaker_cooldown_max = \"120s\"\n"
        ),
    )
    .await;
    let breaker = format!("{prefix}:identify_breaker");
    until("the breaker trips", WAIT, async || {
        hget(&breaker, "trips").await == Some(1)
    })
    .await;
    let at_trip = sim.counters().hostile_refusals;
    until("every process sees it open", WAIT, async || {
        sample(&c.metrics().await, "sharder_identify_circuit_open") == Some(1.0)
    })
    .await;
    // Every shard retries within about 1-5 s after its op 9; over 6 s
    // without the breaker that is at least one more IDENTIFY per shard.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let counters = sim.counters();
    assert!(
        counters.hostile_refusals < FAILURES + u64::from(SHARDS),
        "identifies went on while the breaker was open: {at_trip} at the trip, then {counters:?}"
    );
    assert_eq!(hget(&breaker, "trips").await, Some(1));
    let body = c.metrics().await;
    assert_eq!(
        sample(&body, "sharder_identify_circuit_trips_total"),
        Some(1.0)
    );
    assert!(
        sample(&body, "sharder_identify_failures_total").unwrap() >= FAILURES as f64,
        "{body}"
    );
    eprintln!(
        "refusals at trip {at_trip}, after 6 s {}",
        counters.hostile_refusals
    );
    c.stop().await;
    delete_prefix(&prefix).await;
    sim.shutdown().await;
}

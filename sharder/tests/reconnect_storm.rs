//! Reconnects that cannot storm (PROTOCOL.md, "What peers get wrong"):
//! against a simulator that fails the same way on every connection, the
//! sharder's attempts are spaced by a backoff that keeps growing, and the
//! whole process stays under its connection rate.
//!
//! Each test counts the connections the simulator accepted and checks them
//! against the least time the backoff steps (or the rate) allow: a lower
//! bound on elapsed time, so a slow machine can only make it pass more
//! easily, never fail it. Without the fix, the shard reconnected about
//! 2.4 times a second forever (the backoff reset on every RESUMED).
#![allow(clippy::unwrap_used)]

mod common;

use common::{TempDir, run_config};
use discord_sim::{Hostility, SimConfig, SimHandle, Simulator};
use sharder::{ChannelSink, RunOptions, SinkChoice};
use std::time::Duration;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn connections(sim: &SimHandle) -> u64 {
    sim.counters().connections.values().sum()
}

/// Waits until the simulator accepted `n` connections; returns when.
async fn until_connections(sim: &SimHandle, n: u64) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        if connections(sim) >= n {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "only {} connections",
            connections(sim)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The least total wait of `steps` consecutive backoff steps from the first
/// (each waits at least half its cap, `min(max, base * 2^n)`).
fn least_backoff(base: Duration, max: Duration, steps: u32) -> Duration {
    (0..steps)
        .map(|n| base.saturating_mul(2u32.pow(n)).min(max) / 2)
        .sum()
}

/// A run of every shard of `sim` into a sink that confirms and drops.
fn start(
    sim: &SimHandle,
    dir: &TempDir,
    extra: &str,
) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    let cfg = run_config(sim, dir, extra);
    let (sink, mut events) = ChannelSink::new(1024, true);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move {
            sharder::run_with(
                cfg,
                stop,
                RunOptions {
                    sink: SinkChoice::Channel(sink),
                    on_listening: None,
                },
            )
            .await
            .unwrap();
        }
    });
    (run, stop)
}

/// A gateway that closes every connection right after READY or RESUMED:
/// the handshake succeeds every time, yet the attempts slow down step by
/// step to `reconnect_max` instead of a reconnect a few hundred ms apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_breaks_every_session_after_the_handshake_meets_a_growing_backoff() {
    let sim = Simulator::start(SimConfig {
        shards: 1,
        guilds: 2,
        identify_window: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.set_hostility(Hostility {
        break_after_handshake: true,
        ..Hostility::default()
    });
    let dir = TempDir::new("storm-break").unwrap();
    let (base, max) = (Duration::from_millis(100), Duration::from_millis(800));
    let (run, stop) = start(
        &sim,
        &dir,
        "identify_window = \"60ms\"\nreconnect_base = \"100ms\"\nreconnect_max = \"800ms\"\n",
    );
    let first = until_connections(&sim, 1).await;
    let attempts = 8;
    let last = until_connections(&sim, attempts).await;
    let least = least_backoff(base, max, u32::try_from(attempts - 1).unwrap());
    let c = sim.counters();
    assert!(
        last - first >= least,
        "{attempts} connections in {:?}, the backoff allows no less than {least:?}",
        last - first
    );
    assert!(c.hostile_breaks >= attempts - 1, "{c:?}");
    assert_eq!(c.identifies, 1, "every reconnect resumes: {c:?}");
    stop.cancel();
    timeout(WAIT, run).await.unwrap().unwrap();
    sim.shutdown().await;
}

/// A gateway that answers every IDENTIFY with op 9 `d:false`: each attempt
/// spends a session start, so they must slow down too, not go on at one
/// identify per window (the budget would drain in hours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_refuses_every_identify_meets_a_growing_backoff() {
    let sim = Simulator::start(SimConfig {
        shards: 1,
        guilds: 2,
        identify_window: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.set_hostility(Hostility {
        refuse_identify: true,
        ..Hostility::default()
    });
    let dir = TempDir::new("storm-refuse").unwrap();
    let (run, stop) = start(
        &sim,
        &dir,
        "identify_window = \"60ms\"\nreconnect_base = \"100ms\"\nreconnect_max = \"800ms\"\n",
    );
    // After op 9 `d:false` the shard waits at least the 1 s Discord asks
    // for, or the backoff step when that is longer.
    let first = until_connections(&sim, 1).await;
    let attempts = 4;
    let last = until_connections(&sim, attempts).await;
    let least = Duration::from_secs(attempts - 1);
    assert!(
        last - first >= least,
        "{attempts} identifies in {:?}, no less than {least:?} allowed",
        last - first
    );
    let c = sim.counters();
    assert!(c.hostile_refusals >= attempts - 1, "{c:?}");
    assert_eq!(c.identifies, 0, "no IDENTIFY got a session: {c:?}");
    stop.cancel();
    timeout(WAIT, run).await.unwrap().unwrap();
    sim.shutdown().await;
}

/// Every shard failing at once: the process as a whole dials at most its
/// burst (one per shard) plus `max_connects_per_second` a second, whatever
/// each shard's own backoff would allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shard_failing_at_once_stays_under_the_process_connection_rate() {
    let shards = 8;
    let sim = Simulator::start(SimConfig {
        shards,
        guilds: 16,
        identify_window: Duration::from_millis(20),
        max_concurrency: 8,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.set_hostility(Hostility {
        break_after_handshake: true,
        ..Hostility::default()
    });
    let dir = TempDir::new("storm-rate").unwrap();
    let start_at = Instant::now();
    // Per shard the backoff alone would allow 8 / 20 ms = 400 dials a
    // second; the process cap is 5.
    let (run, stop) = start(
        &sim,
        &dir,
        "identify_window = \"25ms\"\nmax_concurrency = 8\nreconnect_base = \"10ms\"\n\
         reconnect_max = \"20ms\"\nmax_connects_per_second = 5\n",
    );
    let target = u64::from(shards) + 10;
    let reached = until_connections(&sim, target).await;
    // The burst (8) is immediate; the next 10 need at least 10 / 5 s less
    // one token's time (the first of them may come right after the burst).
    let least = Duration::from_millis(1800);
    assert!(
        reached - start_at >= least,
        "{target} connections after {:?}; the rate allows no less than {least:?}",
        reached - start_at
    );
    stop.cancel();
    timeout(WAIT, run).await.unwrap().unwrap();
    sim.shutdown().await;
}

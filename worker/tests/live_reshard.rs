//! A live reshard end to end: the real sharder library (one process), the
//! gateway simulator serving both shard totals at once, the real RabbitMQ,
//! and one worker consuming every partition. 4 shards grow to 8 through
//! `POST /admin/reshard` while traffic flows. Against the simulator's
//! ledger and truth:
//!
//! * every logical guild event the simulator sent reached the clean stream
//!   exactly once (counted per guild and clean name; a MESSAGE_CREATE's
//!   payload once), although both generations received the overlap's;
//! * no GUILD_AVAILABLE beyond the boot's, no join but the real ones;
//! * the reshard announced once per phase; the cache equals the truth;
//! * 4 + 8 identifies, and every event had a live session (no guild dark).
#![allow(clippy::unwrap_used)]

mod common;

use discord_sim::{SimConfig, SimHandle, Simulator};
use sharder::{AmqpTopology, RunOptions, SinkChoice};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::services::AMQP_URL as AMQP;
use testkit::sim_sharder::{CACHE_INTENTS, SharderShape};
use testkit::{TempDir, http, unique_name};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use worker::{CleanKind, MemoryStore, Worker};

const FROM: u32 = 4;
const TO: u32 = 8;
const PARTITIONS: u32 = 4;
const GUILDS: u32 = 200;
const WAIT: Duration = Duration::from_secs(90);

/// Every clean event: (guild, clean name, payload).
type Seen = Arc<Mutex<Vec<(u64, String, Vec<u8>)>>>;

async fn start_sim() -> SimHandle {
    Simulator::start(SimConfig {
        shards: FROM,
        guilds: GUILDS,
        channels_per_guild: 2,
        roles_per_guild: 1,
        members_per_guild: 2,
        identify_window: Duration::from_millis(200),
        max_concurrency: 4,
        event_rate: 0.0,
        outage_events: u64::MAX / 4,
        event_mix: "GUILD_MEMBER_ADD=6,GUILD_MEMBER_UPDATE=5,GUILD_MEMBER_REMOVE=5,\
                    CHANNEL_CREATE=3,CHANNEL_UPDATE=4,CHANNEL_DELETE=3,GUILD_ROLE_UPDATE=3,\
                    GUILD_UPDATE=2,MESSAGE_CREATE=8,GUILD_JOIN=1"
            .parse()
            .unwrap(),
        ..SimConfig::default()
    })
    .await
    .unwrap()
}

/// The name the clean stream gives a simulator event.
fn clean_name(event: &str) -> &str {
    match event {
        "GUILD_CREATE" => "GUILD_JOINED",
        "GUILD_DELETE" => "GUILD_REMOVED",
        other => other,
    }
}

/// Polls the admin endpoint until the reshard finished (a readiness
/// signal with a deadline, not a synchronisation sleep).
async fn wait_resharded(addr: SocketAddr) -> serde_json::Value {
    let started = tokio::time::Instant::now();
    loop {
        let (status, body) = http(addr, "GET", "/admin/reshard", None, "").await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["total"] == TO && v["reshard"].is_null() {
            return v;
        }
        assert!(started.elapsed() < WAIT, "the reshard never finished: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_to_eight_shards_live_one_clean_stream() {
    let sim = start_sim().await;
    let base = unique_name("reshard");
    let topo = AmqpTopology::named(&base, PARTITIONS);
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let admin_ch = conn.create_channel().await.unwrap();
    topo.declare(&admin_ch).await.unwrap();

    // One worker over every partition, recording the clean stream.
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let worker = Arc::new(Worker::new(MemoryStore::new()).on_any(move |ev| {
        let name = match ev.kind {
            CleanKind::Dispatch if ev.t == "READY" => return,
            _ => ev.name().to_owned(),
        };
        s.lock()
            .unwrap()
            .push((ev.guild_id.unwrap_or_default(), name, ev.d.to_vec()));
    }));
    let stop_consumers = CancellationToken::new();
    let mut consumers = Vec::new();
    for p in 0..PARTITIONS {
        let (w, ch, topo, stop) = (
            worker.clone(),
            conn.create_channel().await.unwrap(),
            topo.clone(),
            stop_consumers.clone(),
        );
        consumers.push(tokio::spawn(async move {
            worker::consume_partition_with(w, ch, topo, p, 64, None, stop.cancelled_owned())
                .await
                .unwrap();
        }));
    }

    // The sharder, at 4 shards.
    let dir = TempDir::new("reshard-sessions").unwrap();
    let extra = format!(
        "identify_window = \"210ms\"\namqp_topology_base = \"{base}\"\n\
         [amqp]\npartitions = {PARTITIONS}\n"
    );
    let shape = SharderShape {
        intents: CACHE_INTENTS,
        shutdown_grace: "10s",
        extra: &extra,
    };
    let cfg = testkit::sim_sharder::sharder_config(&sim, dir.path(), shape).unwrap();
    let stop = CancellationToken::new();
    let (tx, rx) = oneshot::channel();
    let run = tokio::spawn(sharder::run_with(
        cfg,
        stop.clone(),
        RunOptions {
            sink: SinkChoice::Amqp,
            on_listening: Some(tx),
        },
    ));
    let addr = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
    common::converge(&sim, &**worker.store(), "cold boot", WAIT).await;

    // Traffic on; reshard to 8 while it flows.
    sim.set_event_rate(400.0).unwrap();
    let (status, body) = http(
        addr,
        "POST",
        "/admin/reshard",
        None,
        &format!(r#"{{"total": {TO}}}"#),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // A second request while one runs is refused as a conflict.
    let (status, _) = http(addr, "POST", "/admin/reshard", None, r#"{"total": 16}"#).await;
    assert_eq!(status, 409);
    let done = wait_resharded(addr).await;
    sim.set_event_rate(0.0).unwrap();
    assert_eq!(
        sim.connected_totals(),
        vec![TO],
        "only the new total serves"
    );
    common::converge(&sim, &**worker.store(), "after the reshard", WAIT).await;

    // Every logical guild event once in the clean stream.
    let ledger = sim.ledger();
    let logical = ledger.logical_events();
    let mut want: BTreeMap<(u64, String), usize> = BTreeMap::new();
    for ev in logical.values() {
        let Some(g) = ev.guild_id else { continue };
        assert!(
            !ev.deliveries.is_empty(),
            "{} of guild {g} reached no session: the guild was dark",
            ev.event
        );
        *want
            .entry((g, clean_name(&ev.event).to_owned()))
            .or_default() += 1;
    }
    let expected_events: usize = want.values().sum();
    let overlap = logical
        .values()
        .filter(|e| e.deliveries_to(FROM) > 0 && e.deliveries_to(TO) > 0)
        .count();
    // The worker may still be emitting the last events: wait for the count.
    let started = tokio::time::Instant::now();
    let got = loop {
        let got: BTreeMap<(u64, String), usize> = {
            let mut m = BTreeMap::new();
            for (g, name, _) in seen.lock().unwrap().iter() {
                if !["GUILD_AVAILABLE", "RESHARD_STARTED", "RESHARD_COMPLETED"]
                    .contains(&name.as_str())
                {
                    *m.entry((*g, name.clone())).or_default() += 1;
                }
            }
            m
        };
        if got.values().sum::<usize>() >= expected_events || started.elapsed() > WAIT {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let diffs: Vec<_> = want
        .keys()
        .chain(got.keys())
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| format!("{k:?}: sent {:?}, emitted {:?}", want.get(k), got.get(k)))
        .collect();
    assert!(
        diffs.is_empty(),
        "clean stream != ledger ({} differences): {:?}",
        diffs.len(),
        &diffs[..diffs.len().min(10)]
    );
    let seen = seen.lock().unwrap().clone();
    let messages: Vec<&Vec<u8>> = seen
        .iter()
        .filter(|(_, n, _)| n == "MESSAGE_CREATE")
        .map(|(_, _, d)| d)
        .collect();
    let unique: std::collections::BTreeSet<_> = messages.iter().collect();
    assert_eq!(unique.len(), messages.len(), "a message emitted twice");
    let count = |name: &str| seen.iter().filter(|(_, n, _)| n == name).count();
    assert_eq!(
        count("GUILD_AVAILABLE"),
        GUILDS as usize,
        "only the boot's loads are announced"
    );
    assert_eq!(count("RESHARD_STARTED"), 1);
    assert_eq!(count("RESHARD_COMPLETED"), 1);
    let c = sim.counters();
    assert_eq!(c.identifies, u64::from(FROM + TO), "{c:?}");
    println!(
        "live reshard {FROM} -> {TO}: {} logical guild events, {overlap} seen by both \
         generations, each emitted once; {done}",
        expected_events
    );

    stop.cancel();
    let report = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(report.drained);
    stop_consumers.cancel();
    for c in consumers {
        tokio::time::timeout(WAIT, c).await.unwrap().unwrap();
    }
    topo.delete(&admin_ch).await.unwrap();
    sim.shutdown().await;
}

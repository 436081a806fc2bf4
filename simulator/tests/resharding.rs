//! Live resharding as Discord allows it: sessions of two shard totals at
//! once, each guild event reaching the owning session of every total, the
//! guild cap (4011) at IDENTIFY and on joins, and a recommended shard total
//! that changes at run time. Every test drives real websocket clients.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use discord_sim::shard_of;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A session a test holds: its client, `[shard, total]`, id and READY's
/// guild list.
struct Session {
    c: Client,
    shard: u32,
    total: u32,
    id: String,
    guilds: Vec<u64>,
}

/// Identifies `[shard, total]` on a new connection and reads READY and its
/// GUILD_CREATEs (every guild is available: nothing was emitted yet). An
/// op 9 is the identify rate limit (shard 0 of two totals shares bucket 0):
/// waits out the identify window, as a client must, and identifies again.
async fn identify(sim: &SimHandle, shard: u32, total: u32) -> Session {
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    let ready = loop {
        c.identify(shard, total, ALL_USED_INTENTS).await;
        let v = c.payload().await;
        match v["op"].as_u64() {
            Some(0) => break v,
            Some(9) => tokio::time::sleep(sim.config().identify_window).await,
            _ => panic!("expected READY or op 9, got {v}"),
        }
    };
    assert_eq!(ready["t"], "READY");
    assert_eq!(ready["d"]["shard"], json!([shard, total]));
    let guilds: Vec<u64> = ready["d"]["guilds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| id(&g["id"]))
        .collect();
    let creates = c.dispatches(guilds.len()).await;
    for (v, g) in creates.iter().zip(&guilds) {
        assert_eq!(
            (v["t"].as_str(), id(&v["d"]["id"])),
            (Some("GUILD_CREATE"), *g)
        );
    }
    Session {
        c,
        shard,
        total,
        id: ready["d"]["session_id"].as_str().unwrap().to_owned(),
        guilds,
    }
}

/// The guilds `[shard, total]` owns, ascending, from the truth.
fn owned(sim: &SimHandle, shard: u32, total: u32) -> Vec<u64> {
    sim.truth()
        .guilds
        .keys()
        .copied()
        .filter(|&g| shard_of(g, total) == shard)
        .collect()
}

/// Reads the world events the ledger says were buffered into `s` and not
/// read yet; checks each against its ledger entry and returns their `d` by
/// logical event id.
async fn read_events(sim: &SimHandle, s: &mut Session, seen: &mut u64) -> BTreeMap<u64, Value> {
    let ledger = sim.ledger();
    let entries: Vec<_> = ledger.shards[&s.shard]
        .iter()
        .filter(|e| e.session_id == s.id && e.seq > *seen)
        .cloned()
        .collect();
    let got = s.c.dispatches(entries.len()).await;
    let mut out = BTreeMap::new();
    for (v, e) in got.iter().zip(&entries) {
        assert_eq!(
            (v["s"].as_u64(), v["t"].as_str()),
            (Some(e.seq), Some(&*e.event))
        );
        assert_eq!(e.shard_total, s.total);
        let g = e.guild_id.unwrap();
        assert_eq!(shard_of(g, s.total), s.shard, "{} routed wrong", e.event);
        out.insert(e.event_id.unwrap(), v["d"].clone());
        *seen = e.seq;
    }
    out
}

fn two_shards() -> SimConfig {
    SimConfig {
        shards: 2,
        guilds: 12,
        max_concurrency: 4,
        ..test_config()
    }
}

#[tokio::test]
async fn two_totals_at_once_each_guild_event_reaches_its_owner_in_each_total() {
    let sim = start(two_shards()).await;
    let mut sessions = Vec::new();
    for (shard, total) in [(0, 2), (1, 2), (0, 4), (1, 4), (2, 4), (3, 4)] {
        let s = identify(&sim, shard, total).await;
        assert_eq!(
            s.guilds,
            owned(&sim, shard, total),
            "READY of [{shard}, {total}]"
        );
        sessions.push(s);
    }
    assert_eq!(sim.connected_totals(), vec![2, 4]);
    let (status, body) = http(sim.addr(), "GET", "/sim/attached", None, None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"attached":{"2":2,"4":4}}"#)
    );
    assert_eq!(sim.connected_sessions(&[0]), 2, "shard 0 of either total");
    assert_eq!(sim.connected_sessions_of(4, &[]), 4);
    assert_eq!(sim.connected_sessions_of(2, &[1]), 1);

    sim.emit(300);
    // READY and its GUILD_CREATEs were read already.
    let mut seen: Vec<u64> = sessions.iter().map(|s| 1 + s.guilds.len() as u64).collect();
    let mut received: BTreeMap<u64, Vec<(u32, Value)>> = BTreeMap::new();
    for (s, seen) in sessions.iter_mut().zip(&mut seen) {
        for (event, d) in read_events(&sim, s, seen).await {
            received.entry(event).or_default().push((s.total, d));
        }
    }
    let events = sim.ledger().logical_events();
    assert_eq!(
        events.keys().copied().collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    for (event_id, e) in &events {
        assert_eq!(e.deliveries.len(), 2, "event {event_id}: {e:?}");
        let g = e.guild_id.unwrap();
        for total in [2, 4] {
            assert_eq!(e.deliveries_to(total), 1, "event {event_id}");
            let d = e
                .deliveries
                .iter()
                .find(|d| d.shard_total == total)
                .unwrap();
            assert_eq!(d.shard, shard_of(g, total));
        }
        // The same `d` from both generations: a downstream dedup on (t, d)
        // sees one event.
        let both = &received[event_id];
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].1, both[1].1, "event {event_id}");
    }

    // The old generation leaves (close 1000 ends a session): only the new
    // one gets what follows.
    for s in sessions.iter_mut().filter(|s| s.total == 2) {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "resharded".into(),
        };
        s.c.ws.close(Some(frame)).await.unwrap();
    }
    eventually(|| sim.connected_totals() == vec![4], "total 2 to go").await;
    sim.emit(100);
    let events = sim.ledger().logical_events();
    for id in 301..=400 {
        let e = &events[&id];
        assert_eq!((e.deliveries.len(), e.deliveries_to(4)), (1, 1), "{e:?}");
    }
    // A fault can aim at one total.
    let (status, body) = http(
        sim.addr(),
        "POST",
        "/sim/faults/drop",
        None,
        Some(r#"{"shards":[0],"total":4}"#),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"affected":1}"#));
    // Dropped: resumable, no longer attached.
    let (_, body) = http(sim.addr(), "GET", "/sim/attached", None, None).await;
    assert_eq!(body, r#"{"attached":{"4":3}}"#);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_total_above_the_starting_shards_is_accepted() {
    let sim = start(two_shards()).await;
    for shard in 0..3 {
        let s = identify(&sim, shard, 3).await;
        assert_eq!(s.guilds, owned(&sim, shard, 3), "READY of [{shard}, 3]");
    }
    // Below the starting total there is no cap to say otherwise: 4011.
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.identify(0, 1, ALL_USED_INTENTS).await;
    assert_eq!(c.closed().await, Some(4011));
    let counters = sim.counters();
    assert_eq!(
        (counters.identifies, counters.sharding_required_closes),
        (3, 1)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn ready_of_a_session_lists_exactly_the_guilds_its_shard_and_total_own() {
    let sim = start(SimConfig {
        shards: 1,
        guilds: 20,
        ..two_shards()
    })
    .await;
    let all: Vec<u64> = sim.truth().guilds.keys().copied().collect();
    for total in [1, 2, 5] {
        let mut union = Vec::new();
        for shard in 0..total {
            let s = identify(&sim, shard, total).await;
            assert!(s.guilds.iter().all(|&g| shard_of(g, total) == shard));
            union.extend(s.guilds);
        }
        union.sort_unstable();
        assert_eq!(union, all, "the shards of {total} own every guild once");
    }
    sim.shutdown().await;
}

/// Shard 0 of one shard owns every guild.
fn capped(guilds: u32, cap: u32) -> SimConfig {
    SimConfig {
        shards: 1,
        guilds,
        guild_cap: Some(cap),
        ..two_shards()
    }
}

#[tokio::test]
async fn identify_of_a_shard_over_the_guild_cap_is_closed_4011_naming_the_count() {
    let sim = start(capped(6, 5)).await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.identify(0, 1, ALL_USED_INTENTS).await;
    let (code, reason) = c.close_frame().await.unwrap();
    assert_eq!(code, 4011);
    assert!(
        reason.contains("6 guilds") && reason.contains("5"),
        "{reason}"
    );
    // No shard at all is [0, 1]: the same.
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.send(identify_payload(TOKEN, None, 1)).await;
    assert_eq!(c.closed().await, Some(4011));
    // With a cap, the cap alone sets the minimum: a total whose every
    // shard is within it is accepted.
    let total = (2..)
        .find(|&t| (0..t).all(|s| owned(&sim, s, t).len() <= 5))
        .unwrap();
    for shard in 0..total {
        identify(&sim, shard, total).await;
    }
    let counters = sim.counters();
    assert_eq!(counters.sharding_required_closes, 2);
    assert_eq!(
        counters.identifies,
        u64::from(total),
        "refusals spend no start"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_join_that_takes_a_shard_over_the_guild_cap_closes_its_session_4011() {
    let sim = start(SimConfig {
        event_mix: "GUILD_JOIN=1".parse().unwrap(),
        ..capped(4, 4)
    })
    .await;
    // [0, 1] holds 4 guilds: at the cap, accepted. A total where no shard
    // is at the cap keeps its sessions through one join.
    let mut full = identify(&sim, 0, 1).await;
    let roomy = (2..)
        .find(|&t| (0..t).all(|s| owned(&sim, s, t).len() < 4))
        .unwrap();
    let mut others = Vec::new();
    for shard in 0..roomy {
        others.push(identify(&sim, shard, roomy).await);
    }
    sim.emit(1);
    let (code, reason) = full.c.close_frame().await.unwrap();
    assert_eq!(code, 4011);
    assert!(reason.contains("5 guilds"), "{reason}");
    let joined = *sim.truth().guilds.keys().last().unwrap();
    let owner = &mut others[shard_of(joined, roomy) as usize];
    let v = owner.c.dispatches(1).await.remove(0);
    assert_eq!(
        (v["t"].as_str(), id(&v["d"]["id"])),
        (Some("GUILD_CREATE"), joined)
    );
    // The join went to the new owner only; the closed session got nothing.
    let events = sim.ledger().logical_events();
    assert_eq!(events[&1].deliveries.len(), 1);
    assert_eq!(events[&1].deliveries[0].shard_total, roomy);
    assert_eq!(sim.counters().sharding_required_closes, 1);
    assert_eq!(sim.connected_totals(), vec![roomy]);
    // 4011 is fatal: the session is gone.
    let mut r = Client::connect(&sim.resume_url(), None).await;
    r.hello().await;
    r.resume(&full.id, 5).await;
    assert_eq!(r.until_op(9).await["d"], false);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_recommended_shard_total_changes_at_run_time() {
    let sim = start(two_shards()).await;
    let addr = sim.addr();
    let auth = format!("Bot {TOKEN}");
    let recommended = || async {
        let (status, body) = http(addr, "GET", "/api/v10/gateway/bot", Some(&auth), None).await;
        assert_eq!(status, 200);
        serde_json::from_str::<Value>(&body).unwrap()["shards"].clone()
    };
    assert_eq!(recommended().await, 2);
    let post = |body: &'static str| async move {
        let (status, body) = http(addr, "POST", "/sim/recommended_shards", None, Some(body)).await;
        (status, serde_json::from_str::<Value>(&body).unwrap())
    };
    assert_eq!(post(r#"{"shards": 5}"#).await, (200, json!({"shards": 5})));
    assert_eq!(recommended().await, 5);
    assert_eq!(sim.recommended_shards(), 5);
    sim.set_recommended_shards(3).unwrap();
    assert_eq!(recommended().await, 3);
    for bad in [
        r#"{"shards": 0}"#,
        r#"{"shards": [4]}"#,
        "{}",
        r#"{"shards": 100001}"#,
    ] {
        let (status, v) = post(bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    assert!(sim.set_recommended_shards(0).is_err());
    assert_eq!(recommended().await, 3);
    // The recommendation does not change what IDENTIFY accepts.
    sim.set_recommended_shards(1).unwrap();
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.identify(0, 1, ALL_USED_INTENTS).await;
    assert_eq!(c.closed().await, Some(4011));
    identify(&sim, 0, 2).await;
    sim.shutdown().await;
}

//! Payload fidelity: every kind of payload the simulator sends decodes with
//! twilight-model's gateway types, through both transport compressions; and
//! a cache built from the received dispatches equals the ground truth, with
//! exactly the ledger's events received.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use discord_sim::{GuildTruth, shard_of};
use serde::de::DeserializeSeed;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use twilight_model::gateway::event::{DispatchEvent, GatewayEvent, GatewayEventDeserializer};

fn decode(v: &Value) -> GatewayEvent {
    let text = v.to_string();
    let de = GatewayEventDeserializer::from_json(&text)
        .unwrap_or_else(|| panic!("twilight cannot read the envelope of {text}"));
    let mut json = serde_json::Deserializer::from_str(&text);
    de.deserialize(&mut json)
        .unwrap_or_else(|e| panic!("twilight rejects {}: {e}", &text[..text.len().min(600)]))
}

/// A naive cache, as a worker would build it from one shard's stream.
fn apply(cache: &mut BTreeMap<u64, GuildTruth>, shard: u32, v: &Value) {
    let p = &v["d"];
    let t = v["t"].as_str().unwrap();
    let gid = || id(p.get("guild_id").unwrap_or(&p["id"]));
    match t {
        "READY" | "RESUMED" | "MESSAGE_CREATE" | "TYPING_START" | "PRESENCE_UPDATE" => {}
        "GUILD_CREATE" => {
            let by = |k: &str, user: bool| -> BTreeMap<u64, Value> {
                p[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| {
                        (
                            if user {
                                id(&x["user"]["id"])
                            } else {
                                id(&x["id"])
                            },
                            x.clone(),
                        )
                    })
                    .collect()
            };
            cache.insert(
                id(&p["id"]),
                GuildTruth {
                    shard,
                    unavailable: false,
                    member_count: p["member_count"].as_u64().unwrap(),
                    channels: by("channels", false),
                    roles: by("roles", false),
                    members: by("members", true),
                    emojis: by("emojis", false),
                    guild: without(p.clone(), SNAPSHOT_ONLY),
                },
            );
        }
        "GUILD_DELETE" if p["unavailable"] == true => {
            cache.get_mut(&id(&p["id"])).unwrap().unavailable = true;
        }
        "GUILD_DELETE" => {
            cache.remove(&id(&p["id"])).unwrap();
        }
        "GUILD_UPDATE" | "GUILD_EMOJIS_UPDATE" => {
            let g = cache.get_mut(&gid()).unwrap();
            g.emojis = p["emojis"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (id(&e["id"]), e.clone()))
                .collect();
            if t == "GUILD_UPDATE" {
                g.guild = without(p.clone(), &["roles", "emojis"]);
            }
        }
        "GUILD_MEMBER_ADD" | "GUILD_MEMBER_UPDATE" => {
            let g = cache.get_mut(&gid()).unwrap();
            if t == "GUILD_MEMBER_ADD" {
                g.member_count += 1;
            }
            g.members
                .insert(id(&p["user"]["id"]), without(p.clone(), &["guild_id"]));
        }
        "GUILD_MEMBER_REMOVE" => {
            let g = cache.get_mut(&gid()).unwrap();
            g.member_count -= 1;
            g.members.remove(&id(&p["user"]["id"])).unwrap();
        }
        "CHANNEL_CREATE" | "CHANNEL_UPDATE" => {
            cache
                .get_mut(&gid())
                .unwrap()
                .channels
                .insert(id(&p["id"]), p.clone());
        }
        "CHANNEL_DELETE" => {
            cache
                .get_mut(&gid())
                .unwrap()
                .channels
                .remove(&id(&p["id"]))
                .unwrap();
        }
        "GUILD_ROLE_CREATE" | "GUILD_ROLE_UPDATE" => {
            let role = p["role"].clone();
            cache
                .get_mut(&gid())
                .unwrap()
                .roles
                .insert(id(&role["id"]), role);
        }
        "GUILD_ROLE_DELETE" => {
            cache
                .get_mut(&gid())
                .unwrap()
                .roles
                .remove(&id(&p["role_id"]))
                .unwrap();
        }
        other => panic!("unexpected dispatch {other}"),
    }
}

#[tokio::test]
async fn every_payload_kind_decodes_with_twilight_over_both_compressions() {
    let sim = start(SimConfig {
        outage_events: 50,
        max_concurrency: 2,
        ..test_config()
    })
    .await;
    let mut seen_ops = BTreeSet::new();
    let mut seen_events = BTreeSet::new();
    let mut note = |v: &Value, ops: &mut BTreeSet<u64>| {
        let ev = decode(v);
        ops.insert(v["op"].as_u64().unwrap());
        if let GatewayEvent::Dispatch(seq, d) = &ev {
            assert_eq!(Some(*seq), v["s"].as_u64());
            let name = d.kind().name().unwrap_or("?").to_owned();
            assert_eq!(name, v["t"].as_str().unwrap());
            if let DispatchEvent::GuildDelete(g) = d {
                seen_events.insert(if g.unavailable == Some(true) {
                    "OUTAGE".into()
                } else {
                    name
                });
            } else {
                seen_events.insert(name);
            }
        }
    };
    let mut clients = Vec::new();
    for (shard, compress) in [(0, "zlib-stream"), (1, "zstd-stream")] {
        let mut c = Client::connect(&sim.gateway_url(), Some(compress)).await;
        let hello = c.payload().await;
        note(&hello, &mut seen_ops);
        c.heartbeat(None).await;
        note(&c.payload().await, &mut seen_ops);
        c.identify(shard, 2, ALL_USED_INTENTS).await;
        note(&c.ready().await, &mut seen_ops);
        clients.push(c);
    }
    sim.emit(3000);
    let ledger = sim.ledger();
    for (shard, c) in clients.iter_mut().enumerate() {
        let n = ledger.shards[&(shard as u32)].len() - 1;
        for v in c.dispatches(n).await {
            note(&v, &mut seen_ops);
        }
    }
    sim.request_heartbeat(&[]);
    sim.reconnect(&[]);
    sim.invalid_session(&[], true);
    for c in &mut clients {
        for _ in 0..3 {
            let v = c.payload().await;
            note(&v, &mut seen_ops);
        }
    }
    // RESUMED, through the resume URL with compression.
    let sid = ledger.shards[&0][0].session_id.clone();
    let last = ledger.shards[&0].last().unwrap().seq;
    sim.drop_connections(&[0]);
    assert_eq!(clients[0].closed().await, None);
    eventually(|| sim.connected_sessions(&[0]) == 0, "shard 0 to detach").await;
    let mut r = Client::connect(&sim.resume_url(), Some("zlib-stream")).await;
    note(&r.payload().await, &mut seen_ops);
    r.resume(&sid, last).await;
    note(&r.payload().await, &mut seen_ops);
    assert_eq!(seen_ops, BTreeSet::from([0, 1, 7, 9, 10, 11]));
    for name in [
        "READY",
        "RESUMED",
        "GUILD_CREATE",
        "GUILD_UPDATE",
        "GUILD_EMOJIS_UPDATE",
        "GUILD_DELETE",
        "OUTAGE",
        "GUILD_MEMBER_ADD",
        "GUILD_MEMBER_UPDATE",
        "GUILD_MEMBER_REMOVE",
        "CHANNEL_CREATE",
        "CHANNEL_UPDATE",
        "CHANNEL_DELETE",
        "GUILD_ROLE_CREATE",
        "GUILD_ROLE_UPDATE",
        "GUILD_ROLE_DELETE",
        "MESSAGE_CREATE",
        "TYPING_START",
        "PRESENCE_UPDATE",
    ] {
        assert!(
            seen_events.contains(name),
            "{name} never decoded; saw {seen_events:?}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_cache_of_the_received_dispatches_equals_the_truth_and_the_ledger() {
    let sim = start(SimConfig {
        guilds: 8,
        outage_events: 40,
        max_concurrency: 2,
        seed: 99,
        ..test_config()
    })
    .await;
    let mut clients = Vec::new();
    for (shard, compress) in [(0u32, Some("zlib-stream")), (1, None)] {
        let mut c = Client::connect(&sim.gateway_url(), compress).await;
        c.hello().await;
        c.identify(shard, 2, ALL_USED_INTENTS).await;
        let ready = c.ready().await;
        assert_eq!(ready["s"], 1);
        clients.push((shard, c));
    }
    sim.emit(2000);
    let manual = sim
        .truth()
        .guilds
        .keys()
        .copied()
        .find(|&g| !sim.truth().guilds[&g].unavailable)
        .unwrap();
    assert!(sim.outage(manual));
    let ledger = sim.ledger();
    let mut cache = BTreeMap::new();
    for (shard, c) in &mut clients {
        let expected = &ledger.shards[shard][1..];
        let got = c.dispatches(expected.len()).await;
        for (v, e) in got.iter().zip(expected) {
            assert_eq!(v["s"].as_u64(), Some(e.seq));
            assert_eq!(v["t"].as_str(), Some(e.event.as_str()));
            if let Some(g) = e.guild_id {
                assert_eq!(
                    shard_of(g, 2),
                    *shard,
                    "{} routed to the wrong shard",
                    e.event
                );
            }
            apply(&mut cache, *shard, v);
        }
        assert!(
            c.recv_within(std::time::Duration::from_millis(20))
                .await
                .is_none(),
            "extra dispatch"
        );
    }
    let truth = sim.truth();
    assert_eq!(cache.len(), truth.guilds.len());
    for (gid, g) in &truth.guilds {
        assert_eq!(
            cache.get(gid),
            Some(g),
            "guild {gid} differs from the truth"
        );
    }
    assert!(truth.guilds[&manual].unavailable);
    // Same truth over HTTP.
    let (status, body) = http(sim.addr(), "GET", "/sim/truth", None, None).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, serde_json::to_value(&truth).unwrap());
    let (_, body) = http(sim.addr(), "GET", "/sim/ledger", None, None).await;
    let l: discord_sim::Ledger = serde_json::from_str(&body).unwrap();
    assert_eq!(l.shards[&0][..5], ledger.shards[&0][..5]);
    assert_eq!(
        json!(l.shards[&0][1].guild_id.map(|g| g.to_string())),
        v_guild_str(&body)
    );
    sim.shutdown().await;
}

/// The second ledger entry's guild id as it appears in the JSON (a string).
fn v_guild_str(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap();
    v["shards"]["0"][1]["guild_id"].clone()
}

#[tokio::test]
async fn the_same_seed_gives_the_same_world_over_the_wire() {
    let a = start(SimConfig {
        seed: 5,
        ..test_config()
    })
    .await;
    let b = start(SimConfig {
        seed: 5,
        ..test_config()
    })
    .await;
    a.emit(500);
    b.emit(500);
    assert_eq!(a.truth(), b.truth());
    a.shutdown().await;
    b.shutdown().await;
}

//! What `/sim/truth` means, checked the way the cold-boot scenario uses it.
//!
//! The truth is the state a cache reaches by applying, in order, every
//! GUILD_CREATE snapshot and dispatch the sessions were actually sent. A
//! client that stops the events (`event-rate 0`) and then reads the truth
//! must find exactly that state once it has read its sessions to the end:
//! nothing may be generated after the rate change returned.
//!
//! The reproduction: a cold boot (shards identifying one per identify
//! window while events flow fast), then the stop and the truth read with no
//! await in between, as two HTTP requests are. On a single-threaded runtime
//! the generator is then parked in its tick having read the old rate; when
//! it wakes it must not produce anything.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use discord_sim::GuildTruth;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Only changes a cache keeps, plus messages (which change nothing).
const MIX: &str = "MESSAGE_CREATE=2,GUILD_MEMBER_ADD=3,GUILD_MEMBER_UPDATE=3,\
                   GUILD_MEMBER_REMOVE=2,CHANNEL_CREATE=1,CHANNEL_UPDATE=2,CHANNEL_DELETE=1,\
                   GUILD_ROLE_CREATE=1,GUILD_ROLE_UPDATE=2,GUILD_ROLE_DELETE=1,GUILD_UPDATE=1";

fn by_id(list: &Value, key: impl Fn(&Value) -> &Value) -> BTreeMap<u64, Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|x| (id(key(x)), x.clone()))
        .collect()
}

/// Applies one dispatch to a cache of the kept state.
fn apply(cache: &mut BTreeMap<u64, GuildTruth>, shard: u32, v: &Value) {
    let p = &v["d"];
    let t = v["t"].as_str().unwrap();
    if t == "READY" || t == "MESSAGE_CREATE" {
        return;
    }
    let gid = id(p.get("guild_id").unwrap_or(&p["id"]));
    if t == "GUILD_CREATE" {
        let truth = GuildTruth {
            shard,
            unavailable: false,
            member_count: p["member_count"].as_u64().unwrap(),
            channels: by_id(&p["channels"], |x| &x["id"]),
            roles: by_id(&p["roles"], |x| &x["id"]),
            members: by_id(&p["members"], |x| &x["user"]["id"]),
            emojis: by_id(&p["emojis"], |x| &x["id"]),
            guild: without(p.clone(), SNAPSHOT_ONLY),
        };
        cache.insert(gid, truth);
        return;
    }
    let g = cache
        .get_mut(&gid)
        .unwrap_or_else(|| panic!("{t} for guild {gid} before its GUILD_CREATE"));
    match t {
        "GUILD_UPDATE" => {
            g.emojis = by_id(&p["emojis"], |x| &x["id"]);
            g.roles = by_id(&p["roles"], |x| &x["id"]);
            g.guild = without(p.clone(), &["roles", "emojis"]);
        }
        "GUILD_MEMBER_ADD" | "GUILD_MEMBER_UPDATE" => {
            if t == "GUILD_MEMBER_ADD" {
                g.member_count += 1;
            }
            let m = without(p.clone(), &["guild_id"]);
            g.members.insert(id(&p["user"]["id"]), m);
        }
        "GUILD_MEMBER_REMOVE" => {
            g.member_count -= 1;
            g.members.remove(&id(&p["user"]["id"])).unwrap();
        }
        "CHANNEL_CREATE" | "CHANNEL_UPDATE" => {
            g.channels.insert(id(&p["id"]), p.clone());
        }
        "CHANNEL_DELETE" => {
            g.channels.remove(&id(&p["id"])).unwrap();
        }
        "GUILD_ROLE_CREATE" | "GUILD_ROLE_UPDATE" => {
            g.roles.insert(id(&p["role"]["id"]), p["role"].clone());
        }
        "GUILD_ROLE_DELETE" => {
            g.roles.remove(&id(&p["role_id"])).unwrap();
        }
        other => panic!("unexpected dispatch {other}"),
    }
}

#[tokio::test]
async fn truth_read_after_the_stop_equals_what_a_cold_boot_was_sent() {
    let shards = 4u32;
    let window = Duration::from_millis(20);
    let sim = start(SimConfig {
        shards,
        guilds: 12,
        max_concurrency: 1,
        identify_window: window,
        event_rate: 20_000.0,
        event_mix: MIX.parse().unwrap(),
        seed: 4,
        ..test_config()
    })
    .await;
    // Cold boot: one IDENTIFY per window, events flowing throughout, so
    // every shard's snapshot is taken between changes to its guilds.
    let mut clients = Vec::new();
    for shard in 0..shards {
        let mut c = Client::connect(&sim.gateway_url(), None).await;
        c.hello().await;
        c.identify(shard, shards, ALL_USED_INTENTS).await;
        let ready = c.ready().await;
        assert_eq!(ready["d"]["shard"][0], shard);
        clients.push((shard, c, 1u64));
        // The client obeys the identify limit: the IDENTIFY was admitted
        // before READY was sent, so the next one waits a window from now.
        tokio::time::sleep(window + Duration::from_millis(2)).await;
    }
    // Stop, then read the truth, as the scenario does (two requests, no
    // event in between may be lost to the comparison).
    sim.set_event_rate(0.0).unwrap();
    let truth = sim.truth();
    let generated = sim.counters().events_generated;
    // Read every session to the end: until a quiet window, then the ledger
    // says whether anything is still missing.
    let mut cache = BTreeMap::new();
    for (shard, c, last) in &mut clients {
        while let Some(r) = c.recv_within(Duration::from_millis(200)).await {
            let Recv::Payload(v) = r else {
                panic!("shard {shard}: {r:?}");
            };
            if v["op"] != 0 {
                continue;
            }
            let seq = v["s"].as_u64().unwrap();
            assert_eq!(seq, *last + 1, "shard {shard}: a gap in the stream");
            *last = seq;
            apply(&mut cache, *shard, &v);
        }
    }
    let ledger = sim.ledger();
    for (shard, _, last) in &clients {
        let sent = ledger.shards[shard].last().map(|e| e.seq);
        assert_eq!(sent, Some(*last), "shard {shard}: not read to the end");
    }
    assert_eq!(cache.len(), truth.guilds.len());
    for (gid, g) in &truth.guilds {
        assert_eq!(cache.get(gid), Some(g), "guild {gid}: truth != dispatched");
    }
    assert_eq!(
        sim.counters().events_generated,
        generated,
        "events were generated after the rate was set to 0 and the truth read"
    );
    sim.shutdown().await;
}

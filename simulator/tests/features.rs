//! Intent-shaped payloads and client requests, each driven by a real
//! websocket client: payload compression (`compress: true`), MESSAGE_CONTENT
//! blanking, GUILD_CREATE member trimming without GUILD_MEMBERS, and
//! Request Guild Members (op 8) with its chunks and rate limit.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use discord_sim::{EventKind, EventMix};
use futures_util::StreamExt;
use serde::de::DeserializeSeed;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use twilight_model::gateway::event::{DispatchEvent, GatewayEvent, GatewayEventDeserializer};

const BOT_ID: &str = "1100000000000000001";
const GUILDS: u64 = 1;
const GUILD_MEMBERS: u64 = 1 << 1;
const GUILD_MESSAGES: u64 = 1 << 9;
const MESSAGE_CONTENT: u64 = 1 << 15;

fn decode(v: &Value) -> DispatchEvent {
    let text = v.to_string();
    let de = GatewayEventDeserializer::from_json(&text).unwrap();
    let mut json = serde_json::Deserializer::from_str(&text);
    match de.deserialize(&mut json) {
        Ok(GatewayEvent::Dispatch(_, d)) => d,
        other => panic!("twilight read {text} as {other:?}"),
    }
}

/// Two shards in two identify buckets, so both identify at once.
fn config() -> SimConfig {
    SimConfig {
        max_concurrency: 2,
        ..test_config()
    }
}

async fn identified(sim: &SimHandle, shard: u32, intents: u64, compress: bool) -> Client {
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    let mut id = identify_payload(TOKEN, Some([shard, sim.config().shards]), intents);
    id["d"]["compress"] = json!(compress);
    c.send(id).await;
    c.ready().await;
    c
}

#[tokio::test]
async fn payload_compression_sends_large_payloads_as_zlib_binary() {
    let sim = start(SimConfig {
        members_per_guild: 20,
        ..test_config()
    })
    .await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    let mut id = identify_payload(TOKEN, Some([0, 2]), ALL_USED_INTENTS);
    id["d"]["compress"] = json!(true);
    c.send(id).await;
    let (mut binary, mut text) = (0, 0);
    // READY and the 3 GUILD_CREATEs (each over 1 KiB), then small ones.
    sim.set_event_mix(EventMix::only(&[(EventKind::TypingStart, 1)]))
        .unwrap();
    let mut creates = 0;
    while creates < 3 || text == 0 {
        if creates == 3 {
            sim.emit(20);
        }
        let msg = tokio::time::timeout(DEADLINE, c.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = match msg {
            Message::Binary(b) => {
                binary += 1;
                let mut s = String::new();
                std::io::Read::read_to_string(&mut flate2::read::ZlibDecoder::new(&b[..]), &mut s)
                    .unwrap();
                assert!(s.len() >= 1024, "a {}-byte payload was compressed", s.len());
                serde_json::from_str(&s).unwrap()
            }
            Message::Text(t) => {
                text += 1;
                assert!(
                    t.len() < 1024,
                    "a {}-byte payload was not compressed",
                    t.len()
                );
                serde_json::from_str(&t).unwrap()
            }
            other => panic!("{other:?}"),
        };
        if v["t"] == "GUILD_CREATE" {
            creates += 1;
        }
    }
    assert!(binary >= 3, "{binary} binary messages");
    sim.shutdown().await;
}

#[tokio::test]
async fn message_content_is_blanked_without_the_intent_except_mentions() {
    let sim = start(config()).await;
    sim.set_event_mix(EventMix::only(&[(EventKind::MessageCreate, 1)]))
        .unwrap();
    let mut without = identified(&sim, 0, GUILDS | GUILD_MESSAGES, false).await;
    let mut with = identified(&sim, 1, GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT, false).await;
    without.dispatches(3).await;
    with.dispatches(3).await;
    sim.emit(400);
    let ledger = sim.ledger();
    let count = |shard: u32| ledger.shards[&shard].len() - 4;
    let (mut blanked, mut mentions) = (0, 0);
    for v in without.dispatches(count(0)).await {
        let d = &v["d"];
        let DispatchEvent::MessageCreate(m) = decode(&v) else {
            panic!("{v}")
        };
        if m.mentions.iter().any(|u| u.id.to_string() == BOT_ID) {
            mentions += 1;
            assert!(m.content.starts_with(&format!("<@{BOT_ID}>")), "{v}");
        } else {
            blanked += 1;
            assert_eq!(d["content"], "", "{v}");
            for k in ["embeds", "attachments", "components"] {
                assert_eq!(d[k], json!([]), "{v}");
            }
        }
    }
    assert!(
        blanked > 100 && mentions > 0,
        "{blanked} blanked, {mentions} mentions"
    );
    for v in with.dispatches(count(1)).await {
        assert_ne!(v["d"]["content"], "", "{v}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn guild_create_lists_only_the_bot_without_guild_members() {
    let sim = start(config()).await;
    let mut without = identified(&sim, 0, GUILDS, false).await;
    let mut with = identified(&sim, 1, GUILDS | GUILD_MEMBERS, false).await;
    let truth = sim.truth();
    for (c, full) in [(&mut without, false), (&mut with, true)] {
        for v in c.dispatches(3).await {
            assert_eq!(v["t"], "GUILD_CREATE");
            let DispatchEvent::GuildCreate(_) = decode(&v) else {
                panic!("{v}")
            };
            let g = &truth.guilds[&v["d"]["id"].as_str().unwrap().parse().unwrap()];
            let members = v["d"]["members"].as_array().unwrap();
            assert_eq!(v["d"]["member_count"], g.member_count, "count stays exact");
            if full {
                assert_eq!(members.len(), g.members.len());
            } else {
                assert_eq!(members.len(), 1, "{members:?}");
                assert_eq!(members[0]["user"]["id"], BOT_ID);
                assert_eq!(members[0]["user"]["bot"], true);
            }
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn request_guild_members_answers_in_chunks_and_is_rate_limited() {
    let sim = start(SimConfig {
        members_per_guild: 1500,
        shards: 4,
        guilds: 8,
        max_concurrency: 4,
        ..test_config()
    })
    .await;
    let mut c = identified(&sim, 0, GUILDS | GUILD_MEMBERS, false).await;
    let creates = c.dispatches(2).await;
    let gids: Vec<String> = creates
        .iter()
        .map(|v| v["d"]["id"].as_str().unwrap().to_owned())
        .collect();
    let truth = sim.truth();
    let g0 = &truth.guilds[&gids[0].parse().unwrap()];
    // Every member: two chunks of at most 1000, nonce echoed.
    c.send(json!({"op": 8, "d": {"guild_id": gids[0], "query": "", "limit": 0, "nonce": "n1"}}))
        .await;
    let chunks = c.dispatches(2).await;
    let mut got = 0;
    for (i, v) in chunks.iter().enumerate() {
        assert_eq!(v["t"], "GUILD_MEMBERS_CHUNK", "{v}");
        let DispatchEvent::MemberChunk(m) = decode(v) else {
            panic!("{v}")
        };
        assert_eq!((m.chunk_index, m.chunk_count), (i as u32, 2));
        assert_eq!(m.nonce.as_deref(), Some("n1"));
        assert!(m.members.len() <= 1000);
        got += m.members.len();
    }
    assert_eq!(got, g0.members.len());
    // The same guild again at once: RATE_LIMITED, not chunks.
    c.send(json!({"op": 8, "d": {"guild_id": gids[0], "query": "", "limit": 0, "nonce": "n2"}}))
        .await;
    let v = c.dispatches(1).await.remove(0);
    assert_eq!(v["t"], "RATE_LIMITED", "{v}");
    assert_eq!(v["d"]["opcode"], 8);
    assert_eq!(v["d"]["meta"]["guild_id"], gids[0]);
    assert_eq!(v["d"]["meta"]["nonce"], "n2");
    assert!(v["d"]["retry_after"].as_f64().unwrap() > 0.0);
    // By user id on another guild: found and not found.
    // A member of the first guild only (the bot is in both).
    let known = g0.members.keys().last().unwrap().to_string();
    let g1 = &truth.guilds[&gids[1].parse().unwrap()];
    let member = g1.members.keys().last().unwrap().to_string();
    c.send(json!({"op": 8, "d": {"guild_id": gids[1], "user_ids": [member, known]}}))
        .await;
    let v = c.dispatches(1).await.remove(0);
    assert_eq!(v["d"]["members"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["d"]["members"][0]["user"]["id"], member);
    assert_eq!(v["d"]["not_found"], json!([known]));
    assert!(v["d"].get("nonce").is_none());
    let counters = sim.counters();
    assert_eq!(counters.member_requests, 3);
    assert_eq!(counters.member_requests_rate_limited, 1);
    // The whole list without GUILD_MEMBERS closes the connection.
    let mut no_members = identified(&sim, 1, GUILDS, false).await;
    no_members
        .send(json!({"op": 8, "d": {"guild_id": gids[1], "query": "", "limit": 0}}))
        .await;
    assert_eq!(no_members.closed().await, Some(4013));
    // A query that is not the whole list needs no intent, and a bad request
    // is a decode error.
    let mut q = identified(&sim, 2, GUILDS, false).await;
    q.dispatches(2).await;
    q.send(json!({"op": 8, "d": {"guild_id": "1", "query": "a"}}))
        .await;
    assert_eq!(q.closed().await, Some(4002));
    sim.shutdown().await;
}

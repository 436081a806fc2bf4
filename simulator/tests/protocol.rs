//! Connection-level rules: HTTP discovery, HELLO and heartbeats, IDENTIFY
//! validation and the close codes for each bad payload.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn gateway_bot_requires_the_bot_token_and_points_back() {
    let sim = start(test_config()).await;
    let (status, _) = http(sim.addr(), "GET", "/api/v10/gateway/bot", None, None).await;
    assert_eq!(status, 401);
    let (status, _) = http(
        sim.addr(),
        "GET",
        "/api/v10/gateway/bot",
        Some("Bot wrong"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = http(sim.addr(), "GET", "/api/v10/gateway/bot", Some(TOKEN), None).await;
    assert_eq!(status, 401, "a token without the `Bot ` prefix is refused");
    let auth = format!("Bot {TOKEN}");
    let (status, body) = http(sim.addr(), "GET", "/api/v10/gateway/bot", Some(&auth), None).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["url"], sim.gateway_url());
    assert_eq!(v["shards"], 2);
    let limit = &v["session_start_limit"];
    assert_eq!(limit["total"], 1000);
    assert_eq!(limit["remaining"], 1000);
    assert_eq!(limit["max_concurrency"], 1);
    assert!(limit["reset_after"].as_u64().unwrap() > 86_000_000);
    sim.shutdown().await;
}

#[tokio::test]
async fn hello_heartbeat_ack_and_server_heartbeat_request() {
    let sim = start(test_config()).await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    assert_eq!(c.hello().await, 10_000);
    c.heartbeat(None).await;
    assert_eq!(c.payload().await["op"], 11);
    c.identify(0, 2, ALL_USED_INTENTS).await;
    c.ready().await;
    assert_eq!(sim.request_heartbeat(&[0]), 1);
    assert_eq!(sim.request_heartbeat(&[1]), 0, "no session on shard 1");
    let v = c.until_op(1).await;
    assert_eq!(v["d"], Value::Null);
    c.heartbeat(Some(1)).await;
    c.until_op(11).await;
    assert_eq!(sim.counters().heartbeats, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_stops_heartbeating_is_closed_4009_and_its_session_ends() {
    let sim = start(common::SimConfig {
        heartbeat_interval: Duration::from_millis(60),
        ..test_config()
    })
    .await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.identify(0, 2, ALL_USED_INTENTS).await;
    let session = c.ready().await["d"]["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Never heartbeat.
    assert_eq!(c.closed().await, Some(4009));
    assert_eq!(sim.counters().heartbeat_timeouts, 1);
    // 4009 ends the session: resume is refused.
    let mut r = Client::connect(&sim.resume_url(), None).await;
    r.hello().await;
    r.resume(&session, 1).await;
    assert_eq!(r.until_op(9).await["d"], false);
    sim.shutdown().await;
}

#[tokio::test]
async fn heartbeating_keeps_the_connection_open() {
    let sim = start(common::SimConfig {
        heartbeat_interval: Duration::from_millis(100),
        ..test_config()
    })
    .await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    // Heartbeat every ~30 ms for 3 intervals (150 ms grace each); every one
    // is ACKed and the connection stays open.
    for _ in 0..10 {
        c.heartbeat(None).await;
        assert_eq!(c.until_op(11).await["op"], 11);
        assert!(c.recv_within(Duration::from_millis(30)).await.is_none());
    }
    assert_eq!(sim.counters().heartbeat_timeouts, 0);
    sim.shutdown().await;
}

async fn close_code_for(cfg: common::SimConfig, payloads: &[Value]) -> Option<u16> {
    let sim = start(cfg).await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    for p in payloads {
        c.send(p.clone()).await;
    }
    let code = c.closed().await;
    sim.shutdown().await;
    code
}

#[tokio::test]
async fn identify_is_validated_with_discords_close_codes() {
    let cfg = test_config;
    let id = |token, shard, intents| identify_payload(token, shard, intents);
    // 4004 wrong token
    assert_eq!(
        close_code_for(cfg(), &[id("nope", Some([0, 2]), 1)]).await,
        Some(4004)
    );
    // 4011 sharding required: no shard, or too few shards
    assert_eq!(
        close_code_for(cfg(), &[id(TOKEN, None, 1)]).await,
        Some(4011)
    );
    assert_eq!(
        close_code_for(cfg(), &[id(TOKEN, Some([0, 1]), 1)]).await,
        Some(4011)
    );
    // 4010 invalid shard
    assert_eq!(
        close_code_for(cfg(), &[id(TOKEN, Some([2, 2]), 1)]).await,
        Some(4010)
    );
    // A total above the starting one is a reshard's new generation, not an
    // invalid shard (see `a_total_above_the_starting_shards_is_accepted`);
    // only the simulator's own bound on totals is.
    let too_many = discord_sim::MAX_SHARD_TOTAL + 1;
    assert_eq!(
        close_code_for(cfg(), &[id(TOKEN, Some([0, too_many]), 1)]).await,
        Some(4010)
    );
    assert_eq!(
        close_code_for(cfg(), &[id(TOKEN, Some([0, 0]), 1)]).await,
        Some(4010)
    );
    // 4013 invalid intents (bit 17 is not an intent)
    assert_eq!(
        close_code_for(cfg(), &[id(TOKEN, Some([0, 2]), 1 << 17)]).await,
        Some(4013)
    );
    // 4014 privileged intents not enabled
    let only_members = common::SimConfig {
        allowed_privileged_intents: 1 << 1,
        ..cfg()
    };
    assert_eq!(
        close_code_for(
            only_members,
            &[id(TOKEN, Some([0, 2]), (1 << 1) | (1 << 8))]
        )
        .await,
        Some(4014)
    );
    // 4005 identify twice
    let ok = id(TOKEN, Some([0, 2]), 1);
    assert_eq!(close_code_for(cfg(), &[ok.clone(), ok]).await, Some(4005));
}

#[tokio::test]
async fn allowed_privileged_intents_are_accepted() {
    let sim = start(common::SimConfig {
        allowed_privileged_intents: 1 << 1,
        ..test_config()
    })
    .await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.identify(0, 2, 1 | (1 << 1)).await;
    let ready = c.ready().await;
    assert_eq!(ready["d"]["shard"], json!([0, 2]));
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_payloads_close_with_the_right_code() {
    let cfg = test_config;
    let raw = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    // unknown opcode
    assert_eq!(
        close_code_for(cfg(), &[raw(r#"{"op":99,"d":null}"#)]).await,
        Some(4001)
    );
    // wrong types / missing fields: decode error
    assert_eq!(
        close_code_for(cfg(), &[raw(r#"{"op":"1"}"#)]).await,
        Some(4002)
    );
    assert_eq!(
        close_code_for(cfg(), &[raw(r#"{"op":2,"d":{"token":""}}"#)]).await,
        Some(4002)
    );
    assert_eq!(
        close_code_for(cfg(), &[raw(r#"{"op":2,"d":[]}"#)]).await,
        Some(4002)
    );
    // payload before identify
    assert_eq!(
        close_code_for(cfg(), &[raw(r#"{"op":3,"d":{"status":"online"}}"#)]).await,
        Some(4003)
    );
    assert_eq!(
        close_code_for(cfg(), &[raw(r#"{"op":8,"d":{"guild_id":"1"}}"#)]).await,
        Some(4003)
    );
}

#[tokio::test]
async fn invalid_json_and_huge_payloads_are_decode_errors() {
    let sim = start(test_config()).await;
    for text in [
        "{not json".to_owned(),
        String::new(),
        format!(r#"{{"op":1,"d":null,"pad":"{}"}}"#, "x".repeat(5000)),
    ] {
        let mut c = Client::connect(&sim.gateway_url(), None).await;
        c.hello().await;
        c.send_raw(&text).await;
        assert_eq!(c.closed().await, Some(4002), "for {} bytes", text.len());
    }
    assert_eq!(sim.counters().protocol_errors, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_api_version_gets_4012_and_bad_compression_a_400() {
    let sim = start(test_config()).await;
    let url = format!("{}/?v=9&encoding=json", sim.gateway_url());
    let mut c = Client::connect_url(&url, None).await;
    assert_eq!(c.closed().await, Some(4012));
    let bad = format!("{}/?v=10&encoding=json&compress=gzip", sim.gateway_url());
    assert!(tokio_tungstenite::connect_async(bad).await.is_err());
    sim.shutdown().await;
}

#[tokio::test]
async fn ready_lists_the_shards_guilds_then_one_guild_create_each() {
    let sim = start(test_config()).await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.identify(1, 2, ALL_USED_INTENTS).await;
    let ready = c.ready().await;
    assert_eq!(ready["s"], 1);
    let d = &ready["d"];
    assert_eq!(d["v"], 10);
    assert_eq!(d["resume_gateway_url"], sim.resume_url());
    assert_eq!(d["session_id"].as_str().unwrap().len(), 32);
    let ids: Vec<u64> = d["guilds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            assert_eq!(g["unavailable"], true);
            g["id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|&g| discord_sim::shard_of(g, 2) == 1));
    let creates = c.dispatches(3).await;
    for (i, (v, id)) in creates.iter().zip(&ids).enumerate() {
        assert_eq!(v["t"], "GUILD_CREATE");
        assert_eq!(v["s"], i as u64 + 2);
        assert_eq!(v["d"]["id"], id.to_string());
        // The 5 configured members and the bot's own.
        assert_eq!(v["d"]["member_count"], 6);
        assert_eq!(v["d"]["members"].as_array().unwrap().len(), 6);
        assert_eq!(v["d"]["channels"].as_array().unwrap().len(), 4);
        assert_eq!(v["d"]["roles"].as_array().unwrap().len(), 4);
    }
    sim.shutdown().await;
}

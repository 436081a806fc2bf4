//! The token in IDENTIFY and RESUME: Discord accepts it bare or with the
//! `Bot ` prefix (twilight-gateway always sends `Bot <token>`), and closes
//! with 4004 for anything else.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

/// Identifies shard `shard` of 2 with `token` on a zlib-stream connection
/// and returns READY, or panics with what came instead.
async fn ready_with(base: &str, token: &str, shard: u32) -> (Client, serde_json::Value) {
    let mut c = Client::connect(base, Some("zlib-stream")).await;
    c.hello().await;
    c.send(identify_payload(token, Some([shard, 2]), ALL_USED_INTENTS))
        .await;
    let ready = c.ready().await;
    (c, ready)
}

fn one_shard() -> SimConfig {
    SimConfig {
        shards: 1,
        ..test_config()
    }
}

/// Two shards in two identify buckets, so the two identifies never share a
/// rate-limit window (one shard identifying twice within 5 ms drew op 9).
fn two_buckets() -> SimConfig {
    SimConfig {
        shards: 2,
        max_concurrency: 2,
        ..test_config()
    }
}

#[tokio::test]
async fn identify_accepts_the_token_with_or_without_the_bot_prefix() {
    let sim = start(two_buckets()).await;
    for (shard, token) in [(0, TOKEN.to_owned()), (1, format!("Bot {TOKEN}"))] {
        let (mut c, ready) = ready_with(&sim.gateway_url(), &token, shard).await;
        assert_eq!(ready["d"]["shard"], json!([shard, 2]), "{token}: {ready}");
        c.ws.close(None).await.unwrap();
    }
    assert_eq!(sim.counters().identifies, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn identify_with_a_wrong_token_is_closed_4004_prefixed_or_not() {
    let sim = start(one_shard()).await;
    for token in [
        "wrong".to_owned(),
        "Bot wrong".to_owned(),
        format!("Bearer {TOKEN}"),
        format!("Bot  {TOKEN}"),
        format!("bot {TOKEN}"),
        format!("{TOKEN} "),
        "Bot ".to_owned(),
    ] {
        let mut c = Client::connect(&sim.gateway_url(), None).await;
        c.hello().await;
        c.send(identify_payload(&token, Some([0, 1]), ALL_USED_INTENTS))
            .await;
        assert_eq!(c.closed().await, Some(4004), "token {token:?}");
    }
    assert_eq!(sim.counters().identifies, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn resume_accepts_the_prefixed_token_and_refuses_a_wrong_one() {
    let sim = start(two_buckets()).await;
    let (mut c, ready) = ready_with(&sim.gateway_url(), TOKEN, 0).await;
    let sid = ready["d"]["session_id"].as_str().unwrap().to_owned();
    // The connection drops without a close frame: the session stays
    // resumable.
    assert_eq!(sim.drop_connections(&[0]), 1);
    assert_eq!(c.closed().await, None);
    eventually(
        || sim.connected_sessions(&[0]) == 0,
        "the session to detach",
    )
    .await;
    let resume_url = sim.resume_url();

    let mut bad = Client::connect(&resume_url, None).await;
    bad.hello().await;
    bad.send(json!({"op": 6, "d": {"token": "Bot wrong", "session_id": sid, "seq": 1}}))
        .await;
    assert_eq!(bad.closed().await, Some(4004));

    let mut r = Client::connect(&resume_url, None).await;
    r.hello().await;
    r.send(json!({"op": 6, "d": {"token": format!("Bot {TOKEN}"), "session_id": sid, "seq": 1}}))
        .await;
    let replay = r.dispatches_until("RESUMED").await;
    assert_eq!(replay.last().unwrap()["t"], "RESUMED");
    assert_eq!(sim.counters().resumes, 1);
    sim.shutdown().await;
}

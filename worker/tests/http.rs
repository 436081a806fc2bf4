//! The HTTP API over real HTTP, against a worker fed through the real
//! RabbitMQ: probes follow the consumers and the backlog, the read routes
//! answer from the cache with 400/404 JSON errors, and /metrics carries the
//! worker's series. One test: the metrics recorder is process-global.
#![allow(clippy::unwrap_used)]

use envelope::topology::routing_key;
use envelope::{BatchEncoder, Event, GuildCreateKind};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use worker::http::{ApiState, Health, router};
use worker::{AmqpTopology, MemoryStore, Worker, consume_partition_with};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const G: u64 = 81384788765712384;
const U: u64 = 80351110224678912;

fn one(seq: u64, t: &str, marker: Option<GuildCreateKind>, d: &str) -> Vec<u8> {
    let mut enc = BatchEncoder::new(0, 1).unwrap();
    enc.push(&Event {
        epoch: 1,
        seq,
        received_at: 0,
        t,
        guild_id: Some(G),
        guild_create: marker,
        d: d.as_bytes(),
    })
    .unwrap();
    enc.finish()
}

/// One HTTP/1.1 request over a fresh TCP connection: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = get(addr, path).await;
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_api_probes_and_metrics_over_http() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    // Input: a join with 2 channels, 1 role, 2 members; its duplicate; a
    // poison message; a member update; a sentinel.
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let base = testkit::unique_name("http");
    let topo = AmqpTopology::named(&base, 1);
    topo.declare(&ch).await.unwrap();
    let create = json!({"id": G.to_string(), "name": "Guild", "owner_id": U.to_string(),
        "member_count": 2,
        "channels": [{"id": "11", "type": 0, "name": "general", "position": 1},
                     {"id": "10", "type": 4, "name": "cat", "position": 0}],
        "roles": [{"id": "20", "name": "mod", "permissions": "8", "position": 1, "color": 255}],
        "members": [
            {"user": {"id": U.to_string(), "username": "owner", "global_name": "Owner"}, "roles": ["20"]},
            {"user": {"id": "5", "username": "other"}, "roles": []}]})
    .to_string();
    let join = one(1, "GUILD_CREATE", Some(GuildCreateKind::Joined), &create);
    let update = json!({"guild_id": G.to_string(), "nick": "boss", "roles": ["20"],
        "user": {"id": U.to_string(), "username": "owner", "global_name": "The Boss"}})
    .to_string();
    let inputs = [
        join.clone(),
        join,
        b"not an envelope".to_vec(),
        one(2, "GUILD_MEMBER_UPDATE", None, &update),
        one(3, "MESSAGE_CREATE", None, "{}"),
    ];
    for m in &inputs {
        ch.basic_publish(
            topo.exchange.as_str().into(),
            routing_key(0, "BATCH").as_str().into(),
            BasicPublishOptions::default(),
            m,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    let store = Arc::new(MemoryStore::new());
    let health = Arc::new(Health::default());
    let counted = store.clone();
    let api = ApiState {
        store: store.clone(),
        health: health.clone(),
        metrics: Some(handle),
        stats: Some(Arc::new(move || counted.stats())),
        read_token: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router(api)).await });

    // Nothing consumes yet: alive (liveness never depends on the broker),
    // not ready, and the backlog is seen.
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503);
    // A quorum queue's count trails the publish confirms a little.
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker::readiness::backlog(&ch, &topo, &[0]).await.unwrap() != [5] {
        assert!(Instant::now() < deadline, "the backlog never showed 5");
        // Polling interval of the broker's count, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let worker = Arc::new(Worker::with_shared_store(store).on_any(move |e| {
        let _ = tx.send(e.name().to_owned());
    }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let guard = health.consumer();
    let consumer = tokio::spawn(consume_partition_with(
        worker,
        conn.create_channel().await.unwrap(),
        topo.clone(),
        0,
        1,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let watcher = tokio::spawn(worker::readiness::watch_backlog(
        conn.create_channel().await.unwrap(),
        topo.clone(),
        vec![0],
        1,
        health.clone(),
        Duration::from_millis(20),
    ));
    let mut names = Vec::new();
    while names.last().map(String::as_str) != Some("MESSAGE_CREATE") {
        let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the sentinel was not processed")
            .unwrap();
        names.push(n);
    }
    assert_eq!(
        names,
        ["GUILD_JOINED", "GUILD_MEMBER_UPDATE", "MESSAGE_CREATE"]
    );
    assert_eq!(get(addr, "/healthz").await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(addr, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        // Polling interval of the probe, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (status, g) = get_json(addr, &format!("/v1/guilds/{G}")).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["id"], G.to_string());
    assert_eq!(g["name"], "Guild");
    assert_eq!(g["owner_id"], U.to_string());
    assert_eq!(g["member_count"], 2);
    assert_eq!(g["cached"]["members"], 2);
    let (status, chans) = get_json(addr, &format!("/v1/guilds/{G}/channels")).await;
    assert_eq!(status, 200);
    assert_eq!(chans[0]["id"], "10");
    assert_eq!(chans[1]["name"], "general");
    let (_, roles) = get_json(addr, &format!("/v1/guilds/{G}/roles")).await;
    assert_eq!(roles[0]["permissions"], "8");
    let (status, m) = get_json(addr, &format!("/v1/guilds/{G}/members/{U}")).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["nick"], "boss");
    assert_eq!(m["roles"], json!(["20"]));
    // The user record is the newest one seen (the update's).
    assert_eq!(m["user"]["username"], "owner");
    assert_eq!(m["user"]["global_name"], "The Boss");

    let (status, e) = get_json(addr, "/v1/guilds/42").await;
    assert_eq!(status, 404);
    assert!(e["error"].as_str().unwrap().contains("42"), "{e}");
    let (status, e) = get_json(addr, "/v1/guilds/abc/channels").await;
    assert_eq!(status, 400);
    assert!(e["error"].as_str().unwrap().contains("snowflake"), "{e}");
    assert_eq!(get(addr, &format!("/v1/guilds/{G}/members/x")).await.0, 400);
    assert_eq!(get(addr, &format!("/v1/guilds/{G}/members/6")).await.0, 404);
    assert_eq!(get(addr, "/v2/nothing").await.0, 404);

    let (_, stats) = get_json(addr, "/v1/stats").await;
    assert_eq!(stats["cache"]["guilds"], 1);
    assert_eq!(stats["cache"]["members"], 2);
    assert_eq!(stats["cache"]["users"], 2);
    assert_eq!(stats["consumers"], 1);
    assert_eq!(stats["ready"], true);

    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "worker_events_applied_total 2",
        "worker_events_dropped_total{delivery=\"first\"} 1",
        "worker_joins_emitted_total 1",
        "worker_poison_messages_total 1",
        "worker_apply_seconds",
        // One sample per event of the three messages applied.
        "worker_event_age_seconds_count 4",
        "worker_backlog_messages{partition=\"0\"} 0",
        "worker_cache_entries{kind=\"members\"} 2",
        "worker_cache_entries{kind=\"users\"} 2",
        "worker_cache_bytes_estimate",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }

    stop.send(()).unwrap();
    consumer.await.unwrap().unwrap();
    drop(guard);
    // Consumers gone: no longer ready, still alive (no restart, cache kept).
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 503);
    watcher.abort();
    server.abort();
    topo.delete(&ch).await.unwrap();
}

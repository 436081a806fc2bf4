//! `sharder::run_with` in-process against the gateway simulator and the
//! real RabbitMQ: HTTP endpoints, runtime shedding, fatal exits. (The cold
//! boot at the identify floor has its own binary, `cold_boot.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use common::{TempDir, consume, delete, http, http_with, now_ms, run_config, unique, until};
use discord_sim::{EventKind, EventMix, SimConfig, Simulator};
use sharder::{AmqpTopology, ChannelSink, RunOptions, SinkChoice};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_shedding_at_runtime() {
    let sim = Simulator::start(SimConfig {
        shards: 2,
        guilds: 8,
        identify_window: Duration::from_millis(100),
        event_rate: 400.0,
        event_mix: EventMix::only(&[(EventKind::MessageCreate, 1), (EventKind::TypingStart, 1)]),
        // A heartbeat RTT for the status page within the test.
        heartbeat_interval: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = TempDir::new("http").unwrap();
    let base = unique("http");
    let topo = AmqpTopology::named(&base, 2);
    let (_conn, mut queue) = consume(&topo).await;
    let cfg = run_config(
        &sim,
        &dir,
        &format!(
            "identify_window = \"110ms\"\nadmin_token = \"s3cret-admin\"\n\
             amqp_topology_base = \"{base}\"\n[amqp]\npartitions = 2\n"
        ),
    );
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
    let addr: SocketAddr = timeout(WAIT, rx).await.unwrap().unwrap();
    assert_eq!(http(addr, "GET", "/healthz", None, "").await.0, 200);
    until("readyz", WAIT, async || {
        http(addr, "GET", "/readyz", None, "").await.0 == 200
    })
    .await;

    // The status page and its data need no token, and hold none. Without
    // Redis they show this process's shards and say so.
    let (status, page) = http(addr, "GET", "/", None, "").await;
    assert_eq!(status, 200);
    assert!(page.contains("data-shard") && page.contains("fetch('status.json'"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "fetches nothing from outside"
    );
    until("both shards active on /status.json", WAIT, async || {
        let (status, body) = http(addr, "GET", "/status.json", None, "").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.contains("s3cret") && !body.contains("guest"),
            "{body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["scope"].as_str(), v["total"].as_u64()),
            (Some("process"), Some(2))
        );
        let states: Vec<&str> = v["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        let p = &v["processes"][0];
        states == ["active", "active"]
            && p["sink"]["connected"] == true
            && v["summary"]["active"] == 2
            && v["shards"][0]["rtt_ms"].is_number()
    })
    .await;

    // Admin needs the token, and never echoes it.
    let (status, body) = http(addr, "GET", "/admin/shards", None, "").await;
    assert_eq!(status, 401);
    assert!(!body.contains("s3cret"));
    assert_eq!(
        http(addr, "GET", "/admin/shards", Some("wrong"), "")
            .await
            .0,
        401
    );
    // Every admin route, every wrong credential: one 401, the same body,
    // nothing done (the shed list below is still empty).
    let mut bodies = std::collections::BTreeSet::new();
    for (method, path, body) in [
        ("GET", "/admin/shards", ""),
        (
            "POST",
            "/admin/identify-throttle",
            r#"{"min_interval_ms": 1}"#,
        ),
        ("GET", "/admin/shed", ""),
        ("POST", "/admin/shed", r#"{"events": ["MESSAGE_CREATE"]}"#),
        ("GET", "/admin/reshard", ""),
        ("POST", "/admin/reshard", r#"{"total": 4}"#),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-admi"),
            Some("Basic s3cret-admin"),
            Some("s3cret-admin"),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("Authorization", a)).into_iter().collect();
            let (status, answer) = http_with(addr, method, path, &headers, body).await;
            assert_eq!(status, 401, "{method} {path} {auth:?}: {answer}");
            assert!(!answer.contains("s3cret"), "{answer}");
            bodies.insert(answer);
        }
    }
    assert_eq!(bodies.len(), 1, "401 bodies differ: {bodies:?}");
    let (status, body) = http(addr, "GET", "/admin/shed", Some("s3cret-admin"), "").await;
    assert_eq!(status, 200);
    assert!(!body.contains("MESSAGE_CREATE"), "{body}");
    let (status, body) = http(addr, "GET", "/admin/shards", Some("s3cret-admin"), "").await;
    assert_eq!(status, 200);
    assert_eq!(body.matches("\"Active\"").count(), 2, "{body}");
    let (status, _) = http(
        addr,
        "POST",
        "/admin/identify-throttle",
        Some("s3cret-admin"),
        r#"{"min_interval_ms": 250}"#,
    )
    .await;
    assert_eq!(status, 200);
    for bad in [
        r#"{"min_interval_ms": -1}"#,
        "{",
        r#"{"min_interval_ms": 99999999}"#,
    ] {
        let (status, _) = http(
            addr,
            "POST",
            "/admin/identify-throttle",
            Some("s3cret-admin"),
            bad,
        )
        .await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, body) = http(addr, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("sharder_identify_min_interval_seconds 0.25"),
        "{body}"
    );
    assert!(body.contains("sharder_shards_active 2"), "{body}");
    assert!(
        body.contains("sharder_shard_active{shard=\"1\"} 1"),
        "{body}"
    );
    assert!(!body.contains("s3cret"));

    // TYPING_START flows before shedding.
    timeout(WAIT, async {
        while queue.recv().await.unwrap().t != "TYPING_START" {}
    })
    .await
    .unwrap();
    let (status, _) = http(
        addr,
        "POST",
        "/admin/shed",
        Some("s3cret-admin"),
        r#"{"events":["READY"]}"#,
    )
    .await;
    assert_eq!(status, 400, "lifecycle events cannot be shed");
    let (status, body) = http(
        addr,
        "POST",
        "/admin/shed",
        Some("s3cret-admin"),
        r#"{"events":["TYPING_START"]}"#,
    )
    .await;
    assert_eq!((status, body.contains("TYPING_START")), (200, true));
    let shed_at = now_ms();
    let (_, body) = http(addr, "GET", "/admin/shed", Some("s3cret-admin"), "").await;
    assert!(body.contains("TYPING_START"));
    // For one second after, events received after the change keep
    // arriving, and none of them is a TYPING_START.
    let end = Instant::now() + Duration::from_secs(1);
    let mut after = 0;
    while let Ok(Some(g)) = tokio::time::timeout_at(end, queue.recv()).await {
        if g.received_at > shed_at {
            assert_ne!(g.t, "TYPING_START", "shed event reached the queue");
            after += 1;
        }
    }
    assert!(after > 50, "only {after} events after shedding");

    stop.cancel();
    let report = timeout(WAIT, run).await.unwrap().unwrap().unwrap();
    assert_eq!(report.shards, [0, 1]);
    assert!(report.drained);
    delete(&topo).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn admin_is_refused_on_an_exposed_listener_without_a_token() {
    let scheduler = sharder::IdentifyScheduler::new(
        sharder::SessionStartLimit {
            total: 1000,
            remaining: 1000,
            reset_after: Duration::from_secs(3600),
            max_concurrency: 1,
        },
        sharder::IdentifySettings::default(),
        None,
    );
    for (token, want) in [("", 403), ("t0k", 200)] {
        let mut cfg = config::SharderConfig {
            http_listen: "0.0.0.0:8080".parse().unwrap(),
            ..config::SharderConfig::default()
        };
        cfg.admin_token = config::Secret::new(token);
        let state = sharder::AdminState::new(
            &cfg,
            Vec::new(),
            scheduler.clone(),
            sharder::ShedList::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(sharder::serve(listener, state, stop.clone()));
        let auth = (!token.is_empty()).then_some(token);
        assert_eq!(http(addr, "GET", "/admin/shed", auth, "").await.0, want);
        let (status, _) = http(
            addr,
            "POST",
            "/admin/shed",
            auth,
            r#"{"events":["TYPING_START"]}"#,
        )
        .await;
        assert_eq!(status, want);
        assert_eq!(http(addr, "GET", "/healthz", None, "").await.0, 200);
        assert_eq!(
            http(addr, "GET", "/readyz", None, "").await.0,
            503,
            "no shard: not ready"
        );
        stop.cancel();
        server.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failed_stops_every_shard_and_the_run() {
    // /gateway/bot accepts the token, the gateway does not: close 4004.
    let api = Simulator::start(SimConfig::default()).await.unwrap();
    let gateway = Simulator::start(SimConfig {
        shards: 4,
        token: "another-token".into(),
        identify_window: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = TempDir::new("auth").unwrap();
    let mut cfg = run_config(&gateway, &dir, "identify_window = \"60ms\"\n");
    cfg.discord.api_base = format!("{}/api/v10", api.http_url());
    cfg.discord.token = config::Secret::new(api.config().token.clone());
    let (sink, _events) = ChannelSink::new(64, true);
    let run = sharder::run_with(
        cfg,
        CancellationToken::new(),
        RunOptions {
            sink: SinkChoice::Channel(sink),
            on_listening: None,
        },
    );
    let err = timeout(WAIT, run).await.unwrap().unwrap_err();
    assert!(
        matches!(err, sharder::RunError::AuthenticationFailed { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("4004") && !msg.contains(&api.config().token),
        "{msg}"
    );
    assert_eq!(gateway.counters().identifies, 0);
    api.shutdown().await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fails_when_every_shard_has_stopped() {
    let sim = Simulator::start(SimConfig {
        shards: 2,
        identify_window: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = TempDir::new("allstopped").unwrap();
    let cfg = run_config(&sim, &dir, "identify_window = \"60ms\"\n");
    // A sink whose receiver is gone: each shard stops at its first event.
    let (sink, events) = ChannelSink::new(4, false);
    drop(events);
    let run = sharder::run_with(
        cfg,
        CancellationToken::new(),
        RunOptions {
            sink: SinkChoice::Channel(sink),
            on_listening: None,
        },
    );
    let err = timeout(WAIT, run).await.unwrap().unwrap_err();
    assert!(
        matches!(err, sharder::RunError::AllShardsStopped { .. }),
        "{err}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_shards_auto_takes_discords_recommendation() {
    let sim = Simulator::start(SimConfig {
        shards: 3,
        guilds: 6,
        identify_window: Duration::from_millis(50),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = TempDir::new("auto").unwrap();
    let mut cfg = run_config(&sim, &dir, "identify_window = \"60ms\"\n");
    // What `total_shards = "auto"` in the file loads as; the configured 1
    // must not survive discovery.
    cfg.sharder.total_shards = 1;
    cfg.sharder.total_shards_auto = true;
    let (sink, mut events) = ChannelSink::new(1024, true);
    let stop = CancellationToken::new();
    let run = tokio::spawn(sharder::run_with(
        cfg,
        stop.clone(),
        RunOptions {
            sink: SinkChoice::Channel(sink),
            on_listening: None,
        },
    ));
    let mut ready = std::collections::BTreeSet::new();
    timeout(WAIT, async {
        while ready.len() < 3 {
            let e = events.recv().await.unwrap();
            assert_eq!(e.num_shards, 3, "every shard identifies as one of 3");
            if e.event == "READY" {
                ready.insert(e.shard_id);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ready.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    stop.cancel();
    let report = timeout(WAIT, run).await.unwrap().unwrap().unwrap();
    assert_eq!(report.shards, [0, 1, 2]);
    assert_eq!(sim.counters().identifies, 3);
    sim.shutdown().await;
}

/// Health first: while `GET /gateway/bot` cannot be answered (the API's
/// port refuses), the process is alive (`/healthz` 200), not ready
/// (`/readyz` 503 naming what it waits for), its shard endpoints answer
/// 503, and a shutdown ends the run at once with no shard started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_served_while_discord_cannot_be_reached() {
    let sim = Simulator::start(SimConfig {
        shards: 1,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = TempDir::new("healthfirst").unwrap();
    let mut cfg = run_config(&sim, &dir, "");
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.discord.api_base = format!("http://{}/api/v10", refused.local_addr().unwrap());
    drop(refused);
    let (sink, _events) = ChannelSink::new(4, false);
    let stop = CancellationToken::new();
    let (tx, rx) = oneshot::channel();
    let run = tokio::spawn(sharder::run_with(
        cfg,
        stop.clone(),
        RunOptions {
            sink: SinkChoice::Channel(sink),
            on_listening: Some(tx),
        },
    ));
    let addr: SocketAddr = timeout(WAIT, rx).await.unwrap().unwrap();
    assert_eq!(http(addr, "GET", "/healthz", None, "").await.0, 200);
    let (status, body) = http(addr, "GET", "/readyz", None, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"starting\":\"GET /gateway/bot\""), "{body}");
    let (status, body) = http(addr, "GET", "/admin/shards", None, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("still starting"), "{body}");
    assert_eq!(http(addr, "GET", "/metrics", None, "").await.0, 200);
    // The status page says what start-up waits for.
    let (status, body) = http(addr, "GET", "/status.json", None, "").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["processes"][0]["phase"], "GET /gateway/bot", "{body}");
    assert_eq!(v["shards"], serde_json::json!([]), "{body}");
    assert_eq!(sim.counters().identifies, 0);
    stop.cancel();
    let report = timeout(WAIT, run).await.unwrap().unwrap().unwrap();
    assert!(report.shards.is_empty(), "{report:?}");
    sim.shutdown().await;
}

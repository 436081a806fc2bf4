//! The `worker` binary refuses a bad configuration with a clear message and
//! exit code 78 (EX_CONFIG), instead of crash-looping.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn bad_config_exits_78_naming_the_key() {
    for (var, value, key) in [
        ("BULWARK_AMQP__PARTITIONS", "0", "amqp.partitions"),
        ("BULWARK_WORKER__PREFETCH", "lots", "prefetch"),
        ("BULWARK_AMQP__URL", "", "amqp.url"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_worker"))
            .env(var, value)
            .env_remove("BULWARK_CONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{var}={value}: {err}");
        assert!(err.contains(key), "{var}={value}: {err}");
    }
}

#[test]
fn redis_store_without_url_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .env("BULWARK_WORKER__STORE", "redis")
        .env_remove("BULWARK_REDIS__URL")
        .env_remove("BULWARK_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("redis.url"), "{err}");
}

/// A read API that would be open to the network by accident, and a `[tls]`
/// file that is not there, stop the worker at start-up with exit 78 and a
/// message naming the key, the file and the endpoint (never a password).
#[test]
fn open_read_api_and_missing_ca_exit_78() {
    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .env_remove("BULWARK_CONFIG")
        .env_remove("BULWARK_WORKER__READ_TOKEN")
        .env("BULWARK_WORKER__HTTP_LISTEN", "0.0.0.0:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("BULWARK_WORKER__READ_TOKEN"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_worker"))
        .env_remove("BULWARK_CONFIG")
        .env("BULWARK_WORKER__HTTP_LISTEN", "127.0.0.1:0")
        .env("BULWARK_TLS__CA_FILE", "/nonexistent/bulwark/ca.crt")
        .env(
            "BULWARK_AMQP__URL",
            "amqps://guest:hunter2@rabbit.bulwark.svc:5671/%2f",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    for part in [
        "tls.ca_file",
        "/nonexistent/bulwark/ca.crt",
        "amqps://rabbit.bulwark.svc:5671",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert!(!err.contains("hunter2"), "{err}");
}

/// The binary end to end: it dials RabbitMQ by host name through its
/// resolver, serves the probes, the read API behind its token and the
/// metrics on their own listener, publishes a real join to its output
/// exchange exactly once, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_consumes_publishes_serves_and_stops_on_sigterm() {
    use envelope::{BatchEncoder, Event, GuildCreateKind};
    use lapin::options::{
        BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const G: u64 = 81384788765712384;
    let base = testkit::unique_name("bin");
    let topo = worker::AmqpTopology::named(&base, 1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .env_remove("BULWARK_CONFIG")
        .env("BULWARK_AMQP__URL", "amqp://guest:guest@localhost:5672/%2f")
        .env("BULWARK_AMQP__PARTITIONS", "1")
        .env("BULWARK_WORKER__AMQP_TOPOLOGY_BASE", &base)
        .env("BULWARK_WORKER__HTTP_LISTEN", &addr)
        .env("BULWARK_WORKER__METRICS_LISTEN", &metrics_addr)
        .env("BULWARK_WORKER__READ_TOKEN", "r3ad-t0ken")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let get_from = |addr: String, path: String, auth: &'static str| async move {
        let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
            return (0u16, String::new());
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let status = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, raw)
    };
    let get = |path: String| {
        let addr = addr.clone();
        async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
                return (0u16, String::new());
            };
            let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).await.unwrap();
            let status = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            (status, raw)
        }
    };
    let wait_for = |path: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = get(path.to_owned()).await;
            if status == 200 {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} never 200: {body}");
            // Polling interval of the probe, not a synchronisation sleep.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for("/healthz").await;
    // Liveness says nothing about the broker; readiness says a consumer runs
    // (its queue is declared), so publishing now cannot go unrouted.
    wait_for("/readyz").await;

    let conn = Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let out = format!("{base}.bot");
    ch.queue_declare(
        out.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        out.as_str().into(),
        topo.output_exchange.as_str().into(),
        "GUILD_JOINED".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let d = serde_json::json!({"id": G.to_string(), "name": "bin", "owner_id": "1",
        "member_count": 1, "channels": [], "roles": [], "members": []})
    .to_string();
    let mut enc = BatchEncoder::new(0, 1).unwrap();
    enc.push(&Event {
        epoch: 1,
        seq: 1,
        received_at: 0,
        t: "GUILD_CREATE",
        guild_id: Some(G),
        guild_create: Some(GuildCreateKind::Joined),
        d: d.as_bytes(),
    })
    .unwrap();
    let msg = enc.finish();
    for _ in 0..2 {
        ch.basic_publish(
            topo.exchange.as_str().into(),
            envelope::topology::routing_key(0, "BATCH").as_str().into(),
            BasicPublishOptions::default(),
            &msg,
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let joined = loop {
        if let Some(m) = ch
            .basic_get(out.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no GUILD_JOINED published");
        // Polling interval of basic_get, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        joined
            .delivery
            .properties
            .message_id()
            .clone()
            .unwrap()
            .as_str(),
        "0:1:1"
    );
    let body = wait_for("/readyz").await;
    assert!(body.contains("ready"), "{body}");
    // The read API only with the token; one answer for every wrong try.
    let guild_path = format!("/v1/guilds/{G}");
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Basic r3ad-t0ken\r\n",
    ] {
        let (status, body) = get_from(addr.clone(), guild_path.clone(), auth).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(body.contains("missing or wrong bearer token"), "{body}");
        assert!(!body.contains("\"name\":\"bin\""), "{body}");
    }
    let (status, guild) = get_from(
        addr.clone(),
        guild_path,
        "Authorization: Bearer r3ad-t0ken\r\n",
    )
    .await;
    assert_eq!(status, 200, "{guild}");
    assert!(guild.contains("\"name\":\"bin\""), "{guild}");
    // /metrics lives on its own listener only.
    assert_eq!(get("/metrics".into()).await.0, 404);
    // Both copies were processed (the backlog is empty and nothing is in
    // flight once the metric says two messages were handled).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = get_from(metrics_addr.clone(), "/metrics".into(), "").await;
        if metrics.contains("worker_events_dropped_total{delivery=\"first\"} 1") {
            assert!(
                metrics.contains("worker_joins_emitted_total 1"),
                "{metrics}"
            );
            assert!(
                metrics.contains("worker_events_published_total 1"),
                "{metrics}"
            );
            assert!(
                metrics.contains("worker_read_api_unauthorized_total 3"),
                "{metrics}"
            );
            assert!(!metrics.contains("r3ad-t0ken"), "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "duplicate never processed: {metrics}"
        );
        // Polling interval of the scrape, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let extra = ch
        .basic_get(out.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(extra.is_none(), "the duplicate was published again");

    let pid = child.id().unwrap().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("no exit after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));

    ch.queue_delete(out.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    topo.delete(&ch).await.unwrap();
}

//! The operational series of a running sharder on its own `/metrics`,
//! in a test binary of its own: the recorder is global to the process, so
//! no other test's shards write to the same `shard` labels meanwhile.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TempDir, consume, delete, http, unique, until};
use discord_sim::{EventKind, EventMix, SimConfig, Simulator};
use sharder::{AmqpTopology, RunOptions, SinkChoice};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_series_after_every_shard_is_ready() {
    let sim = Simulator::start(SimConfig {
        shards: 3,
        guilds: 6,
        identify_window: Duration::from_millis(100),
        event_rate: 200.0,
        event_mix: EventMix::only(&[(EventKind::MessageCreate, 1)]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = TempDir::new("metrics").unwrap();
    let base = unique("metrics");
    let topo = AmqpTopology::named(&base, 2);
    let (_conn, mut queue) = consume(&topo).await;
    let toml = format!(
        "[discord]\napi_base = \"{api}/api/v10\"\nintents = {intents}\n\
         [sharder]\ntotal_shards = 3\ngateway_url = \"{gw}\"\n\
         http_listen = \"127.0.0.1:0\"\nsession_dir = \"{dir}\"\n\
         persist_interval = \"100ms\"\nshutdown_grace = \"5s\"\n\
         identify_window = \"110ms\"\namqp_topology_base = \"{base}\"\n\
         [amqp]\npartitions = 2\n",
        api = sim.http_url(),
        intents = (1 << 0) | (1 << 9),
        gw = sim.gateway_url(),
        dir = dir.0.display(),
    );
    let cfg = config::Config::from_toml_str(
        &toml,
        "test",
        vec![("BULWARK_DISCORD__TOKEN".into(), sim.config().token.clone())],
    )
    .unwrap();
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

    let (_, before) = http(addr, "GET", "/metrics", None, "").await;
    assert_eq!(sample(&before, "sharder_ready"), Some(0.0), "{before}");

    until("readyz", WAIT, async || {
        http(addr, "GET", "/readyz", None, "").await.0 == 200
    })
    .await;
    // Events went through RabbitMQ and were confirmed.
    timeout(WAIT, async {
        while queue.recv().await.unwrap().t != "MESSAGE_CREATE" {}
    })
    .await
    .unwrap();
    let mut body = String::new();
    // READY is counted after the shard turned Active (and saved its
    // session), so wait for the three of them too.
    until(
        "three READYs and a confirmed MESSAGE_CREATE counted",
        WAIT,
        async || {
            body = http(addr, "GET", "/metrics", None, "").await.1;
            sample(&body, "sharder_events_by_type_total{event=\"READY\"}") == Some(3.0)
                && sample(&body, "sharder_publish_latency_seconds_count").unwrap_or(0.0) > 0.0
                && sample(
                    &body,
                    "sharder_events_by_type_total{event=\"MESSAGE_CREATE\"}",
                )
                .unwrap_or(0.0)
                    > 0.0
        },
    )
    .await;

    assert_eq!(sample(&body, "sharder_ready"), Some(1.0), "{body}");
    for shard in 0..3 {
        for state in sharder::ShardState::METRIC_LABELS {
            let want = if state == "active" { 1.0 } else { 0.0 };
            assert_eq!(
                sample(
                    &body,
                    &format!(
                        "sharder_shard_state{{total=\"3\",shard=\"{shard}\",state=\"{state}\"}}"
                    )
                ),
                Some(want),
                "shard {shard} state {state}: {body}"
            );
        }
    }
    let active = body
        .lines()
        .filter(|l| l.starts_with("sharder_shard_state{") && l.contains("state=\"active\"}"))
        .filter(|l| l.ends_with(" 1"))
        .count();
    assert_eq!(active, 3, "{body}");
    // Every shard identified once, through the scheduler.
    assert_eq!(
        sample(&body, "sharder_identify_wait_seconds_count"),
        Some(3.0),
        "{body}"
    );
    let waited = sample(&body, "sharder_identify_wait_seconds_sum").unwrap();
    assert!((0.0..30.0).contains(&waited), "{waited}");
    assert_eq!(
        sample(&body, "sharder_events_by_type_total{event=\"READY\"}"),
        Some(3.0),
        "{body}"
    );
    assert!(!body.contains("sharder_events_by_type_total{event=\"OTHER\"}"));
    let latency = sample(&body, "sharder_publish_latency_seconds_sum").unwrap();
    assert!(latency > 0.0 && latency.is_finite(), "{latency}");
    // A fresh boot resumed nothing.
    assert!(
        !body.contains("sharder_resumes_total{result=\"failed\"}"),
        "{body}"
    );
    // The resolver reports through the same recorder.
    assert!(body.contains("dnscache_misses_total"), "{body}");
    assert!(body.contains("dnscache_entries"), "{body}");
    assert!(!body.contains(&sim.config().token));

    stop.cancel();
    let report = timeout(WAIT, run).await.unwrap().unwrap().unwrap();
    assert!(report.drained);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is gone after the run"
    );
    delete(&topo).await;
    sim.shutdown().await;
}

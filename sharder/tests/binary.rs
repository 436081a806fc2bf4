//! The `sharder` binary: exit codes, and a `kill -9` mid-stream followed by
//! a restart from the file session store, checked against the simulator's
//! ledger and what reached RabbitMQ; then `sharder reshard` against it.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TempDir, consume, delete, unique, until};
use discord_sim::{EventKind, EventMix, SimConfig, Simulator};
use sharder::AmqpTopology;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use testkit::ledger;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_bad_config_exits_78_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_sharder"))
        .env_remove("POD_NAME")
        .env("BULWARK_SHARDER__SINK_BUFFER", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(config::EXIT_CONFIG));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sharder.sink_buffer"));
}

#[test]
fn a_missing_ca_file_exits_78_naming_file_and_broker() {
    let out = Command::new(env!("CARGO_BIN_EXE_sharder"))
        .env_remove("POD_NAME")
        .env_remove("BULWARK_CONFIG")
        .env("BULWARK_DISCORD__TOKEN", "placeholder.bot.token")
        .env("BULWARK_SHARDER__HTTP_LISTEN", "127.0.0.1:0")
        .env("BULWARK_TLS__CA_FILE", "/nonexistent/bulwark/ca.crt")
        .env(
            "BULWARK_AMQP__URL",
            "amqps://bulwark:hunter2@rabbit.bulwark.svc:5671/%2f",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(config::EXIT_CONFIG), "{err}");
    for part in [
        "tls.ca_file",
        "/nonexistent/bulwark/ca.crt",
        "amqps://rabbit.bulwark.svc:5671",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_bad_shards_flag_exits_78_naming_the_flag() {
    for (shards, says) in [("36..36", "empty"), ("0..300", "beyond")] {
        let out = Command::new(env!("CARGO_BIN_EXE_sharder"))
            .env_remove("POD_NAME")
            .args(["--shards", shards, "--total", "288"])
            .env_remove("BULWARK_SHARDER__PROCESS_INDEX")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(config::EXIT_CONFIG), "{shards}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--shards") && err.contains(says),
            "{shards}: {err}"
        );
    }
}

/// `GET path` status, or None while nothing listens.
async fn status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_then_restart_resumes_every_shard_and_loses_nothing() {
    const SHARDS: u32 = 4;
    let sim = Simulator::start(SimConfig {
        shards: SHARDS,
        guilds: 8,
        identify_window: Duration::from_millis(100),
        event_rate: 300.0,
        event_mix: EventMix::only(&[(EventKind::MessageCreate, 3), (EventKind::TypingStart, 1)]),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = TempDir::new("kill9").unwrap();
    let base = unique("kill9");
    let topo = AmqpTopology::named(&base, 2);
    let (_conn, mut queue) = consume(&topo).await;
    let http = free_port();
    let metrics_at = free_port();
    let path = dir.0.join("sharder.toml");
    std::fs::write(
        &path,
        format!(
            "[discord]\napi_base = \"{api}/api/v10\"\nintents = {intents}\n\
             [sharder]\ntotal_shards = {SHARDS}\ngateway_url = \"{gw}\"\n\
             http_listen = \"{http}\"\nmetrics_listen = \"{metrics_at}\"\n\
             session_dir = \"{dir}\"\nidentify_window = \"120ms\"\n\
             persist_interval = \"100ms\"\nshutdown_grace = \"5s\"\ncompression = \"none\"\n\
             amqp_topology_base = \"{base}\"\n[amqp]\npartitions = 2\n",
            api = sim.http_url(),
            intents = (1 << 0) | (1 << 9) | (1 << 11),
            gw = sim.gateway_url(),
            dir = dir.0.join("sessions").display(),
        ),
    )
    .unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_sharder"))
            .env_remove("POD_NAME")
            .arg("--config")
            .arg(&path)
            .env("BULWARK_DISCORD__TOKEN", &sim.config().token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    let mut first = Killed(spawn());
    until("first run ready", WAIT, async || {
        status(http, "/readyz").await == Some(200)
    })
    .await;
    let ledger_len = |sim: &discord_sim::SimHandle| ledger::len(&sim.ledger());
    until("events flowing", WAIT, async || ledger_len(&sim) > 300).await;
    until("sessions saved", WAIT, async || {
        (0..SHARDS).all(|s| {
            dir.0
                .join("sessions")
                .join(format!("total-{SHARDS}"))
                .join(format!("shard-{s}.json"))
                .exists()
        })
    })
    .await;
    first.0.kill().unwrap(); // SIGKILL: no shutdown path runs
    first.0.wait().unwrap();
    let identifies = sim.counters().identifies;
    assert_eq!(identifies, u64::from(SHARDS));

    let mut second = Killed(spawn());
    until("every shard resumed", WAIT, async || {
        sim.counters().resumes == u64::from(SHARDS)
    })
    .await;
    until("second run ready", WAIT, async || {
        status(http, "/readyz").await == Some(200)
    })
    .await;
    // The restarted process counts its resumes, and its shards are active
    // by the state gauge (RESUMED is counted before the shard turns active).
    // Its metrics are on their own listener (sharder.metrics_listen) only.
    assert_eq!(status(http, "/metrics").await, Some(404));
    let (_, metrics) = common::http(metrics_at, "GET", "/metrics", None, "").await;
    assert!(
        metrics.contains(&format!(
            "sharder_resumes_total{{result=\"resumed\"}} {SHARDS}\n"
        )),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"failed\""), "{metrics}");
    assert!(metrics.contains("sharder_ready 1\n"), "{metrics}");
    let active = metrics
        .lines()
        .filter(|l| l.starts_with("sharder_shard_state{") && l.contains("state=\"active\"}"))
        .filter(|l| l.ends_with(" 1"))
        .count();
    assert_eq!(active, SHARDS as usize, "{metrics}");
    let mark = ledger_len(&sim);
    until("more events after the restart", WAIT, async || {
        ledger_len(&sim) > mark + 200
    })
    .await;
    sim.set_event_rate(0.0).unwrap();
    let counters = sim.counters();
    assert_eq!(counters.identifies, identifies, "no identify spent");
    assert_eq!(counters.failed_resumes, 0);

    // Everything the simulator sent reaches the queue, at least once.
    let expected = ledger::sent(&sim.ledger());
    let delivery = ledger::await_delivery(&expected, WAIT, async || {
        let g = queue.recv().await.unwrap();
        Some((g.shard_id, g.seq))
    })
    .await;
    let lost: Vec<_> = delivery.lost(&expected).take(10).collect();
    assert!(
        !delivery.timed_out && lost.is_empty(),
        "lost {} events, e.g. {lost:?}",
        delivery.lost(&expected).count()
    );
    println!(
        "kill -9: {} events in the ledger, all in RabbitMQ; {} replayed on resume",
        expected.len(),
        counters.replayed_events
    );

    // `sharder reshard` with the same configuration: a refused total exits
    // 1 with the sharder's reason; a valid one is followed to its end.
    let reshard = |total: &str| {
        let path = path.clone();
        let total = total.to_owned();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_sharder"))
                .env_remove("POD_NAME")
                .env("RUST_LOG", "warn")
                .args(["reshard", "--wait", "--total", &total, "--config"])
                .arg(&path)
                .output()
                .unwrap()
        })
    };
    let refused = reshard("5").await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("reshard refused (400)") && err.contains("amqp.partitions"),
        "{err}"
    );
    let done = reshard("8").await.unwrap();
    let out = String::from_utf8_lossy(&done.stdout);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(out.contains("reshard 4 -> 8 shards started"), "{out}");
    assert!(
        out.trim_end()
            .ends_with("running 8 shards, no reshard in progress"),
        "{out}"
    );

    // SIGTERM: a clean, drained exit.
    let pid = second.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut exit = None;
    until("exit after SIGTERM", WAIT, async || {
        exit = second.0.try_wait().unwrap();
        exit.is_some()
    })
    .await;
    assert_eq!(exit.and_then(|e| e.code()), Some(0));
    delete(&topo).await;
    sim.shutdown().await;
}

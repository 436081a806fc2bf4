//! The relay's cost in the shape bots use it: the `relay` binary (release)
//! consuming the output exchange of the real RabbitMQ and fanning the
//! events out to `--clients` client shards (`[i, clients]`, websockets
//! from this process), plus what an idle bot session costs in memory.
//!
//! ```sh
//! cargo bench -p relay --bench fanout -- --runs 3
//! ```
//!
//! # Algorithm
//! Per run: a `relay` process on an empty cache (its own Redis prefix and
//! exchange); `--clients` connections IDENTIFY; this process publishes
//! `--events` MESSAGE_CREATE clean events (a realistic ~600-byte `d`, guild
//! ids spread over every client shard, the send time in `d.nonce`) to the
//! output exchange with publisher confirms, as the workers do. The clients
//! count what they receive and the latency from publish to receive. The
//! relay's CPU seconds (utime + stime from `/proc/<pid>/stat`) over the
//! window from the first publish to the last receive give events per
//! CPU-second; each event is received by exactly one client shard. Then
//! `--idle` more sessions IDENTIFY and stay connected; the relay's RSS
//! growth divided by them is the memory per connected client.
//!
//! Flags: `--runs 3 --events 100000 --clients 16 --idle 1000`.
#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::bench_report::{Table, machine, today};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "relay.bench.token";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// GUILDS | GUILD_MESSAGES | MESSAGE_CONTENT.
const INTENTS: u64 = 1 | (1 << 9) | (1 << 15);

struct Flags {
    runs: usize,
    events: u64,
    clients: u32,
    idle: usize,
}

fn flags() -> Flags {
    let mut f = Flags {
        runs: 3,
        events: 100_000,
        clients: 16,
        idle: 1000,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match (args[i].as_str(), v) {
            ("--runs", Some(v)) => f.runs = v as usize,
            ("--events", Some(v)) => f.events = v,
            ("--clients", Some(v)) => f.clients = v as u32,
            ("--idle", Some(v)) => f.idle = v as usize,
            ("--help", _) => {
                println!("fanout [--runs 3] [--events 100000] [--clients 16] [--idle 1000]");
                std::process::exit(0);
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    f
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // After ")": state(0, not numeric) ... utime is field 14, stime 15 of
    // the whole line: indices 11 and 12 of the numeric rest.
    let (u, s) = (
        f.get(10).copied().unwrap_or(0),
        f.get(11).copied().unwrap_or(0),
    );
    (u + s) as f64 / 100.0
}

/// Resident set of `pid`, MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A connection identified as `[id, count]`, READY read.
async fn session(addr: &str, id: u32, count: u32) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/?v=10&encoding=json"))
        .await
        .expect("connect to the relay");
    let _hello = ws.next().await;
    let identify = json!({"op": 2, "d": {"token": TOKEN, "intents": INTENTS, "shard": [id, count],
        "properties": {"os": "linux", "browser": "bench", "device": "bench"}}});
    ws.send(Message::Text(identify.to_string().into()))
        .await
        .expect("IDENTIFY");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"READY\"") => return ws,
            Some(Ok(_)) => {}
            other => panic!("no READY: {other:?}"),
        }
    }
}

async fn run(f: &Flags, table: &mut Table, run_no: usize) {
    let base = format!("bulwark-bench.relay.{}.{run_no}", std::process::id());
    let dir = std::env::temp_dir().join(&base);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[discord]\nintents = {INTENTS}\n[redis]\nurl = \"redis://127.0.0.1:6379/\"\n\
             key_prefix = \"{base}\"\n[relay]\nlisten = \"{addr}\"\nsession_buffer = 200000\n\
             identify_window = \"1ms\"\n\
             amqp_topology_base = \"{base}\"\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("--config")
        .arg(&cfg)
        .env("BULWARK_DISCORD__TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the relay binary");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = tokio::net::TcpStream::connect(&addr).await.is_ok()
            && reqwest_like_get(&addr, "/readyz").await == Some(200);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the relay never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The clients, each counting and timing what it receives.
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut tasks = Vec::new();
    for id in 0..f.clients {
        let mut ws = session(&addr, id, f.clients).await;
        let (received, latencies) = (received.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(&t).unwrap_or_default();
                    if let Some(sent) = v["d"]["nonce"].as_str().and_then(|n| n.parse::<u64>().ok())
                    {
                        latencies
                            .lock()
                            .unwrap()
                            .push(now_ns().saturating_sub(sent));
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // The publisher, as a worker publishes clean events.
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = format!("{base}.events");
    let cpu0 = cpu_seconds(pid);
    let started = Instant::now();
    let mut pending = Vec::new();
    for seq in 1..=f.events {
        // Guild ids over every client shard: (g >> 22) % clients = seq % clients.
        let guild = ((1_000_000 + seq) << 22) | 7;
        let d = json!({"id": (1_200_000_000_000_000_000u64 + seq).to_string(), "type": 0,
            "channel_id": "1100000000000000001", "guild_id": guild.to_string(),
            "author": {"id": "1100000000000000009", "username": "someone", "global_name": "Someone",
                "avatar": "0123456789abcdef0123456789abcdef", "discriminator": "0"},
            "member": {"roles": ["1100000000000000003"], "joined_at": "2024-01-01T00:00:00.000000+00:00",
                "deaf": false, "mute": false, "flags": 0},
            "content": "a message of ordinary length, say a question about the bot's commands",
            "timestamp": "2026-12-06T00:00:00.000000+00:00", "edited_timestamp": null,
            "tts": false, "mention_everyone": false, "mentions": [], "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": false, "flags": 0,
            "nonce": now_ns().to_string()});
        let mut h = FieldTable::default();
        let s = |v: String| AMQPValue::LongString(LongString::from(v));
        h.insert("x-bulwark-shard".into(), AMQPValue::LongUInt(0));
        h.insert("x-bulwark-epoch".into(), s("1".into()));
        h.insert("x-bulwark-seq".into(), s(seq.to_string()));
        h.insert("x-bulwark-guild-id".into(), s(guild.to_string()));
        h.insert("x-bulwark-event".into(), s("MESSAGE_CREATE".into()));
        let props = BasicProperties::default()
            .with_message_id(ShortString::from(format!("0:1:{seq}")))
            .with_headers(h);
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                "MESSAGE_CREATE".into(),
                BasicPublishOptions::default(),
                d.to_string().as_bytes(),
                props,
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() >= 512 {
            for c in pending.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in pending.drain(..) {
        c.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < f.events {
        assert!(
            Instant::now() < deadline,
            "clients received {} of {}",
            received.load(Ordering::Relaxed),
            f.events
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    table.add(
        "events fanned out per relay CPU-second",
        "events/CPU-s",
        f.events as f64 / cpu,
    );
    table.add("relay CPU per event", "µs", cpu / f.events as f64 * 1e6);
    table.add(
        "throughput (publish to last receive)",
        "events/s",
        f.events as f64 / wall,
    );
    let mut l = std::mem::take(&mut *latencies.lock().unwrap());
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1e6
    };
    table.add("publish -> client latency p50", "ms", pct(0.50));
    table.add("publish -> client latency p99", "ms", pct(0.99));

    // Memory of idle sessions.
    let rss0 = rss_mib(pid);
    let mut idle = Vec::new();
    // Shards of one large count, so the identify buckets take turns.
    let count = u32::try_from(f.idle).unwrap_or(u32::MAX).max(1);
    for i in 0..count {
        idle.push(session(&addr, i, count).await);
    }
    let rss1 = rss_mib(pid);
    table.add("RSS with the busy clients", "MiB", rss0);
    table.add(
        "memory per idle connected session",
        "KiB",
        (rss1 - rss0) * 1024.0 / f.idle as f64,
    );

    drop(idle);
    for t in tasks {
        t.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = ch
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("run {run_no}: {wall:.2} s wall, {cpu:.2} relay CPU-s");
}

/// Status of a plain `GET path`.
async fn reqwest_like_get(addr: &str, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.get(9..12)?.parse().ok()
}

fn main() {
    let f = flags();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut table = Table::default();
    for r in 0..f.runs {
        rt.block_on(run(&f, &mut table, r));
    }
    println!(
        "relay fan-out: {} events to {} client shards, {} idle sessions; {} on {}\n",
        f.events,
        f.clients,
        f.idle,
        machine(),
        today()
    );
    println!("{}", table.render());
}

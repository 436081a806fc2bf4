//! Load figures the deployment is sized by:
//!
//! * events/s on one worker core with the Redis store (local Redis on the
//!   same 2 vCPU machine), one partition processed in order, and eight
//!   partitions interleaved on the same core (each event is one or more
//!   Lua round trips, so partitions in flight hide the latency);
//! * the cold-boot burst: 16 shards x 1,000 guilds, every GUILD_CREATE from
//!   `discord_sim::World` (8 channels, 5 roles, 25 members each) in its own
//!   envelope, absorbed through `Worker::process_message` on the in-memory
//!   store, one core.
//!
//! * the consumer through the real RabbitMQ (127.0.0.1:5672): messages/s
//!   of one partition, acked in batches (`basic.ack` with `multiple`), with
//!   and without publishing the clean events to the output exchange (an
//!   input is acked once its publishes are confirmed).
//!
//! Each figure is run 5 times (the Redis and RabbitMQ ones 3 times); min / median /
//! max are printed.
//!
//! Run: `cargo bench -p worker --bench load` (`-- --redis` for the Redis
//! rows only; needs Redis on 127.0.0.1:6379
//! and RabbitMQ on 127.0.0.1:5672, guest/guest).
#![allow(clippy::unwrap_used)]

use discord_sim::{EventMix, World, WorldConfig};
use envelope::{BatchEncoder, Event, GuildCreateKind};
use std::time::{Duration, Instant};
use testkit::bench_report::Stats;
use worker::{MemoryStore, RedisStore, Store, Worker};

const RUNS: usize = 5;
/// The Redis rows run fewer times: the unpipelined ones take seconds each.
const REDIS_RUNS: usize = 3;

fn frame(
    shard: u32,
    seq: u64,
    t: &str,
    gid: Option<u64>,
    m: Option<GuildCreateKind>,
    d: &str,
) -> Vec<u8> {
    let mut enc = BatchEncoder::new(shard, 16).unwrap();
    enc.push(&Event {
        epoch: 1,
        seq,
        received_at: 1_700_000_000_000 + seq,
        t,
        guild_id: gid,
        guild_create: m,
        d: d.as_bytes(),
    })
    .unwrap();
    enc.finish()
}

/// Per shard: its GUILD_CREATEs (initial) then its share of `n` dispatches.
fn log(cfg: WorldConfig, n: usize) -> Vec<Vec<Vec<u8>>> {
    let shards = cfg.shards;
    let mut world = World::new(42, cfg).unwrap();
    let mut seqs = vec![0u64; shards as usize];
    let mut out = vec![Vec::new(); shards as usize];
    for gid in world.guild_ids() {
        let s = world.shard_of(gid);
        seqs[s as usize] += 1;
        let d = world.guild_create(gid).unwrap();
        let m = Some(GuildCreateKind::Initial);
        out[s as usize].push(frame(s, seqs[s as usize], "GUILD_CREATE", Some(gid), m, &d));
    }
    for _ in 0..n {
        let d = world.next_dispatch();
        let s = d.shard;
        seqs[s as usize] += 1;
        let m = (d.event == "GUILD_CREATE").then_some(GuildCreateKind::Available);
        out[s as usize].push(frame(
            s,
            seqs[s as usize],
            d.event,
            d.guild_id,
            m,
            &d.payload,
        ));
    }
    out
}

fn summary(label: &str, unit: &str, xs: Vec<f64>) {
    let s = Stats::middle_of(&xs).expect("at least one finite run");
    println!(
        "{label}: min {:.0} / median {:.0} / max {:.0} {unit}",
        s.min, s.median, s.max
    );
}

/// Processes every partition's messages in order, the partitions
/// interleaved on the current thread; returns the elapsed time.
async fn feed<S: Store>(worker: &Worker<S>, parts: &[Vec<Vec<u8>>]) -> Duration {
    let t = Instant::now();
    let tasks = parts.iter().map(|msgs| async move {
        for m in msgs {
            worker.process_message(m).await.unwrap();
        }
    });
    futures_util::future::join_all(tasks).await;
    t.elapsed()
}

/// The same events re-framed `per` to an envelope, as the sharder batches.
fn rebatch(parts: &[Vec<Vec<u8>>], per: usize) -> Vec<Vec<Vec<u8>>> {
    parts
        .iter()
        .map(|msgs| {
            msgs.chunks(per)
                .map(|chunk| {
                    let batches: Vec<_> =
                        chunk.iter().map(|m| envelope::decode(m).unwrap()).collect();
                    let mut enc = BatchEncoder::new(batches[0].shard_id, 16).unwrap();
                    for b in &batches {
                        for e in &b.events {
                            enc.push(e).unwrap();
                        }
                    }
                    enc.finish()
                })
                .collect()
        })
        .collect()
}

fn redis(rt: &tokio::runtime::Runtime) {
    let cfg = WorldConfig {
        shards: 8,
        guilds: 80,
        channels_per_guild: 10,
        roles_per_guild: 5,
        members_per_guild: 25,
        mix: "GUILD_MEMBER_ADD=6,GUILD_MEMBER_UPDATE=6,GUILD_MEMBER_REMOVE=5,\
              CHANNEL_UPDATE=4,GUILD_ROLE_UPDATE=3,GUILD_UPDATE=1,MESSAGE_CREATE=8,\
              TYPING_START=4"
            .parse::<EventMix>()
            .unwrap(),
        outage_events: 100_000,
    };
    let parts = log(cfg, 16_000);
    let events: usize = parts.iter().map(Vec::len).sum();
    let one: Vec<Vec<Vec<u8>>> = vec![parts.concat()];
    let batched = rebatch(&parts, 32);
    let one_batched = vec![batched.concat()];
    for (label, input, pipelined) in [
        (
            "1 partition in order, 1 event/envelope, unpipelined",
            &one,
            false,
        ),
        (
            "1 partition in order, 1 event/envelope, pipelined",
            &one,
            true,
        ),
        (
            "8 partitions interleaved, 1 event/envelope, unpipelined",
            &parts,
            false,
        ),
        (
            "8 partitions interleaved, 1 event/envelope, pipelined",
            &parts,
            true,
        ),
        (
            "1 partition in order, 32 events/envelope, unpipelined",
            &one_batched,
            false,
        ),
        (
            "1 partition in order, 32 events/envelope, pipelined",
            &one_batched,
            true,
        ),
        (
            "8 partitions interleaved, 32 events/envelope, pipelined",
            &batched,
            true,
        ),
    ] {
        let mut rates = Vec::new();
        for run in 0..REDIS_RUNS {
            let prefix = format!("bulwark-bench-{}-{run}", std::process::id());
            let elapsed = rt.block_on(async {
                let store = RedisStore::connect("redis://127.0.0.1:6379/", &prefix)
                    .await
                    .unwrap()
                    .with_pipelining(pipelined);
                let purge = store.clone();
                let worker = Worker::new(store);
                let e = feed(&worker, input).await;
                purge.purge().await.unwrap();
                e
            });
            rates.push(events as f64 / elapsed.as_secs_f64());
        }
        summary(
            &format!("redis store, {label}, {events} events (cache-heavy mix)"),
            "events/s on one worker core",
            rates,
        );
    }
}

fn burst(rt: &tokio::runtime::Runtime) {
    let cfg = WorldConfig {
        shards: 16,
        guilds: 16_000,
        ..WorldConfig::default()
    };
    let parts = log(cfg, 0);
    let creates: usize = parts.iter().map(Vec::len).sum();
    let bytes: usize = parts.iter().flatten().map(Vec::len).sum();
    let mut secs = Vec::new();
    for _ in 0..RUNS {
        let worker = Worker::new(MemoryStore::new());
        let e = rt.block_on(feed(&worker, &parts));
        assert_eq!(worker.store().guild_count(), creates);
        secs.push(e.as_secs_f64() * 1000.0);
    }
    summary(
        &format!(
            "cold-boot burst, 16 shards x 1,000 guilds = {creates} GUILD_CREATEs ({:.0} MB), memory store",
            bytes as f64 / 1e6
        ),
        "ms on one core",
        secs,
    );
}

/// One partition of `n` MESSAGE_CREATEs through `consume_partition_with`.
async fn consume_once(n: u64, publish: bool, run: usize) -> f64 {
    use lapin::options::BasicPublishOptions;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let conn = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let topo =
        worker::AmqpTopology::named(&format!("bulwark-bench-{}-{run}", std::process::id()), 1);
    topo.declare(&ch).await.unwrap();
    let d = r#"{"id":"1","channel_id":"2","guild_id":"3","content":"hello","author":{"id":"4","username":"u"}}"#;
    let mut confirms = Vec::new();
    for seq in 1..=n {
        let m = frame(0, seq, "MESSAGE_CREATE", Some(3), None, d);
        confirms.push(
            ch.basic_publish(
                topo.exchange.as_str().into(),
                envelope::topology::routing_key(0, "BATCH").as_str().into(),
                BasicPublishOptions::default(),
                &m,
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        c.await.unwrap();
    }
    let seen = Arc::new(AtomicU64::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = std::sync::Mutex::new(Some(tx));
    let s = seen.clone();
    let w = Arc::new(Worker::new(MemoryStore::new()).on_any(move |_| {
        if s.fetch_add(1, Ordering::SeqCst) + 1 == n
            && let Some(tx) = tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    }));
    let out = publish.then(|| Arc::new(worker::output::Unconfirmed::default()));
    let t = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(worker::consume_partition_with(
        w,
        conn.create_channel().await.unwrap(),
        topo.clone(),
        0,
        64,
        out,
        async move {
            let _ = stopped.await;
        },
    ));
    rx.await.unwrap();
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    // The last message's handler ran before its ack; stats count acks.
    let elapsed = t.elapsed().as_secs_f64();
    assert!(stats.acked >= n - 64);
    topo.delete(&ch).await.unwrap();
    n as f64 / elapsed
}

fn consumer(rt: &tokio::runtime::Runtime) {
    let n = 5_000;
    for publish in [false, true] {
        let rates = (0..3)
            .map(|run| rt.block_on(consume_once(n, publish, run)))
            .collect();
        summary(
            &format!(
                "consumer via RabbitMQ, 1 partition, {n} messages of 1 event, output {}",
                if publish {
                    "published with confirms"
                } else {
                    "off"
                }
            ),
            "messages/s",
            rates,
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|a| a == "--consumer") {
        consumer(&rt);
        return;
    }
    if std::env::args().any(|a| a == "--redis") {
        redis(&rt);
        return;
    }
    burst(&rt);
    redis(&rt);
    consumer(&rt);
}

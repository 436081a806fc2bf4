//! End to end into the real RabbitMQ (127.0.0.1:5672) with publisher
//! confirms: events/s confirmed by the broker. Floor: 100k events/s on the
//! 2-core machine.
//!
//! ```sh
//! cargo build --release -p discord-sim
//! cargo bench -p sharder --bench amqp_e2e -- --runs 3
//! ```
//!
//! # Algorithm
//! Per run: a fresh `discord-sim` process offering `--rate` events/s over
//! `--shards` shards, a topology with a unique base name
//! (`bulwark-bench.e2e.<pid>.<ns>`, `--partitions` quorum queues) declared
//! and drained by a consumer in this (parent) process, and a child process
//! running the sharder with its AMQP sink. Once every shard is active and
//! `--warmup` seconds have passed, the child reads
//! `sharder_events_confirmed_total` (events the broker acked) and its own
//! CPU seconds at both ends of a `--seconds` window. Then it shuts down as on
//! SIGTERM (drain, confirms). The parent waits until its consumer has seen
//! every confirmed event (distinct `(shard, epoch, seq)`) and deletes the
//! topology. Events per CPU-second of the sharder is reported too: it does
//! not depend on the simulator's rate.
//!
//! Flags: `--runs 3 --shards 16 --guilds 64 --rate 1000000 --partitions 4
//! --warmup 1 --seconds 5`.

mod support;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use serde_json::json;
use sharder::{AmqpTopology, SinkChoice};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::args::Flags;
use support::child::{self, ChildRun, num};
use support::measure::Sample;
use support::report::{Table, fmt_num, machine};
use support::sharder_run::{self, AMQP_URL, Spec, metric};
use support::sim::{SimArgs, SimProcess};

fn main() -> anyhow::Result<()> {
    let flags = Flags::from_env()?;
    match flags.get(child::CHILD, String::new())?.as_str() {
        "" => parent(&flags),
        "amqp" => sharder_child(&flags),
        other => bail!("unknown child role {other}"),
    }
}

type Seen = Arc<Mutex<HashSet<(u32, u64, u64)>>>;

/// Consumes every partition queue of `topo`, recording distinct events.
async fn consume(topo: &AmqpTopology, seen: Seen) -> anyhow::Result<lapin::Connection> {
    let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    topo.declare(&ch).await.context("declaring the topology")?;
    for p in 0..topo.partitions {
        let mut consumer = ch
            .basic_consume(
                topo.queue(p).as_str().into(),
                format!("bench-{p}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = consumer.next().await {
                let Ok(batch) = envelope::decode(&m.data) else {
                    eprintln!("undecodable message on partition {p}");
                    continue;
                };
                let mut s = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in batch.events {
                    s.insert((batch.shard_id, e.epoch, e.seq));
                }
            }
        });
    }
    Ok(conn)
}

fn parent(f: &Flags) -> anyhow::Result<()> {
    let runs: usize = f.get("runs", 3)?;
    let shards: u32 = f.get("shards", 16)?;
    let partitions: u32 = f.get("partitions", 4)?;
    let sim_args = SimArgs {
        shards,
        guilds: f.get("guilds", shards * 4)?,
        event_rate: f.get("rate", 1_000_000.0)?,
        max_concurrency: shards.max(1),
        identify_window_ms: 20,
        replay_buffer: 1_000_000,
        seed: 7,
    };
    let warmup: f64 = f.get("warmup", 1.0)?;
    let seconds: f64 = f.get("seconds", 5.0)?;
    println!("machine: {}", machine());
    println!(
        "simulator: {shards} shards, offered {} events/s; {partitions} partitions; warm-up \
         {warmup} s, window {seconds} s",
        fmt_num(sim_args.event_rate)
    );
    let rt = sharder_run::runtime()?;
    let mut table = Table::default();
    for run in 1..=runs {
        let sim = SimProcess::start(&sim_args)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let base = format!("bulwark-bench.e2e.{}.{nanos}", std::process::id());
        let topo = AmqpTopology::named(&base, partitions);
        let seen: Seen = Arc::default();
        let conn = rt.block_on(consume(&topo, seen.clone()))?;
        let mut flags = sim.child_flags();
        flags.extend([
            ("shards", shards.to_string()),
            ("compression", "zlib-stream".to_owned()),
            ("amqp-base", base.clone()),
            ("partitions", partitions.to_string()),
            ("warmup", warmup.to_string()),
            ("seconds", seconds.to_string()),
        ]);
        let result = ChildRun::spawn("amqp", &flags)
            .and_then(|c| c.result(Duration::from_secs_f64(150.0 + warmup + seconds)));
        // Let the consumer catch up with everything confirmed, then clean up
        // whatever happened.
        let check = result.as_ref().ok().map(|r| {
            let confirmed = num(r, "confirmed_total").unwrap_or(0.0) as usize;
            rt.block_on(async {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let n = seen.lock().map_or(0, |s| s.len());
                    if n >= confirmed || tokio::time::Instant::now() > deadline {
                        return (n, confirmed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        });
        rt.block_on(async {
            let ch = conn.create_channel().await?;
            topo.delete(&ch).await.context("deleting the topology")?;
            conn.close(0, "bench done".into()).await?;
            anyhow::Ok(())
        })?;
        drop(sim);
        let r = result?;
        let (consumed, confirmed_total) = check.unwrap_or_default();
        let (confirmed, cpu, wall) = (num(&r, "confirmed")?, num(&r, "cpu_s")?, num(&r, "wall_s")?);
        println!(
            "run {run}: {} events confirmed in {wall:.2} s = {}/s; sharder CPU {cpu:.2} s → \
             {} confirmed events per CPU-second; received {}/s; whole run: {confirmed_total} \
             confirmed, {consumed} distinct events consumed; drained {}; {}/s messages, {:.1} \
             events per message",
            fmt_num(confirmed),
            fmt_num(confirmed / wall),
            fmt_num(confirmed / cpu),
            fmt_num(num(&r, "received")? / wall),
            r["drained"],
            fmt_num(num(&r, "messages")? / wall),
            confirmed / num(&r, "messages")?.max(1.0),
        );
        if consumed < confirmed_total {
            println!(
                "  WARNING: {} confirmed events never reached the consumer",
                confirmed_total - consumed
            );
        }
        table.add("confirmed events/s (wall)", "events/s", confirmed / wall);
        table.add(
            "received events/s (wall)",
            "events/s",
            num(&r, "received")? / wall,
        );
        table.add(
            "confirmed events per sharder CPU-second",
            "events/CPU-s",
            confirmed / cpu,
        );
        table.add("sharder CPU", "cores", cpu / wall);
        table.add(
            "events per message",
            "events",
            confirmed / num(&r, "messages")?.max(1.0),
        );
    }
    println!("\n{}", table.render());
    if let Some(s) = table.stats("confirmed events/s (wall)") {
        let verdict = if s.median >= 100_000.0 {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "floor 100,000 events/s end to end with confirms: median {} → {verdict}",
            fmt_num(s.median)
        );
    }
    Ok(())
}

fn sharder_child(f: &Flags) -> anyhow::Result<()> {
    let spec = Spec::from_flags(f)?;
    let warmup: f64 = f.get("warmup", 1.0)?;
    let seconds: f64 = f.get("seconds", 5.0)?;
    let rt = sharder_run::runtime()?;
    rt.block_on(async {
        let run = sharder_run::start(spec.config()?, SinkChoice::Amqp);
        let shards = spec.shards as usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        // The AMQP sink has no in-process receiver to watch, so readiness
        // is the sharder's own per-shard state gauge.
        while sharder_run::active_shards() < shards {
            if tokio::time::Instant::now() > deadline {
                bail!("not every shard became active within 90 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
        let (s0, c0, r0) = (
            Sample::now()?,
            metric("sharder_events_confirmed_total"),
            metric("sharder_events_total"),
        );
        let m0 = metric("sharder_amqp_messages_published_total");
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let (s1, c1, r1) = (
            Sample::now()?,
            metric("sharder_events_confirmed_total"),
            metric("sharder_events_total"),
        );
        let messages = metric("sharder_amqp_messages_published_total") - m0;
        let (wall, cpu) = s1.since(&s0);
        let drained = tokio::time::timeout(Duration::from_secs(60), run.shutdown())
            .await
            .map_or(Ok(false), |r| r)?;
        child::emit(&json!({
            "confirmed": c1 - c0,
            "received": r1 - r0,
            "messages": messages,
            "wall_s": wall,
            "cpu_s": cpu,
            "drained": drained,
            "confirmed_total": metric("sharder_events_confirmed_total"),
        }));
        Ok(())
    })
}

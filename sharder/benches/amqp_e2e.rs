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
//! The consumer also notes each event's latency from the sharder's receive
//! (the envelope's `received_at`, unix ms) to its own receive, over the
//! window: p50 and p99, to the millisecond.
//!
//! Flags: `--runs 3 --shards 16 --guilds 64 --rate 1000000 --partitions 4
//! --warmup 1 --seconds 5 --compression zlib-stream`. The shape operators
//! run, at ordinary rates, `publish_linger` values side by side (alternating
//! within each run) and a CSV for `bench/plot.py` (issue #23):
//!
//! ```sh
//! cargo bench -p sharder --bench amqp_e2e -- --compression zstd-stream \
//!   --rates 1000,12800,50000,150000 --lingers 0,5 --runs 2 --seconds 10 \
//!   --csv sharder_amqp_shape.csv
//! ```

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
use support::report::{Table, fmt_num, machine, write_csv_cells};
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

/// What the consumer saw: distinct events, and each event's gateway
/// receive time with its latency to the consumer (unix ms, ms).
#[derive(Default)]
struct Consumed {
    events: HashSet<(u32, u64, u64)>,
    latencies: Vec<(u64, u64)>,
}

type Seen = Arc<Mutex<Consumed>>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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
                let now = now_ms();
                let mut s = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in batch.events {
                    s.events.insert((batch.shard_id, e.epoch, e.seq));
                    s.latencies
                        .push((e.received_at, now.saturating_sub(e.received_at)));
                }
            }
        });
    }
    Ok(conn)
}

/// One measured run of the sharder child.
struct RunResult {
    confirmed: f64,
    received: f64,
    messages: f64,
    cpu: f64,
    wall: f64,
    /// Gateway receive to consumer receive over the window, ms.
    p50_ms: f64,
    p99_ms: f64,
    drained: serde_json::Value,
    consumed: usize,
    confirmed_total: usize,
}

/// Everything one run needs besides the rate and the linger.
struct Shape {
    shards: u32,
    partitions: u32,
    compression: String,
    warmup: f64,
    seconds: f64,
}

fn one_run(
    rt: &tokio::runtime::Runtime,
    sim_args: &SimArgs,
    shape: &Shape,
    linger_ms: Option<u64>,
) -> anyhow::Result<RunResult> {
    let sim = SimProcess::start(sim_args)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let base = format!("bulwark-bench.e2e.{}.{nanos}", std::process::id());
    let topo = AmqpTopology::named(&base, shape.partitions);
    let seen: Seen = Arc::default();
    let conn = rt.block_on(consume(&topo, seen.clone()))?;
    let mut flags = sim.child_flags();
    flags.extend([
        ("shards", shape.shards.to_string()),
        ("compression", shape.compression.clone()),
        ("amqp-base", base.clone()),
        ("partitions", shape.partitions.to_string()),
        ("warmup", shape.warmup.to_string()),
        ("seconds", shape.seconds.to_string()),
    ]);
    if let Some(ms) = linger_ms {
        flags.push(("linger-ms", ms.to_string()));
    }
    let result = ChildRun::spawn("amqp", &flags).and_then(|c| {
        c.result(Duration::from_secs_f64(
            150.0 + shape.warmup + shape.seconds,
        ))
    });
    // Let the consumer catch up with everything confirmed, then clean up
    // whatever happened.
    let check = result.as_ref().ok().map(|r| {
        let confirmed = num(r, "confirmed_total").unwrap_or(0.0) as usize;
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let n = seen.lock().map_or(0, |s| s.events.len());
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
    let (from, to) = (
        num(&r, "window_from_ms")? as u64,
        num(&r, "window_to_ms")? as u64,
    );
    let mut lat: Vec<u64> = seen
        .lock()
        .map(|s| {
            s.latencies
                .iter()
                .filter(|(at, _)| (from..to).contains(at))
                .map(|&(_, l)| l)
                .collect()
        })
        .unwrap_or_default();
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |&v| v as f64)
    };
    Ok(RunResult {
        confirmed: num(&r, "confirmed")?,
        received: num(&r, "received")?,
        messages: num(&r, "messages")?,
        cpu: num(&r, "cpu_s")?,
        wall: num(&r, "wall_s")?,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        drained: r["drained"].clone(),
        consumed,
        confirmed_total,
    })
}

/// A run's name in the tables.
fn tag_of(rate: f64, linger_ms: Option<u64>) -> String {
    format!("offered {}/s, {}", fmt_num(rate), linger_label(linger_ms))
}

/// `publish_linger` as the tables and the CSV name it.
fn linger_label(linger_ms: Option<u64>) -> String {
    linger_ms.map_or("default linger".to_owned(), |ms| format!("linger {ms} ms"))
}

fn parent(f: &Flags) -> anyhow::Result<()> {
    let runs: usize = f.get("runs", 3)?;
    let shards: u32 = f.get("shards", 16)?;
    let single: f64 = f.get("rate", 1_000_000.0)?;
    let rates: Vec<f64> = f.list("rates", &[single])?;
    // `--lingers 0,5`: `publish_linger` values side by side in each run;
    // none given: the configured default.
    let lingers: Vec<Option<u64>> = if f.has("lingers") {
        f.list::<u64>("lingers", &[])?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None]
    };
    let shape = Shape {
        shards,
        partitions: f.get("partitions", 4)?,
        compression: f.get("compression", "zlib-stream".to_owned())?,
        warmup: f.get("warmup", 1.0)?,
        seconds: f.get("seconds", 5.0)?,
    };
    println!("machine: {}", machine());
    println!(
        "simulator: {shards} shards, {}; {} partitions; warm-up {} s, window {} s",
        shape.compression, shape.partitions, shape.warmup, shape.seconds
    );
    let rt = sharder_run::runtime()?;
    let mut table = Table::default();
    let mut cells = Vec::new();
    for &rate in &rates {
        let sim_args = SimArgs {
            shards,
            guilds: f.get("guilds", shards * 4)?,
            event_rate: rate,
            max_concurrency: shards.max(1),
            identify_window_ms: 20,
            replay_buffer: 1_000_000,
            seed: 7,
        };
        for run in 1..=runs {
            // Lingers alternate within a run, so load drifts hit each alike.
            for &linger in &lingers {
                let r = one_run(&rt, &sim_args, &shape, linger)?;
                let tag = tag_of(rate, linger);
                let us = r.cpu / r.confirmed.max(1.0) * 1e6;
                let per_message = r.confirmed / r.messages.max(1.0);
                println!(
                    "{tag}, run {run}: {} events confirmed in {:.2} s = {}/s; sharder CPU {:.2} s \
                     = {us:.2} µs per event ({} per CPU-second); {}/s messages, {per_message:.1} \
                     events per message; gateway receive to consumer p50 {} ms, p99 {} ms; \
                     received {}/s; whole run: {} confirmed, {} distinct consumed; drained {}",
                    fmt_num(r.confirmed),
                    r.wall,
                    fmt_num(r.confirmed / r.wall),
                    r.cpu,
                    fmt_num(r.confirmed / r.cpu),
                    fmt_num(r.messages / r.wall),
                    r.p50_ms,
                    r.p99_ms,
                    fmt_num(r.received / r.wall),
                    r.confirmed_total,
                    r.consumed,
                    r.drained,
                );
                if r.consumed < r.confirmed_total {
                    println!(
                        "  WARNING: {} confirmed events never reached the consumer",
                        r.confirmed_total - r.consumed
                    );
                }
                table.add(
                    &format!("{tag}: confirmed events/s (wall)"),
                    "events/s",
                    r.confirmed / r.wall,
                );
                table.add(&format!("{tag}: sharder CPU per event"), "µs", us);
                table.add(&format!("{tag}: events per message"), "events", per_message);
                table.add(&format!("{tag}: receive to consumer p50"), "ms", r.p50_ms);
                table.add(&format!("{tag}: receive to consumer p99"), "ms", r.p99_ms);
                cells.push(vec![
                    format!("{rate}"),
                    linger_label(linger),
                    format!("{:.0}", r.confirmed / r.wall),
                    format!("{us:.2}"),
                    format!("{per_message:.1}"),
                    format!("{}", r.p50_ms),
                    format!("{}", r.p99_ms),
                ]);
            }
        }
    }
    println!("\n{}", table.render());
    if let ([rate], [linger]) = (rates.as_slice(), lingers.as_slice()) {
        let tag = tag_of(*rate, *linger);
        if let Some(s) = table.stats(&format!("{tag}: confirmed events/s (wall)")) {
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
    }
    if let Some(file) = f.get("csv", String::new()).ok().filter(|s| !s.is_empty()) {
        let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
        let path = write_csv_cells(
            &file,
            &[
                (
                    "title",
                    format!(
                        "sharder into RabbitMQ with confirms: {shards} shards, {}, {} partitions",
                        shape.compression, shape.partitions
                    ),
                ),
                ("x", "offered_events_per_s".into()),
                (
                    "y",
                    "cpu_us_per_event,events_per_message,p50_ms,p99_ms".into(),
                ),
                ("series", "sink".into()),
                ("logx", "true".into()),
                ("machine", machine()),
                ("date", support::report::today()),
                (
                    "command",
                    format!("cargo bench -p sharder --bench amqp_e2e -- {command}"),
                ),
            ],
            &[
                "offered_events_per_s",
                "sink",
                "confirmed_per_s",
                "cpu_us_per_event",
                "events_per_message",
                "p50_ms",
                "p99_ms",
            ],
            &cells,
        )?;
        println!("wrote {}", path.display());
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
        let from_ms = now_ms();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let to_ms = now_ms();
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
            "window_from_ms": from_ms,
            "window_to_ms": to_ms,
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

//! End to end into the real RabbitMQ (127.0.0.1:5672) with publisher
//! confirms, and on into the real cache worker: events/s confirmed by the
//! broker, the forwarder's and the worker's CPU per event, and the latency
//! from the gateway frame's receive to the worker's apply. Ours beside a
//! twilight-gateway forwarder that publishes one message per event (issue
//! #23). Floor: 100k events/s on the 2-core machine.
//!
//! ```sh
//! cargo build --release -p discord-sim
//! cargo bench -p sharder --bench amqp_e2e -- --runs 3 --peers ours
//! ```
//!
//! # Algorithm
//! Per run and peer: a fresh `discord-sim` process offering `--rate`
//! events/s over `--shards` shards; a topology with a unique base name
//! (`bulwark-bench.e2e.<pid>.<ns>`, `--partitions` quorum queues) declared
//! by this (parent) process; a child running the real worker
//! (`worker::run`, memory store, default settings: see
//! `support/worker_run.rs`) on it; and a child running the forwarder:
//! - `ours`: the sharder with its AMQP sink;
//! - `twilight`: twilight-gateway shards, one message (an envelope of one
//!   event) per event, pipelined confirms (`support/twilight.rs`).
//!
//! Once every shard is active and `--warmup` seconds have passed, the
//! forwarder child reads the events the broker confirmed to it and its own
//! CPU seconds at both ends of a `--seconds` window, then shuts down as on
//! SIGTERM (drain, confirms). The worker child samples itself throughout;
//! told how many events were confirmed, it waits until it has applied as
//! many, and hands its samples back. The parent cuts them at the
//! forwarder's window: the worker's CPU per event, and the p50/p99 of its
//! `worker_event_age_seconds` (sharder receive to applied, in whole ms,
//! interpolated inside the histogram's buckets). Then it deletes the
//! topology.
//!
//! Flags: `--runs 3 --shards 16 --guilds 64 --rate 1000000 --partitions 4
//! --warmup 1 --seconds 5 --compression zlib-stream --peers ours,twilight
//! --threads 0 --worker-output on` (the forwarders' runtime threads, 0: one
//! per core; `off`: the worker only fills its cache,
//! `worker.publish_events = false`). The
//! shape operators run at ordinary rates (one runtime thread, as the
//! shipped manifests' CPU limit of 1 gives), `publish_linger` and
//! `wake_coalesce` values side by side (all peers alternate within each
//! run) and a CSV for `bench/plot.py` (issue #23):
//!
//! ```sh
//! cargo bench -p sharder --bench amqp_e2e -- --compression zstd-stream \
//!   --threads 1 --rates 1000,12800,50000,150000 --lingers 0,5 \
//!   --coalesces 0,2 --runs 1 --seconds 10 --csv sharder_amqp_shape.csv
//! ```
//!
//! twilight-gateway is built here with its `zlib` feature only (the other
//! benches compare zlib-stream), so the twilight forwarder always reads
//! zlib-stream, whatever `--compression` ours reads.

mod support;

use anyhow::{Context, bail};
use serde_json::json;
use sharder::{AmqpTopology, SinkChoice};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::args::Flags;
use support::child::{self, ChildRun, num};
use support::measure::Sample;
use support::report::{Table, fmt_num, machine, write_csv_cells};
use support::sharder_run::{self, AMQP_URL, Spec, metric};
use support::sim::{SimArgs, SimProcess};
use support::worker_run::Timeline;

fn main() -> anyhow::Result<()> {
    let flags = Flags::from_env()?;
    match flags.get(child::CHILD, String::new())?.as_str() {
        "" => parent(&flags),
        "amqp" => sharder_child(&flags),
        "twilight" => support::twilight::amqp_child(&flags),
        "worker" => support::worker_run::child(&flags),
        other => bail!("unknown child role {other}"),
    }
}

/// Who forwards the gateway into the broker.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Peer {
    /// The sharder, with these `publish_linger` and `wake_coalesce` (ms;
    /// `None`: the default).
    Ours {
        linger: Option<u64>,
        coalesce: Option<u64>,
    },
    Twilight,
}

impl Peer {
    /// The child role.
    fn role(self) -> &'static str {
        match self {
            Peer::Ours { .. } => "amqp",
            Peer::Twilight => "twilight",
        }
    }

    /// The peer's name in the tables and the CSV.
    fn label(self) -> String {
        match self {
            Peer::Ours { linger, coalesce } => {
                let mut label = "ours".to_owned();
                if let Some(ms) = linger {
                    label.push_str(&format!(", linger {ms} ms"));
                }
                if let Some(ms) = coalesce {
                    label.push_str(&format!(", coalesce {ms} ms"));
                }
                label
            }
            Peer::Twilight => "twilight, 1 message per event".to_owned(),
        }
    }
}

/// One measured run.
struct RunResult {
    confirmed: f64,
    received: f64,
    messages: f64,
    /// The forwarder's CPU seconds over the window.
    cpu: f64,
    wall: f64,
    /// The worker over the same window.
    worker: support::worker_run::WindowCost,
    forwarder_drained: serde_json::Value,
    worker_drained: bool,
    /// Events the worker applied by the end, against those confirmed.
    applied: f64,
    confirmed_total: f64,
}

/// Everything one run needs besides the rate and the peer.
struct Shape {
    shards: u32,
    partitions: u32,
    compression: String,
    warmup: f64,
    seconds: f64,
    /// Runtime threads of the forwarder (0: one per core).
    threads: usize,
    /// `worker.publish_events`: the worker republishes every clean event
    /// for bot processes (the default), or only fills the cache.
    worker_output: bool,
}

fn one_run(
    rt: &tokio::runtime::Runtime,
    sim_args: &SimArgs,
    shape: &Shape,
    peer: Peer,
) -> anyhow::Result<RunResult> {
    let sim = SimProcess::start(sim_args)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let base = format!("bulwark-bench.e2e.{}.{nanos}", std::process::id());
    let topo = AmqpTopology::named(&base, shape.partitions);
    // Declared before anything publishes, so nothing is unroutable.
    let conn = rt.block_on(async {
        let conn = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let ch = conn.create_channel().await?;
        topo.declare(&ch).await.context("declaring the topology")?;
        ch.close(0, "declared".into()).await?;
        anyhow::Ok(conn)
    })?;
    let result = (|| {
        let topo_flags = [
            ("amqp-base", base.clone()),
            ("partitions", shape.partitions.to_string()),
        ];
        let mut worker_flags = topo_flags.to_vec();
        worker_flags.push(("publish-events", shape.worker_output.to_string()));
        let mut worker = ChildRun::spawn("worker", &worker_flags)?;
        rt.block_on(support::worker_run::consuming(&conn, &topo))?;
        let mut flags = sim.child_flags();
        flags.extend(topo_flags.iter().cloned());
        flags.extend([
            ("shards", shape.shards.to_string()),
            ("compression", shape.compression.clone()),
            ("warmup", shape.warmup.to_string()),
            ("seconds", shape.seconds.to_string()),
        ]);
        flags.push(("threads", shape.threads.to_string()));
        if let Peer::Ours { linger, coalesce } = peer {
            if let Some(ms) = linger {
                flags.push(("linger-ms", ms.to_string()));
            }
            if let Some(ms) = coalesce {
                flags.push(("coalesce-ms", ms.to_string()));
            }
        }
        let r = ChildRun::spawn(peer.role(), &flags)?.result(Duration::from_secs_f64(
            150.0 + shape.warmup + shape.seconds,
        ))?;
        let confirmed_total = num(&r, "confirmed_total")?;
        worker.tell(&format!("STOP {confirmed_total}"))?;
        let w = worker.result(support::worker_run::CATCH_UP + Duration::from_secs(90))?;
        let timeline = Timeline::from_result(&w)?;
        let cost = timeline.window(
            num(&r, "window_from_ms")? as u64,
            num(&r, "window_to_ms")? as u64,
        )?;
        anyhow::Ok(RunResult {
            confirmed: num(&r, "confirmed")?,
            received: num(&r, "received")?,
            messages: num(&r, "messages")?,
            cpu: num(&r, "cpu_s")?,
            wall: num(&r, "wall_s")?,
            worker: cost,
            forwarder_drained: r["drained"].clone(),
            worker_drained: timeline.drained,
            applied: timeline.applied,
            confirmed_total,
        })
    })();
    // Clean up whatever happened.
    rt.block_on(async {
        let ch = conn.create_channel().await?;
        topo.delete(&ch).await.context("deleting the topology")?;
        conn.close(0, "bench done".into()).await?;
        anyhow::Ok(())
    })?;
    drop(sim);
    result
}

/// A run's name in the tables.
fn tag_of(rate: f64, peer: Peer) -> String {
    format!("offered {}/s, {}", fmt_num(rate), peer.label())
}

/// `--<name> a,b,...` in ms, each run side by side; absent: the configured
/// default alone (`None`).
fn side_by_side(f: &Flags, name: &str) -> anyhow::Result<Vec<Option<u64>>> {
    if !f.has(name) {
        return Ok(vec![None]);
    }
    Ok(f.list::<u64>(name, &[])?.into_iter().map(Some).collect())
}

fn parent(f: &Flags) -> anyhow::Result<()> {
    let runs: usize = f.get("runs", 3)?;
    let shards: u32 = f.get("shards", 16)?;
    let single: f64 = f.get("rate", 1_000_000.0)?;
    let rates: Vec<f64> = f.list("rates", &[single])?;
    // `--lingers 0,5` (`publish_linger`) and `--coalesces 0,2`
    // (`wake_coalesce`): values side by side in each run.
    let lingers = side_by_side(f, "lingers")?;
    let coalesces = side_by_side(f, "coalesces")?;
    let mut peers: Vec<Peer> = Vec::new();
    for name in f.list::<String>("peers", &["ours".to_owned(), "twilight".to_owned()])? {
        match name.as_str() {
            "ours" => {
                for &coalesce in &coalesces {
                    peers.extend(
                        lingers
                            .iter()
                            .map(|&linger| Peer::Ours { linger, coalesce }),
                    );
                }
            }
            "twilight" => peers.push(Peer::Twilight),
            other => bail!("unknown peer {other:?} (ours, twilight)"),
        }
    }
    let shape = Shape {
        shards,
        partitions: f.get("partitions", 4)?,
        compression: f.get("compression", "zlib-stream".to_owned())?,
        warmup: f.get("warmup", 1.0)?,
        seconds: f.get("seconds", 5.0)?,
        threads: f.get("threads", 0)?,
        worker_output: match f.get("worker-output", "on".to_owned())?.as_str() {
            "on" => true,
            "off" => false,
            other => bail!("--worker-output {other:?}: on or off"),
        },
    };
    println!("machine: {}", machine());
    println!(
        "simulator: {shards} shards, ours {} (twilight zlib-stream); {} partitions; warm-up {} s, \
         window {} s; forwarder runtime threads: {}; consumer: the worker (memory store, \
         defaults, output {})",
        shape.compression,
        shape.partitions,
        shape.warmup,
        shape.seconds,
        match shape.threads {
            0 => "one per core".to_owned(),
            n => n.to_string(),
        },
        if shape.worker_output { "on" } else { "off" }
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
            // Peers alternate within a run, so load drifts hit each alike.
            for &peer in &peers {
                let r = one_run(&rt, &sim_args, &shape, peer)?;
                let tag = tag_of(rate, peer);
                let us = r.cpu / r.confirmed.max(1.0) * 1e6;
                let worker_us = r.worker.cpu_s / r.worker.events.max(1.0) * 1e6;
                let per_message = r.confirmed / r.messages.max(1.0);
                println!(
                    "{tag}, run {run}: {} events confirmed in {:.2} s = {}/s; forwarder CPU {:.2} s \
                     = {us:.2} µs per event; {}/s messages, {per_message:.1} events per message; \
                     worker {:.2} µs per event ({} events); gateway receive to worker apply p50 \
                     {:.1} ms, p99 {:.1} ms; received {}/s; whole run: {} confirmed, {} applied; \
                     drained: forwarder {}, worker {}",
                    fmt_num(r.confirmed),
                    r.wall,
                    fmt_num(r.confirmed / r.wall),
                    r.cpu,
                    fmt_num(r.messages / r.wall),
                    worker_us,
                    fmt_num(r.worker.events),
                    r.worker.p50_ms,
                    r.worker.p99_ms,
                    fmt_num(r.received / r.wall),
                    fmt_num(r.confirmed_total),
                    fmt_num(r.applied),
                    r.forwarder_drained,
                    r.worker_drained,
                );
                if r.applied < r.confirmed_total {
                    println!(
                        "  WARNING: the worker applied {} events of {} confirmed",
                        r.applied, r.confirmed_total
                    );
                }
                table.add(
                    &format!("{tag}: confirmed events/s (wall)"),
                    "events/s",
                    r.confirmed / r.wall,
                );
                table.add(&format!("{tag}: forwarder CPU per event"), "µs", us);
                table.add(&format!("{tag}: events per message"), "events", per_message);
                table.add(&format!("{tag}: worker CPU per event"), "µs", worker_us);
                table.add(
                    &format!("{tag}: receive to apply p50"),
                    "ms",
                    r.worker.p50_ms,
                );
                table.add(
                    &format!("{tag}: receive to apply p99"),
                    "ms",
                    r.worker.p99_ms,
                );
                cells.push(vec![
                    format!("{rate}"),
                    // The CSV is not quoted: no commas in a cell.
                    peer.label().replace(", ", " + "),
                    format!("{:.0}", r.confirmed / r.wall),
                    format!("{us:.2}"),
                    format!("{worker_us:.2}"),
                    format!("{per_message:.1}"),
                    format!("{:.1}", r.worker.p50_ms),
                    format!("{:.1}", r.worker.p99_ms),
                ]);
            }
        }
    }
    println!("\n{}", table.render());
    verdicts(&table, &rates, &peers);
    if let Some(file) = f.get("csv", String::new()).ok().filter(|s| !s.is_empty()) {
        let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
        let path = write_csv_cells(
            &file,
            &[
                (
                    "title",
                    format!(
                        "gateway to RabbitMQ (confirms) to worker: {shards} shards, ours {}, \
                         twilight zlib-stream, {} partitions",
                        shape.compression, shape.partitions
                    ),
                ),
                ("x", "offered_events_per_s".into()),
                (
                    "y",
                    "cpu_us_per_event,worker_cpu_us_per_event,events_per_message,p50_ms,p99_ms"
                        .into(),
                ),
                ("series", "peer".into()),
                ("logx", "true".into()),
                ("logy", "true".into()),
                ("machine", machine()),
                ("date", support::report::today()),
                (
                    "command",
                    format!("cargo bench -p sharder --bench amqp_e2e -- {command}"),
                ),
            ],
            &[
                "offered_events_per_s",
                "peer",
                "confirmed_per_s",
                "cpu_us_per_event",
                "worker_cpu_us_per_event",
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

/// The floors this bench can judge, from the medians.
fn verdicts(table: &Table, rates: &[f64], peers: &[Peer]) {
    let median = |rate: f64, peer: Peer, what: &str| {
        table
            .stats(&format!("{}: {what}", tag_of(rate, peer)))
            .map(|s| s.median)
    };
    let ours: Vec<Peer> = peers
        .iter()
        .copied()
        .filter(|p| matches!(p, Peer::Ours { .. }))
        .collect();
    for &rate in rates {
        for &peer in &ours {
            if rate == 12_800.0
                && let Some(us) = median(rate, peer, "forwarder CPU per event")
            {
                let verdict = if us <= 4.0 { "met" } else { "NOT met" };
                println!(
                    "floor at most 4 µs of sharder CPU per event at 12.8k events/s ({}): {us:.2} → {verdict}",
                    peer.label()
                );
            }
            if let (Some(a), Some(b)) = (
                median(rate, peer, "forwarder CPU per event"),
                median(rate, Peer::Twilight, "forwarder CPU per event"),
            ) {
                let verdict = if a < b { "met" } else { "NOT met" };
                println!(
                    "floor ours below twilight at {}/s ({}): {a:.2} against {b:.2} µs = {:.2}x → {verdict}",
                    fmt_num(rate),
                    peer.label(),
                    a / b
                );
            }
        }
    }
    if let ([rate], [peer]) = (rates, ours.as_slice())
        && *rate >= 100_000.0
        && let Some(v) = median(*rate, *peer, "confirmed events/s (wall)")
    {
        let verdict = if v >= 100_000.0 { "met" } else { "NOT met" };
        println!(
            "floor 100,000 events/s end to end with confirms: median {} → {verdict}",
            fmt_num(v)
        );
    }
}

fn sharder_child(f: &Flags) -> anyhow::Result<()> {
    let spec = Spec::from_flags(f)?;
    let warmup: f64 = f.get("warmup", 1.0)?;
    let seconds: f64 = f.get("seconds", 5.0)?;
    let rt = sharder_run::runtime_with(f.get("threads", 0)?, spec.config()?.sharder.wake_coalesce)?;
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
        let from_ms = envelope::unix_now_ms();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let to_ms = envelope::unix_now_ms();
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

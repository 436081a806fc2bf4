//! Events per CPU-second of the sharder into a null sink, zlib-stream and
//! zstd-stream, side by side with a twilight-gateway 0.18 forwarder on the
//! same simulator stream.
//!
//! ```sh
//! cargo build --release -p discord-sim
//! cargo bench -p sharder --bench events_per_cpu -- --runs 3
//! ```
//!
//! # Algorithm
//! Per run and per variant (`ours-zlib`, `ours-zstd`, `twilight-zlib`): a
//! fresh `discord-sim` process with the same seed, shard count, guilds and
//! offered rate, and a fresh child process of this binary as the client.
//! The child connects every shard, waits until each has its READY, lets
//! `--warmup` seconds pass, then counts the dispatches its null sink takes
//! over `--seconds` and reads its own CPU seconds (`/proc/self/stat`) at
//! both ends. Events per CPU-second = events / CPU seconds of the child: it
//! does not depend on how fast the simulator (another process) can produce
//! events. The twilight forwarder does the minimum a forwarder must do with
//! a message: it reads `op`, `t` and `s` (twilight's own
//! `GatewayEventDeserializer`) and hands `t`, `s` and the raw JSON bytes to
//! the same kind of bounded channel our sink uses, drained by one counting
//! task. `twilight+guild-zlib` (not run by default) also reads `d.guild_id`,
//! which a forwarder into guild-partitioned queues needs, the way a twilight
//! user would: serde_json into a two-field struct. It is context, not the
//! floor: the floor is against the minimal forwarder. The simulator's
//! counters tell whether any shard reconnected during the run (then the run
//! is flagged).
//!
//! Flags: `--runs 3 --shards 16 --guilds 64 --rate 1000000 --warmup 1
//! --seconds 5 --variants ours-zlib,ours-zstd,twilight-zlib`.

mod support;

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use sharder::SinkChoice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::args::Flags;
use support::child::{self, ChildRun, num};
use support::measure::{Sample, rss_bytes};
use support::report::{Table, fmt_num, machine, write_csv_cells};
use support::sharder_run::{self, Spec};
use support::sim::{SimArgs, SimProcess};
use tokio::sync::watch;

fn main() -> anyhow::Result<()> {
    let flags = Flags::from_env()?;
    match flags.get(child::CHILD, String::new())?.as_str() {
        "" => parent(&flags),
        "ours" => ours(&flags),
        "twilight" => twilight(&flags, false),
        "twilight+guild" => twilight(&flags, true),
        other => anyhow::bail!("unknown child role {other}"),
    }
}

fn parent(f: &Flags) -> anyhow::Result<()> {
    let runs: usize = f.get("runs", 3)?;
    let shards: u32 = f.get("shards", 16)?;
    let sim_args = SimArgs {
        shards,
        guilds: f.get("guilds", shards * 4)?,
        event_rate: f.get("rate", 1_000_000.0)?,
        max_concurrency: shards.max(1),
        identify_window_ms: 20,
        replay_buffer: f.get("replay-buffer", 1_000_000)?,
        seed: 7,
    };
    let variants: Vec<String> = f.list(
        "variants",
        &[
            "ours-zlib".to_owned(),
            "ours-zstd".to_owned(),
            "twilight-zlib".to_owned(),
        ],
    )?;
    let warmup: f64 = f.get("warmup", 1.0)?;
    let seconds: f64 = f.get("seconds", 5.0)?;
    println!("machine: {}", machine());
    println!(
        "simulator: {} shards, {} guilds, offered {} events/s; warm-up {warmup} s, window {seconds} s",
        sim_args.shards,
        sim_args.guilds,
        fmt_num(sim_args.event_rate)
    );
    let curve: Vec<f64> = f.list("curve", &[])?;
    if !curve.is_empty() {
        return rate_curve(&sim_args, &curve, warmup, seconds);
    }
    let mut table = Table::default();
    for run in 1..=runs {
        let mut per_cpu = std::collections::HashMap::new();
        for v in &variants {
            let Measured {
                events,
                cpu,
                wall,
                sim_cpu,
                reconnects,
            } = measure(v, &sim_args, warmup, seconds)?;
            let epc = events / cpu;
            println!(
                "run {run} {v}: {} events in {wall:.2} s ({}/s), client CPU {cpu:.2} s \
                 → {} events per CPU-second; simulator CPU {sim_cpu:.2} s over the whole \
                 child; reconnects {reconnects}",
                fmt_num(events),
                fmt_num(events / wall),
                fmt_num(epc),
            );
            if reconnects > 0 {
                println!("  WARNING: {reconnects} reconnects during run {run} ({v})");
            }
            table.add(&format!("{v} events per CPU-second"), "events/CPU-s", epc);
            table.add(&format!("{v} events/s (wall)"), "events/s", events / wall);
            table.add(&format!("{v} client CPU"), "cores", cpu / wall);
            per_cpu.insert(v.clone(), epc);
        }
        for (ours, peer) in [
            ("ours-zlib", "twilight-zlib"),
            ("ours-zstd", "twilight-zlib"),
            ("ours-zlib", "twilight+guild-zlib"),
        ] {
            if let (Some(a), Some(b)) = (per_cpu.get(ours), per_cpu.get(peer)) {
                table.add(&format!("ratio {ours} / {peer}"), "x", a / b);
            }
        }
    }
    println!("\n{}", table.render());
    if let Some(s) = table.stats("ours-zlib events per CPU-second") {
        let verdict = if s.median >= 300_000.0 {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "floor 300,000 events per CPU-second (zlib-stream): median {} → {verdict}",
            fmt_num(s.median)
        );
    }
    if let Some(s) = table.stats("ratio ours-zlib / twilight-zlib") {
        let verdict = if s.median >= 1.0 { "met" } else { "NOT met" };
        println!(
            "floor ours >= twilight: median ratio {:.2} → {verdict}",
            s.median
        );
    }
    Ok(())
}

/// One variant's window against a fresh simulator.
struct Measured {
    events: f64,
    cpu: f64,
    wall: f64,
    sim_cpu: f64,
    reconnects: u64,
}

fn measure(v: &str, sim_args: &SimArgs, warmup: f64, seconds: f64) -> anyhow::Result<Measured> {
    let (role, compression) = v.split_once('-').context("variant is role-compression")?;
    let sim = SimProcess::start(sim_args)?;
    let sim_cpu0 = support::measure::cpu_seconds(Some(sim.pid()))?;
    let mut flags = sim.child_flags();
    flags.extend([
        ("shards", sim_args.shards.to_string()),
        ("compression", format!("{compression}-stream")),
        ("warmup", warmup.to_string()),
        ("seconds", seconds.to_string()),
        ("max-concurrency", sim_args.max_concurrency.to_string()),
    ]);
    let r =
        ChildRun::spawn(role, &flags)?.result(Duration::from_secs_f64(120.0 + warmup + seconds))?;
    let sim_cpu = support::measure::cpu_seconds(Some(sim.pid()))? - sim_cpu0;
    let c = sim.counters()?;
    let reconnects = (c["identifies"].as_u64().unwrap_or(0) + c["resumes"].as_u64().unwrap_or(0))
        .saturating_sub(u64::from(sim_args.shards));
    drop(sim);
    Ok(Measured {
        events: num(&r, "events")?,
        cpu: num(&r, "cpu_s")?,
        wall: num(&r, "wall_s")?,
        sim_cpu,
        reconnects,
    })
}

/// `--curve 5000,10000,...`: CPU against the offered event rate, ours
/// (zlib-stream) beside the twilight forwarder, one run per point, written
/// to `bench/data/sharder_event_rate_cpu.csv` for `bench/plot.py`.
fn rate_curve(base: &SimArgs, rates: &[f64], warmup: f64, seconds: f64) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    println!(
        "| offered events/s | ours events/s | ours cores | twilight events/s | twilight cores |"
    );
    println!("|---|---|---|---|---|");
    for &rate in rates {
        let args = SimArgs {
            event_rate: rate,
            ..base.clone()
        };
        let ours = measure("ours-zlib", &args, warmup, seconds)?;
        let twilight = measure("twilight-zlib", &args, warmup, seconds)?;
        for (name, m) in [("ours", &ours), ("twilight", &twilight)] {
            if m.reconnects > 0 {
                println!(
                    "  WARNING: {} reconnects at {rate} events/s ({name})",
                    m.reconnects
                );
            }
        }
        let row = vec![
            rate,
            ours.events / ours.wall,
            ours.cpu / ours.wall,
            twilight.events / twilight.wall,
            twilight.cpu / twilight.wall,
        ];
        println!(
            "| {} | {} | {:.3} | {} | {:.3} |",
            fmt_num(row[0]),
            fmt_num(row[1]),
            row[2],
            fmt_num(row[3]),
            row[4]
        );
        rows.push(row);
    }
    let list = rates
        .iter()
        .map(|r| format!("{r}"))
        .collect::<Vec<_>>()
        .join(",");
    // Long format with a `peer` series, so both lines share one panel.
    let mut cells = Vec::new();
    for r in &rows {
        for (peer, rate, cores) in [("ours", r[1], r[2]), ("twilight", r[3], r[4])] {
            let us = if rate > 0.0 { cores / rate * 1e6 } else { 0.0 };
            cells.push(vec![
                format!("{}", r[0]),
                peer.to_owned(),
                format!("{rate:.0}"),
                format!("{cores:.4}"),
                format!("{us:.2}"),
            ]);
        }
    }
    let path = write_csv_cells(
        "sharder_event_rate_cpu.csv",
        &[
            (
                "title",
                "sharder: CPU against event rate, zlib-stream, 16 shards (ours vs twilight-gateway 0.18)"
                    .into(),
            ),
            ("x", "offered_events_per_s".into()),
            ("y", "cores,cpu_us_per_event".into()),
            ("series", "peer".into()),
            ("machine", machine()),
            ("date", support::report::today()),
            (
                "command",
                format!(
                    "cargo bench -p sharder --bench events_per_cpu -- --curve {list} --seconds {seconds}"
                ),
            ),
        ],
        &[
            "offered_events_per_s",
            "peer",
            "events_per_s",
            "cores",
            "cpu_us_per_event",
        ],
        &cells,
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Measures the window once every shard is READY; `events` counts what the
/// sink took.
async fn window(
    f: &Flags,
    events: impl Fn() -> u64,
    mut ready: watch::Receiver<usize>,
    shards: usize,
) -> anyhow::Result<serde_json::Value> {
    tokio::time::timeout(Duration::from_secs(90), ready.wait_for(|n| *n >= shards))
        .await
        .context("timed out waiting for every READY")?
        .map_err(|_| anyhow::anyhow!("sink closed before every READY"))?;
    tokio::time::sleep(Duration::from_secs_f64(f.get("warmup", 1.0)?)).await;
    let (s0, e0) = (Sample::now()?, events());
    tokio::time::sleep(Duration::from_secs_f64(f.get("seconds", 5.0)?)).await;
    let (s1, e1) = (Sample::now()?, events());
    let (wall, cpu) = s1.since(&s0);
    Ok(json!({
        "events": e1 - e0,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_bytes": rss_bytes(None)?,
    }))
}

fn ours(f: &Flags) -> anyhow::Result<()> {
    let spec = Spec::from_flags(f)?;
    let rt = sharder_run::runtime()?;
    rt.block_on(async {
        let (sink, tally) = sharder_run::null_sink(spec.shards);
        let run = sharder_run::start(spec.config()?, SinkChoice::Channel(sink));
        let (tx, rx) = watch::channel(0usize);
        let mut active = tally.active.clone();
        tokio::spawn(async move {
            while active.changed().await.is_ok() {
                let n = active.borrow().ready;
                let _ = tx.send(n);
            }
        });
        let r = window(f, || tally.events(), rx, spec.shards as usize).await?;
        child::emit(&r);
        let _ = tokio::time::timeout(Duration::from_secs(30), run.shutdown()).await;
        Ok(())
    })
}

/// A forwarded event of the twilight forwarder: what a forwarder needs.
struct RawEvent {
    shard_id: u32,
    seq: u64,
    event: String,
    guild_id: Option<u64>,
    data: Bytes,
}

/// What a forwarder that routes by guild (as the queue topology does) must
/// read besides `op`, `s` and `t`. Twilight has no cheap reader for it, so
/// a twilight-based forwarder asks serde_json, which validates the whole
/// frame on the way.
#[derive(serde::Deserialize)]
struct Routing {
    #[serde(default)]
    d: Option<RoutingData>,
}

#[derive(serde::Deserialize)]
struct RoutingData {
    #[serde(default)]
    guild_id: Option<twilight_model::id::Id<twilight_model::id::marker::GuildMarker>>,
}

/// The twilight forwarder; `by_guild` adds what routing by guild needs.
fn twilight(f: &Flags, by_guild: bool) -> anyhow::Result<()> {
    use twilight_gateway::{Message, Shard, ShardId};
    use twilight_model::gateway::event::GatewayEventDeserializer;

    let gateway = f.require("gateway")?;
    let token = f.require("token")?;
    let shards: u32 = f.get("shards", 16)?;
    let max_concurrency: u16 = f.get("max-concurrency", 16)?;
    let rt = sharder_run::runtime()?;
    rt.block_on(async {
        let config = support::twilight::config(gateway, token, max_concurrency);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RawEvent>(8192);
        let counted = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = watch::channel(0usize);
        let c = counted.clone();
        tokio::spawn(async move {
            let mut ready = vec![false; shards as usize];
            let mut n = 0;
            let mut batch = Vec::with_capacity(sharder_run::DRAIN_BATCH);
            while rx.recv_many(&mut batch, sharder_run::DRAIN_BATCH).await > 0 {
                for ev in batch.drain(..) {
                    c.fetch_add(1, Ordering::Relaxed);
                    if ev.event == "READY"
                        && let Some(flag) = ready.get_mut(ev.shard_id as usize)
                        && !*flag
                    {
                        *flag = true;
                        n += 1;
                        let _ = ready_tx.send(n);
                    }
                    drop((ev.seq, ev.guild_id, ev.data));
                }
            }
        });
        for id in 0..shards {
            let mut shard = Shard::with_config(ShardId::new(id, shards), config.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(item) = shard.next().await {
                    match item {
                        Ok(Message::Text(text)) => {
                            let Some(de) = GatewayEventDeserializer::from_json(&text) else {
                                continue;
                            };
                            if de.op() != 0 {
                                continue;
                            }
                            let event = de.event_type().unwrap_or_default().to_owned();
                            let seq = de.sequence().unwrap_or_default();
                            let guild_id = if by_guild {
                                match serde_json::from_str::<Routing>(&text) {
                                    Ok(r) => r.d.and_then(|d| d.guild_id).map(|g| g.get()),
                                    Err(e) => {
                                        eprintln!("twilight shard {id}: bad frame: {e}");
                                        continue;
                                    }
                                }
                            } else {
                                None
                            };
                            let ev = RawEvent {
                                shard_id: id,
                                seq,
                                event,
                                guild_id,
                                data: Bytes::from(text),
                            };
                            if tx.send(ev).await.is_err() {
                                break;
                            }
                        }
                        Ok(Message::Close(frame)) => {
                            eprintln!("twilight shard {id}: close {frame:?}")
                        }
                        Err(e) => eprintln!("twilight shard {id}: {e}"),
                    }
                }
                eprintln!("twilight shard {id}: stream ended");
            });
        }
        drop(tx);
        let r = window(
            f,
            || counted.load(Ordering::Relaxed),
            ready_rx,
            shards as usize,
        )
        .await?;
        child::emit(&r);
        Ok(())
    })
}

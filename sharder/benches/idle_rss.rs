//! Memory and CPU per connected idle shard, and how they scale. Floor: RSS
//! per idle shard at or under 64 KiB, measured at 1,000 shards.
//!
//! ```sh
//! cargo build --release -p discord-sim
//! cargo bench -p sharder --bench idle_rss -- --runs 3 --points 100,250,500,1000
//! ```
//!
//! # Algorithm
//! Per point N and run: a fresh `discord-sim` process with N shards, one
//! guild each, no events, max_concurrency 16 and a 20 ms identify window;
//! a fresh child process runs the sharder with the null sink. The child
//! reads its VmRSS once its runtime and sink exist (baseline, before
//! `sharder::run_with`), waits for every READY, lets `--settle` seconds
//! pass, reads VmRSS and CPU (boot CPU), then measures CPU over `--idle`
//! seconds of connected idle shards (heartbeats only, Discord's 41.25 s
//! interval) and reads VmRSS again. Per shard = (final RSS - baseline) / N,
//! so the process's fixed costs (HTTP server, metrics registry, resolver,
//! AMQP-free sink) are charged to the shards: an upper bound. The slope
//! between the smallest and largest point is the marginal cost per shard.
//! Medians per point go to `bench/data/sharder_idle_shards.csv`.
//!
//! Flags: `--runs 3 --points 100,250,500,1000 --settle 2 --idle 5`.

mod support;

use anyhow::bail;
use serde_json::json;
use sharder::SinkChoice;
use std::time::{Duration, Instant};
use support::args::Flags;
use support::child::{self, ChildRun, num};
use support::measure::{Sample, peak_rss_bytes, rss_bytes};
use support::report::{Stats, Table, fmt_num, machine, points_arg, write_csv};
use support::sharder_run::{self, Spec};
use support::sim::{SimArgs, SimProcess};

fn main() -> anyhow::Result<()> {
    let flags = Flags::from_env()?;
    match flags.get(child::CHILD, String::new())?.as_str() {
        "" => parent(&flags),
        "idle" => idle(&flags),
        other => bail!("unknown child role {other}"),
    }
}

fn parent(f: &Flags) -> anyhow::Result<()> {
    let runs: usize = f.get("runs", 3)?;
    let points: Vec<u32> = f.list("points", &[100, 250, 500, 1000])?;
    let settle: f64 = f.get("settle", 2.0)?;
    let idle: f64 = f.get("idle", 5.0)?;
    println!("machine: {}", machine());
    let mut table = Table::default();
    let mut csv_rows = Vec::new();
    let mut medians = Vec::new();
    for &n in &points {
        let mut per_point: Vec<[f64; 5]> = Vec::new();
        for run in 1..=runs {
            let sim = SimProcess::start(&SimArgs {
                shards: n,
                guilds: n,
                event_rate: 0.0,
                max_concurrency: 16,
                identify_window_ms: 20,
                replay_buffer: 10_000,
                seed: 3,
            })?;
            let mut flags = sim.child_flags();
            flags.extend([
                ("shards", n.to_string()),
                ("compression", "zlib-stream".to_owned()),
                ("settle", settle.to_string()),
                ("idle", idle.to_string()),
            ]);
            let r = ChildRun::spawn("idle", &flags)?
                .result(Duration::from_secs_f64(240.0 + settle + idle))?;
            let c = sim.counters()?;
            drop(sim);
            let base = num(&r, "rss_base")?;
            let rss = num(&r, "rss_final")?;
            let per_shard_kib = (rss - base) / f64::from(n) / 1024.0;
            let idle_cores = num(&r, "idle_cpu_s")? / num(&r, "idle_wall_s")?;
            let boot_cpu = num(&r, "boot_cpu_s")?;
            println!(
                "{n} shards, run {run}: ready in {:.2} s; RSS {:.1} MiB (baseline {:.1} MiB, \
                 peak {:.1} MiB) → {per_shard_kib:.1} KiB per shard; boot CPU {boot_cpu:.2} s; \
                 idle CPU {:.4} cores; simulator identifies {}, violations {}",
                num(&r, "ready_s")?,
                rss / 1048576.0,
                base / 1048576.0,
                num(&r, "rss_peak")? / 1048576.0,
                idle_cores,
                c["identifies"],
                c["identify_violations"],
            );
            table.add(&format!("{n} shards: RSS per shard"), "KiB", per_shard_kib);
            table.add(&format!("{n} shards: RSS"), "MiB", rss / 1048576.0);
            table.add(&format!("{n} shards: boot CPU"), "s", boot_cpu);
            table.add(&format!("{n} shards: idle CPU"), "cores", idle_cores);
            per_point.push([
                rss / 1048576.0,
                per_shard_kib,
                boot_cpu,
                idle_cores,
                num(&r, "ready_s")?,
            ]);
        }
        let med = |i: usize| {
            Stats::of(&per_point.iter().map(|p| p[i]).collect::<Vec<_>>()).map_or(0.0, |s| s.median)
        };
        let row = vec![f64::from(n), med(0), med(1), med(2), med(3), med(4)];
        medians.push((n, med(0)));
        csv_rows.push(row);
    }
    println!("\n{}", table.render());
    if let (Some(first), Some(last)) = (medians.first(), medians.last())
        && last.0 > first.0
    {
        let slope = (last.1 - first.1) * 1024.0 / f64::from(last.0 - first.0);
        println!(
            "marginal RSS per shard between {} and {} shards: {slope:.1} KiB",
            first.0, last.0
        );
    }
    if let Some(s) = table.stats("1000 shards: RSS per shard") {
        let verdict = if s.median <= 64.0 { "met" } else { "NOT met" };
        println!(
            "floor <= 64 KiB per idle shard at 1,000 shards: median {:.1} KiB → {verdict}",
            s.median
        );
    }
    // A curve needs several points: a spot check of one point must not
    // replace the committed curve.
    if points.len() < 2 {
        println!("one point measured: bench/data/sharder_idle_shards.csv left as it is");
        return Ok(());
    }
    let path = write_csv(
        "sharder_idle_shards.csv",
        &[
            ("title", "sharder: connected idle shards (medians)".into()),
            ("x", "shards".into()),
            (
                "y",
                "rss_mib,rss_per_shard_kib,boot_cpu_s,idle_cpu_cores,ready_s".into(),
            ),
            ("machine", machine()),
            ("date", support::report::today()),
            (
                "command",
                format!(
                    "cargo bench -p sharder --bench idle_rss -- --runs {runs} --points {}",
                    points_arg(&points)
                ),
            ),
        ],
        &[
            "shards",
            "rss_mib",
            "rss_per_shard_kib",
            "boot_cpu_s",
            "idle_cpu_cores",
            "ready_s",
        ],
        &csv_rows,
    )?;
    println!("wrote {}", path.display());
    let _ = fmt_num;
    Ok(())
}

fn idle(f: &Flags) -> anyhow::Result<()> {
    let spec = Spec::from_flags(f)?;
    let settle: f64 = f.get("settle", 2.0)?;
    let idle: f64 = f.get("idle", 5.0)?;
    let rt = sharder_run::runtime()?;
    rt.block_on(async {
        let (sink, mut tally) = sharder_run::null_sink(spec.shards);
        let cfg = spec.config()?;
        let rss_base = rss_bytes(None)?;
        let s0 = Sample::now()?;
        let t0 = Instant::now();
        let run = sharder_run::start(cfg, SinkChoice::Channel(sink));
        let n = spec.shards as usize;
        tally
            .until("every READY", Duration::from_secs(200), |a| a.ready >= n)
            .await?;
        let ready_s = t0.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs_f64(settle)).await;
        let s1 = Sample::now()?;
        tokio::time::sleep(Duration::from_secs_f64(idle)).await;
        let s2 = Sample::now()?;
        let (idle_wall, idle_cpu) = s2.since(&s1);
        child::emit(&json!({
            "rss_base": rss_base,
            "rss_final": rss_bytes(None)?,
            "rss_peak": peak_rss_bytes(None)?,
            "ready_s": ready_s,
            "boot_cpu_s": s1.cpu - s0.cpu,
            "idle_cpu_s": idle_cpu,
            "idle_wall_s": idle_wall,
        }));
        let _ = tokio::time::timeout(Duration::from_secs(30), run.shutdown()).await;
        Ok(())
    })
}

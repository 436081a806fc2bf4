//! Cold boot: N shards with no stored session, identified in batches of
//! `max_concurrency` per window. Floor: every shard READY within 5 % of
//! `(ceil(N/16) - 1) x window` (the first batch goes at once, then one
//! batch per window).
//!
//! ```sh
//! cargo build --release -p discord-sim
//! cargo bench -p sharder --bench cold_boot -- --runs 3
//! ```
//!
//! # Algorithm
//! Per run: a fresh `discord-sim` process (`--shards` shards,
//! max_concurrency 16, an identify window of `--window-ms`, enforced: an
//! IDENTIFY within a window of its key's previous one is a violation, and
//! the shard gets op 9) and a fresh, empty session directory. A child
//! process runs the sharder (release build, null sink) with the
//! simulator's window plus `--margin-ms`, the margin an operator keeps
//! over Discord's 5 s, and times from the call to `sharder::run_with` to
//! the first and to the last shard's READY dispatch at its sink. Reported
//! against the floor: the total (start to last READY, which includes
//! `GET /gateway/bot`, the first connection and the last READY's trip)
//! and the span (first to last READY). The simulator's counters must show
//! one IDENTIFY per shard and no violation; otherwise the run is invalid.
//!
//! Flags: `--runs 3 --shards 288 --window-ms 1000 --margin-ms 10
//! --compression zlib-stream`.

mod support;

use anyhow::bail;
use serde_json::json;
use sharder::SinkChoice;
use std::time::{Duration, Instant};
use support::args::Flags;
use support::child::{self, ChildRun, num};
use support::report::{Table, machine};
use support::sharder_run::{self, Spec};
use support::sim::{SimArgs, SimProcess};

const CONCURRENCY: u32 = 16;

fn main() -> anyhow::Result<()> {
    let flags = Flags::from_env()?;
    match flags.get(child::CHILD, String::new())?.as_str() {
        "" => parent(&flags),
        "boot" => boot(&flags),
        other => bail!("unknown child role {other}"),
    }
}

fn parent(f: &Flags) -> anyhow::Result<()> {
    let runs: usize = f.get("runs", 3)?;
    let shards: u32 = f.get("shards", 288)?;
    let window_ms: u64 = f.get("window-ms", 1000)?;
    let margin_ms: u64 = f.get("margin-ms", 10)?;
    let compression: String = f.get("compression", "zlib-stream".to_owned())?;
    let sim_args = SimArgs {
        shards,
        guilds: f.get("guilds", shards * 2)?,
        event_rate: f.get("rate", 500.0)?,
        max_concurrency: CONCURRENCY,
        identify_window_ms: window_ms,
        replay_buffer: 10_000,
        seed: 13,
    };
    let floor = f64::from(shards.div_ceil(CONCURRENCY) - 1) * window_ms as f64 / 1000.0;
    println!("machine: {}", machine());
    println!(
        "simulator: {shards} shards, {} guilds, max_concurrency {CONCURRENCY}, window \
         {window_ms} ms; sharder window {} ms ({compression}); floor {floor:.3} s",
        sim_args.guilds,
        window_ms + margin_ms
    );
    let mut table = Table::default();
    let mut invalid = 0;
    for run in 1..=runs {
        let sim = SimProcess::start(&sim_args)?;
        let dir = std::env::temp_dir().join(format!(
            "bulwark-bench-coldboot-{}-{run}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut flags = sim.child_flags();
        flags.extend([
            ("shards", shards.to_string()),
            ("session-dir", dir.display().to_string()),
            ("identify-window-ms", (window_ms + margin_ms).to_string()),
            ("compression", compression.clone()),
        ]);
        let within = Duration::from_secs_f64(floor * 2.0 + 60.0);
        let r = ChildRun::spawn("boot", &flags)?.result(within);
        let counters = sim.counters();
        let _ = std::fs::remove_dir_all(&dir);
        drop(sim);
        let (r, c) = (r?, counters?);
        let count = |k: &str| c[k].as_u64().unwrap_or(0);
        let (identifies, violations) = (count("identifies"), count("identify_violations"));
        let (first, last) = (num(&r, "first_ready_s")?, num(&r, "all_ready_s")?);
        println!(
            "run {run}: first READY {first:.3} s, all READY {last:.3} s after run_with \
             ({:.4} x floor), span {:.3} s ({:.4} x floor); simulator: {identifies} \
             identifies, {violations} violations",
            last / floor,
            last - first,
            (last - first) / floor,
        );
        if identifies != u64::from(shards) || violations != 0 {
            println!(
                "  INVALID run {run}: expected {shards} identifies and 0 violations \
                 (a violation costs an op 9 and a retry a window later)"
            );
            invalid += 1;
            continue;
        }
        table.add("all READY after run_with", "s", last);
        table.add("all READY / floor", "x", last / floor);
        table.add("READY span / floor", "x", (last - first) / floor);
        table.add("first READY after run_with", "s", first);
    }
    println!("\n{}", table.render());
    if let Some(s) = table.stats("all READY / floor") {
        let verdict = if s.max <= 1.05 && invalid == 0 {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "floor: {shards} shards all READY within 5 % of {floor:.3} s: worst {:.4} x, \
             {invalid} invalid runs → {verdict}",
            s.max
        );
    }
    if invalid > 0 {
        bail!("{invalid} invalid runs");
    }
    Ok(())
}

fn boot(f: &Flags) -> anyhow::Result<()> {
    let spec = Spec::from_flags(f)?;
    let rt = sharder_run::runtime()?;
    rt.block_on(async {
        let (sink, mut tally) = sharder_run::null_sink(spec.shards);
        let cfg = spec.config()?;
        let t0 = Instant::now();
        let run = sharder_run::start(cfg, SinkChoice::Channel(sink));
        let within = Duration::from_secs(600);
        tally.until("a READY", within, |a| a.ready >= 1).await?;
        let first = t0.elapsed().as_secs_f64();
        let n = spec.shards as usize;
        tally.until("every READY", within, |a| a.ready >= n).await?;
        let all = t0.elapsed().as_secs_f64();
        child::emit(&json!({ "first_ready_s": first, "all_ready_s": all }));
        let _ = tokio::time::timeout(Duration::from_secs(30), run.shutdown()).await;
        Ok(())
    })
}

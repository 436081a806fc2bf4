//! Resume storm: 288 shards with stored sessions, all resumed after a
//! restart. Floor: every shard RESUMED in under 2 s.
//!
//! ```sh
//! cargo build --release -p discord-sim
//! cargo bench -p sharder --bench resume_storm -- --runs 5
//! ```
//!
//! # Algorithm
//! Per run: a fresh `discord-sim` process (288 shards, max_concurrency 16,
//! a 20 ms identify window so the preparation is quick, events flowing at
//! `--rate`), and a fresh session directory.
//! 1. Child `prepare`: the sharder identifies every shard (through its
//!    scheduler), waits for every READY, then shuts down as on SIGTERM:
//!    close 4000, sessions saved to files.
//! 2. Child `resume`, a new process (the restart): starts the sharder on
//!    the same session directory and times, from the call to
//!    `sharder::run_with`, the arrival of every shard's RESUMED dispatch at
//!    its sink. It also reports the time since the parent spawned it (exec
//!    and runtime start included).
//! 3. The simulator's counters must show one RESUME per shard, no failed
//!    resume and no new IDENTIFY; otherwise the run is reported invalid.
//!
//! Flags: `--runs 3 --shards 288 --guilds 576 --rate 2000`.

mod support;

use anyhow::{Context, bail};
use serde_json::json;
use sharder::SinkChoice;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::args::Flags;
use support::child::{self, ChildRun, num};
use support::measure::Sample;
use support::report::{Table, fmt_num, machine};
use support::sharder_run::{self, Spec};
use support::sim::{SimArgs, SimProcess};

fn main() -> anyhow::Result<()> {
    let flags = Flags::from_env()?;
    match flags.get(child::CHILD, String::new())?.as_str() {
        "" => parent(&flags),
        "prepare" => prepare(&flags),
        "resume" => resume(&flags),
        other => bail!("unknown child role {other}"),
    }
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn parent(f: &Flags) -> anyhow::Result<()> {
    let runs: usize = f.get("runs", 3)?;
    let shards: u32 = f.get("shards", 288)?;
    let sim_args = SimArgs {
        shards,
        guilds: f.get("guilds", shards * 2)?,
        event_rate: f.get("rate", 2000.0)?,
        max_concurrency: 16,
        identify_window_ms: 20,
        replay_buffer: 10_000,
        seed: 11,
    };
    println!("machine: {}", machine());
    println!(
        "simulator: {shards} shards, {} guilds, {} events/s offered, max_concurrency 16",
        sim_args.guilds,
        fmt_num(sim_args.event_rate)
    );
    let mut table = Table::default();
    let mut invalid = 0;
    for run in 1..=runs {
        let sim = SimProcess::start(&sim_args)?;
        let dir = std::env::temp_dir().join(format!(
            "bulwark-bench-resume-{}-{}",
            std::process::id(),
            unix_nanos()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut flags = sim.child_flags();
        flags.extend([
            ("shards", shards.to_string()),
            ("session-dir", dir.display().to_string()),
        ]);
        let prepared = ChildRun::spawn("prepare", &flags)?.result(Duration::from_secs(180))?;
        let stored = std::fs::read_dir(&dir)?.count();
        let before = sim.counters()?;
        flags.push(("spawned-at-ns", unix_nanos().to_string()));
        let r = ChildRun::spawn("resume", &flags)?.result(Duration::from_secs(120))?;
        let after = sim.counters()?;
        let _ = std::fs::remove_dir_all(&dir);
        drop(sim);
        let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
        let (resumes, failed, identifies) = (
            delta("resumes"),
            delta("failed_resumes"),
            delta("identifies"),
        );
        let all = num(&r, "all_resumed_s")?;
        let since_spawn = num(&r, "since_spawn_s")?;
        println!(
            "run {run}: prepared in {:.2} s ({stored} session files); all {shards} RESUMED \
             {all:.3} s after run_with ({since_spawn:.3} s after spawn); first at {:.3} s; \
             CPU {:.2} s; simulator: {resumes} resumes, {failed} failed, {identifies} identifies",
            num(&prepared, "ready_s")?,
            num(&r, "first_resumed_s")?,
            num(&r, "cpu_s")?,
        );
        if resumes != u64::from(shards) || failed != 0 || identifies != 0 {
            println!("  INVALID run {run}: expected {shards} resumes, 0 failed, 0 identifies");
            invalid += 1;
            continue;
        }
        table.add("all RESUMED after run_with", "s", all);
        table.add("all RESUMED after process spawn", "s", since_spawn);
        table.add(
            "first RESUMED after run_with",
            "s",
            num(&r, "first_resumed_s")?,
        );
        table.add("sharder CPU until all RESUMED", "s", num(&r, "cpu_s")?);
    }
    println!("\n{}", table.render());
    if let Some(s) = table.stats("all RESUMED after process spawn") {
        let verdict = if s.max < 2.0 { "met" } else { "NOT met" };
        println!(
            "floor: {shards} shards RESUMED in under 2 s after a restart: max {:.3} s → {verdict}",
            s.max
        );
    }
    if invalid > 0 {
        bail!("{invalid} invalid runs");
    }
    Ok(())
}

fn prepare(f: &Flags) -> anyhow::Result<()> {
    let spec = Spec::from_flags(f)?;
    let rt = sharder_run::runtime()?;
    rt.block_on(async {
        let t0 = Instant::now();
        let (sink, mut tally) = sharder_run::null_sink(spec.shards);
        let run = sharder_run::start(spec.config()?, SinkChoice::Channel(sink));
        let n = spec.shards as usize;
        tally
            .until("every READY", Duration::from_secs(120), |a| a.ready >= n)
            .await?;
        let ready_s = t0.elapsed().as_secs_f64();
        let drained = run.shutdown().await?;
        if !drained {
            bail!("the sharder did not drain; sessions may be missing");
        }
        child::emit(&json!({ "ready_s": ready_s }));
        Ok(())
    })
}

fn resume(f: &Flags) -> anyhow::Result<()> {
    let spawned_at: u128 = f.get("spawned-at-ns", 0)?;
    let spec = Spec::from_flags(f)?;
    let rt = sharder_run::runtime()?;
    rt.block_on(async {
        let (sink, mut tally) = sharder_run::null_sink(spec.shards);
        let cfg = spec.config()?;
        let s0 = Sample::now()?;
        let run = sharder_run::start(cfg, SinkChoice::Channel(sink));
        tally
            .until("a RESUMED", Duration::from_secs(60), |a| a.resumed >= 1)
            .await?;
        let first = s0.at.elapsed().as_secs_f64();
        let n = spec.shards as usize;
        tally
            .until("every RESUMED", Duration::from_secs(60), |a| a.resumed >= n)
            .await
            .context("not every shard resumed")?;
        let done_at = unix_nanos();
        let s1 = Sample::now()?;
        let (all, cpu) = s1.since(&s0);
        let since_spawn = done_at.saturating_sub(spawned_at) as f64 / 1e9;
        child::emit(&json!({
            "all_resumed_s": all,
            "first_resumed_s": first,
            "since_spawn_s": since_spawn,
            "cpu_s": cpu,
            "ready": tally.active.borrow().ready,
        }));
        let _ = tokio::time::timeout(Duration::from_secs(30), run.shutdown()).await;
        Ok(())
    })
}

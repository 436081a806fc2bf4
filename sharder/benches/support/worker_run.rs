//! The real cache worker (`worker::run`, memory store, default settings)
//! in a child process of a bench, consuming what the measured forwarder
//! publishes, so that its CPU per event and the end-to-end latency (the
//! sharder's receive of a gateway frame to the worker's apply) come from the
//! same run.
//!
//! # Algorithm
//! The child does not know the measured window: the forwarder's child picks
//! it. So the worker child samples itself every [`SAMPLE_EVERY`] (unix ms,
//! its CPU seconds, and the cumulative buckets of its own
//! `worker_event_age_seconds` histogram, one sample per event applied) and
//! hands the whole timeline back. The parent cuts it at the window the
//! forwarder reports ([`Timeline::window`]): CPU per event and the latency
//! percentiles come from the differences between the two samples that
//! bracket it, percentiles interpolated inside a bucket.
//!
//! The parent stops it with `STOP <n>` on its stdin, `n` the events the
//! broker confirmed to the forwarder: the child first waits (at most
//! [`CATCH_UP`]) until it has applied as many, so a run also checks that
//! every confirmed event reached the cache.

use super::child;
use super::measure::cpu_seconds;
use super::report::bucket_quantile;
use super::sharder_run::AMQP_URL;
use anyhow::{Context, bail};
use envelope::topology::{AmqpTopology, inspect_queue};
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the child samples itself.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// How long the worker may take to apply what was confirmed after `STOP`.
pub const CATCH_UP: Duration = Duration::from_secs(60);

const AGE: &str = "worker_event_age_seconds";

/// One sample: when, CPU seconds so far, events applied so far and the
/// age histogram's cumulative counts per upper bound (seconds).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub at_ms: u64,
    pub cpu_s: f64,
    pub events: f64,
    pub buckets: Vec<(f64, f64)>,
}

/// Reads `n` events and the buckets of the age histogram from a
/// Prometheus text rendering.
fn parse(text: &str) -> (f64, Vec<(f64, f64)>) {
    let mut events = 0.0;
    let mut buckets = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(AGE)) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        if key == format!("{AGE}_count") {
            events = value;
        } else if let Some(le) = key
            .strip_prefix(&format!("{AGE}_bucket{{le=\""))
            .and_then(|r| r.strip_suffix("\"}"))
        {
            // `+Inf` as the largest finite bound: JSON has no infinity.
            let le = le.parse::<f64>().map_or(f64::MAX, |v| v.min(f64::MAX));
            buckets.push((le, value));
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (events, buckets)
}

/// The worker child: `--amqp-base`, `--partitions`, `--publish-events`.
pub fn child(f: &super::args::Flags) -> anyhow::Result<()> {
    let base = f.require("amqp-base")?;
    let partitions: u32 = f.get("partitions", 4)?;
    let publish: bool = f.get("publish-events", true)?;
    let toml = format!(
        "[amqp]\nurl = \"{AMQP_URL}\"\npartitions = {partitions}\n\
         [worker]\namqp_topology_base = \"{base}\"\nhttp_listen = \"127.0.0.1:0\"\n\
         publish_events = {publish}\n"
    );
    let cfg = config::Config::from_toml_str(&toml, "bench", vec![])
        .map_err(|e| anyhow::anyhow!("worker configuration: {e}"))?;
    // The worker binary's runtime, its wake-ups coalesced by default
    // (`worker.wake_coalesce`).
    let rt = bulwark_process::runtime_builder(cfg.worker.wake_coalesce)
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        // Before `run`, so the recorder has the worker's buckets and this
        // child reads the same one.
        let metrics = worker::prometheus()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .context("another metrics recorder is installed")?;
        let stop = CancellationToken::new();
        // The parent sees the worker's consumers on the queues.
        let mut run = tokio::spawn(worker::run(cfg, stop.clone()));
        let mut told = child::stdin_lines();
        let mut timeline = Vec::new();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        let sample = |timeline: &mut Vec<Sample>| -> anyhow::Result<f64> {
            let (events, buckets) = parse(&metrics.render());
            timeline.push(Sample {
                at_ms: envelope::unix_now_ms(),
                cpu_s: cpu_seconds(None)?,
                events,
                buckets,
            });
            Ok(events)
        };
        let target: f64 = loop {
            tokio::select! {
                _ = tick.tick() => { sample(&mut timeline)?; }
                line = told.recv() => match line.as_deref().and_then(|l| l.strip_prefix("STOP ")) {
                    Some(n) => break n.trim().parse().context("STOP <events>")?,
                    None => bail!("the parent closed the pipe without STOP"),
                },
                r = &mut run => bail!("the worker stopped on its own: {r:?}"),
            }
        };
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        let mut applied = sample(&mut timeline)?;
        while applied < target && tokio::time::Instant::now() < deadline {
            tick.tick().await;
            applied = sample(&mut timeline)?;
        }
        stop.cancel();
        let drained = match tokio::time::timeout(Duration::from_secs(60), run).await {
            Ok(Ok(Ok(report))) => report.drained,
            other => {
                eprintln!("worker run: {other:?}");
                false
            }
        };
        child::emit(&json!({
            "applied": applied,
            "target": target,
            "drained": drained,
            "timeline": timeline,
        }));
        Ok(())
    })
}

/// Waits until every partition queue of `topo` has a consumer (the worker
/// child has started), at most 60 s.
pub async fn consuming(conn: &lapin::Connection, topo: &AmqpTopology) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for p in 0..topo.partitions {
        while inspect_queue(&ch, &topo.queue(p)).await?.consumer_count() == 0 {
            if tokio::time::Instant::now() > deadline {
                bail!("no worker consumer on partition {p} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ch.close(0, "inspected".into()).await?;
    Ok(())
}

/// What the worker child handed back.
pub struct Timeline {
    pub samples: Vec<Sample>,
    /// Events applied when it stopped (each counted once per delivery).
    pub applied: f64,
    pub drained: bool,
}

/// The worker over one window: CPU per event and latency percentiles.
#[derive(Debug, Clone, Copy)]
pub struct WindowCost {
    pub events: f64,
    pub cpu_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Timeline {
    pub fn from_result(v: &serde_json::Value) -> anyhow::Result<Self> {
        Ok(Self {
            samples: serde_json::from_value(v["timeline"].clone()).context("timeline")?,
            applied: child::num(v, "applied")?,
            drained: v["drained"].as_bool().unwrap_or(false),
        })
    }

    /// The samples that bracket `from..to` most tightly from inside, and
    /// what happened between them.
    pub fn window(&self, from_ms: u64, to_ms: u64) -> anyhow::Result<WindowCost> {
        let a = self
            .samples
            .iter()
            .find(|s| s.at_ms >= from_ms)
            .context("no worker sample in the window")?;
        let b = self
            .samples
            .iter()
            .rev()
            .find(|s| s.at_ms <= to_ms)
            .context("no worker sample in the window")?;
        if b.at_ms <= a.at_ms {
            bail!("the window holds fewer than two worker samples");
        }
        let events = b.events - a.events;
        let delta: Vec<(f64, f64)> = b
            .buckets
            .iter()
            .map(|&(le, n)| {
                let before = a
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |&(_, m)| m);
                (le, n - before)
            })
            .collect();
        Ok(WindowCost {
            events,
            cpu_s: b.cpu_s - a.cpu_s,
            p50_ms: bucket_quantile(&delta, 0.50) * 1000.0,
            p99_ms: bucket_quantile(&delta, 0.99) * 1000.0,
        })
    }
}

//! Our sharder inside a child process: its configuration against the
//! simulator, and a null sink that counts what it is given.
//!
//! The null sink is the in-process [`ChannelSink`] with `auto_confirm`
//! (every event is confirmed to its shard as soon as the channel takes it,
//! so the shard's confirmed-seq bookkeeping runs exactly as in production)
//! and one drain task that counts and drops. READY and RESUMED are
//! dispatches too, so the drain task also tells which shards are active:
//! readiness comes from the events themselves, not from polling.

use super::args::Flags;
use anyhow::Context;
use sharder::{ChannelSink, RunOptions, SinkChoice};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Intents covering every kind of the simulator's default mix: GUILDS,
/// GUILD_MEMBERS, GUILD_PRESENCES, GUILD_MESSAGES, GUILD_MESSAGE_TYPING.
pub const INTENTS: u64 = (1 << 0) | (1 << 1) | (1 << 8) | (1 << 9) | (1 << 11);

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// What a child needs to run the sharder.
#[derive(Debug, Clone)]
pub struct Spec {
    pub gateway: String,
    pub http: String,
    pub token: String,
    pub shards: u32,
    /// `zlib-stream`, `zstd-stream` or `none`.
    pub compression: String,
    /// The sharder's identify window (a little above the simulator's).
    pub identify_window_ms: u64,
    pub session_dir: PathBuf,
    /// `(topology base, partitions)` for the AMQP sink; `None`: null sink.
    pub amqp: Option<(String, u32)>,
    /// `sharder.publish_linger` in ms; `None`: the default.
    pub linger_ms: Option<u64>,
    /// `sharder.wake_coalesce` in ms; `None`: the default.
    pub coalesce_ms: Option<u64>,
}

impl Spec {
    /// From the flags the parent passed (see `SimProcess::child_flags`).
    pub fn from_flags(f: &Flags) -> anyhow::Result<Self> {
        let amqp = match f.get("amqp-base", String::new())? {
            b if b.is_empty() => None,
            b => Some((b, f.get("partitions", 4u32)?)),
        };
        Ok(Self {
            gateway: f.require("gateway")?,
            http: f.require("http")?,
            token: f.require("token")?,
            shards: f.get("shards", 16)?,
            compression: f.get("compression", "zlib-stream".to_owned())?,
            identify_window_ms: f.get("identify-window-ms", 30)?,
            session_dir: PathBuf::from(
                f.get(
                    "session-dir",
                    std::env::temp_dir()
                        .join(format!("bulwark-bench-sessions-{}", std::process::id()))
                        .display()
                        .to_string(),
                )?,
            ),
            amqp,
            linger_ms: match f.get("linger-ms", String::new())? {
                ms if ms.is_empty() => None,
                ms => Some(ms.parse()?),
            },
            coalesce_ms: match f.get("coalesce-ms", String::new())? {
                ms if ms.is_empty() => None,
                ms => Some(ms.parse()?),
            },
        })
    }

    /// The sharder configuration.
    pub fn config(&self) -> anyhow::Result<config::Config> {
        let mut toml = format!(
            "[discord]\napi_base = \"{http}/api/v10\"\nintents = {INTENTS}\n\
             [sharder]\ntotal_shards = {shards}\ngateway_url = \"{gw}\"\n\
             compression = \"{comp}\"\nidentify_window = \"{win}ms\"\n\
             http_listen = \"127.0.0.1:0\"\nsession_dir = \"{dir}\"\n\
             shutdown_grace = \"20s\"\n",
            http = self.http.trim_end_matches('/'),
            shards = self.shards,
            gw = self.gateway,
            comp = self.compression,
            win = self.identify_window_ms,
            dir = self.session_dir.display(),
        );
        if let Some(ms) = self.linger_ms {
            toml.push_str(&format!("publish_linger = \"{ms}ms\"\n"));
        }
        if let Some(ms) = self.coalesce_ms {
            toml.push_str(&format!("wake_coalesce = \"{ms}ms\"\n"));
        }
        if let Some((base, partitions)) = &self.amqp {
            toml.push_str(&format!(
                "amqp_topology_base = \"{base}\"\n[amqp]\nurl = \"{AMQP_URL}\"\n\
                 partitions = {partitions}\n"
            ));
        }
        config::Config::from_toml_str(
            &toml,
            "bench",
            vec![("BULWARK_DISCORD__TOKEN".into(), self.token.clone())],
        )
        .map_err(|e| anyhow::anyhow!("bench configuration: {e}"))
    }
}

/// Shards that have reached READY and RESUMED (distinct shards each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Active {
    pub ready: usize,
    pub resumed: usize,
}

/// What the null sink has seen.
#[derive(Clone)]
pub struct Tally {
    /// Dispatches taken by the sink.
    pub events: Arc<AtomicU64>,
    pub active: watch::Receiver<Active>,
}

impl Tally {
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Waits until `pred` holds, failing after `within`.
    pub async fn until(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(Active) -> bool,
    ) -> anyhow::Result<()> {
        tokio::time::timeout(within, self.active.wait_for(|a| pred(*a)))
            .await
            .with_context(|| format!("timed out after {within:?} waiting for {what}"))?
            .map_err(|_| anyhow::anyhow!("sink closed while waiting for {what}"))?;
        Ok(())
    }
}

/// The counting null sink (spawns its drain task on the current runtime).
/// Events the null sinks take from their channel at a time.
pub const DRAIN_BATCH: usize = 1024;

pub fn null_sink(shards: u32) -> (ChannelSink, Tally) {
    let (sink, mut rx) = ChannelSink::new(8192, true);
    let events = Arc::new(AtomicU64::new(0));
    let (tx, active) = watch::channel(Active::default());
    let counted = events.clone();
    tokio::spawn(async move {
        let n = shards as usize;
        let (mut ready, mut resumed) = (vec![false; n], vec![false; n]);
        let mut now = Active::default();
        // Taken in bulk, as a real sink's publisher does: one wake-up per
        // batch instead of per event (the twilight forwarder's drain does
        // the same, so both sides pay the same for the harness).
        let mut batch = Vec::with_capacity(DRAIN_BATCH);
        while rx.recv_many(&mut batch, DRAIN_BATCH).await > 0 {
            for ev in batch.drain(..) {
                counted.fetch_add(1, Ordering::Relaxed);
                let seen = match ev.event.as_str() {
                    "READY" => ready.get_mut(ev.shard_id as usize),
                    "RESUMED" => resumed.get_mut(ev.shard_id as usize),
                    _ => None,
                };
                if let Some(flag) = seen
                    && !*flag
                {
                    *flag = true;
                    if ev.event == "READY" {
                        now.ready += 1;
                    } else {
                        now.resumed += 1;
                    }
                    let _ = tx.send(now);
                }
            }
        }
    });
    (sink, Tally { events, active })
}

/// A sharder started with [`start`].
pub struct Running {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<sharder::RunReport, sharder::RunError>>,
}

impl Running {
    /// Cancels and waits for the drain; true when it drained in time.
    pub async fn shutdown(self) -> anyhow::Result<bool> {
        self.stop.cancel();
        let report = self
            .task
            .await
            .context("sharder task panicked")?
            .map_err(|e| anyhow::anyhow!("sharder: {e}"))?;
        Ok(report.drained)
    }
}

/// Starts `sharder::run_with` on the current runtime.
pub fn start(cfg: config::Config, sink: SinkChoice) -> Running {
    let stop = CancellationToken::new();
    let task = tokio::spawn(sharder::run_with(
        cfg,
        stop.clone(),
        RunOptions {
            sink,
            on_listening: None,
        },
    ));
    Running { stop, task }
}

/// A counter's value from this process's Prometheus registry (0 when absent).
pub fn metric(name: &str) -> f64 {
    let text = sharder::prometheus().render();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Shards whose `sharder_shard_state{state="active"}` gauge is 1 (set on
/// every state transition, unlike `sharder_shards_active`, which only a
/// `/metrics` request refreshes).
pub fn active_shards() -> usize {
    sharder::prometheus()
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("sharder_shard_state{")
                && l.contains("state=\"active\"")
                && l.ends_with(" 1")
        })
        .count()
}

/// The runtime every child uses: multi-threaded, one worker per core, as
/// the sharder binary's `#[tokio::main]`.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(0, Duration::ZERO)
}

/// The sharder binary's runtime ([`bulwark_process::runtime_builder`]) with
/// `threads` runtime threads (0: one per core) and `sharder.wake_coalesce`
/// = `coalesce` (`ZERO`: a plain runtime, as a peer's).
pub fn runtime_with(threads: usize, coalesce: Duration) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = bulwark_process::runtime_builder(coalesce);
    if threads > 0 {
        b.worker_threads(threads);
    }
    b.build().context("tokio runtime")
}

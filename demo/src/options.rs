//! The demo's knobs: command-line flags and the options a test can set.
//!
//! Flags are checked by clap itself wherever a value has bounds (a shard
//! count of 0, an unknown queue, a malformed duration), so every bad flag
//! gets clap's message and exit code 2. What clap cannot express (a URL
//! flag without the mode that uses it) goes through
//! [`Args::into_options`], which returns a clap error too. URLs themselves
//! are validated by the `config` crate like every binary's, and a bad one
//! is a configuration error (exit 78).

use clap::{CommandFactory, Parser, ValueEnum};
use discord_sim::EventMix;
use std::time::Duration;

/// Discord's identify concurrency for large bots, which the demo uses.
pub const MAX_CONCURRENCY: u32 = 16;

/// The broker the demo's events go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueKind {
    /// The sharder's in-process channel sink; no external service.
    InProcess,
    /// RabbitMQ with the production topology, under unique names.
    Rabbitmq,
}

/// Where the worker keeps its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheKind {
    /// The in-memory store; no external service.
    Memory,
    /// The Redis store, under a unique key prefix.
    Redis,
}

/// Everything a demo run needs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub shards: u32,
    pub guilds_per_shard: u32,
    /// The simulator's identify window (Discord: 5 s).
    pub window: Duration,
    /// How much longer than `window` the sharder waits between batches, as
    /// one keeps a margin over Discord's window (the simulator stamps an
    /// IDENTIFY when it reads it, late on a busy machine, as Discord's network
    /// delays vary). `None`: 5 % (at least 50 ms).
    pub identify_margin: Option<Duration>,
    /// Dispatches per second across all shards.
    pub event_rate: f64,
    /// How long events keep flowing after every shard is READY.
    pub traffic: Duration,
    pub event_mix: EventMix,
    pub queue: QueueKind,
    pub amqp_url: String,
    /// Partition queues of the RabbitMQ topology.
    pub partitions: u32,
    pub cache: CacheKind,
    pub redis_url: String,
    /// Longest wait for the cold boot beyond twice the protocol floor, and
    /// for the worker to catch up at the end.
    pub patience: Duration,
    /// Reshard live to this total half-way through the traffic.
    pub reshard_to: Option<u32>,
    /// Run the relay and connect a twilight client through it (needs the
    /// Redis cache and RabbitMQ for the clean stream).
    pub relay: bool,
    /// How long the sharder (and its status page) stays up after the run.
    pub serve: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            shards: 128,
            guilds_per_shard: 20,
            window: Duration::from_secs(2),
            identify_margin: None,
            event_rate: 2000.0,
            traffic: Duration::from_secs(5),
            event_mix: EventMix::default(),
            queue: QueueKind::InProcess,
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            partitions: 4,
            cache: CacheKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            patience: Duration::from_secs(60),
            reshard_to: None,
            relay: false,
            serve: Duration::ZERO,
        }
    }
}

impl DemoOptions {
    /// The sharder's identify window: the simulator's plus the margin.
    pub fn sharder_window(&self) -> Duration {
        let margin = self
            .identify_margin
            .unwrap_or_else(|| (self.window / 20).max(Duration::from_millis(50)));
        self.window + margin
    }

    /// Identify batches of [`MAX_CONCURRENCY`] shards.
    pub fn batches(&self) -> u32 {
        self.shards.div_ceil(MAX_CONCURRENCY)
    }

    /// The protocol's floor for a cold boot: `(ceil(N/16) - 1) x window`
    /// between the first and the last READY.
    pub fn floor(&self) -> Duration {
        self.window * self.batches().saturating_sub(1)
    }
}

/// Guilds the simulator generates at most, so a typo cannot exhaust memory.
const MAX_GUILDS: u64 = 200_000;

/// Runs the whole pipeline locally: the Discord gateway simulator, the
/// sharder (identifying in batches of 16), a queue and the cache worker,
/// then checks the cache against the simulator's ground truth.
#[derive(Debug, Parser)]
#[command(name = "bulwark-demo", version)]
pub struct Args {
    /// Gateway shards to run.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// Guilds per shard at start (Discord allows at most 2500).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=2500))]
    pub guilds_per_shard: u32,
    /// Identify window, scaled down from Discord's 5s (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_window)]
    pub window: Duration,
    /// Gateway events per second across all shards.
    #[arg(long, default_value_t = 2000.0, value_parser = parse_rate)]
    pub event_rate: f64,
    /// Seconds of traffic after every shard is READY.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub seconds: u64,
    /// The queue between sharder and worker.
    #[arg(long, value_enum, default_value_t = QueueKind::InProcess)]
    pub queue: QueueKind,
    /// RabbitMQ URL (with --queue rabbitmq).
    #[arg(long, value_name = "URL")]
    pub amqp_url: Option<String>,
    /// The worker's cache.
    #[arg(long, value_enum, default_value_t = CacheKind::Memory)]
    pub cache: CacheKind,
    /// Redis URL (with --cache redis).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Reshard live to N shards half-way through the traffic (a multiple
    /// of 16 above --shards); the traffic goes on until it completed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub reshard_to: Option<u32>,
    /// Also run the relay on the cache (Redis, implied) and the clean
    /// stream (RabbitMQ), connect a twilight bot through it, and check
    /// what it received against the truth.
    #[arg(long)]
    pub relay: bool,
    /// Keep the sharder and its status page up for SECONDS after the run
    /// (the page's URL is printed first).
    #[arg(long, value_name = "SECONDS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub serve: u64,
}

impl Args {
    /// The options, or a clap error for flags that do not go together.
    pub fn into_options(self) -> Result<DemoOptions, clap::Error> {
        let conflict = |msg: &str| {
            Args::command().error(clap::error::ErrorKind::ArgumentConflict, msg.to_owned())
        };
        if self.amqp_url.is_some() && self.queue != QueueKind::Rabbitmq {
            return Err(conflict("--amqp-url needs --queue rabbitmq"));
        }
        // The relay reads the worker's Redis cache.
        let cache = if self.relay {
            CacheKind::Redis
        } else {
            self.cache
        };
        if self.redis_url.is_some() && cache != CacheKind::Redis {
            return Err(conflict("--redis-url needs --cache redis"));
        }
        let guilds = u64::from(self.shards) * u64::from(self.guilds_per_shard);
        if guilds > MAX_GUILDS {
            return Err(Args::command().error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--shards {} x --guilds-per-shard {} = {guilds} guilds; a local demo \
                     takes at most {MAX_GUILDS}",
                    self.shards, self.guilds_per_shard
                ),
            ));
        }
        let defaults = DemoOptions::default();
        if let Some(to) = self.reshard_to
            && (to <= self.shards
                || !to.is_multiple_of(MAX_CONCURRENCY)
                || !to.is_multiple_of(defaults.partitions)
                || !self.shards.is_multiple_of(defaults.partitions))
        {
            return Err(Args::command().error(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--reshard-to {to}: must be above --shards {} and a multiple of {MAX_CONCURRENCY} \
                     (max_concurrency), with --shards a multiple of the {} partitions",
                    self.shards, defaults.partitions
                ),
            ));
        }
        Ok(DemoOptions {
            shards: self.shards,
            guilds_per_shard: self.guilds_per_shard,
            window: self.window,
            event_rate: self.event_rate,
            traffic: Duration::from_secs(self.seconds),
            queue: self.queue,
            amqp_url: self.amqp_url.unwrap_or(defaults.amqp_url.clone()),
            cache,
            relay: self.relay,
            redis_url: self.redis_url.unwrap_or(defaults.redis_url.clone()),
            reshard_to: self.reshard_to,
            serve: Duration::from_secs(self.serve),
            ..defaults
        })
    }
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 2s or 500ms)"))?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(60) {
        return Err(format!("{s} is outside 10ms..=60s"));
    }
    Ok(d)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !r.is_finite() || !(0.0..=100_000.0).contains(&r) {
        return Err(format!("{s} is outside 0..=100000 events per second"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<DemoOptions, clap::Error> {
        Args::try_parse_from(std::iter::once("bulwark-demo").chain(args.iter().copied()))
            .and_then(Args::into_options)
    }

    #[test]
    fn defaults_take_under_a_minute_at_the_floor() {
        let o = parse(&[]).unwrap();
        assert_eq!((o.shards, o.batches()), (128, 8));
        assert_eq!(o.floor(), Duration::from_secs(14));
        // A 5 % margin over the simulator's window.
        assert_eq!(o.sharder_window(), Duration::from_millis(2100));
        assert!(o.floor() + o.traffic < Duration::from_secs(30));
    }

    #[test]
    fn bad_flags_are_clap_errors() {
        for bad in [
            &["--shards", "0"][..],
            &["--shards", "x"],
            &["--queue", "kafka"],
            &["--window", "0s"],
            &["--window", "soon"],
            &["--event-rate", "-1"],
            &["--event-rate", "NaN"],
            &["--amqp-url", "amqp://x"],
            &["--redis-url", "redis://x", "--queue", "rabbitmq"],
            &["--shards", "4096", "--guilds-per-shard", "2500"],
            &["--reshard-to", "128"],
            &["--reshard-to", "200"],
            &["--frobnicate"],
            &["--serve", "-1"],
            &["--serve", "86401"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        let o = parse(&[
            "--queue",
            "rabbitmq",
            "--amqp-url",
            "amqp://u:p@h/%2f",
            "--cache",
            "redis",
            "--window",
            "500ms",
        ])
        .unwrap();
        assert_eq!((o.queue, o.cache), (QueueKind::Rabbitmq, CacheKind::Redis));
        assert_eq!(o.amqp_url, "amqp://u:p@h/%2f");
        assert_eq!(o.window, Duration::from_millis(500));
        // 5 % of 500 ms is under the 50 ms the margin keeps at least.
        assert_eq!(o.sharder_window(), Duration::from_millis(550));
        assert_eq!(
            parse(&["--reshard-to", "256"]).unwrap().reshard_to,
            Some(256)
        );
        let o = parse(&["--relay", "--redis-url", "redis://r/"]).unwrap();
        assert!(o.relay);
        assert_eq!(
            parse(&["--serve", "60"]).unwrap().serve,
            Duration::from_secs(60)
        );
        assert_eq!(
            (o.cache, o.redis_url.as_str()),
            (CacheKind::Redis, "redis://r/")
        );
    }
}

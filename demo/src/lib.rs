//! The one-command local demo: the whole Bulwark pipeline in one process.
//!
//! A bot operator's first contact with Bulwark is `cargo run --release -p
//! bulwark-demo`. It starts the gateway simulator, the real sharder
//! ([`sharder::run_with`]: discovery, identify batches of 16 under the
//! simulator's enforced limits, zlib transport, per-shard sessions), a
//! queue (the sharder's in-process channel sink, or RabbitMQ with the
//! production topology), and the real worker ([`worker::Worker`] applying
//! envelopes to the in-memory or Redis cache). It shows the cold boot
//! batch by batch and the event flow, then proves the two things the
//! project exists for: the cache equals the simulator's ground truth, and
//! no guild the bot was already in is announced as a join.
//!
//! Nothing here re-implements a component: the demo only wires them,
//! watches them (the worker's handlers and the process's metrics, see
//! [`observe`]) and judges the result ([`verdict`]).
//!
//! Entry point: [`run`]. The binary (`src/main.rs`) parses [`Args`] and
//! prints the [`Summary`] table; tests call [`run`] with small options.
#![forbid(unsafe_code)]

mod error;
pub mod observe;
mod options;
mod pipeline;
mod progress;
mod queue;
mod relay;
mod summary;
pub mod verdict;

pub use error::DemoError;
pub use options::{Args, CacheKind, DemoOptions, MAX_CONCURRENCY, QueueKind};
pub use progress::{CacheCounts, Phase, Progress, Snapshot};
pub use relay::RelayFigures;
pub use summary::{ReshardFigures, Summary};

use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use worker::{MemoryStore, RedisStore};

/// A name no other run uses: queues, exchanges, the Redis key prefix and
/// the session directory all derive from it.
pub fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bulwark-demo.{}.{nanos}", std::process::id())
}

/// Runs the demo once and returns its summary. `interrupt` stops it early
/// (with [`DemoError::Interrupted`]) after cleaning up.
///
/// Everything the run creates outside the process is named by `base`
/// (see [`unique_name`]) and removed before returning: the RabbitMQ
/// topology `base`, `base.dlx`, `base.dead`, `base.events` and the
/// partition queues, and the Redis keys under `base:`.
pub async fn run(
    opts: &DemoOptions,
    base: &str,
    progress: &mut Progress,
    interrupt: &CancellationToken,
) -> Result<Summary, DemoError> {
    // The recorder first: components bind their metrics from the start.
    sharder::prometheus();
    check_urls(opts)?;
    match opts.cache {
        CacheKind::Memory => {
            pipeline::drive(
                opts,
                Arc::new(MemoryStore::new()),
                base,
                progress,
                interrupt,
            )
            .await
        }
        CacheKind::Redis => {
            let store = Arc::new(RedisStore::connect(&opts.redis_url, base).await?);
            let result = pipeline::drive(opts, store.clone(), base, progress, interrupt).await;
            let purged = store.purge().await;
            let summary = result?;
            purged?;
            Ok(summary)
        }
    }
}

/// The URLs in use, validated by the `config` crate as every binary's are.
fn check_urls(opts: &DemoOptions) -> Result<(), config::ConfigError> {
    let mut env = Vec::new();
    if opts.queue == QueueKind::Rabbitmq || opts.relay {
        env.push(("BULWARK_AMQP__URL".to_owned(), opts.amqp_url.clone()));
    }
    if opts.cache == CacheKind::Redis {
        env.push(("BULWARK_REDIS__URL".to_owned(), opts.redis_url.clone()));
    }
    config::Config::from_toml_str("", "bulwark-demo flags", env).map(|_| ())
}

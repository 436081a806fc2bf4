//! `worker`: consumes the partition queues into the cache.
//!
//! Start-up: load and validate the configuration (exit 78 on a bad value),
//! install the Prometheus recorder, build the process's caching DNS resolver
//! (every broker and Redis connection resolves through it), pick the store,
//! serve the HTTP API (`worker.http_listen`), connect to RabbitMQ, declare
//! the shared topology, and run one consumer per partition, publishing the
//! clean events to the output exchange unless `worker.publish_events` is
//! off, and a backlog watcher that drives `/readyz`. A lost connection is retried with capped,
//! jittered backoff (no reconnect storm); SIGTERM/SIGINT stop the consumers,
//! which cancel their subscriptions so the single-active-consumer role moves
//! to another replica at once. The in-memory store's tombstones are
//! collected every minute past `worker.tombstone_horizon`.

use anyhow::Context;
use clap::Parser;
use config::{Config, EXIT_CONFIG, WorkerStoreKind, redact_url};
use dnscache::Resolver;
use lapin::ConnectionProperties;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rand::Rng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use worker::http::{ApiState, Health, router};
use worker::output::Unconfirmed;
use worker::{
    AmqpTopology, CacheOptions, MemoryStore, RedisStore, Store, Worker, consume_partition_with,
};

/// How often the partition backlogs are checked for `/readyz`.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

/// Everything a session needs besides the worker.
struct Shared {
    resolver: Resolver,
    health: Arc<Health>,
    unconfirmed: Option<Arc<Unconfirmed>>,
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("worker_apply_seconds".into()),
            &[
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 1.0,
            ],
        )
        .context("histogram buckets")?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    Ok(handle)
}

#[derive(Parser)]
#[command(about = "Bulwark cache worker")]
struct Args {
    /// TOML configuration file; BULWARK_* variables override it.
    #[arg(long, env = "BULWARK_CONFIG")]
    config: Option<PathBuf>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let cfg = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cfg)) {
        eprintln!("worker failed: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    anyhow::ensure!(
        cfg.worker.store != WorkerStoreKind::Redis || cfg.redis.enabled(),
        "worker.store = \"redis\" needs redis.url (BULWARK_REDIS__URL)"
    );
    let handle = install_metrics()?;
    let resolver = Resolver::shared(&cfg.dns).context("building the DNS resolver")?;
    let shared = Shared {
        resolver,
        health: Arc::new(Health::default()),
        unconfirmed: cfg
            .worker
            .publish_events
            .then(|| Arc::new(Unconfirmed::default())),
    };
    let listener = tokio::net::TcpListener::bind(cfg.worker.http_listen)
        .await
        .with_context(|| format!("binding worker.http_listen {}", cfg.worker.http_listen))?;
    tracing::info!(addr = %cfg.worker.http_listen, "HTTP API listening");
    match cfg.worker.store {
        WorkerStoreKind::Memory => {
            let store = Arc::new(MemoryStore::new());
            let gc = store.clone();
            let horizon = cfg.worker.tombstone_horizon;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    let cutoff = cutoff_ms(horizon);
                    let n = gc.collect_tombstones(cutoff);
                    metrics::counter!("worker_tombstones_collected_total").increment(n as u64);
                    collect_users(&*gc, cutoff).await;
                }
            });
            let counted = store.clone();
            let api = ApiState {
                store: store.clone(),
                health: shared.health.clone(),
                metrics: Some(handle),
                stats: Some(Arc::new(move || counted.stats())),
            };
            serve(listener, api, stop_rx.clone());
            let worker = Worker::with_shared_store(store).with_options(options(&cfg));
            supervise(Arc::new(worker), &cfg, &shared, stop_rx).await
        }
        WorkerStoreKind::Redis => {
            let store = RedisStore::connect_with(
                cfg.redis.url.expose(),
                &cfg.redis.key_prefix,
                &shared.resolver.redis_config(),
            )
            .await
            .with_context(|| format!("connecting to {}", redact_url(cfg.redis.url.expose())))?;
            let store = Arc::new(store);
            let gc = store.clone();
            let horizon = cfg.worker.tombstone_horizon;
            tokio::spawn(async move {
                // Every replica sweeps; the sweep is idempotent.
                let mut tick = tokio::time::interval(Duration::from_secs(600));
                loop {
                    tick.tick().await;
                    collect_users(&*gc, cutoff_ms(horizon)).await;
                }
            });
            let api = ApiState {
                store: store.clone(),
                health: shared.health.clone(),
                metrics: Some(handle),
                stats: None,
            };
            serve(listener, api, stop_rx.clone());
            let worker = Worker::with_shared_store(store).with_options(options(&cfg));
            supervise(Arc::new(worker), &cfg, &shared, stop_rx).await
        }
    }
}

/// Unix ms `horizon` ago: writes older than that are past redelivery.
fn cutoff_ms(horizon: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.saturating_sub(horizon.as_millis() as u64)
}

/// Drops the users no member refers to (see [`Store::collect_users`]).
async fn collect_users<S: Store>(store: &S, cutoff: u64) {
    match store.collect_users(cutoff).await {
        Ok(n) => metrics::counter!("worker_users_collected_total").increment(n as u64),
        Err(e) => tracing::warn!(error = %e, "collecting unreferenced users failed"),
    }
}

/// Serves the HTTP API until `stop`.
fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    api: ApiState<S>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        if let Err(e) = axum::serve(listener, router(api))
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP API stopped");
        }
    });
}

fn options(cfg: &Config) -> CacheOptions {
    CacheOptions {
        presences: cfg.worker.cache_presences,
        voice_states: cfg.worker.cache_voice_states,
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Connects, consumes every configured partition, and reconnects with
/// backoff when the connection is lost, until asked to stop.
async fn supervise<S: Store>(
    worker: Arc<Worker<S>>,
    cfg: &Config,
    shared: &Shared,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topo = AmqpTopology::named(&cfg.worker.amqp_topology_base, cfg.amqp.partitions);
    let partitions: Vec<u32> = if cfg.worker.consume.is_empty() {
        (0..cfg.amqp.partitions).collect()
    } else {
        cfg.worker.consume.clone()
    };
    let url = cfg.amqp.url.expose();
    let mut attempt = 0u32;
    while !*stop.borrow() {
        match session(&worker, cfg, shared, &topo, &partitions, stop.clone()).await {
            Ok(()) => attempt = 0,
            Err(e) => {
                attempt = attempt.saturating_add(1);
                let cap = 100u64.saturating_mul(1 << attempt.min(9)).min(30_000);
                let wait = Duration::from_millis(rand::rng().random_range(cap / 2..=cap));
                tracing::warn!(error = %format!("{e:#}"), ?wait, url = %redact_url(url), "amqp session ended; reconnecting");
                let mut s = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = s.wait_for(|v| *v) => {}
                }
            }
        }
    }
    Ok(())
}

async fn session<S: Store>(
    worker: &Arc<Worker<S>>,
    cfg: &Config,
    shared: &Shared,
    topo: &AmqpTopology,
    partitions: &[u32],
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let conn = shared
        .resolver
        .amqp_connect(cfg.amqp.url.expose(), ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let ch = conn.create_channel().await?;
    topo.declare(&ch).await.context("declaring the topology")?;
    let mut tasks = tokio::task::JoinSet::new();
    for &p in partitions {
        let ch = conn.create_channel().await?;
        let mut s = stop.clone();
        let guard = shared.health.consumer();
        let run = consume_partition_with(
            worker.clone(),
            ch,
            topo.clone(),
            p,
            cfg.worker.prefetch,
            shared.unconfirmed.clone(),
            async move {
                let _ = s.wait_for(|v| *v).await;
            },
        );
        tasks.spawn(async move {
            let out = run.await;
            drop(guard);
            out
        });
    }
    tracing::info!(
        partitions = partitions.len(),
        publish = shared.unconfirmed.is_some(),
        "consuming"
    );
    let watcher = worker::readiness::watch_backlog(
        conn.create_channel().await?,
        topo.clone(),
        partitions.to_vec(),
        cfg.worker.ready_backlog,
        shared.health.clone(),
        BACKLOG_INTERVAL,
    );
    let consumers = async {
        while let Some(done) = tasks.join_next().await {
            let stats = done.context("consumer task panicked")??;
            tracing::info!(?stats, "consumer stopped");
            if !*stop.borrow() {
                anyhow::bail!("a consumer stopped: the channel or connection closed");
            }
        }
        Ok(())
    };
    tokio::select! {
        r = consumers => r,
        e = watcher => Err(anyhow::Error::new(e).context("checking the partition backlog")),
    }
}

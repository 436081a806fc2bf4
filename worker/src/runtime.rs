//! [`run`]: the cache worker as a process, until its shutdown token fires.
//!
//! Start-up: check what [`config::Config::validate`] cannot (a Redis store
//! needs `redis.url`), install the Prometheus recorder, build the process's
//! caching DNS resolver (every broker and Redis connection resolves
//! through it), bind the HTTP API (`worker.http_listen`), pick the store,
//! decide who picks this replica's partitions (with a Redis store and no
//! fixed `worker.consume`, the replicas share them through Redis leases,
//! [`crate::membership`]; otherwise this replica subscribes to all of
//! them, logged), then supervise the AMQP session ([`crate::supervisor`]):
//! connect, declare the shared topology, one consumer per partition held,
//! publishing the
//! clean events to the output exchange unless `worker.publish_events` is
//! off, and a backlog watcher that drives `/readyz`; a lost connection is
//! retried with capped, jittered backoff. The in-memory store's tombstones
//! are collected every minute past `worker.tombstone_horizon`
//! ([`crate::sweep`]).
//!
//! Shutdown: the HTTP API stops taking requests, every consumer closes its
//! channel so the single-active-consumer role moves to another replica
//! (with the unprocessed prefetch first), after acking what it finished and
//! waiting for the confirms of what it published; all within
//! [`DRAIN_GRACE`], after which
//! what is left is abandoned (unacked, so the broker redelivers it: never
//! lost) and the run reports `drained: false`. Once the consumers have
//! stopped, the leases are released and the replica leaves the member set,
//! so the others take its partitions at their next tick.

use crate::gate::PartitionGate;
use crate::http::{ApiState, Health, api_router, metrics_router, router};
use crate::membership::Membership;
use crate::memory::MemoryStore;
use crate::output::Unconfirmed;
use crate::processor::Worker;
use crate::redis_store::RedisStore;
use crate::store::{Store, StoreError};
use crate::supervisor::Supervisor;
use crate::{AmqpTopology, CacheOptions};
use config::{Config, WorkerStoreKind, redact_url};
use dnscache::{RedisConnection, Resolver};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bound on the whole shutdown, from the token's cancellation to `run`'s
/// return. The pod's `terminationGracePeriodSeconds` (30 s) covers it
/// plus the 5 s preStop sleep.
pub const DRAIN_GRACE: Duration = Duration::from_secs(20);

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `worker.store = "redis"` without `redis.url`. The binary exits 1
    /// for it, as it always has (its tests pin that), not 78.
    #[error("worker.store = \"redis\" needs redis.url (BULWARK_REDIS__URL)")]
    RedisStoreWithoutUrl,
    #[error("installing the metrics recorder: {0}")]
    Metrics(String),
    #[error("building the DNS resolver")]
    Dns(#[source] dnscache::DnsError),
    /// A bad value found at start-up (exit 78).
    #[error(transparent)]
    Config(config::ConfigError),
    /// `[tls]` files missing or unusable (exit 78).
    #[error(transparent)]
    Tls(dnscache::TrustError),
    #[error("binding worker.http_listen {addr}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {url}")]
    Redis {
        /// `redis.url` without its password.
        url: String,
        #[source]
        source: StoreError,
    },
}

impl RunError {
    /// True for a configuration error (exit 78): fix the config, not the
    /// cluster.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Tls(_))
    }
}

/// How a run ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Partitions this process could consume (with shared partitions, it
    /// consumed those it held leases for, a subset).
    pub partitions: Vec<u32>,
    /// The shutdown finished within [`DRAIN_GRACE`].
    pub drained: bool,
}

/// Runs the worker until `shutdown` is cancelled, then drains (see the
/// module docs).
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<RunReport, RunError> {
    if cfg.worker.store == WorkerStoreKind::Redis && !cfg.redis.enabled() {
        return Err(RunError::RedisStoreWithoutUrl);
    }
    // The recorder first: the resolver binds its metric handles at
    // construction, and handles taken before the recorder exists go nowhere.
    let metrics = prometheus()?;
    let read_token = cfg.worker.read_token().map_err(RunError::Config)?.cloned();
    let trust = dnscache::Trust::load(&cfg.tls, &[cfg.amqp.url.expose(), cfg.redis.url.expose()])
        .map_err(RunError::Tls)?;
    let resolver = Resolver::shared(&cfg.dns)
        .map_err(RunError::Dns)?
        .with_trust(trust);
    let addr = cfg.worker.http_listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Http { addr, source })?;
    tracing::info!(%addr, "HTTP API listening");
    if read_token.is_none() {
        tracing::warn!(
            %addr,
            "the read API (/v1) needs no token: anyone who reaches this port reads the cache"
        );
    }
    let metrics_listener = match cfg.worker.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Http { addr, source })?;
            tracing::info!(%addr, "metrics listening");
            Some(l)
        }
        None => None,
    };
    let health = Arc::new(Health::default());
    let horizon = cfg.worker.tombstone_horizon;
    let process = Process {
        cfg: &cfg,
        resolver,
        health: health.clone(),
        listener,
        metrics_listener,
        shutdown,
    };
    match cfg.worker.store {
        WorkerStoreKind::Memory => {
            let store = Arc::new(MemoryStore::new());
            let sweep = tokio::spawn(crate::sweep::sweep_memory(store.clone(), horizon));
            let counted = store.clone();
            let api = ApiState {
                store,
                health,
                metrics: metrics.clone(),
                stats: Some(Arc::new(move || counted.stats())),
                read_token,
            };
            Ok(process.serve(api, sweep, None).await)
        }
        WorkerStoreKind::Redis => {
            let url = cfg.redis.url.expose();
            let redis = |source: StoreError| RunError::Redis {
                url: redact_url(url),
                source,
            };
            let con = RedisConnection::lazy(&process.resolver, url).map_err(|e| redis(e.into()))?;
            let store = RedisStore::over(con, &cfg.redis.key_prefix)
                .await
                .map_err(redis)?;
            let store = Arc::new(store);
            let sweep = tokio::spawn(crate::sweep::sweep_shared(store.clone(), horizon));
            let coordination =
                RedisConnection::lazy(&process.resolver, url).map_err(|e| RunError::Redis {
                    url: redact_url(url),
                    source: e.into(),
                })?;
            let api = ApiState {
                store,
                health,
                metrics: metrics.clone(),
                stats: None,
                read_token,
            };
            Ok(process.serve(api, sweep, Some(coordination)).await)
        }
    }
}

/// What a run holds between start-up and the store's choice.
struct Process<'a> {
    cfg: &'a Config,
    resolver: Resolver,
    health: Arc<Health>,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
}

impl Process<'_> {
    /// Serves the API and consumes until shutdown, then drains.
    async fn serve<S: Store>(
        self,
        api: ApiState<S>,
        sweep: JoinHandle<()>,
        redis: Option<RedisConnection>,
    ) -> RunReport {
        let cfg = self.cfg;
        let partitions: Vec<u32> = if cfg.worker.consume.is_empty() {
            (0..cfg.amqp.partitions).collect()
        } else {
            cfg.worker.consume.clone()
        };
        let (gate, membership) = share(cfg, &partitions, redis);
        let membership = membership.map(|m| tokio::spawn(m.run(self.shutdown.clone())));
        let worker = Arc::new(Worker::with_shared_store(api.store.clone()).with_options(
            CacheOptions {
                presences: cfg.worker.cache_presences,
                voice_states: cfg.worker.cache_voice_states,
            },
        ));
        let http = tokio::spawn(serve_http(
            self.listener,
            self.metrics_listener,
            api,
            self.shutdown.clone(),
        ));
        let supervisor = Supervisor {
            cfg,
            resolver: self.resolver,
            health: self.health,
            unconfirmed: cfg
                .worker
                .publish_events
                .then(|| Arc::new(Unconfirmed::default())),
            topology: AmqpTopology::named(&cfg.worker.amqp_topology_base, cfg.amqp.partitions),
            partitions,
            gate,
        };
        // The session is dropped at the end of this block: one that did not
        // drain in time is aborted (its unacked messages are redelivered).
        let (drained, deadline) = {
            let supervising = supervisor.run(worker, &self.shutdown);
            tokio::pin!(supervising);
            // Both are ready together at shutdown (the session ends because
            // of it): a session that already ended must not be polled again.
            let ended = tokio::select! {
                () = &mut supervising => true,
                () = self.shutdown.cancelled() => false,
            };
            let deadline = Instant::now() + DRAIN_GRACE;
            let drained = ended || tokio::time::timeout_at(deadline, supervising).await.is_ok();
            (drained, deadline)
        };
        if !drained {
            tracing::warn!(
                "the consumers did not drain within the grace; the broker redelivers the rest"
            );
        }
        // The consumers have stopped: the leases go, so the other replicas
        // take the partitions over at their next tick.
        if let Some(membership) = membership {
            let stop_membership = membership.abort_handle();
            if tokio::time::timeout_at(deadline, membership).await.is_err() {
                stop_membership.abort();
            }
        }
        sweep.abort();
        let stop_http = http.abort_handle();
        if tokio::time::timeout_at(deadline, http).await.is_err() {
            stop_http.abort();
        }
        tracing::info!(drained, "worker stopped");
        RunReport {
            partitions: supervisor.partitions,
            drained,
        }
    }
}

/// Who decides which partitions this replica consumes: with a Redis store
/// and no fixed `worker.consume`, the replicas share them through Redis
/// leases ([`crate::membership`]); otherwise this replica subscribes to
/// every partition it is configured for and single-active-consumer makes
/// one replica consume each (all of them on the first replica to start).
fn share(
    cfg: &Config,
    partitions: &[u32],
    redis: Option<RedisConnection>,
) -> (Arc<PartitionGate>, Option<Membership>) {
    match redis {
        Some(con) if cfg.worker.consume.is_empty() => {
            let gate = Arc::new(PartitionGate::closed());
            let membership = Membership::new(
                con,
                &cfg.redis.key_prefix,
                &cfg.worker.amqp_topology_base,
                partitions.to_vec(),
                gate.clone(),
            );
            (gate, Some(membership))
        }
        Some(_) => {
            tracing::info!(
                partitions = ?partitions,
                "worker.consume is set: consuming exactly those partitions, not sharing them"
            );
            (Arc::new(PartitionGate::fixed(partitions)), None)
        }
        None => {
            tracing::warn!(
                "no Redis store: partitions are not shared between replicas; this replica \
                 subscribes to every partition and single-active-consumer makes the first \
                 replica consume them all (set worker.store = \"redis\" to scale out)"
            );
            (Arc::new(PartitionGate::fixed(partitions)), None)
        }
    }
}

/// Serves the HTTP API (and `/metrics` on its own listener, when there is
/// one) until `stop`, then finishes the requests in flight.
async fn serve_http<S: Store>(
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    api: ApiState<S>,
    stop: CancellationToken,
) {
    let serve = |listener, app, stop: CancellationToken| async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "HTTP listener stopped");
        }
    };
    match metrics_listener {
        None => serve(listener, router(api), stop).await,
        Some(m) => {
            tokio::join!(
                serve(listener, api_router(api.clone()), stop.clone()),
                serve(m, metrics_router(api), stop),
            );
        }
    }
}

/// The process's Prometheus recorder ([`bulwark_process::prometheus`]),
/// with the worker's histogram buckets when it installs it. [`run`] takes
/// it first thing; a process that embeds the worker and reads its metrics
/// itself (a bench) takes it before, to get the same buckets.
pub fn prometheus() -> Result<Option<PrometheusHandle>, RunError> {
    bulwark_process::prometheus(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("worker_apply_seconds".into()),
                &[
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 1.0,
                ],
            )?
            // Received by the sharder to applied here, in whole ms (the
            // envelope's unit): fine where a healthy pipeline sits, coarse
            // out to a backlog of minutes.
            .set_buckets_for_metric(
                Matcher::Full("worker_event_age_seconds".into()),
                &[
                    0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.012, 0.015, 0.020,
                    0.025, 0.030, 0.040, 0.050, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0,
                    5.0, 10.0, 30.0, 60.0, 300.0,
                ],
            )
    })
    .map_err(|e| RunError::Metrics(format!("histogram buckets: {e}")))
}

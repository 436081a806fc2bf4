//! [`run`]: the relay as a process, until its shutdown token fires.
//!
//! Start-up checks what the configuration alone cannot (the bot token,
//! a Redis URL: the relay reads the workers' Redis store), sets up Redis
//! through the caching resolver with `[tls]` (dialled on first use, so an
//! unreachable Redis is "not ready", not an exit), binds the port, then
//! runs the feed and the port until shutdown. Every second, sessions nobody resumed
//! within the window are dropped. At shutdown the feed stops, the sessions
//! are handed over through Redis ([`crate::handover`]), then connections
//! are closed with 4000, which libraries answer with a RESUME on another
//! relay.

use crate::Ctx;
use crate::hub::Hub;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for the bot connections' close frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown waits for the feed to stop and the hand-over write.
const HANDOVER_GRACE: Duration = Duration::from_secs(5);

/// Why the relay could not run.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A value found wrong at start-up (exit 78).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// `[tls]` files missing or unusable (exit 78).
    #[error(transparent)]
    Tls(#[from] dnscache::TrustError),
    #[error("building the DNS resolver")]
    Dns(#[source] dnscache::DnsError),
    #[error("connecting to Redis at {url}; the relay reads the workers' cache there")]
    Redis {
        url: String,
        #[source]
        source: worker::StoreError,
    },
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl RelayError {
    /// True for a configuration error (exit 78).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Tls(_))
    }
}

/// Runs the relay until `shutdown`.
pub async fn run(cfg: config::Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    run_with(cfg, shutdown, None).await
}

/// [`run`], telling `on_listening` the gateway's address once bound.
pub async fn run_with(
    cfg: config::Config,
    shutdown: CancellationToken,
    on_listening: Option<oneshot::Sender<SocketAddr>>,
) -> Result<(), RelayError> {
    let token = cfg.discord.require_token()?.clone();
    if !cfg.redis.enabled() {
        return Err(config::ConfigError::invalid(
            "redis.url",
            "the relay reads the workers' Redis store; set BULWARK_REDIS__URL (and worker.store = \"redis\")",
        )
        .into());
    }
    // The default builder cannot fail; a failure would only lose /metrics.
    let metrics = bulwark_process::prometheus(|| Ok(PrometheusBuilder::new()))
        .ok()
        .flatten();
    let trust = dnscache::Trust::load(&cfg.tls, &[cfg.amqp.url.expose(), cfg.redis.url.expose()])?;
    let resolver = dnscache::Resolver::shared(&cfg.dns)
        .map_err(RelayError::Dns)?
        .with_trust(trust);
    let url = cfg.redis.url.expose();
    let redis_error = |source| RelayError::Redis {
        url: config::redact_url(url),
        source,
    };
    // Dialled on first use: while Redis is down the relay runs, reports
    // not ready and refuses IDENTIFY (4000), instead of exiting and
    // crash-looping.
    let con = dnscache::RedisConnection::lazy(&resolver, url).map_err(|e| redis_error(e.into()))?;
    let store = worker::RedisStore::lazy(con.clone(), &cfg.redis.key_prefix);
    let listener = tokio::net::TcpListener::bind(cfg.relay.listen)
        .await
        .map_err(|source| RelayError::Bind {
            addr: cfg.relay.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RelayError::Bind {
        addr: cfg.relay.listen,
        source,
    })?;
    let metrics_listener = match cfg.relay.metrics_listen {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m)
                .await
                .map_err(|source| RelayError::Bind { addr: m, source })?,
        ),
        None => None,
    };
    let resume_url = if cfg.relay.public_url.is_empty() {
        format!("ws://{addr}")
    } else {
        cfg.relay.public_url.clone()
    };
    let topology = envelope::topology::AmqpTopology::named(&cfg.relay.amqp_topology_base, 1);
    let exchange = topology.output_exchange;
    let commands = crate::commands::Publisher::new(
        resolver.clone(),
        cfg.amqp.url.clone(),
        topology.commands_exchange,
    );
    let stop = CancellationToken::new();
    let ctx = Arc::new(Ctx {
        token,
        intents: cfg.discord.intents,
        hub: Hub::new(cfg.relay.handover_events),
        identify_limit: crate::identify_limit::IdentifyLimit::new(
            cfg.relay.max_concurrency,
            cfg.relay.identify_window,
            cfg.relay.session_start_total,
            tokio::time::Instant::now(),
        ),
        store,
        redis: con,
        connections: tokio_util::task::TaskTracker::new(),
        resolver,
        amqp_url: cfg.amqp.url.clone(),
        exchange,
        commands,
        resume_url,
        feed_up: AtomicBool::new(false),
        metrics,
        stop: stop.clone(),
        pod: crate::new_session_id(),
        prefix: cfg.redis.key_prefix.clone(),
        seen: crate::handover::SeenCache::default(),
        cfg: cfg.relay.clone(),
    });
    tracing::info!(%addr, exchange = %ctx.exchange, "relay listening");
    if let Some(tx) = on_listening {
        let _ = tx.send(addr);
    }
    let feed_stop = CancellationToken::new();
    let mut feed = tokio::spawn(crate::feed::run(ctx.clone(), feed_stop.clone()));
    let reaper = {
        let ctx = ctx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let gone = ctx.hub.reap(tokio::time::Instant::now(), ctx.cfg.resume_window);
                        if gone > 0 {
                            tracing::info!(gone, "sessions not resumed in time dropped");
                        }
                    }
                }
            }
        })
    };
    let serve = |l: tokio::net::TcpListener, app: axum::Router| {
        let shutdown = shutdown.clone();
        async move {
            if let Err(e) = axum::serve(l, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "relay listener stopped");
            }
        }
    };
    match metrics_listener {
        None => serve(listener, crate::http::router(ctx.clone(), true)).await,
        Some(m) => {
            tokio::join!(
                serve(listener, crate::http::router(ctx.clone(), false)),
                serve(m, crate::http::metrics_router(ctx.clone())),
            );
        }
    }
    // The rings are final once the feed stopped: hand the sessions over,
    // then close the connections with 4000 (resumable) and give them a
    // moment to send it before the process goes.
    feed_stop.cancel();
    let deadline = tokio::time::Instant::now() + HANDOVER_GRACE;
    let drained = match tokio::time::timeout_at(deadline, &mut feed).await {
        Ok(Ok(drained)) => drained,
        Ok(Err(_)) => false,
        Err(_) => {
            feed.abort();
            false
        }
    };
    match tokio::time::timeout_at(deadline, crate::handover::hand_over(&ctx, drained)).await {
        Ok(Ok(n)) => tracing::info!(
            sessions = n,
            "sessions handed over for RESUME on another relay"
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "handing the sessions over failed; their bots will get op 9 and IDENTIFY again")
        }
        Err(_) => tracing::warn!(
            ?HANDOVER_GRACE,
            "handing the sessions over timed out; their bots will get op 9 and IDENTIFY again"
        ),
    }
    stop.cancel();
    ctx.connections.close();
    let _ = tokio::time::timeout(CLOSE_GRACE, ctx.connections.wait()).await;
    let _ = reaper.await;
    Ok(())
}

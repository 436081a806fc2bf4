//! A sharder process: configuration in, running shards out, until shutdown.
//!
//! # Algorithm
//! [`run`] (or [`run_with`] for tests and demos):
//! 1. Build the process's caching resolver; every outbound name (Discord's
//!    API and gateway, RabbitMQ, Redis) goes through it. Then serve the
//!    HTTP endpoints at once: `/healthz` answers from here on, and
//!    `/readyz` says what start-up waits for, so a slow dependency is a
//!    pod that is not ready, never a failed liveness probe.
//! 2. `GET /gateway/bot` (retried with capped backoff on 429 and transport
//!    errors; a 401 is fatal) for the gateway URL, the session start budget
//!    and `max_concurrency` (`sharder.max_concurrency` overrides it).
//! 3. Check the whole cluster's layout and take this process's shards
//!    ([`crate::assignment::plan_shards`]); one [`IdentifyScheduler`] per process, with
//!    the Redis key lock when several processes share keys. With Redis, the
//!    session start budget and the identify circuit breaker are the
//!    cluster's ([`crate::SharedBudget`]): seeded from the start-up answer,
//!    then refreshed by `GET /gateway/bot` every `identify_budget_refresh`
//!    and when the reset time has passed.
//! 4. Session store (file or Redis; Redis is dialled until it answers,
//!    with capped backoff), sink (AMQP or an in-process channel) wrapped in
//!    the runtime shed list, then every shard on its own task at once: a
//!    shard with a stored session resumes at once (resumes need no
//!    identify permit), the others queue in the scheduler. The running
//!    total is the generation record's when a live reshard changed it
//!    (`generation.rs`, read by `recovery.rs`); a reshard left half-done is
//!    rolled back (its sessions retired, `aborted` published).
//! 5. Wait for the shutdown token, a shard's end, or a reshard request or
//!    step (`resharder.rs`: the old and the new total run side by side
//!    until the new one has loaded every guild; a 4011 or Discord's
//!    recommendation requests one, `reshard_triggers.rs`). A 4004
//!    (authentication failed) ends the process with
//!    [`RunError::AuthenticationFailed`]: every other shard would fail the
//!    same way and burn the identify budget.
//! 6. Shutdown: every shard closes with 4000 and saves its session (its seq
//!    is the confirmed one, so nothing unconfirmed is skipped on resume);
//!    then the sink drains (publishes what it holds and waits for the
//!    confirms); all within `sharder.shutdown_grace`, after which what is
//!    left is abandoned (it is replayed on resume, never lost). Without
//!    Redis, the process then waits out the identify windows it opened
//!    (at most one window, within the grace): its replacement cannot know
//!    them, and an IDENTIFY inside one draws op 9.

use crate::amqp_sink::{AmqpSink, AmqpSinkConfig};
use crate::assignment::{ClusterLayout, PlanError, plan_shards};
use crate::connect::ResolverConnector;
use crate::connect_rate::{ConnectRate, PacedConnector};
use crate::gateway_bot::GatewayBotError;
use crate::generation;
use crate::http::{AdminState, admin_router, metrics_router, serve, serve_app};
use crate::identify::{IdentifyScheduler, IdentifySettings};
use crate::identify_breaker::BreakerPolicy;
use crate::identify_budget::SharedBudget;
use crate::identify_lock::RedisIdentifyLock;
use crate::recovery::{Recovery, recover};
use crate::reshard_cluster::{ClusterView, ReshardCluster};
use crate::reshard_marker::publish_marker;
use crate::reshard_plan::ReshardContext;
use crate::reshard_triggers;
use crate::resharder::{Resharder, ShardDone, Spawner};
use crate::session_redis::RedisSessionStore;
use crate::session_store::FileSessionStore;
use crate::shard::ShardExit;
use crate::shed::ShedList;
use crate::shed::ShedSink;
use crate::sink::ChannelSink;
use crate::startup::{AnySink, AnyStore, gateway_bot, redis_connection, refresh_budget};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why the process stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    GatewayBot(#[from] GatewayBotError),
    #[error("shard layout: {0}")]
    Layout(#[from] PlanError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("HTTP listener on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "shard {shard_id}: Discord refused the bot token (close 4004, authentication failed); \
         every shard stopped; replace the token"
    )]
    AuthenticationFailed { shard_id: u32 },
    #[error("DNS resolver: {0}")]
    Dns(String),
    #[error("every shard stopped (last: shard {shard_id}, {exit}); see the log for each reason")]
    AllShardsStopped { shard_id: u32, exit: String },
}

/// Where events go.
#[derive(Debug, Default)]
pub enum SinkChoice {
    /// RabbitMQ (`[amqp]`), the production sink.
    #[default]
    Amqp,
    /// An in-process channel (tests, demos).
    Channel(ChannelSink),
}

/// Options of [`run_with`] besides the configuration.
#[derive(Debug, Default)]
pub struct RunOptions {
    pub sink: SinkChoice,
    /// Receives the HTTP listener's address once bound.
    pub on_listening: Option<oneshot::Sender<SocketAddr>>,
}

/// How a run ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Shards run by this process.
    pub shards: Vec<u32>,
    /// The shutdown finished within `shutdown_grace`.
    pub drained: bool,
}

/// Runs the process's shards until `shutdown` is cancelled, with the AMQP sink.
pub async fn run(cfg: config::Config, shutdown: CancellationToken) -> Result<RunReport, RunError> {
    run_with(cfg, shutdown, RunOptions::default()).await
}

/// A run that ends before it started any shard (shutdown while starting).
fn not_started() -> RunReport {
    RunReport {
        shards: Vec::new(),
        drained: true,
    }
}

/// Runs the process's shards until `shutdown` is cancelled.
pub async fn run_with(
    cfg: config::Config,
    shutdown: CancellationToken,
    opts: RunOptions,
) -> Result<RunReport, RunError> {
    // The recorder first: the resolver (and anything else) binds its metric
    // handles at construction, and handles taken before the recorder exists
    // go nowhere.
    crate::http::prometheus();
    let trust = dnscache::Trust::load(&cfg.tls, &[cfg.amqp.url.expose(), cfg.redis.url.expose()])
        .map_err(|e| RunError::Config(e.to_string()))?;
    let resolver = dnscache::Resolver::shared(&cfg.dns)
        .map_err(|e| RunError::Dns(e.to_string()))?
        .with_trust(trust);
    let token = cfg
        .discord
        .require_token()
        .map_err(|e| RunError::Config(e.to_string()))?
        .clone();
    let shed = ShedList::new(&cfg.sharder.shed_events)
        .map_err(|e| RunError::Config(format!("sharder.shed_events: {e}")))?;
    let admin = AdminState::starting(&cfg.sharder, shed.clone());
    let listener = tokio::net::TcpListener::bind(cfg.sharder.http_listen)
        .await
        .map_err(|source| RunError::Http {
            addr: cfg.sharder.http_listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Http {
        addr: cfg.sharder.http_listen,
        source,
    })?;
    if let Some(tx) = opts.on_listening {
        let _ = tx.send(addr);
    }
    let http_stop = CancellationToken::new();
    admin.status().set_resolver(resolver.clone());
    let status = tokio::spawn(crate::status::publish(admin.clone(), http_stop.clone()));
    let http = match cfg.sharder.metrics_listen {
        None => tokio::spawn(serve(listener, admin.clone(), http_stop.clone())),
        Some(metrics_addr) => {
            let metrics = tokio::net::TcpListener::bind(metrics_addr)
                .await
                .map_err(|source| RunError::Http {
                    addr: metrics_addr,
                    source,
                })?;
            tracing::info!(addr = %metrics_addr, "metrics listening");
            let (admin_app, metrics_app) =
                (admin_router(admin.clone()), metrics_router(admin.clone()));
            let stop = http_stop.clone();
            tokio::spawn(async move {
                tokio::join!(
                    serve_app(listener, admin_app, stop.clone()),
                    serve_app(metrics, metrics_app, stop),
                );
            })
        }
    };
    let started = Started {
        resolver,
        token,
        shed,
        admin,
    };
    let result = run_shards(cfg, shutdown, opts.sink, started).await;
    http_stop.cancel();
    let _ = http.await;
    let _ = status.await;
    result
}

/// What [`run_with`] set up before the shards: the resolver, the token,
/// the shed list, and the HTTP endpoints' state (already served).
struct Started {
    resolver: dnscache::Resolver,
    token: config::Secret,
    shed: ShedList,
    admin: AdminState,
}

/// Steps 2 to 6 of the module docs, behind the HTTP endpoints.
async fn run_shards(
    mut cfg: config::Config,
    shutdown: CancellationToken,
    sink: SinkChoice,
    started: Started,
) -> Result<RunReport, RunError> {
    let Started {
        resolver,
        token,
        shed,
        admin,
    } = started;
    admin.set_phase("GET /gateway/bot");
    let Some(bot) = gateway_bot(&resolver, &cfg, &token, &shutdown).await? else {
        return Ok(not_started());
    };
    let mut limit = bot.session_start_limit;
    if let Some(mc) = cfg.sharder.max_concurrency {
        limit.max_concurrency = mc;
    }
    let auto_total = cfg.sharder.total_shards_auto;
    if cfg.sharder.total_shards_auto {
        // Discord's recommendation is only known now; everything below
        // (layout, IDENTIFY's `shard` pair, session ownership) uses it. A
        // stored session from another total is foreign and identifies anew.
        cfg.sharder.total_shards = bot.shards.max(1);
        cfg.sharder.total_shards_auto = false;
        tracing::info!(
            total_shards = cfg.sharder.total_shards,
            "total_shards = \"auto\": using Discord's recommended shard count"
        );
    } else if bot.shards > cfg.sharder.total_shards {
        tracing::warn!(
            recommended = bot.shards,
            configured = cfg.sharder.total_shards,
            "Discord recommends more shards than configured"
        );
    }
    let store = Arc::new(match cfg.sharder.session_store {
        config::SessionStoreKind::File => {
            AnyStore::File(FileSessionStore::new(&cfg.sharder.session_dir))
        }
        config::SessionStoreKind::Redis => {
            admin.set_phase("connecting to Redis (sessions)");
            let Some(conn) = redis_connection(&resolver, &cfg, &shutdown).await? else {
                return Ok(not_started());
            };
            AnyStore::Redis(RedisSessionStore::new(
                conn,
                cfg.redis.key_prefix.clone(),
                cfg.redis.session_ttl,
            ))
        }
    });
    let Recovery {
        configured,
        cluster,
        rejoin,
        never_announced,
        unfinished,
    } = recover(&mut cfg, &store, auto_total).await?;
    let layout =
        ClusterLayout::from_config(&cfg.sharder, limit.max_concurrency, cfg.redis.enabled());
    let shards = match &cfg.sharder.process_shards {
        Some(range) => crate::cli::check_shard_range(
            range,
            cfg.sharder.total_shards,
            Some(limit.max_concurrency),
            cfg.redis.enabled(),
        )
        .map_err(RunError::Config)?,
        None => plan_shards(&layout, cfg.sharder.process_index)?,
    };
    let partial = cfg
        .sharder
        .process_shards
        .as_ref()
        .is_some_and(|r| *r != (0..cfg.sharder.total_shards));
    let identify_redis = if cfg.redis.enabled() {
        admin.set_phase("connecting to Redis (identify lock and budget)");
        let Some(conn) = redis_connection(&resolver, &cfg, &shutdown).await? else {
            return Ok(not_started());
        };
        admin
            .status()
            .set_redis(conn.clone(), &cfg.redis.key_prefix);
        Some(conn)
    } else {
        None
    };
    let lock = match &identify_redis {
        Some(conn) if cfg.sharder.process_count > 1 || partial => {
            let owner = match &cfg.sharder.process_shards {
                Some(r) if partial => format!("sharder-shards-{}-{}", r.start, r.end),
                _ => format!("sharder-{}", cfg.sharder.process_index),
            };
            Some(RedisIdentifyLock::new(
                conn.clone(),
                cfg.redis.key_prefix.clone(),
                owner,
            ))
        }
        _ => None,
    };
    let presence_record = identify_redis
        .as_ref()
        .map(|conn| crate::commands::PresenceRecord::new(conn.clone(), &cfg.redis.key_prefix));
    let shared = identify_redis.map(|conn| SharedBudget::new(conn, &cfg.redis.key_prefix));
    let scheduler = IdentifyScheduler::with_cluster(
        limit,
        IdentifySettings::from(&cfg.sharder),
        lock,
        shared.clone(),
        BreakerPolicy::from(&cfg.sharder),
    );
    let budget_refresh = if shared.is_some() {
        scheduler
            .refresh_budget(limit, SharedBudget::no_mark())
            .await;
        Some(tokio::spawn(refresh_budget(
            scheduler.clone(),
            resolver.clone(),
            cfg.discord.api_base.clone(),
            token.clone(),
            cfg.sharder.identify_budget_refresh,
            cfg.sharder.max_concurrency,
        )))
    } else {
        None
    };
    admin.set_phase("starting the sink");
    let mut amqp_connection = None;
    let (sink, sink_task) = match sink {
        SinkChoice::Amqp => {
            let (s, task) = AmqpSink::start(resolver.clone(), AmqpSinkConfig::from_config(&cfg));
            amqp_connection = Some(s.connection());
            admin.status().set_sink(s.shared_stats());
            (AnySink::Amqp(s), Some(task))
        }
        SinkChoice::Channel(c) => (AnySink::Channel(c), None),
    };
    let sink = Arc::new(ShedSink::new(sink, shed.clone()));
    let gateway = cfg.sharder.gateway_url.clone().unwrap_or(bot.url);
    // One connection budget for every shard of the process: a burst of one
    // per shard (a restart resumes them all at once), then the rate.
    let connect_rate = Arc::new(ConnectRate::new(
        cfg.sharder.max_connects_per_second,
        u32::try_from(shards.len()).unwrap_or(u32::MAX),
    ));
    let connector = Arc::new(PacedConnector::new(
        ResolverConnector::new(resolver.clone()),
        connect_rate,
    ));

    let mut tasks: JoinSet<ShardDone> = JoinSet::new();
    let spawner = Spawner {
        cfg: Arc::new(cfg.clone()),
        gateway,
        scheduler: scheduler.clone(),
        store: store.clone(),
        sink: sink.clone(),
        connector,
        presence: crate::Presence::default(),
    };
    // The bot's status survives restarts: IDENTIFYs carry it from the start.
    if let Some(r) = &presence_record
        && let Err(e) = r.restore(&spawner.presence).await
    {
        tracing::warn!(error = %e, "cannot read the bot's stored presence; IDENTIFY without one");
    }
    drop(sink);
    // How the unfinished reshard ended goes to the workers before any shard
    // publishes, so every partition's window closes ahead of this start's
    // events. The record is cleared only once they were told; otherwise
    // the next start tells them again.
    if let Some((_, mut m)) = unfinished {
        admin.set_phase("telling the workers how the last reshard ended");
        m.at_ms = crate::clock::now_ms();
        match publish_marker(&*spawner.sink, m, cfg.amqp.partitions, MARKER_WITHIN).await {
            Ok(()) => {
                let record = generation::GenerationRecord {
                    total: cfg.sharder.total_shards,
                    configured,
                    reshard: None,
                };
                if let Err(e) = generation::save_record(&*store, &record).await {
                    tracing::error!(error = %e, "cannot record how the reshard ended");
                }
                if let (Some(c), Some(id)) = (&cluster, never_announced)
                    && let Err(e) = c
                        .give_up(id, "its claimer stopped before announcing it")
                        .await
                {
                    tracing::error!(error = %e, "cannot release the cluster's reshard state");
                }
            }
            Err(e) => tracing::error!(
                error = %e,
                "cannot tell the workers how the reshard ended; the next start tries again \
                 (check the broker)"
            ),
        }
    }
    // Restarted after the cluster committed a hand-over: this process's
    // old shards are retired (the new ones start below).
    let old = if rejoin.as_ref().is_some_and(|v| v.committed) {
        &[][..]
    } else {
        &shards[..]
    };
    let handles = spawner.spawn(cfg.sharder.total_shards, old, &mut tasks);
    tracing::info!(
        shards = shards.len(),
        total = cfg.sharder.total_shards,
        "shards started"
    );
    admin.start(handles.clone(), scheduler.clone());
    // Bots' commands through the relays (op 3, 4, 8) come over the broker
    // the events go to.
    let commands_stop = shutdown.child_token();
    let commands = amqp_connection.map(|connection| {
        tokio::spawn(crate::commands::run(
            connection,
            crate::AmqpTopology::named(&cfg.sharder.amqp_topology_base, cfg.amqp.partitions)
                .commands_exchange,
            admin.clone(),
            (spawner.presence.clone(), presence_record.clone()),
            commands_stop.clone(),
        ))
    });
    let (reshard_tx, mut reshard_rx) = mpsc::channel(4);
    admin.set_reshard(reshard_tx.clone());
    let mut resharder = Resharder {
        spawner,
        total: cfg.sharder.total_shards,
        current: handles,
        running: None,
        partitions: cfg.amqp.partitions,
        configured,
        marker_within: MARKER_WITHIN,
        stall_after: cfg.sharder.reshard.stall_after,
        cluster: cluster.clone(),
        last_id: None,
    };
    let joined_plan = |from: u32, to: u32| {
        let mut current = cfg.clone();
        current.sharder.total_shards = from;
        let context = ReshardContext::from_config(
            &current,
            limit.max_concurrency,
            scheduler.remaining(),
            scheduler.budget_reset_in(),
        );
        crate::reshard_plan::joined_plan(&context, to)
    };
    if let Some(v) = &rejoin {
        match joined_plan(v.from, v.to) {
            Ok(plan) => resharder.rejoin(v, plan, &mut tasks),
            Err(e) => tracing::error!(error = %e, "cannot lay out the cluster's reshard"),
        }
    }
    // Every process watches for a reshard another one announced.
    let (view_tx, mut views) = mpsc::channel(1);
    let watcher = cluster
        .clone()
        .map(|c| tokio::spawn(watch_cluster(c, view_tx)));
    let running_total = Arc::new(AtomicU32::new(resharder.total));
    // With several processes, the first alone polls Discord's
    // recommendation (the others would only be refused as busy).
    let auto =
        (cfg.sharder.reshard.auto_factor > 0.0 && cfg.sharder.process_index == 0).then(|| {
            tokio::spawn(reshard_triggers::poll_recommended(
                resolver.clone(),
                cfg.clone(),
                token.clone(),
                running_total.clone(),
                reshard_tx.clone(),
            ))
        });
    let mut cluster_view: Option<ClusterView> = None;
    publish_generation(&admin, &resharder, None);

    let mut failure = None;
    let mut last_exit = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(command) = reshard_rx.recv() => {
                let mut current = cfg.clone();
                current.sharder.total_shards = resharder.total;
                let mut answer = reshard_triggers::admit(&resharder, &current, limit.max_concurrency, &scheduler, &command);
                if let Ok(plan) = &answer
                    && let Err(why) = resharder.start(plan.clone(), command.trigger).await
                {
                    answer = Err(why);
                }
                if let Err(why) = &answer {
                    tracing::warn!(trigger = command.trigger.label(), to = command.request.to_total, reason = %why, "reshard refused");
                }
                if let Some(reply) = command.reply {
                    let _ = reply.send(answer);
                }
                publish_generation(&admin, &resharder, cluster_view.as_ref());
            }
            Some(view) = views.recv() => {
                cluster_view = Some(view.clone());
                if let Some(id) = view.running()
                    && !resharder.busy()
                    && resharder.last_id != Some(id)
                    && !view.committed
                    && view.aborted.is_none()
                    && view.from == resharder.total
                    && resharder.cluster.as_ref().is_some_and(|c| view.processes == 0 || view.processes == c.processes)
                {
                    match joined_plan(view.from, view.to) {
                        Ok(plan) => resharder.join(&view, plan, &mut tasks),
                        Err(e) => tracing::error!(error = %e, to = view.to, "cannot lay out the cluster's reshard"),
                    }
                }
                publish_generation(&admin, &resharder, cluster_view.as_ref());
            }
            done = resharder.next_step() => {
                if resharder.advance(done, &mut tasks) {
                    admin.set_shards(resharder.current.clone());
                    running_total.store(resharder.total, Ordering::Relaxed);
                }
                publish_generation(&admin, &resharder, cluster_view.as_ref());
            }
            joined = tasks.join_next() => match joined {
                None => {
                    if let Some((shard_id, exit)) = last_exit.take() {
                        failure = Some(RunError::AllShardsStopped { shard_id, exit });
                    }
                    break;
                }
                Some(Ok(ShardDone { total, id, exit })) if resharder.expected_end(total) => {
                    tracing::info!(shard_id = id, total, ?exit, "shard of a closing generation ended");
                }
                Some(Ok(ShardDone { id, exit: ShardExit::Fatal { authentication_failed: true, .. }, .. })) => {
                    tracing::error!(shard_id = id, "authentication failed (4004): stopping every shard");
                    failure = Some(RunError::AuthenticationFailed { shard_id: id });
                    break;
                }
                Some(Ok(ShardDone { id, exit, .. })) => {
                    tracing::error!(shard_id = id, ?exit, "shard ended");
                    if matches!(exit, ShardExit::Fatal { code: 4011, .. }) && !resharder.busy() {
                        reshard_triggers::sharding_required(
                            resolver.clone(), cfg.clone(), token.clone(), resharder.total, reshard_tx.clone(),
                        );
                    }
                    last_exit = Some((id, format!("{exit:?}")));
                }
                Some(Err(e)) => tracing::error!(error = %e, "shard task failed"),
            },
        }
    }
    if let Some(task) = auto {
        task.abort();
    }
    if let Some(task) = watcher {
        task.abort();
    }
    // Stopped, not aborted: aborted mid-close, it would leave lapin to
    // cancel and close in the background, racing on the sink's connection
    // (see `commands`).
    commands_stop.cancel();
    if let Some(mut task) = commands
        && tokio::time::timeout(COMMANDS_GRACE, &mut task)
            .await
            .is_err()
    {
        task.abort();
    }
    let drained = drain(
        resharder,
        tasks,
        sink_task,
        &scheduler,
        cfg.sharder.shutdown_grace,
    )
    .await;
    if let Some(task) = budget_refresh {
        task.abort();
    }
    tracing::info!(drained, "sharder stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(RunReport { shards, drained }),
    }
}

/// Step 6 of the module docs, once the loop has ended: every shard closes
/// and saves its session (an unfinished reshard's new total retires
/// instead), the sink publishes what it holds and waits for the confirms,
/// and, without Redis, the identify windows this process opened are
/// waited out; all within `grace`. Whether shards and sink finished in
/// time.
async fn drain<K, S, C>(
    mut resharder: Resharder<K, S, C>,
    mut tasks: JoinSet<ShardDone>,
    sink_task: Option<tokio::task::JoinHandle<()>>,
    scheduler: &IdentifyScheduler,
    grace: Duration,
) -> bool {
    let mut handles = resharder.current.clone();
    // Stopping mid-reshard: before the hand-over the next start rolls it
    // back, so the new total's sessions end for good (close 1000); the old
    // total's are saved, though the rollback retires them too (see the
    // start above). During the hand-over both are saved: the old
    // shards already told to retire keep closing with 1000, and the record
    // (committed or not) tells the next start which total's sessions to
    // resume and which to retire.
    //
    // With several processes the next start carries on instead (the
    // others are still in the reshard), so both totals' sessions are kept.
    let mut unfinished = Vec::new();
    let carries_on = resharder.cluster.is_some();
    if let Some(r) = resharder.running.take() {
        if r.handing_over() || carries_on {
            handles.extend(r.new.iter().cloned());
        } else {
            unfinished = r.new.clone();
        }
    }
    drop(resharder);

    let deadline = Instant::now() + grace;
    for (_, h) in &handles {
        h.shutdown();
    }
    for (_, h) in &unfinished {
        h.retire();
    }
    let mut drained = tokio::time::timeout_at(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    tasks.abort_all();
    if let Some(task) = sink_task {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(_) => {}
            Err(_) => {
                abort.abort();
                drained = false;
                tracing::warn!(
                    "the sink did not drain within shutdown_grace; the rest replays on resume"
                );
            }
        }
    }
    // A replacement process cannot know the windows this one opened (no
    // Redis), and one that identified a key inside its window would draw
    // op 9: wait them out, within the grace.
    if let Some(at) = scheduler.open_windows_close_at() {
        let at = at.min(deadline);
        tracing::info!(
            wait_ms = at.saturating_duration_since(Instant::now()).as_millis(),
            "waiting out this process's open identify windows before exiting"
        );
        tokio::time::sleep_until(at).await;
    }
    drained
}

/// Reads the cluster's reshard state every second for the runtime's loop.
async fn watch_cluster(cluster: ReshardCluster, tx: mpsc::Sender<ClusterView>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Ok(view) = cluster.view().await
            && tx.send(view).await.is_err()
        {
            return;
        }
    }
}

/// How long the broker may take to confirm a reshard marker on every
/// partition.
const MARKER_WITHIN: Duration = Duration::from_secs(30);

/// How long shutdown waits for the commands feed to close its channel.
const COMMANDS_GRACE: Duration = Duration::from_secs(2);

/// What `GET /admin/reshard` answers, and the gauges.
fn publish_generation<K, S, C>(
    admin: &AdminState,
    r: &Resharder<K, S, C>,
    cluster: Option<&ClusterView>,
) {
    metrics::gauge!("sharder_reshard_total").set(f64::from(r.total));
    let reshard = r.running.as_ref().map(|run| {
        // New shards done loading, and the guilds they hold.
        let (loaded, handed_over) = run
            .new
            .iter()
            .filter(|(_, h)| h.guilds_loading() == Some(0))
            .fold((0usize, 0u64), |(n, g), (_, h)| {
                (n + 1, g + u64::from(h.vitals().guilds()))
            });
        metrics::gauge!("sharder_reshard_new_shards_loaded").set(loaded as f64);
        serde_json::json!({
            "from": run.plan.from_total,
            "to": run.plan.to_total,
            "trigger": run.trigger.label(),
            "id": run.marker.id,
            "new_shards": run.new.len(),
            "new_shards_loaded": loaded,
            "guilds_handed_over": handed_over,
            "seconds": run.since.elapsed().as_secs_f64(),
            "floor_seconds": run.plan.cold_boot_floor.as_secs_f64(),
            "cluster": cluster.filter(|v| v.id == Some(run.marker.id)).map(|v| {
                let processes = r.cluster.as_ref().map_or(1, |c| c.processes);
                metrics::gauge!("sharder_reshard_processes_loaded").set(f64::from(v.loaded));
                serde_json::json!({
                    "processes": processes,
                    "loaded": v.loaded,
                    "committed": v.committed,
                    "aborted": v.aborted,
                    "retired": v.retired,
                    "rolled_back": v.rolled_back,
                })
            }),
        })
    });
    admin.set_generation(serde_json::json!({ "total": r.total, "reshard": reshard }));
}

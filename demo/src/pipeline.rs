//! One demo run, phase by phase.
//!
//! # Algorithm
//! 1. Start the simulator (N shards, `max_concurrency` 16, the scaled
//!    identify window, events flowing from the start) and the queue with
//!    its consumers into the worker.
//! 2. Start the real sharder ([`sharder::run_with`]) with a generated
//!    configuration: every shard in this process, sessions in a temporary
//!    directory, the identify window plus a margin.
//! 3. **Cold boot**: every 250 ms, read the counters and the worker's
//!    READYs, report each batch as it completes, until every shard is
//!    READY (or the boot takes more than twice the floor plus the patience).
//! 4. **Traffic**: events keep flowing for `traffic`. With `--reshard-to`,
//!    half-way through it the sharder is asked for a live reshard
//!    (`POST /admin/reshard`, as an operator would), and the traffic goes
//!    on until both totals have handed over.
//! 5. **Drain**: stop the generator; once the worker has processed every
//!    dispatch, end any outage still open (so every guild's data is
//!    delivered, and compared) and wait again, until nothing is left.
//! 6. Stop the sharder, compare the cache with the truth, audit the joins,
//!    stop the consumers and delete what the run created.

use crate::error::DemoError;
use crate::observe::{Counters, Observation};
use crate::options::{CacheKind, DemoOptions, MAX_CONCURRENCY, QueueKind};
use crate::progress::{CacheCounts, Phase, Progress, Snapshot};
use crate::queue::Queue;
use crate::relay::RelayRun;
use crate::summary::{ReshardFigures, Summary};
use crate::verdict::{audit_joins, check_stream, compare_cache, ledger_guilds};
use discord_sim::{SimConfig, SimHandle, Simulator};
use sharder::{RunOptions, RunReport};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use worker::{MemoryStore, RedisStore, Store, Worker};

/// How often progress is sampled.
const TICK: Duration = Duration::from_millis(250);

/// The sharder's shutdown bound in the generated configuration.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// GUILDS, GUILD_MEMBERS, GUILD_PRESENCES, GUILD_MESSAGES and
/// GUILD_MESSAGE_TYPING: everything the cache and the event mix use.
const INTENTS: u64 = 1 | (1 << 1) | (1 << 8) | (1 << 9) | (1 << 11);

/// A store that can say how much it holds, for the progress display.
pub trait CacheSize {
    fn counts(&self) -> Option<CacheCounts>;
}

impl CacheSize for MemoryStore {
    fn counts(&self) -> Option<CacheCounts> {
        let s = self.stats();
        Some(CacheCounts {
            guilds: s.guilds,
            channels: s.channels,
            roles: s.roles,
            members: s.members,
            users: s.users,
        })
    }
}

impl CacheSize for RedisStore {
    fn counts(&self) -> Option<CacheCounts> {
        None
    }
}

/// A temporary directory for the sharder's sessions, removed on drop.
struct SessionDir(PathBuf);

impl SessionDir {
    fn new(name: &str) -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for SessionDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The sharder's configuration for `sim`, validated by the `config` crate.
fn sharder_config(
    opts: &DemoOptions,
    sim: &SimHandle,
    sessions: &SessionDir,
    base: &str,
) -> Result<config::Config, config::ConfigError> {
    let toml = format!(
        "[discord]\napi_base = \"{api}/api/v10\"\nintents = {INTENTS}\n\
         [sharder]\ntotal_shards = {shards}\ngateway_url = \"{gw}\"\n\
         http_listen = \"127.0.0.1:0\"\nidentify_window = \"{window}ms\"\n\
         persist_interval = \"1s\"\nshutdown_grace = \"{grace}s\"\n\
         amqp_topology_base = \"{base}\"\n[amqp]\npartitions = {partitions}\n",
        api = sim.http_url(),
        shards = opts.shards,
        gw = sim.gateway_url(),
        window = opts.sharder_window().as_millis(),
        grace = SHUTDOWN_GRACE.as_secs(),
        partitions = opts.partitions,
    );
    let mut env = vec![
        (
            "BULWARK_DISCORD__TOKEN".to_owned(),
            sim.config().token.clone(),
        ),
        (
            "BULWARK_SHARDER__SESSION_DIR".to_owned(),
            sessions.0.display().to_string(),
        ),
    ];
    if opts.queue == QueueKind::Rabbitmq {
        env.push(("BULWARK_AMQP__URL".to_owned(), opts.amqp_url.clone()));
    }
    config::Config::from_toml_str(&toml, "bulwark-demo", env)
}

/// Runs the demo over `store`, with the simulator started here.
pub async fn drive<S: Store + CacheSize>(
    opts: &DemoOptions,
    store: Arc<S>,
    base: &str,
    progress: &mut Progress,
    interrupt: &CancellationToken,
) -> Result<Summary, DemoError> {
    let started = Instant::now();
    let baseline = Counters::read();
    let sim = Simulator::start(SimConfig {
        shards: opts.shards,
        guilds: opts.shards.saturating_mul(opts.guilds_per_shard),
        identify_window: opts.window,
        max_concurrency: MAX_CONCURRENCY,
        event_rate: opts.event_rate,
        event_mix: opts.event_mix.clone(),
        ..SimConfig::default()
    })
    .await?;
    let result = with_simulator(
        opts, store, base, &sim, progress, interrupt, started, baseline,
    )
    .await;
    sim.shutdown().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn with_simulator<S: Store + CacheSize>(
    opts: &DemoOptions,
    store: Arc<S>,
    base: &str,
    sim: &SimHandle,
    progress: &mut Progress,
    interrupt: &CancellationToken,
    started: Instant,
    baseline: Counters,
) -> Result<Summary, DemoError> {
    let observation = Arc::new(Observation::new());
    let mut worker = Worker::with_shared_store(store.clone());
    // `--relay`: the clean events go to the output exchange, as the worker
    // binary publishes them, for the relay to read.
    let output_stop = CancellationToken::new();
    let mut output = None;
    if opts.relay {
        let exchange = worker::AmqpTopology::named(base, opts.partitions).output_exchange;
        let (handler, task) = crate::relay::output(
            opts.amqp_url.clone(),
            exchange,
            opts.queue == QueueKind::InProcess,
            output_stop.clone(),
        );
        worker = worker.on_any(handler);
        output = Some(task);
    }
    let worker = Arc::new(observation.attach(worker));
    let relay = match opts.relay {
        true => Some(RelayRun::start(sim, &opts.amqp_url, &opts.redis_url, base, INTENTS).await?),
        false => None,
    };
    let sessions = SessionDir::new(base)?;
    let cfg = sharder_config(opts, sim, &sessions, base)?;
    let dns = cfg.dns.clone();
    let (queue, sink) = Queue::start(opts, base, worker).await?;
    let stop = CancellationToken::new();
    let (listening, admin) = tokio::sync::oneshot::channel();
    let sharder = tokio::spawn(sharder::run_with(
        cfg,
        stop.clone(),
        RunOptions {
            sink,
            on_listening: Some(listening),
        },
    ));
    let url = format!(
        "http://{}",
        admin
            .await
            .map_err(|_| DemoError::Timeout("the sharder never listened".into()))?
    );
    progress.note(&format!("status page: {url}/"));
    if let Some(r) = &relay {
        progress.note(&format!(
            "relay: {} (a twilight bot connects through it once every shard is READY)",
            r.url()
        ));
    }
    let admin = match opts.reshard_to {
        Some(_) => Some(Admin {
            url: url.clone(),
            resolver: dnscache::Resolver::shared(&dns)
                .map_err(|e| std::io::Error::other(e.to_string()))?,
        }),
        None => None,
    };
    let watcher = Watcher {
        opts,
        sim,
        store: &*store,
        observation: &observation,
        baseline,
        started,
        admin,
        relay: relay.as_ref(),
    };
    let mut reshard = None;
    let watched = watcher
        .watch(progress, interrupt, &sharder, &queue, &mut reshard)
        .await;
    if watched.is_ok() && !opts.serve.is_zero() {
        progress.note(&format!(
            "status page: {url}/ stays up for {} s (Ctrl-C ends it)",
            opts.serve.as_secs()
        ));
        tokio::select! {
            () = tokio::time::sleep(opts.serve) => {}
            () = interrupt.cancelled() => {}
        }
    }
    stop.cancel();
    let ended = match tokio::time::timeout(SHUTDOWN_GRACE * 2, sharder).await {
        Ok(Ok(r)) => r.map_err(DemoError::from),
        Ok(Err(e)) => Err(DemoError::Io(std::io::Error::other(format!(
            "sharder task: {e}"
        )))),
        Err(_) => Err(DemoError::Timeout("the sharder did not stop".into())),
    };
    let outcome = async {
        watched?;
        let report = ended?;
        let mut summary = verdict(opts, &*store, sim, &observation, &report, &baseline).await?;
        summary.reshard = reshard;
        summary.relay = relay.as_ref().map(|r| r.figures(sim));
        Ok::<_, DemoError>(summary)
    }
    .await;
    if let Some(r) = relay {
        r.stop().await;
    }
    output_stop.cancel();
    if let Some(task) = output {
        let _ = task.await;
    }
    let closed = queue.close().await;
    let mut summary = outcome?;
    closed?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

async fn verdict<S: Store>(
    opts: &DemoOptions,
    store: &S,
    sim: &SimHandle,
    observation: &Observation,
    report: &RunReport,
    baseline: &Counters,
) -> Result<Summary, DemoError> {
    let truth = sim.truth();
    let ledger = sim.ledger();
    let counters = sim.counters();
    let ready_guilds = observation.ready_guilds();
    let mut seen = ledger_guilds(&ledger);
    seen.extend(ready_guilds.values().flatten().copied());
    let cache_check = compare_cache(store, &truth, seen).await?;
    let joins = audit_joins(&ledger, &ready_guilds, &observation.joins());
    let flow = Counters::read().since(baseline);
    let ready_span = observation.ready_span().unwrap_or_default();
    Ok(Summary {
        shards: opts.shards,
        batches: opts.batches(),
        window: opts.window,
        queue: match opts.queue {
            QueueKind::InProcess => "in-process channel".into(),
            QueueKind::Rabbitmq => format!("RabbitMQ ({} partitions)", opts.partitions),
        },
        cache: match opts.cache {
            CacheKind::Memory => "in-memory".into(),
            CacheKind::Redis => "Redis".into(),
        },
        ready_span,
        floor: opts.floor(),
        identifies: counters.identifies,
        identify_violations: counters.identify_violations,
        dispatched: counters.events_dispatched,
        forwarded: flow.forwarded as u64,
        processed: flow.processed as u64,
        applied: flow.applied as u64,
        joins,
        cache_check,
        drained: report.drained,
        elapsed: Duration::ZERO,
        reshard: None,
        stream: check_stream(&ledger, &observation.guild_events()),
        relay: None,
    })
}

/// Reads the pipeline and drives the phases.
struct Watcher<'a, S> {
    opts: &'a DemoOptions,
    sim: &'a SimHandle,
    store: &'a S,
    observation: &'a Observation,
    baseline: Counters,
    started: Instant,
    /// The sharder's admin API, when a live reshard is to be asked for.
    admin: Option<Admin>,
    /// `--relay`: the relay and its client.
    relay: Option<&'a RelayRun>,
}

/// The sharder's admin endpoint, for `--reshard-to`.
struct Admin {
    url: String,
    resolver: dnscache::Resolver,
}

/// A live reshard the demo asked for, as it runs.
struct Resharding {
    to: u32,
    asked: Instant,
    floor: Duration,
    identifies_before: u64,
    announced_before: u64,
}

impl<S: Store + CacheSize> Watcher<'_, S> {
    async fn watch(
        &self,
        progress: &mut Progress,
        interrupt: &CancellationToken,
        sharder: &tokio::task::JoinHandle<Result<RunReport, sharder::RunError>>,
        queue: &Queue,
        reshard_done: &mut Option<ReshardFigures>,
    ) -> Result<(), DemoError> {
        let opts = self.opts;
        let batches = opts.batches();
        let boot_deadline = self.started + opts.floor() * 2 + opts.patience;
        let mut tick = tokio::time::interval(TICK);
        let mut phase = Phase::Booting;
        let mut phase_end = boot_deadline;
        let mut announced = 0u32;
        let mut last = (Instant::now(), 0.0f64);
        let mut resharding: Option<Resharding> = None;
        progress.note(&format!(
            "{} shards in {batches} identify batches of {MAX_CONCURRENCY}, window {:?}: \
             protocol floor {:?}",
            opts.shards,
            opts.window,
            opts.floor()
        ));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = interrupt.cancelled() => return Err(DemoError::Interrupted),
            }
            if sharder.is_finished() {
                // Its error is reported by the caller.
                return Ok(());
            }
            if queue.broken() {
                return Err(DemoError::Timeout(
                    "a queue consumer stopped; see the log".into(),
                ));
            }
            let now = Instant::now();
            let counters = Counters::read().since(&self.baseline);
            let mean = if counters.identifies > 0.0 {
                Duration::from_secs_f64(counters.identify_wait_sum / counters.identifies)
            } else {
                Duration::ZERO
            };
            let ready = self.observation.ready_shards();
            let complete = complete_batches(ready.len(), opts.shards);
            while announced < complete {
                announced += 1;
                progress.note(&format!(
                    "batch {announced}/{batches} connected: {} of {} shards READY at {:.2}s \
                     ({} identifies granted, mean wait {:.2}s)",
                    (announced * MAX_CONCURRENCY).min(opts.shards),
                    opts.shards,
                    self.started.elapsed().as_secs_f64(),
                    counters.identifies,
                    mean.as_secs_f64()
                ));
            }
            let rate = (counters.forwarded - last.1) / now.duration_since(last.0).as_secs_f64();
            last = (now, counters.forwarded);
            let (available, unavailable, removed) = self.observation.lifecycle();
            progress.update(&Snapshot {
                elapsed: self.started.elapsed(),
                phase,
                shards: opts.shards,
                ready: ready.len() as u32,
                batch: ((complete + 1).min(batches), batches),
                identifies: counters.identifies as u64,
                identify_wait_mean: mean,
                forwarded: counters.forwarded as u64,
                processed: counters.processed as u64,
                events_per_sec: rate.max(0.0),
                cache: self.store.counts(),
                guild_events: (
                    available,
                    self.observation.joins().len() as u64,
                    unavailable,
                    removed,
                ),
            });
            if let Some(took) = self.relay.and_then(|r| r.mark_when_loaded(self.sim)) {
                progress.note(&format!(
                    "the relay's bot holds its snapshot after {:.2}s; every world event from now on \
                     must reach it ({:?} more of traffic)",
                    took.as_secs_f64(),
                    opts.traffic
                ));
                // The traffic is judged from the bot's snapshot on: it
                // gets its full length after it.
                if phase == Phase::Traffic {
                    phase_end = phase_end.max(now + opts.traffic);
                }
            }
            let bot_waits = self.relay.is_some_and(|r| !r.marked())
                && now < self.started + opts.floor() * 2 + opts.patience * 2;
            let reshard_pending = phase == Phase::Traffic
                && self
                    .reshard_step(progress, now, phase_end, &mut resharding, reshard_done)
                    .await?;
            match phase {
                Phase::Booting if ready.len() as u32 >= opts.shards => {
                    let span = self.observation.ready_span().unwrap_or_default();
                    progress.note(&format!(
                        "all {} shards READY: READY span {:.2}s against the floor {:.2}s; \
                         {:?} of traffic follows",
                        opts.shards,
                        span.as_secs_f64(),
                        opts.floor().as_secs_f64(),
                        opts.traffic
                    ));
                    phase = Phase::Traffic;
                    phase_end = now + opts.traffic;
                    if let Some(r) = self.relay {
                        r.connect();
                        progress.note("a twilight bot connects through the relay (shard [0, 1])");
                    }
                }
                Phase::Booting if now > phase_end => {
                    return Err(DemoError::Timeout(format!(
                        "only {} of {} shards READY after {:.1}s",
                        ready.len(),
                        opts.shards,
                        self.started.elapsed().as_secs_f64()
                    )));
                }
                Phase::Traffic if now >= phase_end && !reshard_pending && !bot_waits => {
                    self.sim.set_event_rate(0.0)?;
                    progress.note("events stopped; the worker catches up");
                    phase = Phase::Draining;
                    phase_end = now + opts.patience;
                }
                Phase::Draining => {
                    let dispatched = self.sim.counters().events_dispatched as f64;
                    // After a live reshard the retired sessions' unread
                    // dispatches are never forwarded: wait for every
                    // logical event in the clean stream instead.
                    let caught_up = if self.opts.reshard_to.is_some() {
                        counters.processed >= counters.forwarded
                            && check_stream(&self.sim.ledger(), &self.observation.guild_events())
                                .lost
                                == 0
                    } else {
                        counters.forwarded >= dispatched && counters.processed >= dispatched
                    };
                    // The relay's bot too, within the patience (a bot that
                    // never catches up is a FAIL row, not an error).
                    let relay_done = self
                        .relay
                        .is_none_or(|r| r.caught_up(self.sim) || now > phase_end);
                    if caught_up && relay_done {
                        if self.end_outages() == 0 {
                            return Ok(());
                        }
                    } else if caught_up {
                    } else if now > phase_end {
                        let stream = self
                            .opts
                            .reshard_to
                            .map(|_| {
                                let c = check_stream(&self.sim.ledger(), &self.observation.guild_events());
                                format!(
                                    " (forwarded {}; clean stream vs ledger: {} lost, {} twice of {}, e.g. {})",
                                    counters.forwarded, c.lost, c.twice, c.events, c.examples.join("; ")
                                )
                            })
                            .unwrap_or_default();
                        return Err(DemoError::Timeout(format!(
                            "the worker processed {} of {dispatched} events{stream}",
                            counters.processed
                        )));
                    }
                }
                Phase::Booting | Phase::Traffic => {}
            }
        }
    }

    /// Drives `--reshard-to` during the traffic (ending at `traffic_end`):
    /// asks for it half-way, then follows it. Returns whether it is still
    /// to ask for or running.
    async fn reshard_step(
        &self,
        progress: &mut Progress,
        now: Instant,
        traffic_end: Instant,
        resharding: &mut Option<Resharding>,
        done: &mut Option<ReshardFigures>,
    ) -> Result<bool, DemoError> {
        let (Some(to), Some(admin)) = (self.opts.reshard_to, &self.admin) else {
            return Ok(false);
        };
        if done.is_some() {
            return Ok(false);
        }
        let token = config::Secret::default();
        let Some(r) = resharding.as_ref() else {
            if now + self.opts.traffic / 2 < traffic_end {
                return Ok(true);
            }
            let plan =
                sharder::request_reshard(&admin.resolver, &admin.url, &token, to, false).await?;
            let floor = Duration::from_secs_f64(plan["cold_boot_floor_s"].as_f64().unwrap_or(0.0));
            progress.note(&format!(
                "live reshard {} -> {to} shards asked for: {} identifies, new total's floor \
                 {:.2}s; the old shards serve until the new ones have every guild",
                self.opts.shards,
                plan["identifies"],
                floor.as_secs_f64()
            ));
            *resharding = Some(Resharding {
                to,
                asked: now,
                floor,
                identifies_before: self.sim.counters().identifies,
                announced_before: self.observation.initial_loads(),
            });
            return Ok(true);
        };
        let v = sharder::reshard_status(&admin.resolver, &admin.url, &token).await?;
        if v["total"] == r.to && v["reshard"].is_null() {
            let took = now.duration_since(r.asked);
            let reannounced = self
                .observation
                .initial_loads()
                .saturating_sub(r.announced_before);
            progress.note(&format!(
                "live reshard done: {} shards serve after {:.2}s (floor {:.2}s), \
                 {reannounced} guilds announced again",
                r.to,
                took.as_secs_f64(),
                r.floor.as_secs_f64()
            ));
            *done = Some(ReshardFigures {
                from: self.opts.shards,
                to: r.to,
                took,
                floor: r.floor,
                identifies: self.sim.counters().identifies - r.identifies_before,
                reannounced,
            });
            return Ok(false);
        }
        if now.duration_since(r.asked) > r.floor * 2 + self.opts.patience {
            return Err(DemoError::Timeout(format!(
                "the live reshard to {} shards did not complete: {v}",
                r.to
            )));
        }
        Ok(true)
    }

    /// Ends every open outage; returns how many there were.
    fn end_outages(&self) -> usize {
        self.sim
            .truth()
            .guilds
            .iter()
            .filter(|(_, g)| g.unavailable)
            .filter(|(id, _)| self.sim.restore(**id))
            .count()
    }
}

/// Identify batches completed: the scheduler grants one identify per key
/// per window, to whichever of the key's shards asks first, so a batch is
/// "any 16 more shards READY", not a fixed id range.
fn complete_batches(ready: usize, shards: u32) -> u32 {
    let ready = u32::try_from(ready).unwrap_or(u32::MAX).min(shards);
    if ready == shards {
        shards.div_ceil(MAX_CONCURRENCY)
    } else {
        ready / MAX_CONCURRENCY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_complete_every_16_ready_shards() {
        assert_eq!(complete_batches(0, 40), 0);
        assert_eq!(complete_batches(15, 40), 0);
        assert_eq!(complete_batches(16, 40), 1);
        assert_eq!(complete_batches(39, 40), 2);
        assert_eq!(complete_batches(40, 40), 3);
        assert_eq!(complete_batches(1, 1), 1);
    }
}

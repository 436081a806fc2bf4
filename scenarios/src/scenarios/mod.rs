//! The incidents, one module each, and what they share.
//!
//! Each module has `run(Size) -> Result<ScenarioReport>`; [`run_scenario`]
//! runs one by name, bounded in time, and turns an environment failure
//! into a failed report. [`Env`] holds what every scenario sets up the
//! same way: the executables, a temp dir for configs, sessions and logs,
//! the run's own RabbitMQ topology and Redis prefix, and the checks; its
//! [`Env::finish`] removes the topology and the keys whatever happened.

pub mod broker_outage;
pub mod cold_boot;
pub mod corrupt_data;
pub mod dns_outage;
pub mod dns_storm;
pub mod relay_clients;
pub mod reshard_live;
pub mod rolling_restart;
pub mod rollout_safety;
pub mod runtime_controls;
pub mod status_page;
pub mod worker_scale_out;
pub mod worker_throughput;

use crate::binaries::Binaries;
use crate::broker::Broker;
use crate::bulwark::{Process, TomlConfig, free_addr, sharder_config, worker_config};
use crate::report::{Checks, ScenarioReport, Size};
use crate::sim::{SimArgs, SimProcess};
use crate::{Result, ScenarioError, TempDir, unique_name};
use envelope::topology::AmqpTopology;
use std::time::Duration;

/// A scenario of the suite.
#[derive(Debug, Clone, Copy)]
pub struct ScenarioInfo {
    /// Name on the command line.
    pub name: &'static str,
    /// The incident, in a few words.
    pub incident: &'static str,
    /// What it asserts.
    pub asserts: &'static str,
}

/// Every scenario, in the order of DESIGN.md.
pub const SCENARIOS: &[ScenarioInfo] = &[
    dns_storm::INFO,
    dns_outage::INFO,
    rolling_restart::INFO,
    cold_boot::INFO,
    corrupt_data::INFO,
    broker_outage::INFO,
    runtime_controls::INFO,
    rollout_safety::INFO,
    worker_scale_out::INFO,
    reshard_live::INFO,
    reshard_live::INFO_4011,
    reshard_live::INFO_KILL,
    relay_clients::INFO,
    status_page::INFO,
];

/// Measurements the runner runs by name only (not in `run all`, not in
/// the tests): they assert little and take minutes.
pub const MEASUREMENTS: &[ScenarioInfo] = &[worker_throughput::INFO];

/// Longest a scenario may run before it is failed.
pub fn time_limit(size: Size) -> Duration {
    size.pick(Duration::from_secs(180), Duration::from_secs(1200))
}

/// Runs scenario `name`; unknown names, setup errors and overruns are
/// failed reports.
pub async fn run_scenario(name: &str, size: Size) -> ScenarioReport {
    let limit = time_limit(size);
    let run = async {
        match name {
            "dns-storm" => dns_storm::run(size).await,
            "dns-outage" => dns_outage::run(size).await,
            "rolling-restart" => rolling_restart::run(size).await,
            "cold-boot" => cold_boot::run(size).await,
            "corrupt-data" => corrupt_data::run(size).await,
            "broker-outage" => broker_outage::run(size).await,
            "runtime-controls" => runtime_controls::run(size).await,
            "rollout-safety" => rollout_safety::run(size).await,
            "worker-scale-out" => worker_scale_out::run(size).await,
            "reshard-live" => reshard_live::run(size, reshard_live::Trigger::Operator).await,
            "reshard-4011" => reshard_live::run(size, reshard_live::Trigger::GuildCap).await,
            "reshard-kill" => reshard_live::run(size, reshard_live::Trigger::KillMidway).await,
            "relay-clients" => relay_clients::run(size).await,
            "status-page" => status_page::run(size).await,
            "worker-throughput" => worker_throughput::run(size).await,
            other => Err(ScenarioError::Setup(format!(
                "unknown scenario {other:?}; see `bulwark-scenarios list`"
            ))),
        }
    };
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => ScenarioReport::errored(name, &e),
        Err(_) => ScenarioReport::errored(name, &format!("did not finish within {limit:?}")),
    }
}

/// [`run_scenario`] on a fresh two-thread runtime (tests, the runner).
pub fn run_blocking(name: &str, size: Size) -> ScenarioReport {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(run_scenario(name, size)),
        Err(e) => ScenarioReport::errored(name, &e),
    }
}

/// What every scenario sets up the same way.
pub struct Env {
    pub bins: Binaries,
    pub dir: TempDir,
    /// The run's exchange and queue names.
    pub topo: AmqpTopology,
    pub broker: Broker,
    /// Prefix of every Redis key of the run.
    pub redis_prefix: String,
    pub checks: Checks,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("dir", &self.dir)
            .field("topo", &self.topo)
            .finish_non_exhaustive()
    }
}

impl Env {
    /// Locates the executables, makes the temp dir, connects to RabbitMQ
    /// and declares the run's topology with `partitions`.
    pub async fn new(name: &str, partitions: u32) -> Result<Self> {
        let bins = Binaries::locate()?;
        let dir = TempDir::new(name)?;
        let base = unique_name(name);
        let topo = AmqpTopology::named(&base, partitions);
        let broker = Broker::connect().await?;
        broker.declare(&topo).await?;
        Ok(Self {
            bins,
            dir,
            topo,
            broker,
            redis_prefix: format!("{}:", unique_name(name)),
            checks: Checks::new(name),
        })
    }

    /// Starts the simulator.
    pub fn sim(&self, args: SimArgs) -> Result<SimProcess> {
        SimProcess::start(&self.bins.sim, args, &self.dir.join("discord-sim.log"))
    }

    /// The base sharder configuration for `sim` (see
    /// [`crate::bulwark::sharder_config`]), sessions in `<dir>/sessions`.
    pub fn sharder_config(&self, sim: &SimProcess, margin_ms: u64) -> Result<TomlConfig> {
        Ok(sharder_config(
            sim,
            &self.topo.exchange,
            self.topo.partitions,
            free_addr()?,
            &self.dir.join("sessions"),
            margin_ms,
        ))
    }

    /// Sharder pod `index` of two, with its sessions, lock, reshard state
    /// and status report in the run's Redis keys.
    pub fn redis_pod_config(
        &self,
        sim: &SimProcess,
        margin_ms: u64,
        index: u32,
    ) -> Result<TomlConfig> {
        let mut c = self.sharder_config(sim, margin_ms)?;
        c.set("sharder", "process_count", "2")
            .set("sharder", "process_index", index.to_string())
            .set_str("sharder", "session_store", "redis")
            .set_str("redis", "url", "redis://127.0.0.1:6379")
            .set_str("redis", "key_prefix", &self.redis_prefix);
        Ok(c)
    }

    /// The base worker configuration for the run's topology.
    pub fn worker_config(&self) -> Result<TomlConfig> {
        Ok(worker_config(
            &self.topo.exchange,
            self.topo.partitions,
            free_addr()?,
        ))
    }

    /// Starts a sharder named `name` with `cfg` (its `http_listen` is the
    /// address probed) and extra `args`.
    pub fn start_sharder(&self, name: &str, cfg: &TomlConfig, args: &[String]) -> Result<Process> {
        let http = listen_of(cfg, "sharder")?;
        Process::start(&self.bins.sharder, name, &self.dir.0, cfg, http, args)
    }

    /// Starts a worker named `name` with `cfg`.
    pub fn start_worker(&self, name: &str, cfg: &TomlConfig) -> Result<Process> {
        let http = listen_of(cfg, "worker")?;
        Process::start(&self.bins.worker, name, &self.dir.0, cfg, http, &[])
    }

    /// Waits (at most `within`) until every partition queue of the run is
    /// empty.
    pub async fn wait_drained(&self, within: Duration) -> Result<()> {
        crate::wait_until("every partition queue drained", within, async || {
            self.broker
                .backlog(&self.topo)
                .await
                .is_ok_and(|b| b.iter().all(|&n| n == 0))
        })
        .await
    }

    /// Waits (at most `within`) until the cache behind `worker`'s read API
    /// equals `truth`, records the check "worker cache == truth" with the
    /// differences, and returns the last comparison.
    pub async fn expect_cache_equal(
        &mut self,
        worker: std::net::SocketAddr,
        truth: &serde_json::Value,
        within: Duration,
    ) -> crate::cache_check::CacheDiff {
        let mut diff = crate::cache_check::CacheDiff::default();
        let _ = crate::wait_until("worker cache equal to the truth", within, async || {
            match crate::cache_check::compare(worker, truth).await {
                Ok(d) => {
                    let eq = d.equal();
                    diff = d;
                    eq
                }
                Err(_) => false,
            }
        })
        .await;
        self.checks.expect(
            "worker cache == truth",
            diff.equal(),
            format!(
                "{}/{} guilds equal; {}",
                diff.matching,
                diff.guilds,
                diff.differences.join(" | ")
            ),
        );
        diff
    }

    /// Removes the topology and the Redis keys, then turns the outcome of
    /// the scenario body into its report.
    pub async fn finish(self, outcome: Result<()>) -> Result<ScenarioReport> {
        self.broker.delete(&self.topo).await;
        let _ = crate::redis_keys::delete_prefix(&self.redis_prefix).await;
        let report = outcome.map(|()| self.checks.finish());
        // A failure in CI leaves its processes' logs behind: a flake seen
        // once can then be read, not guessed at.
        if !report.as_ref().is_ok_and(|r| r.passed) {
            self.dir.keep_as_artifact();
        }
        report
    }
}

/// The `http_listen` of `section` in `cfg`.
/// The node project at `dir` (relative to this crate) with `package`
/// installed by `.ci/services` (`npm ci`), or a setup error that says so.
fn node_project(dir: &str, package: &str) -> Result<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    if !path.join("node_modules").join(package).is_dir() {
        return Err(ScenarioError::Setup(format!(
            "{package} is not installed: run .ci/services (npm ci in {})",
            path.display()
        )));
    }
    Ok(path)
}

fn listen_of(cfg: &TomlConfig, section: &str) -> Result<std::net::SocketAddr> {
    let text = cfg.render();
    let mut in_section = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
        } else if in_section && let Some(v) = line.strip_prefix("http_listen = ") {
            return v
                .trim_matches('"')
                .parse()
                .map_err(|_| ScenarioError::Setup(format!("bad http_listen {v}")));
        }
    }
    Err(ScenarioError::Setup(format!(
        "{section}.http_listen is not set"
    )))
}

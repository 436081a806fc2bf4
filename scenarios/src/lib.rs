//! The incident scenario suite: every incident Bulwark exists to survive
//! (`../shared/DESIGN.md`, "The incidents this project exists to survive"),
//! replayed end to end against the real binaries.
//!
//! Why a separate crate: unit and crate tests prove each box in-process;
//! an incident crosses boxes and processes (a DNS restart under a running
//! sharder, a broker cut between sharder and worker, a `SIGTERM` in the
//! middle of a rollout). So every scenario here spawns the built `sharder`,
//! `worker` and `discord-sim` executables, points them at the real RabbitMQ
//! (127.0.0.1:5672), the real Redis (127.0.0.1:6379) and a private dnsmasq
//! on a loopback port, injects the incident, and asserts numbers read from
//! the outside: `/metrics`, the simulator's ledger and counters, RabbitMQ
//! queue counts, dnsmasq's query log, and the connection attempts seen by a
//! fault-injecting TCP proxy. Log lines are never asserted.
//!
//! # Layout
//! - [`report`]: [`ScenarioReport`], the checks and figures of a run, and
//!   the [`Size`] (fast default or `--full`).
//! - Harness, one concept per module: [`binaries`] (finding the
//!   executables), [`child`] (processes killed on drop), [`http`],
//!   [`prometheus`], [`sim`], [`broker`],
//!   [`redis_keys`], [`bulwark`] (sharder and worker processes),
//!   [`cache_check`] (worker cache against the simulator's truth). The
//!   private dnsmasq, the fault proxy and the backoff budget come from the
//!   test kit (`testkit::Dnsmasq`, `testkit::CutProxy`,
//!   `testkit::reconnect_budget`), shared with the crates' own tests.
//! - [`scenarios`]: one module per incident, each with `run(Size)`.
//!
//! Every scenario uses its own exchange, queue and Redis key names (see
//! [`unique_name`]) and removes them afterwards, so scenarios and other
//! tests can share the broker and Redis.

pub mod binaries;
pub mod broker;
pub mod bulwark;
pub mod cache_check;
pub mod child;
pub mod http;
pub mod prometheus;
pub mod redis_keys;
pub mod report;
pub mod scenarios;
pub mod sim;

pub use report::{Checks, ScenarioReport, Size};
pub use scenarios::{MEASUREMENTS, SCENARIOS, ScenarioInfo, run_blocking, run_scenario};

use std::time::{Duration, Instant};

/// The test environment's RabbitMQ (address, URL) and Redis.
pub use testkit::services::{AMQP_ADDR, AMQP_URL, REDIS_ADDR};

/// Why a scenario could not run (its environment failed, as opposed to an
/// assertion, which is a failed [`ScenarioReport`]).
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(
        "the `{name}` executable is missing (looked in {looked}); build it first: \
         cargo build --workspace --bins"
    )]
    MissingBinary { name: String, looked: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out after {after:?}: {what}")]
    Timeout { what: String, after: Duration },
    #[error("{0}")]
    Setup(String),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Dns(#[from] testkit::DnsmasqError),
}

impl ScenarioError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result of harness steps.
pub type Result<T, E = ScenarioError> = std::result::Result<T, E>;

/// A name no other run or test uses: `bulwark-scn.<what>.<pid>.<nanos>.<seq>`.
pub fn unique_name(what: &str) -> String {
    testkit::services::unique_name_in("bulwark-scn", what)
}

/// Milliseconds since the Unix epoch (the clock of `received_at`).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Polls `f` every `every` until it returns `Some`, failing after `within`.
/// Polling an observable (a counter, a probe) is the readiness signal here:
/// the processes under test are separate executables.
pub async fn poll<T, F: AsyncFnMut() -> Option<T>>(
    what: &str,
    within: Duration,
    every: Duration,
    mut f: F,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(ScenarioError::Timeout {
                what: what.to_owned(),
                after: within,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// [`poll`] for a condition.
pub async fn wait_until<F: AsyncFnMut() -> bool>(
    what: &str,
    within: Duration,
    mut f: F,
) -> Result<()> {
    poll(what, within, Duration::from_millis(20), async || {
        f().await.then_some(())
    })
    .await
}

/// Where CI keeps what a run leaves to look at: `BULWARK_ARTIFACTS`, or
/// `ci-artifacts` in cargo's target directory.
pub fn artifacts_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("BULWARK_ARTIFACTS") {
        return dir.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    target.join("ci-artifacts")
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates a fresh directory named after `what`.
    pub fn new(what: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(unique_name(what));
        std::fs::create_dir_all(&p).map_err(|e| ScenarioError::io("creating a temp dir", e))?;
        Ok(Self(p))
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl TempDir {
    /// Copies the directory (configs and process logs) under
    /// [`artifacts_dir`] for a post-mortem of a failed run, and says where.
    pub fn keep_as_artifact(&self) {
        let Some(name) = self.0.file_name() else {
            return;
        };
        let to = artifacts_dir().join(name);
        match copy_tree(&self.0, &to) {
            Ok(()) => eprintln!("the failed run's configs and logs: {}", to.display()),
            Err(e) => eprintln!(
                "could not keep the failed run's logs in {}: {e}",
                to.display()
            ),
        }
    }
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // `BULWARK_SCENARIOS_KEEP=1` keeps configs and process logs for a
        // post-mortem.
        if std::env::var_os("BULWARK_SCENARIOS_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `RUST_LOG` of the processes under test: `BULWARK_SCENARIOS_LOG`,
/// else `warn`.
pub fn child_log_filter() -> String {
    std::env::var("BULWARK_SCENARIOS_LOG").unwrap_or_else(|_| "warn".to_owned())
}

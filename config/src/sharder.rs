//! `[sharder]`: which shards this process runs, and how.
//!
//! Defaults are Discord's limits (5 s identify window, 120 sends a minute
//! handled in code) and a reserve of the session start budget that is never
//! spent in a reconnect loop. The layout keys (`total_shards`,
//! `process_count`, `process_index`, `assignment`, `shard_ranges`) must be
//! the same on every pod except `process_index`, so each pod can check the
//! whole cluster's layout at start-up. `[sharder.reshard]` (`reshard.rs`)
//! configures live resharding.

mod reshard;

pub use reshard::ReshardConfig;

use crate::error::check_duration;
use crate::{ConfigError, Secret};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How shards are split between processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardAssignmentKind {
    /// Even contiguous ranges (needs `[redis]` with several processes).
    Contiguous,
    /// Whole identify keys (`shard_id % max_concurrency`) per process.
    Buckets,
    /// Explicit `shard_ranges`, one per process.
    Ranges,
}

/// Transport compression asked of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayCompression {
    None,
    ZlibStream,
    ZstdStream,
}

/// Where sessions are persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStoreKind {
    /// One file per shard in `session_dir`.
    File,
    /// Redis keys under `[redis].key_prefix` (needs `[redis].url`).
    Redis,
}

/// Settings of the sharder binary.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharderConfig {
    /// Shards of the bot across all processes. The file or environment may
    /// say `"auto"` instead of a number; see `total_shards_auto`.
    pub total_shards: u32,
    /// `total_shards = "auto"`: the sharder takes Discord's recommended count
    /// from `GET /gateway/bot` at start-up and overwrites `total_shards`
    /// with it. One process only: pods asking at different times could get
    /// different answers and split the bot inconsistently.
    #[serde(skip)]
    pub total_shards_auto: bool,
    /// Processes (pods) sharing the bot.
    pub process_count: u32,
    /// This process, 0-based (a StatefulSet ordinal).
    pub process_index: u32,
    pub assignment: ShardAssignmentKind,
    /// `[start, end)` per process, for `assignment = "ranges"`.
    pub shard_ranges: Vec<[u32; 2]>,
    /// Overrides `max_concurrency` from `GET /gateway/bot` (tests, simulators).
    pub max_concurrency: Option<u16>,
    /// Overrides the gateway URL from `GET /gateway/bot`.
    pub gateway_url: Option<String>,
    pub compression: GatewayCompression,
    /// Bound on one decompressed gateway payload.
    pub max_payload_bytes: u64,
    /// One identify per key per window, counted from each IDENTIFY's
    /// departure. Discord's window is 5 s, measured where the IDENTIFYs
    /// arrive; two of them travel on different connections, and the first
    /// can be delayed more than the next, so the default keeps 50 ms (1 %)
    /// over it.
    #[serde(with = "humantime_serde")]
    pub identify_window: Duration,
    /// Identifies of the session start budget never spent before its reset.
    pub identify_reserve: u32,
    /// Minimum time between two identifies of this process (0: off); can be
    /// changed at runtime.
    #[serde(with = "humantime_serde")]
    pub identify_min_interval: Duration,
    /// With `[redis]`: how often a process asks `GET /gateway/bot` for the
    /// session start budget it shares with the cluster (also when the
    /// shared reset time has passed).
    #[serde(with = "humantime_serde")]
    pub identify_budget_refresh: Duration,
    /// How often the process reports its shards for the status page (with
    /// `[redis]`, to the cluster's view); the page polls at this interval.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// Identifies that fail in a row (op 9 or a close after IDENTIFY and
    /// before READY), cluster-wide with `[redis]`, that open the identify
    /// circuit breaker: new identifies pause instead of draining the budget.
    pub identify_breaker_failures: u32,
    /// First pause of the open breaker; doubles on every trip without a
    /// READY in between, up to `identify_breaker_cooldown_max`.
    #[serde(with = "humantime_serde")]
    pub identify_breaker_cooldown: Duration,
    #[serde(with = "humantime_serde")]
    pub identify_breaker_cooldown_max: Duration,
    pub session_store: SessionStoreKind,
    /// Directory of the file session store.
    pub session_dir: PathBuf,
    /// How often a moving `seq` is saved.
    #[serde(with = "humantime_serde")]
    pub persist_interval: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`.
    #[serde(with = "humantime_serde")]
    pub reconnect_base: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How long a connection must stay READY/RESUMED before its end starts
    /// the reconnect backoff from `reconnect_base` again. A gateway that
    /// breaks every session right after the handshake then meets a growing
    /// delay instead of a reconnect loop.
    #[serde(with = "humantime_serde")]
    pub reconnect_healthy_after: Duration,
    /// New gateway connections this process opens per second, at most,
    /// once a burst of one per shard is spent: when every shard fails at
    /// once, Discord sees a bounded rate, not a storm.
    pub max_connects_per_second: u32,
    /// How long to wait for HELLO after connecting.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// `/healthz`, `/readyz`, the admin endpoints (and `/metrics` unless
    /// `metrics_listen` is set).
    pub http_listen: SocketAddr,
    /// A second listener serving only `/metrics`, so a network policy can
    /// admit Prometheus to it and not to the admin endpoints; unset:
    /// `/metrics` is on `http_listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token of the admin endpoints. Empty: admin only answers when
    /// `http_listen` is a loopback address.
    pub admin_token: Secret,
    /// Event names dropped at the sharder from start-up (changeable at
    /// runtime through `POST /admin/shed`).
    pub shed_events: Vec<String>,
    /// How long SIGTERM may take: drain the sink, save sessions, close.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Events held by the AMQP sink before `send` waits (backpressure).
    pub sink_buffer: usize,
    /// Messages published and not yet confirmed by the broker.
    pub confirm_window: usize,
    /// Events of one shard batched into one message at most.
    pub batch_max_events: usize,
    /// How long the AMQP sink may hold a round of events open for more
    /// before it publishes (0: publish as soon as the pipe has room). The
    /// broker and the worker pay per message, so at ordinary rates this
    /// is what makes a message carry many events; it is the most latency
    /// it adds.
    #[serde(with = "humantime_serde")]
    pub publish_linger: Duration,
    /// How long an idle runtime thread of the sharder waits before it
    /// sleeps on its sockets (0: it sleeps at once). Frames, confirms and
    /// timers that come due meanwhile are all handled in one wake-up
    /// instead of one each: at ordinary rates the wake-ups, not the
    /// events, are most of the sharder's CPU. It is the most latency it
    /// adds per hop; under load no thread is idle and it never engages.
    #[serde(with = "humantime_serde")]
    pub wake_coalesce: Duration,
    /// Prefix of the exchange and queue names (`bulwark.gateway` in
    /// production; tests use their own).
    pub amqp_topology_base: String,
    /// This process's shards as `[start, end)`, set only from the command
    /// line (`sharder --shards a..b`); overrides the layout keys for this
    /// process. Never read from the file or the environment.
    #[serde(skip)]
    pub process_shards: Option<std::ops::Range<u32>>,
    /// `[sharder.reshard]`: automatic live resharding and its alert.
    pub reshard: ReshardConfig,
}

impl Default for SharderConfig {
    fn default() -> Self {
        Self {
            total_shards: 1,
            total_shards_auto: false,
            process_count: 1,
            process_index: 0,
            assignment: ShardAssignmentKind::Contiguous,
            shard_ranges: Vec::new(),
            max_concurrency: None,
            gateway_url: None,
            compression: GatewayCompression::ZstdStream,
            max_payload_bytes: 64 * 1024 * 1024,
            identify_window: Duration::from_millis(5050),
            identify_reserve: 10,
            identify_min_interval: Duration::ZERO,
            identify_budget_refresh: Duration::from_secs(300),
            status_interval: Duration::from_secs(1),
            identify_breaker_failures: 10,
            identify_breaker_cooldown: Duration::from_secs(30),
            identify_breaker_cooldown_max: Duration::from_secs(15 * 60),
            session_store: SessionStoreKind::File,
            session_dir: PathBuf::from("sessions"),
            persist_interval: Duration::from_secs(2),
            reconnect_base: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(60),
            reconnect_healthy_after: Duration::from_secs(60),
            max_connects_per_second: 20,
            hello_timeout: Duration::from_secs(20),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            metrics_listen: None,
            admin_token: Secret::default(),
            shed_events: Vec::new(),
            shutdown_grace: Duration::from_secs(20),
            sink_buffer: 8192,
            confirm_window: 256,
            batch_max_events: 256,
            publish_linger: Duration::ZERO,
            wake_coalesce: Duration::from_millis(2),
            amqp_topology_base: "bulwark.gateway".into(),
            process_shards: None,
            reshard: ReshardConfig::default(),
        }
    }
}

/// Upper bound of `max_payload_bytes`: one payload is buffered whole, so
/// the bound is what a hostile or broken stream may make the sharder hold.
const MAX_PAYLOAD_BYTES: u64 = 1 << 30;

/// The most shards a bot may have. The largest bots run tens of thousands;
/// a bound keeps a typo or a garbage `GET /gateway/bot` answer from
/// allocating a shard list of billions.
pub const MAX_TOTAL_SHARDS: u32 = 100_000;

/// The word that asks for Discord's recommended shard count.
pub const AUTO_TOTAL: &str = "auto";

impl SharderConfig {
    /// Removes `total_shards = "auto"` from the merged table (file plus
    /// environment) so the rest deserialises as a number, and says whether
    /// it was there. Any other string is left for serde to reject with the
    /// key's name.
    pub(crate) fn take_auto_total(table: &mut toml::Table) -> bool {
        let Some(sharder) = table.get_mut("sharder").and_then(toml::Value::as_table_mut) else {
            return false;
        };
        let auto = sharder
            .get("total_shards")
            .and_then(toml::Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case(AUTO_TOTAL));
        if auto {
            sharder.remove("total_shards");
        }
        auto
    }

    /// Whether the TOML `text` sets `[sharder].process_index` (a pod ordinal
    /// is used only when neither the file nor the environment sets it). An
    /// unparsable text answers `false`; loading it reports the error.
    pub fn toml_sets_process_index(text: &str) -> bool {
        text.parse::<toml::Table>().ok().is_some_and(|t| {
            t.get("sharder")
                .and_then(toml::Value::as_table)
                .is_some_and(|s| s.contains_key("process_index"))
        })
    }

    /// Checks `[sharder]`'s bounds (also after command-line overrides).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError::invalid(format!("sharder.{key}"), msg));
        for (key, value) in [
            ("sharder.identify_window", self.identify_window),
            ("sharder.identify_min_interval", self.identify_min_interval),
            (
                "sharder.identify_budget_refresh",
                self.identify_budget_refresh,
            ),
            (
                "sharder.identify_breaker_cooldown",
                self.identify_breaker_cooldown,
            ),
            (
                "sharder.identify_breaker_cooldown_max",
                self.identify_breaker_cooldown_max,
            ),
            ("sharder.persist_interval", self.persist_interval),
            ("sharder.reconnect_base", self.reconnect_base),
            ("sharder.reconnect_max", self.reconnect_max),
            (
                "sharder.reconnect_healthy_after",
                self.reconnect_healthy_after,
            ),
            ("sharder.hello_timeout", self.hello_timeout),
        ] {
            check_duration(key, value)?;
        }
        if !(1..=MAX_TOTAL_SHARDS).contains(&self.total_shards) {
            return bad(
                "total_shards",
                format!("{} is outside 1..={MAX_TOTAL_SHARDS}", self.total_shards),
            );
        }
        if self.process_count == 0 {
            return bad("process_count", "must be at least 1".into());
        }
        if self.metrics_listen == Some(self.http_listen) {
            return bad(
                "metrics_listen",
                format!(
                    "{} is also sharder.http_listen; use another port, or remove the key",
                    self.http_listen
                ),
            );
        }
        if self.total_shards_auto
            && (self.process_count > 1 || self.assignment == ShardAssignmentKind::Ranges)
        {
            return bad(
                "total_shards",
                format!(
                    "\"auto\" needs one process (process_count is {}, assignment {:?}); \
                     set the number every pod shares (GET /gateway/bot recommends one)",
                    self.process_count, self.assignment
                ),
            );
        }
        if self.process_index >= self.process_count {
            return bad(
                "process_index",
                format!(
                    "{} is not below process_count {}",
                    self.process_index, self.process_count
                ),
            );
        }
        if self.assignment == ShardAssignmentKind::Ranges {
            if self.shard_ranges.len() != self.process_count as usize {
                return bad(
                    "shard_ranges",
                    format!(
                        "{} ranges for process_count {}; give one [start, end) per process",
                        self.shard_ranges.len(),
                        self.process_count
                    ),
                );
            }
            if let Some([a, b]) = self
                .shard_ranges
                .iter()
                .find(|[a, b]| a >= b || *b > self.total_shards)
            {
                return bad(
                    "shard_ranges",
                    format!(
                        "[{a}, {b}) is empty or beyond total_shards {}",
                        self.total_shards
                    ),
                );
            }
        } else if !self.shard_ranges.is_empty() {
            return bad(
                "shard_ranges",
                "only used with assignment = \"ranges\"".into(),
            );
        }
        if self.max_concurrency == Some(0) {
            return bad("max_concurrency", "must be at least 1".into());
        }
        if let Some(url) = &self.gateway_url
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return bad(
                "gateway_url",
                format!("`{url}` must start with ws:// or wss://"),
            );
        }
        if self.max_payload_bytes > MAX_PAYLOAD_BYTES {
            return bad(
                "max_payload_bytes",
                format!(
                    "{} is above the 1 GiB bound; a gateway payload is a few MiB at most",
                    self.max_payload_bytes
                ),
            );
        }
        if self.max_payload_bytes < 4096 {
            return bad(
                "max_payload_bytes",
                format!(
                    "{} is too small for a gateway payload",
                    self.max_payload_bytes
                ),
            );
        }
        if self.identify_window < Duration::from_millis(1) {
            return bad("identify_window", "must be above 0 (Discord: 5s)".into());
        }
        if self.identify_budget_refresh < Duration::from_secs(1) {
            return bad(
                "identify_budget_refresh",
                "must be at least 1s; every refresh is a GET /gateway/bot".into(),
            );
        }
        if self.publish_linger > Duration::from_millis(100) {
            return bad(
                "publish_linger",
                "must be at most 100ms (the latency a publish may add); 0 turns it off".into(),
            );
        }
        if self.wake_coalesce > Duration::from_millis(20) {
            return bad(
                "wake_coalesce",
                "must be at most 20ms (every timer and frame may wait that long); 0 turns it off"
                    .into(),
            );
        }
        if self.status_interval < Duration::from_millis(100)
            || self.status_interval > Duration::from_secs(60)
        {
            return bad(
                "status_interval",
                "must be from 100ms to 60s (how often the status page's data is refreshed)".into(),
            );
        }
        if self.identify_breaker_failures == 0 {
            return bad(
                "identify_breaker_failures",
                "must be at least 1 (failed identifies in a row that open the breaker)".into(),
            );
        }
        if self.identify_breaker_cooldown < Duration::from_millis(10)
            || self.identify_breaker_cooldown_max < self.identify_breaker_cooldown
        {
            return bad(
                "identify_breaker_cooldown",
                "identify_breaker_cooldown must be at least 10ms and not above \
                 identify_breaker_cooldown_max"
                    .into(),
            );
        }
        if self.reconnect_base < Duration::from_millis(10)
            || self.reconnect_max < self.reconnect_base
        {
            return bad(
                "reconnect_base",
                "reconnect_base must be at least 10ms and not above reconnect_max; \
                 a zero delay turns an outage into a reconnect storm"
                    .into(),
            );
        }
        if self.reconnect_healthy_after < Duration::from_millis(10) {
            return bad(
                "reconnect_healthy_after",
                "must be at least 10ms; the backoff would reset on every handshake".into(),
            );
        }
        if !(1..=10_000).contains(&self.max_connects_per_second) {
            return bad(
                "max_connects_per_second",
                format!(
                    "{} is outside 1..=10000 (0 would never reconnect)",
                    self.max_connects_per_second
                ),
            );
        }
        if self.persist_interval.is_zero() || self.hello_timeout.is_zero() {
            return bad(
                "persist_interval",
                "persist_interval and hello_timeout must be above 0".into(),
            );
        }
        if self.session_store == SessionStoreKind::File && self.session_dir.as_os_str().is_empty() {
            return bad("session_dir", "must not be empty".into());
        }
        if let Some(name) = self.shed_events.iter().find(|n| {
            n.is_empty()
                || n.len() > 64
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        }) {
            return bad(
                "shed_events",
                format!("`{name}` is not an event name (A-Z, 0-9, _)"),
            );
        }
        if self.shutdown_grace < Duration::from_millis(100)
            || self.shutdown_grace > Duration::from_secs(600)
        {
            return bad("shutdown_grace", "must be within 100ms..=10m".into());
        }
        if !(16..=1_000_000).contains(&self.sink_buffer) {
            return bad(
                "sink_buffer",
                format!("{} is outside 16..=1000000", self.sink_buffer),
            );
        }
        if !(1..=65_536).contains(&self.confirm_window) {
            return bad(
                "confirm_window",
                format!("{} is outside 1..=65536", self.confirm_window),
            );
        }
        if !(1..=4096).contains(&self.batch_max_events) {
            return bad(
                "batch_max_events",
                format!("{} is outside 1..=4096", self.batch_max_events),
            );
        }
        let base = &self.amqp_topology_base;
        if base.is_empty()
            || base.len() > 200
            || !base
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad(
                "amqp_topology_base",
                "must be 1-200 characters of a-z, A-Z, 0-9, '.', '_', '-'".into(),
            );
        }
        self.reshard.validate()
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn defaults_and_layout_bounds() {
        let c = Config::from_toml_str("", "t", Vec::new()).unwrap();
        assert_eq!(c.sharder.total_shards, 1);
        let c = Config::from_toml_str(
            "[sharder]\ntotal_shards = 8\nprocess_count = 2\nprocess_index = 1\n\
             assignment = \"ranges\"\nshard_ranges = [[0, 4], [4, 8]]\ncompression = \"zlib-stream\"\n",
            "t",
            Vec::new(),
        )
        .unwrap();
        assert_eq!(c.sharder.shard_ranges[1], [4, 8]);
        for (text, key) in [
            ("[sharder]\ntotal_shards = 0\n", "sharder.total_shards"),
            ("[sharder]\ntotal_shards = 100001\n", "sharder.total_shards"),
            ("[sharder]\nprocess_index = 1\n", "sharder.process_index"),
            (
                "[sharder]\nassignment = \"ranges\"\nshard_ranges = [[1, 1]]\n",
                "sharder.shard_ranges",
            ),
            (
                "[sharder]\nshard_ranges = [[0, 1]]\n",
                "sharder.shard_ranges",
            ),
            (
                "[sharder]\ngateway_url = \"http://x\"\n",
                "sharder.gateway_url",
            ),
            (
                "[sharder]\nreconnect_base = \"0s\"\n",
                "sharder.reconnect_base",
            ),
            (
                "[sharder]\nidentify_budget_refresh = \"100ms\"\n",
                "sharder.identify_budget_refresh",
            ),
            (
                "[sharder]\nidentify_breaker_failures = 0\n",
                "sharder.identify_breaker_failures",
            ),
            (
                "[sharder]\nstatus_interval = \"10ms\"\n",
                "sharder.status_interval",
            ),
            (
                "[sharder]\npublish_linger = \"1s\"\n",
                "sharder.publish_linger",
            ),
            (
                "[sharder]\nwake_coalesce = \"50ms\"\n",
                "sharder.wake_coalesce",
            ),
            (
                "[sharder]\nidentify_breaker_cooldown = \"1m\"\nidentify_breaker_cooldown_max = \"30s\"\n",
                "sharder.identify_breaker_cooldown",
            ),
            (
                "[sharder]\nmax_concurrency = 0\n",
                "sharder.max_concurrency",
            ),
            (
                "[sharder]\nshed_events = [\"typing\"]\n",
                "sharder.shed_events",
            ),
            (
                "[sharder]\nshutdown_grace = \"0s\"\n",
                "sharder.shutdown_grace",
            ),
            ("[sharder]\nsink_buffer = 1\n", "sharder.sink_buffer"),
            ("[sharder]\nconfirm_window = 0\n", "sharder.confirm_window"),
            (
                "[sharder]\nbatch_max_events = 5000\n",
                "sharder.batch_max_events",
            ),
            (
                "[sharder]\namqp_topology_base = \"a b\"\n",
                "sharder.amqp_topology_base",
            ),
            (
                "[sharder]\nhttp_listen = \"nowhere\"\n",
                "sharder.http_listen",
            ),
        ] {
            let e = Config::from_toml_str(text, "t", Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text} -> {e}");
        }
        assert!(
            Config::from_toml_str("[sharder]\ncompression = \"gzip\"\n", "t", Vec::new()).is_err()
        );
        let c = Config::from_toml_str(
            "[sharder]\nhttp_listen = \"127.0.0.1:0\"\nshed_events = [\"TYPING_START\"]\n\
             shutdown_grace = \"5s\"\nadmin_token = \"adm1n\"\nmetrics_listen = \"127.0.0.1:9090\"\n",
            "t",
            Vec::new(),
        )
        .unwrap();
        assert!(c.sharder.http_listen.ip().is_loopback());
        assert_eq!(c.sharder.metrics_listen.unwrap().port(), 9090);
        let e = Config::from_toml_str(
            "[sharder]\nhttp_listen = \"0.0.0.0:8080\"\nmetrics_listen = \"0.0.0.0:8080\"\n",
            "t",
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sharder.metrics_listen"), "{e}");
        assert_eq!(c.sharder.shed_events, ["TYPING_START"]);
        assert_eq!(c.sharder.shutdown_grace, std::time::Duration::from_secs(5));
        assert_eq!(c.sharder.admin_token.expose(), "adm1n");
        assert!(!format!("{:?}", c.sharder).contains("adm1n"));
    }

    #[test]
    fn total_shards_auto_from_file_or_env() {
        let c =
            Config::from_toml_str("[sharder]\ntotal_shards = \"auto\"\n", "t", Vec::new()).unwrap();
        assert!(c.sharder.total_shards_auto);
        let env = vec![(
            "BULWARK_SHARDER__TOTAL_SHARDS".to_owned(),
            "AUTO".to_owned(),
        )];
        let c = Config::from_toml_str("[sharder]\ntotal_shards = 8\n", "t", env).unwrap();
        assert!(
            c.sharder.total_shards_auto,
            "the environment overrides the file"
        );
        let c = Config::from_toml_str("[sharder]\ntotal_shards = 8\n", "t", Vec::new()).unwrap();
        assert!(!c.sharder.total_shards_auto);
        assert_eq!(c.sharder.total_shards, 8);
        for text in [
            "[sharder]\ntotal_shards = \"auto\"\nprocess_count = 2\n",
            "[sharder]\ntotal_shards = \"lots\"\n",
        ] {
            let e = Config::from_toml_str(text, "t", Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains("total_shards"), "{text} -> {e}");
        }
    }
}

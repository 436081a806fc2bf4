//! `[worker]`: the cache worker (crate `worker`).
//!
//! The broker URL and the partition count live in `[amqp]`, shared with the
//! sharder; this section holds what only the worker needs.

use crate::error::check_duration;
use crate::{ConfigError, Secret};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Where the worker keeps its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStoreKind {
    /// In-process: fastest, lost on restart, one worker per partition set.
    #[default]
    Memory,
    /// Shared Redis (`[redis]`): survives restarts, shared by replicas.
    Redis,
}

/// Who may read the cache through `/v1/*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadApiAuth {
    /// `Authorization: Bearer <worker.read_token>` on every `/v1/*`
    /// request. Without a token the read API answers only on a loopback
    /// listener; a non-loopback listener without one is a start-up error.
    #[default]
    Token,
    /// Anyone who reaches the port reads member names, roles and avatars:
    /// only for a dev cluster whose network is trusted.
    Open,
}

/// Settings of the cache worker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Partitions this worker consumes (each below `amqp.partitions`);
    /// empty: all of them.
    pub consume: Vec<u32>,
    /// AMQP prefetch per partition consumer (messages in flight).
    pub prefetch: u16,
    /// How long an idle runtime thread of the worker waits before it
    /// sleeps on its sockets (0: it sleeps at once), as
    /// `sharder.wake_coalesce`: deliveries and confirms that come
    /// meanwhile are handled in one wake-up. Off while a partition is in
    /// the middle of its ready messages, so a Redis round trip is never
    /// delayed under load. The most latency it adds per hop.
    #[serde(with = "humantime_serde")]
    pub wake_coalesce: Duration,
    /// Cache store.
    pub store: WorkerStoreKind,
    /// How long tombstones are kept; must exceed the longest redelivery
    /// delay, or a very late duplicate could resurrect a deleted entity.
    #[serde(with = "humantime_serde")]
    pub tombstone_horizon: Duration,
    /// Cache members' presence status (needs the GUILD_PRESENCES intent;
    /// off by default: presences are most of a large bot's traffic).
    pub cache_presences: bool,
    /// Cache voice states (needs GUILD_VOICE_STATES).
    pub cache_voice_states: bool,
    /// Publish the clean events to the output exchange
    /// (`bulwark.events`, at-least-once with a dedup `message_id`).
    pub publish_events: bool,
    /// Address of the HTTP read API, `/healthz`, `/readyz` (and `/metrics`
    /// unless `metrics_listen` is set).
    pub http_listen: SocketAddr,
    /// A second listener serving only `/metrics`, so a network policy can
    /// admit Prometheus to it and nothing else; unset: `/metrics` is on
    /// `http_listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// How `/v1/*` is protected.
    pub read_api: ReadApiAuth,
    /// Bearer token of `/v1/*` (`BULWARK_WORKER__READ_TOKEN`, from a
    /// Secret); the bot's pods get the same value.
    pub read_token: Secret,
    /// `/readyz` answers ready once every consumed partition queue holds
    /// fewer messages than this (the cache has caught up).
    pub ready_backlog: u32,
    /// Prefix of the exchange and queue names, the same as the sharder's
    /// `amqp_topology_base`. `bulwark.gateway` (production) keeps the
    /// shared names (output exchange `bulwark.events`); any other base
    /// (several environments on one broker, tests) gives input `<base>`,
    /// queues `<base>.p<n>`, output `<base>.events`, dead letters
    /// `<base>.dlx` / `<base>.dead`.
    pub amqp_topology_base: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            consume: Vec::new(),
            prefetch: 64,
            wake_coalesce: Duration::from_millis(2),
            store: WorkerStoreKind::Memory,
            tombstone_horizon: Duration::from_secs(3600),
            cache_presences: false,
            cache_voice_states: false,
            publish_events: true,
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            metrics_listen: None,
            read_api: ReadApiAuth::Token,
            read_token: Secret::default(),
            ready_backlog: 1000,
            amqp_topology_base: "bulwark.gateway".into(),
        }
    }
}

impl WorkerConfig {
    /// The token `/v1/*` requires, `None` when it is open. Fails when the
    /// read API would be open by accident: `read_api = "token"` with no
    /// token on a non-loopback listener. Called by the worker at start-up
    /// rather than in [`crate::Config::validate`], because the defaults
    /// (`0.0.0.0:8081`, no token) are a valid file for every other binary.
    pub fn read_token(&self) -> Result<Option<&Secret>, ConfigError> {
        match self.read_api {
            ReadApiAuth::Open => Ok(None),
            ReadApiAuth::Token if !self.read_token.is_empty() => Ok(Some(&self.read_token)),
            ReadApiAuth::Token if self.http_listen.ip().is_loopback() => Ok(None),
            ReadApiAuth::Token => Err(ConfigError::invalid(
                "worker.read_token",
                format!(
                    "is empty and worker.http_listen {} is not a loopback address: set \
                     BULWARK_WORKER__READ_TOKEN from a Secret (the bot's pods get the same \
                     value), or set worker.read_api = \"open\" to let anyone who reaches the \
                     port read the cache",
                    self.http_listen
                ),
            )),
        }
    }

    pub(crate) fn validate(&self, partitions: u32) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError::invalid(format!("worker.{key}"), msg));
        if let Some(p) = self.consume.iter().find(|&&p| p >= partitions) {
            return bad(
                "consume",
                format!("partition {p} does not exist (amqp.partitions = {partitions})"),
            );
        }
        if self.prefetch == 0 {
            return bad(
                "prefetch",
                "0 means unlimited in AMQP and lets a burst exhaust memory; use 1..=65535".into(),
            );
        }
        if self.wake_coalesce > Duration::from_millis(20) {
            return bad(
                "wake_coalesce",
                "must be at most 20ms (every delivery and timer may wait that long); 0 turns it off"
                    .into(),
            );
        }
        check_duration("worker.tombstone_horizon", self.tombstone_horizon)?;
        if self.tombstone_horizon < Duration::from_secs(60) {
            return bad(
                "tombstone_horizon",
                format!(
                    "{:?} is below 1 minute; redeliveries could resurrect deleted entities",
                    self.tombstone_horizon
                ),
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
        if self.metrics_listen == Some(self.http_listen) {
            return bad(
                "metrics_listen",
                format!(
                    "{} is also worker.http_listen; use another port, or remove the key",
                    self.http_listen
                ),
            );
        }
        if self.ready_backlog == 0 {
            return bad(
                "ready_backlog",
                "0 would never be ready while events keep arriving; use at least 1".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, WorkerStoreKind};
    use std::time::Duration;

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml_str(text, "t", Vec::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse("").unwrap();
        assert_eq!(c.amqp.partitions, 16);
        assert_eq!(c.worker.store, WorkerStoreKind::Memory);
        let c = Config::from_toml_str(
            "[worker]\nstore = \"redis\"\nconsume = [0, 3]\ntombstone_horizon = \"2h\"\ncache_voice_states = true\n",
            "t",
            vec![("BULWARK_WORKER__PREFETCH".into(), "8".into())],
        )
        .unwrap();
        assert_eq!(c.worker.store, WorkerStoreKind::Redis);
        assert_eq!(c.worker.consume, vec![0, 3]);
        assert_eq!(c.worker.prefetch, 8);
        assert_eq!(c.worker.tombstone_horizon, Duration::from_secs(7200));
        assert!(c.worker.cache_voice_states && !c.worker.cache_presences);
        assert!(c.worker.publish_events);
        assert_eq!(c.worker.wake_coalesce, Duration::from_millis(2));
        assert_eq!(c.worker.http_listen.port(), 8081);
        let c = parse(
            "[worker]\npublish_events = false\nhttp_listen = \"127.0.0.1:9000\"\nready_backlog = 50\n",
        )
        .unwrap();
        assert!(!c.worker.publish_events);
        assert_eq!(c.worker.http_listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.worker.ready_backlog, 50);
        assert_eq!(c.worker.amqp_topology_base, "bulwark.gateway");
    }

    #[test]
    fn read_api_needs_a_token_off_loopback() {
        let c = parse("").unwrap();
        let e = c.worker.read_token().unwrap_err().to_string();
        assert!(e.contains("BULWARK_WORKER__READ_TOKEN"), "{e}");
        let c = parse("[worker]\nhttp_listen = \"127.0.0.1:0\"\n").unwrap();
        assert!(c.worker.read_token().unwrap().is_none());
        let c = parse("[worker]\nread_api = \"open\"\n").unwrap();
        assert!(c.worker.read_token().unwrap().is_none());
        let c = Config::from_toml_str(
            "[worker]\nmetrics_listen = \"0.0.0.0:9091\"\n",
            "t",
            vec![("BULWARK_WORKER__READ_TOKEN".into(), "r3ad".into())],
        )
        .unwrap();
        assert!(c.worker.read_token().unwrap().unwrap().matches("r3ad"));
        assert_eq!(c.worker.metrics_listen.unwrap().port(), 9091);
        assert!(!format!("{c:?}").contains("r3ad"));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            ("[amqp]\npartitions = 0\n", "amqp.partitions"),
            ("[worker]\nconsume = [16]\n", "worker.consume"),
            ("[worker]\nprefetch = 0\n", "worker.prefetch"),
            (
                "[worker]\nwake_coalesce = \"21ms\"\n",
                "worker.wake_coalesce",
            ),
            (
                "[worker]\ntombstone_horizon = \"1s\"\n",
                "worker.tombstone_horizon",
            ),
            ("[amqp]\nurl = \"\"\n", "amqp.url"),
            ("[worker]\nstore = \"disk\"\n", "store"),
            ("[worker]\nprefetch = \"lots\"\n", "prefetch"),
            ("[worker]\nready_backlog = 0\n", "worker.ready_backlog"),
            (
                "[worker]\namqp_topology_base = \"\"\n",
                "worker.amqp_topology_base",
            ),
            (
                "[worker]\namqp_topology_base = \"a b\"\n",
                "worker.amqp_topology_base",
            ),
            ("[worker]\nhttp_listen = \"nowhere\"\n", "http_listen"),
            ("[worker]\nread_api = \"public\"\n", "read_api"),
            (
                "[worker]\nmetrics_listen = \"0.0.0.0:8081\"\n",
                "worker.metrics_listen",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key), "{text} -> {e}");
        }
    }
}

//! One typed, validated configuration for every binary of the project.
//!
//! A bad value must be a clear error at start-up, never a crash loop or a
//! silent default later (see the March 2020 service-discovery postmortem in
//! `shared/incidents`). So the file and the environment are merged first
//! (`source.rs`), then deserialised with unknown keys rejected, then every
//! section checks its own bounds and names the offending key.
//!
//! ```
//! let cfg = config::Config::from_toml_str("[dns]\ncache_size = 10\n", "inline", []).unwrap();
//! assert_eq!(cfg.dns.cache_size, 10);
//! ```
#![forbid(unsafe_code)]

mod amqp;
mod discord;
mod dns;
mod error;
mod redis;
mod relay;
mod secret;
mod sharder;
mod source;
mod tls;
mod worker;

pub use amqp::AmqpConfig;
pub use discord::DiscordConfig;
pub use dns::DnsConfig;
pub use error::ConfigError;
pub use redis::RedisConfig;
pub use relay::RelayConfig;
pub use secret::{Secret, redact_url};
pub use sharder::{
    GatewayCompression, MAX_TOTAL_SHARDS, ReshardConfig, SessionStoreKind, ShardAssignmentKind,
    SharderConfig,
};
pub use source::{CONFIG_PATH_ENV, ENV_PREFIX};
pub use tls::TlsConfig;
pub use worker::{ReadApiAuth, WorkerConfig, WorkerStoreKind};

use serde::Deserialize;
use std::path::Path;

/// Exit code for a configuration error (BSD `EX_CONFIG`), so supervisors and
/// operators can tell "fix the config" from a crash.
pub const EXIT_CONFIG: i32 = 78;

/// The whole configuration. Every section has defaults, so an empty file is
/// valid; binaries require what they need (e.g. [`DiscordConfig::require_token`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub discord: DiscordConfig,
    pub dns: DnsConfig,
    pub redis: RedisConfig,
    pub sharder: SharderConfig,
    pub amqp: AmqpConfig,
    pub worker: WorkerConfig,
    pub relay: RelayConfig,
    pub tls: TlsConfig,
}

impl Config {
    /// Loads `path` (or defaults when `None`), applies `BULWARK_*` variables
    /// from the process environment, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None => (String::new(), "defaults".to_owned()),
        };
        Self::from_toml_str(&text, &origin, std::env::vars())
    }

    /// Parses `text`, applies overrides from `env`, and validates. `origin`
    /// names the text in errors.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })?;
        source::apply_env(&mut table, env)?;
        let auto_total = SharderConfig::take_auto_total(&mut table);
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: format!("{origin} (with BULWARK_* overrides)"),
                    message: e.to_string(),
                })?;
        config.sharder.total_shards_auto = auto_total;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section's bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.discord.validate()?;
        self.dns.validate()?;
        self.redis.validate()?;
        self.sharder.validate()?;
        self.amqp.validate()?;
        self.worker.validate(self.amqp.partitions)?;
        self.relay.validate()?;
        self.tls.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml_str("", "t", no_env()).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn durations_and_overrides() {
        let c = Config::from_toml_str(
            "[dns]\nmax_stale = \"2h\"\nrefresh_ahead = 0.5\n",
            "t",
            vec![("BULWARK_DNS__RETRY_INTERVAL".into(), "250ms".into())],
        )
        .unwrap();
        assert_eq!(c.dns.max_stale, Duration::from_secs(7200));
        assert_eq!(c.dns.retry_interval, Duration::from_millis(250));
        assert_eq!(c.dns.refresh_ahead, 0.5);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml_str("[dns]\ncache_sise = 3\n", "cfg.toml", no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache_sise") && e.contains("cfg.toml"), "{e}");
    }

    #[test]
    fn wrong_types_and_empty_values_are_errors() {
        for bad in [
            "[dns]\ncache_size = \"many\"\n",
            "[dns]\nmax_stale = \"\"\n",
            "[dns]\nupstreams = [\"\"]\n",
            "[dns]\nupstreams = [\"not-an-address\"]\n",
            "[discord]\nintents = -1\n",
            "dns = 3\n",
            "[dns\n",
        ] {
            assert!(
                Config::from_toml_str(bad, "t", no_env()).is_err(),
                "accepted: {bad}"
            );
        }
    }

    #[test]
    fn bounds_name_the_key() {
        for (text, key) in [
            ("[dns]\nrefresh_ahead = 1.5\n", "dns.refresh_ahead"),
            ("[dns]\nmin_ttl = \"2h\"\nmax_ttl = \"1h\"\n", "dns.min_ttl"),
            ("[dns]\nretry_interval = \"1ms\"\n", "dns.retry_interval"),
            ("[dns]\ncache_size = 0\n", "dns.cache_size"),
            ("[dns]\nconnect_timeout = \"0s\"\n", "dns.connect_timeout"),
            ("[dns]\nsearch = [\"a.svc\", \" \"]\n", "dns.search"),
            (
                "[discord]\nlarge_threshold = 10\n",
                "discord.large_threshold",
            ),
            ("[discord]\nintents = 4194304\n", "discord.intents"),
        ] {
            let e = Config::from_toml_str(text, "t", no_env())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text} -> {e}");
        }
    }

    #[test]
    fn token_is_required_and_redacted() {
        let c = Config::from_toml_str(
            "",
            "t",
            vec![("BULWARK_DISCORD__TOKEN".into(), "abc.def.ghi".into())],
        )
        .unwrap();
        assert_eq!(c.discord.require_token().unwrap().expose(), "abc.def.ghi");
        assert!(!format!("{c:?}").contains("abc.def"));
        let none = Config::default();
        let e = none.discord.require_token().unwrap_err().to_string();
        assert!(e.contains("BULWARK_DISCORD__TOKEN"), "{e}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = Config::load(Some(Path::new("/nonexistent/bulwark.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/bulwark.toml"), "{e}");
    }
}

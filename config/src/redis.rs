//! `[redis]`: the optional shared Redis (identify lock, session store).
//!
//! Without a URL nothing uses Redis, and processes must not share identify
//! keys (checked at start-up by the sharder). The URL may carry a password,
//! so it is a [`Secret`]; log it with [`crate::redact_url`].

use crate::error::check_duration;
use crate::{ConfigError, Secret};
use serde::Deserialize;
use std::time::Duration;

/// Connection and key layout of the shared Redis.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port/db`; empty: no Redis.
    pub url: Secret,
    /// Prefix of every key, so several bots or environments can share a
    /// server.
    pub key_prefix: String,
    /// How long a stored session outlives its last save.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            key_prefix: "bulwark".into(),
            session_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl RedisConfig {
    /// True when a Redis URL is configured.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled()
            && !(self.url.expose().starts_with("redis://")
                || self.url.expose().starts_with("rediss://"))
        {
            return Err(ConfigError::invalid(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
        if self.key_prefix.trim().is_empty() {
            return Err(ConfigError::invalid(
                "redis.key_prefix",
                "must not be empty",
            ));
        }
        check_duration("redis.session_ttl", self.session_ttl)?;
        if self.session_ttl < Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "redis.session_ttl",
                format!(
                    "{:?} is below 1m; sessions would vanish mid-restart",
                    self.session_ttl
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn url_is_checked_and_redacted() {
        let c = Config::from_toml_str(
            "",
            "t",
            vec![(
                "BULWARK_REDIS__URL".into(),
                "redis://:hunter2@r:6379/0".into(),
            )],
        )
        .unwrap();
        assert!(c.redis.enabled());
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!Config::default().redis.enabled());
        for (text, key) in [
            ("[redis]\nurl = \"http://r\"\n", "redis.url"),
            ("[redis]\nkey_prefix = \" \"\n", "redis.key_prefix"),
            ("[redis]\nsession_ttl = \"1s\"\n", "redis.session_ttl"),
        ] {
            let e = Config::from_toml_str(text, "t", Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text} -> {e}");
        }
    }
}

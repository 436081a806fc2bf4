//! `[dns]`: the in-process caching resolver (crate `dnscache`).
//!
//! Defaults are chosen for a sharder in Kubernetes: a name is asked as
//! given first (no `ndots:5` search-list fan-out) and only a name that does
//! not exist walks the search list, answers are refreshed before they
//! expire, and a last-good answer is served for hours while the cluster
//! DNS is down, in the spirit of RFC 8767.

use crate::ConfigError;
use crate::error::check_duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Settings of `dnscache::Resolver`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Upstream servers, `ip:port`. Empty: the system's resolv.conf.
    pub upstreams: Vec<SocketAddr>,
    /// `None` (default): a name is asked as given, fully qualified; only if
    /// it does not exist is the search list walked (once per host: the
    /// qualified name that answered is remembered). `Some(n)`: walk the
    /// search list first for names with fewer than `n` dots, as libc does.
    pub ndots: Option<u8>,
    /// Search domains, in order. Empty: resolv.conf's `search` line.
    pub search: Vec<String>,
    /// Lower bound on a positive answer's TTL.
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Upper bound on a positive answer's TTL.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How long NXDOMAIN / no-data answers are cached.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Fraction of the TTL after which a name still in use is refreshed in
    /// the background, in (0, 1).
    pub refresh_ahead: f64,
    /// How long past its expiry a last-good answer may still be served while
    /// the upstream fails.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// How long a caller waits on the upstream before it gets the stale
    /// answer instead (RFC 8767's client response timer).
    #[serde(with = "humantime_serde")]
    pub stale_answer_timeout: Duration,
    /// Minimum time between two upstream attempts for one name while the
    /// upstream fails: the retry budget that prevents a storm.
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// Timeout of one upstream query.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Maximum number of cached names.
    pub cache_size: u64,
    /// Timeout of one TCP connect attempt to one resolved address.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            ndots: None,
            search: Vec::new(),
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(5),
            refresh_ahead: 0.75,
            max_stale: Duration::from_secs(6 * 3600),
            stale_answer_timeout: Duration::from_millis(800),
            retry_interval: Duration::from_secs(5),
            query_timeout: Duration::from_secs(2),
            cache_size: 4096,
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl DnsConfig {
    /// Checks `[dns]`'s bounds, for a resolver built from a `DnsConfig` that
    /// did not come through [`crate::Config`]'s loader (which checks it
    /// already): out-of-bounds values would otherwise surface as panics in
    /// `Duration`/`Instant` arithmetic or `clamp` deep in the resolver.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError::invalid(format!("dns.{key}"), msg));
        for (key, value) in [
            ("dns.min_ttl", self.min_ttl),
            ("dns.max_ttl", self.max_ttl),
            ("dns.negative_ttl", self.negative_ttl),
            ("dns.max_stale", self.max_stale),
            ("dns.stale_answer_timeout", self.stale_answer_timeout),
            ("dns.retry_interval", self.retry_interval),
            ("dns.query_timeout", self.query_timeout),
            ("dns.connect_timeout", self.connect_timeout),
        ] {
            check_duration(key, value)?;
        }
        if self.min_ttl > self.max_ttl {
            return bad(
                "min_ttl",
                format!(
                    "{:?} is above dns.max_ttl {:?}; lower it or raise max_ttl",
                    self.min_ttl, self.max_ttl
                ),
            );
        }
        if self.max_ttl.is_zero() {
            return bad("max_ttl", "must be above 0".into());
        }
        if self.negative_ttl > Duration::from_secs(3600) {
            return bad(
                "negative_ttl",
                format!("{:?} is above the 1h bound", self.negative_ttl),
            );
        }
        if !(self.refresh_ahead > 0.0 && self.refresh_ahead < 1.0) {
            return bad(
                "refresh_ahead",
                format!(
                    "{} is outside (0, 1); 0.75 refreshes at three quarters of the TTL",
                    self.refresh_ahead
                ),
            );
        }
        if self.stale_answer_timeout.is_zero() || self.query_timeout.is_zero() {
            return bad(
                "stale_answer_timeout",
                "stale_answer_timeout and query_timeout must be above 0".into(),
            );
        }
        if self.retry_interval < Duration::from_millis(10) {
            return bad(
                "retry_interval",
                format!(
                    "{:?} would let a dead upstream be hammered; use at least 10ms",
                    self.retry_interval
                ),
            );
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be above 0".into());
        }
        if let Some(d) = self.search.iter().find(|d| d.trim().is_empty()) {
            return bad("search", format!("{d:?}: empty search domain"));
        }
        if self.cache_size == 0 {
            return bad("cache_size", "must be at least 1".into());
        }
        if self.ndots.is_some_and(|n| n > 15) {
            return bad("ndots", "must be at most 15, as in resolv.conf".into());
        }
        Ok(())
    }
}

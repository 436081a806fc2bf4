//! `[relay]`: the gateway relay (crate `relay`), which bot processes
//! connect to as if it were Discord.
//!
//! The relay reads the clean events of the output exchange and the shared
//! Redis cache the workers fill (`worker.store = "redis"`), so its topology
//! base and `[redis]` must be the workers'. Bots authenticate with the bot
//! token (`discord.token`), as on Discord.

use crate::ConfigError;
use crate::error::check_duration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the relay.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// The gateway (websocket) and `GET /api/v10/gateway/bot`, `/healthz`,
    /// `/readyz` (and `/metrics` unless `metrics_listen` is set).
    pub listen: SocketAddr,
    /// A second listener serving only `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
    /// The URL bots are told to connect and resume to (`url` of
    /// `/gateway/bot`, READY's `resume_gateway_url`), e.g. the Service's
    /// `ws://relay.bulwark.svc:8082`. Empty: `ws://` + the address the
    /// request came to.
    pub public_url: String,
    /// The shard count `/gateway/bot` recommends. Bots may IDENTIFY with
    /// any count; the relay splits the guilds by it.
    pub shards: u32,
    /// How long a disconnected session may RESUME and get what it missed;
    /// after it, op 9.
    #[serde(with = "humantime_serde")]
    pub resume_window: Duration,
    /// Dispatches kept per session for RESUME; a session that falls
    /// further behind is closed (4000) and must RESUME or IDENTIFY again.
    pub session_buffer: usize,
    /// HELLO's `heartbeat_interval`.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Identify buckets (`shard_id % max_concurrency`), as `/gateway/bot`
    /// tells bots: each bucket may IDENTIFY once per `identify_window`; a
    /// faster one gets op 9. Generous next to Discord's 16, since an
    /// IDENTIFY here costs a cache read, not a Discord session.
    pub max_concurrency: u32,
    /// The window of one IDENTIFY per bucket.
    #[serde(with = "humantime_serde")]
    pub identify_window: Duration,
    /// Session starts allowed per 24 h (told as `session_start_limit`);
    /// past it, IDENTIFY gets op 9 until the day rolls over. Stops a bot
    /// fleet crash-looping on IDENTIFY from reloading the cache forever.
    pub session_start_total: u32,
    /// How long a connection may stay before IDENTIFY or RESUME.
    #[serde(with = "humantime_serde")]
    pub identify_timeout: Duration,
    /// Events a relay keeps of what it dispatched lately, so that it can
    /// take over the sessions of a relay that stops (a rolling update):
    /// they must span from that relay's stop until its bots RESUME here,
    /// a few seconds at the stream's rate (12,800 events/s for a bot in a
    /// million guilds: 50,000 is about 4 s). Past it, those bots get op 9
    /// and IDENTIFY again.
    pub handover_events: usize,
    /// The workers' `amqp_topology_base`: the output exchange read is
    /// `bulwark.events` for `bulwark.gateway`, else `<base>.events`.
    pub amqp_topology_base: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8082)),
            metrics_listen: None,
            public_url: String::new(),
            shards: 1,
            resume_window: Duration::from_secs(60),
            session_buffer: 20_000,
            heartbeat_interval: Duration::from_millis(41_250),
            identify_timeout: Duration::from_secs(20),
            max_concurrency: 64,
            identify_window: Duration::from_secs(5),
            session_start_total: 100_000,
            handover_events: 50_000,
            amqp_topology_base: "bulwark.gateway".into(),
        }
    }
}

impl RelayConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError::invalid(format!("relay.{key}"), msg));
        for (key, d) in [
            ("relay.resume_window", self.resume_window),
            ("relay.heartbeat_interval", self.heartbeat_interval),
            ("relay.identify_timeout", self.identify_timeout),
            ("relay.identify_window", self.identify_window),
        ] {
            check_duration(key, d)?;
        }
        if !(1..=crate::MAX_TOTAL_SHARDS).contains(&self.shards) {
            return bad(
                "shards",
                format!("{} is outside 1..={}", self.shards, crate::MAX_TOTAL_SHARDS),
            );
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return bad(
                "heartbeat_interval",
                format!("{:?} is below 100ms", self.heartbeat_interval),
            );
        }
        if !(1..=1024).contains(&self.max_concurrency) {
            return bad(
                "max_concurrency",
                format!("{} is outside 1..=1024", self.max_concurrency),
            );
        }
        if self.session_start_total == 0 {
            return bad(
                "session_start_total",
                "0 would refuse every bot; use at least 1".into(),
            );
        }
        if self.session_buffer < 100 {
            return bad(
                "session_buffer",
                format!(
                    "{} is below 100; a bot restart would miss events",
                    self.session_buffer
                ),
            );
        }
        if !(1_000..=10_000_000).contains(&self.handover_events) {
            return bad(
                "handover_events",
                format!(
                    "{} is outside 1000..=10000000; bots would IDENTIFY again after a relay restart",
                    self.handover_events
                ),
            );
        }
        let url = &self.public_url;
        if !(url.is_empty() || url.starts_with("ws://") || url.starts_with("wss://")) {
            return bad(
                "public_url",
                format!("`{}` must start with ws:// or wss://", self.public_url),
            );
        }
        if self.metrics_listen == Some(self.listen) {
            return bad(
                "metrics_listen",
                format!("{} is also relay.listen", self.listen),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn defaults_overrides_and_bounds() {
        let c = Config::from_toml_str(
            "[relay]\nshards = 16\nresume_window = \"2m\"\n",
            "t",
            vec![("BULWARK_RELAY__PUBLIC_URL".into(), "ws://relay:8082".into())],
        )
        .unwrap();
        assert_eq!(c.relay.shards, 16);
        assert_eq!(c.relay.resume_window.as_secs(), 120);
        assert_eq!(c.relay.public_url, "ws://relay:8082");
        assert_eq!(c.relay.listen.port(), 8082);
        for (text, key) in [
            ("[relay]\nshards = 0\n", "relay.shards"),
            ("[relay]\nsession_buffer = 5\n", "relay.session_buffer"),
            ("[relay]\nhandover_events = 10\n", "relay.handover_events"),
            ("[relay]\nmax_concurrency = 0\n", "relay.max_concurrency"),
            (
                "[relay]\nsession_start_total = 0\n",
                "relay.session_start_total",
            ),
            ("[relay]\npublic_url = \"http://x\"\n", "relay.public_url"),
            (
                "[relay]\nheartbeat_interval = \"1ms\"\n",
                "relay.heartbeat_interval",
            ),
            (
                "[relay]\nlisten = \"0.0.0.0:1\"\nmetrics_listen = \"0.0.0.0:1\"\n",
                "relay.metrics_listen",
            ),
        ] {
            let e = Config::from_toml_str(text, "t", Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{text} -> {e}");
        }
    }
}

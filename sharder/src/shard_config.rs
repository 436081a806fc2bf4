//! What one shard needs to know: its place in the layout, the token and
//! intents, the gateway URL and compression, and the timings of its
//! reconnects, heartbeats and saves ([`ShardConfig`]), mapped from the
//! process configuration ([`ShardConfig::from_config`]).

use config::Secret;
use gateway_protocol::{Compression, DEFAULT_MAX_PAYLOAD};
use std::time::Duration;

/// Everything one shard needs to know.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub shard_id: u32,
    pub total_shards: u32,
    pub token: Secret,
    pub intents: u64,
    pub large_threshold: u8,
    /// Base gateway URL (`wss://gateway.discord.gg`), without query.
    pub gateway_url: String,
    pub compression: Compression,
    /// Bound on one decompressed payload.
    pub max_payload: usize,
    /// First reconnect delay (doubles up to `reconnect_max`).
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    /// How long a connection must stay READY/RESUMED before its end resets
    /// the backoff (see `shard.rs`, step 5).
    pub reconnect_healthy_after: Duration,
    /// How long to wait for HELLO after connecting.
    pub hello_timeout: Duration,
    /// How often the confirmed `seq` is saved while it moves.
    pub persist_interval: Duration,
    /// Gateway commands allowed per `send_window` (Discord: 120 per 60 s;
    /// scaled down only for simulators).
    pub send_limit: u32,
    pub send_window: Duration,
    /// Random wait before identifying after op 9 `d:false`, as Discord
    /// asks (1 to 5 s).
    pub invalid_session_delay: (Duration, Duration),
    /// At shutdown, how long to wait for the sink to confirm what it holds
    /// before saving the session (what stays unconfirmed is replayed).
    pub shutdown_drain: Duration,
    /// The presence a bot set through a relay (op 3), shared by every
    /// shard of the process: IDENTIFY carries the newest.
    pub presence: crate::Presence,
}

impl ShardConfig {
    /// Defaults for shard `shard_id` of `total_shards`.
    pub fn new(shard_id: u32, total_shards: u32, token: Secret, gateway_url: String) -> Self {
        Self {
            shard_id,
            total_shards,
            token,
            intents: 0b10_0000_1111,
            large_threshold: 50,
            gateway_url,
            compression: Compression::ZstdStream,
            max_payload: DEFAULT_MAX_PAYLOAD,
            reconnect_base: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(60),
            reconnect_healthy_after: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(20),
            persist_interval: Duration::from_secs(2),
            send_limit: gateway_protocol::GATEWAY_SEND_LIMIT,
            send_window: gateway_protocol::GATEWAY_SEND_WINDOW,
            invalid_session_delay: (Duration::from_secs(1), Duration::from_secs(5)),
            shutdown_drain: Duration::from_secs(5),
            presence: crate::Presence::default(),
        }
    }
}

impl ShardConfig {
    /// The settings of shard `shard_id` from the process configuration.
    /// `gateway_url` is `[sharder].gateway_url` or the URL from
    /// `GET /gateway/bot`.
    pub fn from_config(cfg: &config::Config, shard_id: u32, gateway_url: String) -> Self {
        let s = &cfg.sharder;
        let mut c = Self::new(
            shard_id,
            s.total_shards,
            cfg.discord.token.clone(),
            gateway_url,
        );
        c.intents = cfg.discord.intents;
        c.large_threshold = cfg.discord.large_threshold;
        c.compression = match s.compression {
            config::GatewayCompression::None => Compression::None,
            config::GatewayCompression::ZlibStream => Compression::ZlibStream,
            config::GatewayCompression::ZstdStream => Compression::ZstdStream,
        };
        c.max_payload = usize::try_from(s.max_payload_bytes).unwrap_or(usize::MAX);
        c.reconnect_base = s.reconnect_base;
        c.reconnect_max = s.reconnect_max;
        c.reconnect_healthy_after = s.reconnect_healthy_after;
        c.hello_timeout = s.hello_timeout;
        c.persist_interval = s.persist_interval;
        c.shutdown_drain = s.shutdown_grace / 2;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_maps_every_setting_and_keeps_the_token_secret() {
        let cfg = config::Config::from_toml_str(
            "[discord]\nintents = 3\nlarge_threshold = 250\n\
             [sharder]\ntotal_shards = 4\ncompression = \"zlib-stream\"\n\
             max_payload_bytes = 8192\nreconnect_base = \"1s\"\nreconnect_max = \"9s\"\n\
             reconnect_healthy_after = \"7s\"\n",
            "t",
            vec![("BULWARK_DISCORD__TOKEN".into(), "tok.en.secret".into())],
        )
        .unwrap();
        let c = ShardConfig::from_config(&cfg, 3, "wss://g".into());
        assert_eq!((c.shard_id, c.total_shards, c.intents), (3, 4, 3));
        assert_eq!(c.large_threshold, 250);
        assert_eq!(c.compression, Compression::ZlibStream);
        assert_eq!(c.max_payload, 8192);
        assert_eq!(
            (c.reconnect_base, c.reconnect_max, c.reconnect_healthy_after),
            (
                Duration::from_secs(1),
                Duration::from_secs(9),
                Duration::from_secs(7)
            )
        );
        assert_eq!(c.token.expose(), "tok.en.secret");
        assert!(!format!("{c:?}").contains("secret"));
    }
}

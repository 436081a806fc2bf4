//! Every knob of the simulator, with Discord's values as defaults.
//!
//! Tests scale the time windows down (a 5 ms identify window, a 50 ms
//! heartbeat) so that the same rules run in milliseconds; the rules
//! themselves never change with the scale.

use crate::error::SimError;
use crate::world::{EventMix, WorldConfig};
use std::net::SocketAddr;
use std::time::Duration;

/// Intent bits Discord treats as privileged (GUILD_MEMBERS, GUILD_PRESENCES,
/// MESSAGE_CONTENT), and every bit it defines (see PROTOCOL.md; any other
/// is rejected with 4013): the protocol crate's table, shared with the
/// relay.
pub use gateway_protocol::intents::{PRIVILEGED_INTENTS, VALID_INTENTS};

/// The largest shard total IDENTIFY may ask for (4010 above it), and the
/// largest `shards`. Not a rule Discord publishes: the simulator keeps a
/// vector per shard of every connected total, and this bounds what one
/// IDENTIFY can make it allocate (about 3 MB). It matches the sharder's
/// own bound on `total_shards`.
pub const MAX_SHARD_TOTAL: u32 = 100_000;

/// The simulator's configuration. `Default` is Discord's behaviour on a
/// small world, listening on an ephemeral port of 127.0.0.1.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Where to listen; must be a loopback address.
    pub listen: SocketAddr,
    /// The bot token clients must present (`Authorization: Bot <token>` on
    /// HTTP, `token` in IDENTIFY and RESUME).
    pub token: String,
    /// Shard count the world is built for and `/gateway/bot` recommends at
    /// start ([`crate::SimHandle::set_recommended_shards`] changes the
    /// recommendation). IDENTIFY may use any total at least this large
    /// (4011 below it) unless `guild_cap` is set.
    pub shards: u32,
    /// Most guilds one shard may own (Discord: 2500). When set, an
    /// IDENTIFY whose `[shard, total]` owns more is closed with 4011, and
    /// so is a session whose shard a join takes over it (the session ends);
    /// any total that keeps every shard within the cap is accepted, also
    /// below `shards`. `None`: no cap, and the minimum total is `shards`.
    pub guild_cap: Option<u32>,
    /// Guilds at start.
    pub guilds: u32,
    /// Channels per generated guild.
    pub channels_per_guild: u32,
    /// Roles per generated guild, besides `@everyone`.
    pub roles_per_guild: u32,
    /// Members per generated guild.
    pub members_per_guild: u32,
    /// Relative frequency of each kind of dispatch.
    pub event_mix: EventMix,
    /// Dispatches an automatic outage lasts.
    pub outage_events: u64,
    /// Seed of the world and of the event content.
    pub seed: u64,
    /// Dispatch events per second across all shards (0 = none).
    pub event_rate: f64,
    /// `session_start_limit.max_concurrency`: identify buckets.
    pub max_concurrency: u32,
    /// Each bucket may identify once per this window (Discord: 5 s).
    pub identify_window: Duration,
    /// `session_start_limit.total` (and initial `remaining`).
    pub session_start_total: u32,
    /// How long until the session start budget resets (Discord: 24 h).
    pub session_start_reset: Duration,
    /// HELLO's `heartbeat_interval`. A connection that sends no heartbeat
    /// for 1.5 intervals is closed with 4009 and its session ends.
    pub heartbeat_interval: Duration,
    /// Commands a connection may send per `send_window` (Discord: 120).
    pub send_limit: u32,
    /// The send-limit window (Discord: 60 s).
    pub send_window: Duration,
    /// How long a session stays resumable after its connection drops.
    pub session_expiry: Duration,
    /// Dispatches kept per session for RESUME; a resume from further back
    /// gets op 9, and a connection that falls this far behind is closed.
    pub replay_buffer: usize,
    /// Which privileged intents the bot may use (a subset of
    /// [`PRIVILEGED_INTENTS`]); others get 4014.
    pub allowed_privileged_intents: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        let world = WorldConfig::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: "sim-token".to_owned(),
            shards: world.shards,
            guild_cap: None,
            guilds: world.guilds,
            channels_per_guild: world.channels_per_guild,
            roles_per_guild: world.roles_per_guild,
            members_per_guild: world.members_per_guild,
            event_mix: world.mix,
            outage_events: world.outage_events,
            seed: 0,
            event_rate: 0.0,
            max_concurrency: 1,
            identify_window: Duration::from_millis(5000),
            session_start_total: 1000,
            session_start_reset: Duration::from_secs(24 * 3600),
            heartbeat_interval: Duration::from_millis(41_250),
            send_limit: gateway_protocol::GATEWAY_SEND_LIMIT,
            send_window: gateway_protocol::GATEWAY_SEND_WINDOW,
            session_expiry: Duration::from_secs(180),
            replay_buffer: 10_000,
            allowed_privileged_intents: PRIVILEGED_INTENTS,
        }
    }
}

impl SimConfig {
    /// The world part of the configuration.
    pub fn world_config(&self) -> WorldConfig {
        WorldConfig {
            shards: self.shards,
            guilds: self.guilds,
            channels_per_guild: self.channels_per_guild,
            roles_per_guild: self.roles_per_guild,
            members_per_guild: self.members_per_guild,
            mix: self.event_mix.clone(),
            outage_events: self.outage_events,
        }
    }

    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), SimError> {
        self.world_config().validate()?;
        if self.shards > MAX_SHARD_TOTAL {
            return Err(SimError::config(
                "shards",
                format!("at most {MAX_SHARD_TOTAL}"),
            ));
        }
        if self.guild_cap == Some(0) {
            return Err(SimError::config("guild_cap", "must be at least 1"));
        }
        if !self.listen.ip().is_loopback() {
            return Err(SimError::config(
                "listen",
                format!("{} is not a loopback address", self.listen),
            ));
        }
        if self.token.trim().is_empty() {
            return Err(SimError::config("token", "must not be empty"));
        }
        check_positive_rate(self.event_rate)?;
        if self.max_concurrency == 0 {
            return Err(SimError::config("max_concurrency", "must be at least 1"));
        }
        for (key, d) in [
            ("identify_window", self.identify_window),
            ("heartbeat_interval", self.heartbeat_interval),
            ("send_window", self.send_window),
            ("session_start_reset", self.session_start_reset),
        ] {
            if d < Duration::from_millis(1) {
                return Err(SimError::config(key, "must be at least 1 ms"));
            }
        }
        if self.send_limit == 0 {
            return Err(SimError::config("send_limit", "must be at least 1"));
        }
        if self.replay_buffer == 0 {
            return Err(SimError::config("replay_buffer", "must be at least 1"));
        }
        if self.allowed_privileged_intents & !PRIVILEGED_INTENTS != 0 {
            return Err(SimError::config(
                "allowed_privileged_intents",
                format!("only bits of {PRIVILEGED_INTENTS:#x} are privileged"),
            ));
        }
        Ok(())
    }
}

/// An event rate must be a finite, non-negative number.
pub(crate) fn check_positive_rate(rate: f64) -> Result<(), SimError> {
    if !rate.is_finite() || rate < 0.0 {
        return Err(SimError::config(
            "event_rate",
            format!("{rate} is not a finite number >= 0"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_valid_and_discord_like() {
        let c = SimConfig::default();
        c.validate().unwrap();
        assert_eq!(c.send_limit, 120);
        assert_eq!(c.identify_window, Duration::from_secs(5));
        assert_eq!(VALID_INTENTS & (1 << 17), 0);
        assert_ne!(VALID_INTENTS & (1 << 21), 0);
        assert_ne!(VALID_INTENTS & (1 << 25), 0);
        assert_eq!(VALID_INTENTS & (1 << 23), 0);
    }

    #[test]
    fn bad_values_name_the_key() {
        let d = SimConfig::default;
        for (c, key) in [
            (
                SimConfig {
                    listen: "10.0.0.1:1".parse().unwrap(),
                    ..d()
                },
                "listen",
            ),
            (
                SimConfig {
                    token: " ".into(),
                    ..d()
                },
                "token",
            ),
            (
                SimConfig {
                    event_rate: f64::NAN,
                    ..d()
                },
                "event_rate",
            ),
            (
                SimConfig {
                    max_concurrency: 0,
                    ..d()
                },
                "max_concurrency",
            ),
            (
                SimConfig {
                    identify_window: Duration::ZERO,
                    ..d()
                },
                "identify_window",
            ),
            (
                SimConfig {
                    send_limit: 0,
                    ..d()
                },
                "send_limit",
            ),
            (SimConfig { shards: 0, ..d() }, "shards"),
            (
                SimConfig {
                    shards: MAX_SHARD_TOTAL + 1,
                    guilds: 1,
                    ..d()
                },
                "shards",
            ),
            (
                SimConfig {
                    guild_cap: Some(0),
                    ..d()
                },
                "guild_cap",
            ),
            (
                SimConfig {
                    allowed_privileged_intents: 1,
                    ..d()
                },
                "allowed_privileged_intents",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}

//! The shape of the generated world, validated before anything is built.

use super::mix::EventMix;
use crate::error::SimError;

/// Discord's limit of guilds per shard.
pub const MAX_GUILDS_PER_SHARD: u32 = 2500;

/// The shape of the generated world.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    /// Number of shards guilds route to (`(guild_id >> 22) % shards`).
    pub shards: u32,
    /// Guilds at start (spread evenly over the shards).
    pub guilds: u32,
    /// Channels per new guild (one category, the rest mostly text).
    pub channels_per_guild: u32,
    /// Roles per new guild, besides `@everyone`.
    pub roles_per_guild: u32,
    /// Members per new guild (the owner included), besides the bot's own
    /// member, which every guild has.
    pub members_per_guild: u32,
    /// Relative frequency of each kind of change.
    pub mix: EventMix,
    /// How many dispatches an automatic outage lasts before the guild's
    /// GUILD_CREATE brings it back.
    pub outage_events: u64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            shards: 1,
            guilds: 10,
            channels_per_guild: 8,
            roles_per_guild: 5,
            members_per_guild: 25,
            mix: EventMix::default(),
            outage_events: 200,
        }
    }
}

impl WorldConfig {
    /// Checks bounds; the error names the offending key.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.shards == 0 {
            return Err(SimError::config("shards", "must be at least 1"));
        }
        if u64::from(self.guilds) > u64::from(self.shards) * u64::from(MAX_GUILDS_PER_SHARD) {
            return Err(SimError::config(
                "guilds",
                format!(
                    "{} guilds over {} shards exceeds Discord's {MAX_GUILDS_PER_SHARD} per shard",
                    self.guilds, self.shards
                ),
            ));
        }
        if self.channels_per_guild < 2 {
            return Err(SimError::config(
                "channels_per_guild",
                "must be at least 2 (a category and a text channel)",
            ));
        }
        if self.members_per_guild == 0 {
            return Err(SimError::config(
                "members_per_guild",
                "must be at least 1 (the owner)",
            ));
        }
        if self.mix.total() == 0 {
            return Err(SimError::config(
                "event_mix",
                "at least one weight must be positive",
            ));
        }
        Ok(())
    }
}

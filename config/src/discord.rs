//! `[discord]`: what identifies the bot to Discord.

use crate::{ConfigError, Secret};
use serde::Deserialize;

/// Bot credentials and gateway options shared by the sharder and tools.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordConfig {
    /// Bot token, without the `Bot ` prefix. Set it through
    /// `BULWARK_DISCORD__TOKEN` from a Secret, never in a committed file.
    pub token: Secret,
    /// REST base, used for `GET /gateway/bot`.
    pub api_base: String,
    /// Gateway intents bitfield.
    pub intents: u64,
    /// IDENTIFY `large_threshold`, 50..=250.
    pub large_threshold: u8,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            api_base: "https://discord.com/api/v10".into(),
            // GUILDS | GUILD_MEMBERS | GUILD_MODERATION | GUILD_EXPRESSIONS
            // | GUILD_MESSAGES
            intents: 0b10_0000_1111,
            large_threshold: 50,
        }
    }
}

impl DiscordConfig {
    /// Intent bits Discord defines (PROTOCOL.md).
    pub const KNOWN_INTENTS: u64 = 0b11_0011_0001_1111_1111_1111_1111;

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !(50..=250).contains(&self.large_threshold) {
            return Err(ConfigError::invalid(
                "discord.large_threshold",
                format!("{} is outside 50..=250", self.large_threshold),
            ));
        }
        let unknown = self.intents & !Self::KNOWN_INTENTS;
        if unknown != 0 {
            return Err(ConfigError::invalid(
                "discord.intents",
                format!("bits {unknown:#b} are not gateway intents; see PROTOCOL.md"),
            ));
        }
        if !(self.api_base.starts_with("http://") || self.api_base.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "discord.api_base",
                format!("`{}` must start with http:// or https://", self.api_base),
            ));
        }
        Ok(())
    }

    /// The token, or an error that says how to provide it. Binaries that talk
    /// to Discord call this at start-up.
    pub fn require_token(&self) -> Result<&Secret, ConfigError> {
        if self.token.is_empty() {
            return Err(ConfigError::invalid(
                "discord.token",
                "no bot token; set BULWARK_DISCORD__TOKEN (from a Kubernetes Secret)",
            ));
        }
        Ok(&self.token)
    }
}

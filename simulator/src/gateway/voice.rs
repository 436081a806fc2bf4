//! Voice State Update (op 4) and Presence Update (op 3), answered as
//! Discord answers a bot.
//!
//! op 4 for a guild of the session's shard: Discord answers with the bot's
//! own VOICE_STATE_UPDATE (to a session with GUILD_VOICE_STATES) and, when
//! joining a channel (`channel_id` set), a VOICE_SERVER_UPDATE with the
//! voice server's `token` and `endpoint`, which a library needs to open
//! the voice connection. Leaving (`channel_id: null`) gets the voice state
//! only. A guild of another shard is ignored. The answers are the
//! session's own, not world events (no other session sees them, and the
//! world's voice states do not change).
//!
//! op 3 is accepted and counted (tests read the counters through the
//! control endpoint); the world keeps no presence state.

use super::protocol::{CloseReason, close};
use super::sessions::Core;
use crate::config::SimConfig;
use crate::world::BOT_USER_ID;
use serde::Deserialize;
use serde_json::json;

/// The voice server endpoint VOICE_SERVER_UPDATE names (never dialled).
pub(crate) const VOICE_ENDPOINT: &str = "voice.simulator.invalid:443";

const INTENT_GUILD_VOICE_STATES: u64 = 1 << 7;

/// op 4's `d`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct VoiceStateUpdate {
    pub guild_id: serde_json::Value,
    pub channel_id: Option<serde_json::Value>,
    pub self_mute: bool,
    pub self_deaf: bool,
}

fn snowflake(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn bad(msg: &str) -> CloseReason {
    CloseReason::new(close::DECODE_ERROR, msg)
}

impl Core {
    /// Answers op 4 for session `sid`. An error closes the connection.
    pub(crate) fn voice_state(
        &mut self,
        sid: &str,
        req: &VoiceStateUpdate,
        cfg: &SimConfig,
    ) -> Result<(), CloseReason> {
        let Some((slot, s)) = self.session_mut(sid) else {
            return Ok(());
        };
        let (intents, shard, total) = (s.intents, s.shard, s.total);
        let guild_id = snowflake(&req.guild_id).ok_or_else(|| bad("op 4: invalid guild_id"))?;
        let channel = match &req.channel_id {
            None | Some(serde_json::Value::Null) => None,
            Some(c) => Some(snowflake(c).ok_or_else(|| bad("op 4: invalid channel_id"))?),
        };
        self.counters.voice_state_updates += 1;
        if crate::world::shard_of(guild_id, total) != shard {
            return Ok(());
        }
        if intents & INTENT_GUILD_VOICE_STATES != 0 {
            let state = json!({
                "guild_id": guild_id.to_string(),
                "channel_id": channel.map(|c| c.to_string()),
                "user_id": BOT_USER_ID.to_string(),
                "session_id": sid,
                "deaf": false, "mute": false,
                "self_deaf": req.self_deaf, "self_mute": req.self_mute,
                "self_video": false, "suppress": false,
                "request_to_speak_timestamp": null,
            });
            self.push(
                slot,
                "VOICE_STATE_UPDATE",
                Some(guild_id),
                state.to_string().into(),
                cfg,
            );
        }
        if channel.is_some() {
            let server = json!({
                "token": format!("{:016x}", guild_id ^ 0x5eed_5eed),
                "guild_id": guild_id.to_string(),
                "endpoint": VOICE_ENDPOINT,
            });
            self.push(
                slot,
                "VOICE_SERVER_UPDATE",
                Some(guild_id),
                server.to_string().into(),
                cfg,
            );
        }
        Ok(())
    }

    /// Counts op 3.
    pub(crate) fn presence_update(&mut self) {
        self.counters.presence_updates += 1;
    }
}

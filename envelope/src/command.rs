//! A gateway command on its way back to Discord: what a relay forwards to
//! the real shards for a bot (op 3 presence, op 4 voice state, op 8
//! request guild members).
//!
//! Events flow one way (sharder → worker → relay → bot); a bot's commands
//! must reach the one real shard that owns the guild, which only the
//! sharder process running it knows. So a relay publishes each command to
//! the commands exchange ([`crate::topology::COMMANDS_EXCHANGE`]), every
//! sharder process consumes all of them through a queue of its own, and
//! the process whose running shard owns the guild sends it (op 3 goes to
//! every shard of every process). Commands are small and rare next to
//! events (Discord allows a connection 120 per minute), and a stale one is
//! worse than none (a voice join a minute late), so they are not durable:
//! they expire after [`COMMAND_TTL`] and a sharder that is down misses
//! them, as Discord drops commands on a connection that dies.
//!
//! The body is JSON: `{"op":8,"guild_id":"…","issued_at_ms":…,"d":{…}}`,
//! `d` kept as the exact text to send.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::Duration;

/// How long a command may wait in a sharder's queue before RabbitMQ drops
/// it (its `expiration`).
pub const COMMAND_TTL: Duration = Duration::from_secs(10);

/// Largest command body accepted (Discord's own limit on a client
/// payload is 4096 bytes; the wrapper adds a little).
pub const MAX_COMMAND_LEN: usize = 8192;

/// Presence update: every shard.
pub const PRESENCE_UPDATE: u8 = 3;
/// Voice state update: the guild's shard.
pub const VOICE_STATE_UPDATE: u8 = 4;
/// Request guild members: the guild's shard.
pub const REQUEST_GUILD_MEMBERS: u8 = 8;

/// One forwarded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// 3, 4 or 8.
    pub op: u8,
    /// The guild whose shard sends it; `None` for op 3 (every shard).
    pub guild_id: Option<u64>,
    /// When the bot sent it (unix ms): the newest presence wins.
    pub issued_at_ms: u64,
    /// The command's `d`, as JSON text.
    pub d: String,
}

/// Why a commands-exchange message is not a command (it is skipped).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("a command of {0} bytes is over {MAX_COMMAND_LEN}")]
    TooLong(usize),
    #[error("not a command: {0}")]
    Json(#[from] serde_json::Error),
    #[error("op {0} is not forwarded (only 3, 4 and 8 are)")]
    Op(u8),
    #[error("op {0} needs a guild_id")]
    NoGuild(u8),
    #[error("the command's d is not a JSON object")]
    NotAnObject,
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    op: u8,
    #[serde(default, with = "snowflake_opt")]
    guild_id: Option<u64>,
    issued_at_ms: u64,
    #[serde(borrow)]
    d: &'a RawValue,
}

mod snowflake_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(id) => s.serialize_str(&id.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let s: Option<std::borrow::Cow<'de, str>> = Option::deserialize(d)?;
        s.map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl Command {
    /// Routing key on the commands exchange: `guild.<id>`, or `all`.
    pub fn routing_key(&self) -> String {
        match self.guild_id {
            Some(g) => format!("guild.{g}"),
            None => "all".into(),
        }
    }

    /// The message body.
    pub fn encode(&self) -> Result<Vec<u8>, CommandError> {
        let d: &RawValue = serde_json::from_str(&self.d)?;
        Ok(serde_json::to_vec(&Wire {
            op: self.op,
            guild_id: self.guild_id,
            issued_at_ms: self.issued_at_ms,
            d,
        })?)
    }

    /// Reads and checks a message body.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        if bytes.len() > MAX_COMMAND_LEN {
            return Err(CommandError::TooLong(bytes.len()));
        }
        let w: Wire<'_> = serde_json::from_slice(bytes)?;
        match w.op {
            PRESENCE_UPDATE => {}
            VOICE_STATE_UPDATE | REQUEST_GUILD_MEMBERS if w.guild_id.is_none() => {
                return Err(CommandError::NoGuild(w.op));
            }
            VOICE_STATE_UPDATE | REQUEST_GUILD_MEMBERS => {}
            op => return Err(CommandError::Op(op)),
        }
        if !w.d.get().trim_start().starts_with('{') {
            return Err(CommandError::NotAnObject);
        }
        Ok(Self {
            op: w.op,
            guild_id: w.guild_id,
            issued_at_ms: w.issued_at_ms,
            d: w.d.get().to_owned(),
        })
    }

    /// The gateway payload a shard sends: `{"op":N,"d":…}`.
    pub fn payload(&self) -> String {
        format!("{{\"op\":{},\"d\":{}}}", self.op, self.d)
    }

    /// The shard of `total` that owns the command's guild (`None` for a
    /// command for every shard).
    pub fn shard(&self, total: u32) -> Option<u32> {
        let g = self.guild_id?;
        u32::try_from((g >> 22) % u64::from(total.max(1))).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_round_trips_and_finds_its_shard() {
        let c = Command {
            op: REQUEST_GUILD_MEMBERS,
            guild_id: Some(81_384_788_765_712_384),
            issued_at_ms: 5,
            d: r#"{"guild_id":"81384788765712384","user_ids":["1"],"nonce":"b1"}"#.into(),
        };
        let back = Command::decode(&c.encode().unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.routing_key(), "guild.81384788765712384");
        assert_eq!(c.shard(2), Some(0));
        assert_eq!(
            c.shard(3),
            Some(((81_384_788_765_712_384u64 >> 22) % 3) as u32)
        );
        assert_eq!(
            c.payload(),
            r#"{"op":8,"d":{"guild_id":"81384788765712384","user_ids":["1"],"nonce":"b1"}}"#
        );
    }

    #[test]
    fn bad_commands_are_refused_with_the_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"{", "not a command"),
            (br#"{"op":1,"issued_at_ms":0,"d":{}}"#, "op 1"),
            (br#"{"op":8,"issued_at_ms":0,"d":{}}"#, "needs a guild_id"),
            (
                br#"{"op":4,"guild_id":"x","issued_at_ms":0,"d":{}}"#,
                "not a command",
            ),
            (br#"{"op":3,"issued_at_ms":0,"d":[1]}"#, "not a JSON object"),
            (&[b' '; MAX_COMMAND_LEN + 1], "over"),
        ];
        for (bytes, why) in cases {
            let e = Command::decode(bytes).unwrap_err().to_string();
            assert!(e.contains(why), "{e} should say {why}");
        }
        let presence = br#"{"op":3,"guild_id":null,"issued_at_ms":9,"d":{"status":"idle"}}"#;
        let c = Command::decode(presence).unwrap();
        assert_eq!(
            (c.guild_id, c.shard(4), c.routing_key().as_str()),
            (None, None, "all")
        );
    }
}

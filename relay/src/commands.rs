//! A bot's commands toward Discord (op 3 presence, op 4 voice state, op 8
//! request guild members): checked as Discord checks them, then published
//! to the commands exchange, where the sharder process running the real
//! shard that owns the guild sends them (see `envelope::command`).
//!
//! # Why check here
//! A forwarded command goes out on a real shard that carries thousands of
//! other guilds. Discord closes a connection for a malformed command
//! (4002) or for an intent it lacks (4013), so a command the relay let
//! through could break a real shard for everybody. Every rule Discord
//! applies is applied here first; a bot that breaks one gets Discord's
//! close code from the relay, and the real shard never sees it.

use envelope::Command;
use envelope::command::{COMMAND_TTL, PRESENCE_UPDATE, REQUEST_GUILD_MEMBERS, VOICE_STATE_UPDATE};
use gateway_protocol::close;
use gateway_protocol::intents::intent::{GUILD_MEMBERS, GUILD_PRESENCES};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, ConnectionProperties};
use serde::Deserialize;
use serde_json::Value;

/// Most `user_ids` one op 8 may name.
pub const MAX_USER_IDS: usize = 100;
/// Largest `limit` of an op 8 with a non-empty query.
pub const MAX_QUERY_LIMIT: u64 = 100;
/// Longest nonce Discord echoes.
pub const MAX_NONCE_BYTES: usize = 32;

/// A refused command: Discord's close code and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub u16, pub String);

fn bad(why: impl Into<String>) -> Refused {
    Refused(close::DECODE_ERROR, why.into())
}

fn snowflake(v: &Value) -> Option<u64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// Op 8's `d`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRequest {
    pub guild_id: u64,
    pub selection: Selection,
    pub presences: bool,
    pub nonce: Option<String>,
}

/// Which members op 8 asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Names starting with `prefix` (lowercase), at most `limit` (`None`:
    /// every member).
    Query {
        prefix: String,
        limit: Option<usize>,
    },
    Users(Vec<u64>),
}

#[derive(Deserialize)]
struct RawMemberRequest {
    guild_id: Value,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    presences: Option<bool>,
    #[serde(default)]
    user_ids: Option<Value>,
    #[serde(default)]
    nonce: Option<String>,
}

/// Reads op 8 as Discord does, for a session with `intents`.
pub fn member_request(d: &str, intents: u64) -> Result<MemberRequest, Refused> {
    let r: RawMemberRequest = serde_json::from_str(d).map_err(|e| bad(format!("op 8: {e}")))?;
    let guild_id = snowflake(&r.guild_id).ok_or_else(|| bad("op 8: invalid guild_id"))?;
    let selection = match (r.query, r.user_ids) {
        (Some(_), Some(_)) => return Err(bad("op 8: `query` and `user_ids` are exclusive")),
        (None, None) => return Err(bad("op 8: `query` or `user_ids` is required")),
        (Some(q), None) => {
            let limit = r
                .limit
                .ok_or_else(|| bad("op 8: `limit` is required with `query`"))?;
            if q.is_empty() && limit == 0 {
                if intents & GUILD_MEMBERS == 0 {
                    return Err(Refused(
                        close::INVALID_INTENTS,
                        "op 8: the whole member list needs the GUILD_MEMBERS intent".into(),
                    ));
                }
                Selection::Query {
                    prefix: String::new(),
                    limit: None,
                }
            } else {
                Selection::Query {
                    prefix: q.to_lowercase(),
                    limit: Some(limit.clamp(1, MAX_QUERY_LIMIT) as usize),
                }
            }
        }
        (None, Some(ids)) => {
            let ids = match ids {
                Value::Array(a) => a,
                one => vec![one],
            };
            if ids.len() > MAX_USER_IDS {
                return Err(bad(format!("op 8: more than {MAX_USER_IDS} user_ids")));
            }
            let ids = ids
                .iter()
                .map(|v| snowflake(v).ok_or_else(|| bad("op 8: invalid user id")))
                .collect::<Result<Vec<_>, _>>()?;
            Selection::Users(ids)
        }
    };
    // Without GUILD_PRESENCES Discord answers without presences.
    let presences = r.presences.unwrap_or(false) && intents & GUILD_PRESENCES != 0;
    Ok(MemberRequest {
        guild_id,
        selection,
        presences,
        // Discord ignores a nonce over 32 bytes.
        nonce: r.nonce.filter(|n| n.len() <= MAX_NONCE_BYTES),
    })
}

impl MemberRequest {
    /// The op 8 `d` to forward, with `nonce` (the relay's own).
    pub fn forwarded(&self, nonce: &str) -> String {
        let mut d = serde_json::json!({
            "guild_id": self.guild_id.to_string(),
            "presences": self.presences,
            "nonce": nonce,
        });
        match &self.selection {
            Selection::Query { prefix, limit } => {
                d["query"] = Value::String(prefix.clone());
                d["limit"] = Value::from(limit.unwrap_or(0));
            }
            Selection::Users(ids) => {
                d["user_ids"] = ids.iter().map(|i| Value::String(i.to_string())).collect();
            }
        }
        d.to_string()
    }
}

/// Reads op 4's `d`: the guild it is for.
pub fn voice_state(d: &str) -> Result<u64, Refused> {
    let v: Value = serde_json::from_str(d).map_err(|e| bad(format!("op 4: {e}")))?;
    let guild = v
        .get("guild_id")
        .and_then(snowflake)
        .ok_or_else(|| bad("op 4: invalid guild_id"))?;
    match v.get("channel_id") {
        Some(Value::Null) => {}
        Some(c) if snowflake(c).is_some() => {}
        _ => return Err(bad("op 4: channel_id must be a channel id or null")),
    }
    for flag in ["self_mute", "self_deaf"] {
        if !v.get(flag).is_some_and(Value::is_boolean) {
            return Err(bad(format!("op 4: {flag} must be a boolean")));
        }
    }
    Ok(guild)
}

/// Checks op 3's `d`.
pub fn presence(d: &str) -> Result<(), Refused> {
    let v: Value = serde_json::from_str(d).map_err(|e| bad(format!("op 3: {e}")))?;
    let status = v.get("status").and_then(Value::as_str);
    if !matches!(
        status,
        Some("online" | "dnd" | "idle" | "invisible" | "offline")
    ) {
        return Err(bad(
            "op 3: status must be online, dnd, idle, invisible or offline",
        ));
    }
    if !v.get("activities").is_some_and(Value::is_array) {
        return Err(bad("op 3: activities must be an array"));
    }
    if !v.get("afk").is_some_and(Value::is_boolean) {
        return Err(bad("op 3: afk must be a boolean"));
    }
    Ok(())
}

/// The unix time in ms (commands' `issued_at_ms`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A forwardable command: op 3 for every shard, op 4 and 8 for a guild's.
pub fn command(op: u8, guild_id: Option<u64>, d: String) -> Command {
    debug_assert!(matches!(
        op,
        PRESENCE_UPDATE | VOICE_STATE_UPDATE | REQUEST_GUILD_MEMBERS
    ));
    Command {
        op,
        guild_id,
        issued_at_ms: now_ms(),
        d,
    }
}

/// Publishes commands to the commands exchange on a connection of its
/// own, dialled on first use and again after a failure.
pub struct Publisher {
    resolver: dnscache::Resolver,
    amqp_url: config::Secret,
    exchange: String,
    channel: tokio::sync::Mutex<Option<(lapin::Connection, lapin::Channel)>>,
}

impl Publisher {
    pub fn new(resolver: dnscache::Resolver, amqp_url: config::Secret, exchange: String) -> Self {
        Self {
            resolver,
            amqp_url,
            exchange,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// Publishes `c` (expiring after [`COMMAND_TTL`]).
    pub async fn publish(&self, c: &Command) -> Result<(), lapin::Error> {
        let body = c
            .encode()
            .map_err(|e| lapin::Error::from(std::io::Error::other(e.to_string())))?;
        let mut guard = self.channel.lock().await;
        let ch = match guard.as_ref() {
            Some((_, ch)) if ch.status().connected() => ch.clone(),
            _ => {
                let (conn, ch) = self.connect().await?;
                *guard = Some((conn, ch.clone()));
                ch
            }
        };
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_expiration(COMMAND_TTL.as_millis().to_string().as_str().into());
        let sent = ch
            .basic_publish(
                self.exchange.as_str().into(),
                c.routing_key().as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await;
        if sent.is_err() {
            *guard = None;
        }
        sent.map(drop)
    }

    async fn connect(&self) -> Result<(lapin::Connection, lapin::Channel), lapin::Error> {
        let conn = self
            .resolver
            .amqp_connect(self.amqp_url.expose(), ConnectionProperties::default())
            .await?;
        let ch = conn.create_channel().await?;
        envelope::topology::declare_topic(&ch, &self.exchange).await?;
        Ok((conn, ch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = GUILD_MEMBERS | GUILD_PRESENCES | 1;

    #[test]
    fn op_8_is_read_as_discord_reads_it() {
        let r = member_request(r#"{"guild_id":"5","user_ids":["1",2],"nonce":"n"}"#, 1).unwrap();
        assert_eq!(r.selection, Selection::Users(vec![1, 2]));
        assert_eq!(
            (r.guild_id, r.nonce.as_deref(), r.presences),
            (5, Some("n"), false)
        );
        let r = member_request(r#"{"guild_id":5,"query":"AB","limit":500}"#, 1).unwrap();
        assert_eq!(
            r.selection,
            Selection::Query {
                prefix: "ab".into(),
                limit: Some(100)
            }
        );
        let whole = r#"{"guild_id":"5","query":"","limit":0}"#;
        assert_eq!(
            member_request(whole, ALL).unwrap().selection,
            Selection::Query {
                prefix: String::new(),
                limit: None
            }
        );
        let long_nonce = format!(
            r#"{{"guild_id":"5","user_ids":"1","nonce":"{}"}}"#,
            "x".repeat(33)
        );
        assert_eq!(member_request(&long_nonce, 1).unwrap().nonce, None);
        let with_presences = r#"{"guild_id":"5","user_ids":["1"],"presences":true}"#;
        assert!(
            !member_request(with_presences, GUILD_MEMBERS)
                .unwrap()
                .presences
        );
        assert!(member_request(with_presences, ALL).unwrap().presences);
        let refused = [
            (whole, 1, close::INVALID_INTENTS),
            (
                r#"{"guild_id":"5","query":"a","user_ids":["1"],"limit":1}"#,
                ALL,
                close::DECODE_ERROR,
            ),
            (r#"{"guild_id":"5"}"#, ALL, close::DECODE_ERROR),
            (r#"{"guild_id":"5","query":"a"}"#, ALL, close::DECODE_ERROR),
            (
                r#"{"guild_id":"x","user_ids":["1"]}"#,
                ALL,
                close::DECODE_ERROR,
            ),
            (
                r#"{"guild_id":"5","user_ids":["y"]}"#,
                ALL,
                close::DECODE_ERROR,
            ),
            (r#"[1]"#, ALL, close::DECODE_ERROR),
        ];
        for (d, intents, code) in refused {
            assert_eq!(member_request(d, intents).unwrap_err().0, code, "{d}");
        }
        let many: Vec<String> = (0..101).map(|i| format!("\"{i}\"")).collect();
        let many = format!(r#"{{"guild_id":"5","user_ids":[{}]}}"#, many.join(","));
        assert_eq!(
            member_request(&many, ALL).unwrap_err().0,
            close::DECODE_ERROR
        );
    }

    #[test]
    fn a_forwarded_op_8_carries_the_relays_nonce_and_the_same_question() {
        let r = member_request(r#"{"guild_id":"5","user_ids":["1"],"nonce":"mine"}"#, 1).unwrap();
        let d: Value = serde_json::from_str(&r.forwarded("bw.1")).unwrap();
        assert_eq!(d["nonce"], "bw.1");
        assert_eq!(d["user_ids"], serde_json::json!(["1"]));
        assert_eq!(d["guild_id"], "5");
        assert!(d.get("query").is_none());
        let r = member_request(r#"{"guild_id":"5","query":"Ab","limit":3}"#, 1).unwrap();
        let d: Value = serde_json::from_str(&r.forwarded("bw.2")).unwrap();
        assert_eq!(
            (d["query"].as_str(), d["limit"].as_u64()),
            (Some("ab"), Some(3))
        );
    }

    #[test]
    fn op_4_and_op_3_are_checked_before_they_reach_a_real_shard() {
        let join = r#"{"guild_id":"7","channel_id":"8","self_mute":false,"self_deaf":true}"#;
        assert_eq!(voice_state(join), Ok(7));
        let leave = r#"{"guild_id":"7","channel_id":null,"self_mute":false,"self_deaf":false}"#;
        assert_eq!(voice_state(leave), Ok(7));
        for bad in [
            r#"{"channel_id":null,"self_mute":false,"self_deaf":false}"#,
            r#"{"guild_id":"7","channel_id":"x","self_mute":false,"self_deaf":false}"#,
            r#"{"guild_id":"7","channel_id":null,"self_deaf":false}"#,
            "nope",
        ] {
            assert_eq!(
                voice_state(bad).unwrap_err().0,
                close::DECODE_ERROR,
                "{bad}"
            );
        }
        let ok = r#"{"since":null,"activities":[],"status":"idle","afk":false}"#;
        assert_eq!(presence(ok), Ok(()));
        for bad in [
            r#"{"since":null,"activities":[],"status":"away","afk":false}"#,
            r#"{"since":null,"status":"idle","afk":false}"#,
            r#"{"since":null,"activities":[],"status":"idle"}"#,
        ] {
            assert_eq!(presence(bad).unwrap_err().0, close::DECODE_ERROR, "{bad}");
        }
    }
}

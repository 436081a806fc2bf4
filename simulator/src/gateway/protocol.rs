//! Gateway v10 payloads: parsing what clients send, and building what the
//! server sends.
//!
//! Parsing maps every way a payload can be wrong to the close code Discord
//! uses for it (4002 decode error, 4001 unknown opcode), so the connection
//! never has to guess. Server frames are built as text directly: each is
//! small and fixed-shape, and a dispatch wraps a payload that was serialised
//! once in the world.

pub(crate) use gateway_protocol::close;
use gateway_protocol::op;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The largest payload a client may send (Discord: 4096 bytes).
pub(crate) const MAX_CLIENT_PAYLOAD: usize = 4096;

/// Why a connection is being closed: code and a human reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CloseReason {
    pub code: u16,
    pub reason: String,
}

impl CloseReason {
    pub(crate) fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

/// IDENTIFY's `d`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Identify {
    pub token: String,
    /// Required by Discord; parsed so a missing or mistyped one is 4002.
    #[allow(dead_code)]
    pub properties: Properties,
    pub intents: u64,
    #[serde(default)]
    pub shard: Option<[u32; 2]>,
    #[serde(default)]
    pub large_threshold: Option<u32>,
    /// Payload compression (plain transport only).
    #[serde(default)]
    pub compress: Option<bool>,
}

/// IDENTIFY's `properties`.
#[derive(Debug, Clone, Deserialize)]
#[allow(dead_code)]
pub(crate) struct Properties {
    pub os: String,
    pub browser: String,
    pub device: String,
}

/// RESUME's `d`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Resume {
    pub token: String,
    pub session_id: String,
    pub seq: u64,
}

/// A command from the client.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Heartbeat,
    Identify(Box<Identify>),
    Resume(Resume),
    /// Request guild members (8).
    RequestMembers(Box<super::member_requests::RequestGuildMembers>),
    /// Voice state update (4).
    VoiceState(Box<super::voice::VoiceStateUpdate>),
    /// Presence update (3).
    Presence,
    /// Request soundboard sounds (31): accepted after identify, no reply.
    Other(u8),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    op: Option<serde_json::Value>,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

/// Parses one client payload.
pub(crate) fn parse(bytes: &[u8]) -> Result<Command, CloseReason> {
    if bytes.len() > MAX_CLIENT_PAYLOAD {
        return Err(CloseReason::new(
            close::DECODE_ERROR,
            format!(
                "payload of {} bytes exceeds {MAX_CLIENT_PAYLOAD}",
                bytes.len()
            ),
        ));
    }
    let env: Envelope<'_> = serde_json::from_slice(bytes)
        .map_err(|e| CloseReason::new(close::DECODE_ERROR, format!("invalid JSON: {e}")))?;
    let op = match env.op {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        _ => None,
    }
    .ok_or_else(|| CloseReason::new(close::DECODE_ERROR, "`op` missing or not an integer"))?;
    let d = env.d.map(RawValue::get).unwrap_or("null");
    let field = |what: &str, e: serde_json::Error| {
        CloseReason::new(close::DECODE_ERROR, format!("invalid {what} payload: {e}"))
    };
    let code = u8::try_from(op).unwrap_or(u8::MAX);
    match code {
        op::HEARTBEAT => {
            serde_json::from_str::<Option<u64>>(d).map_err(|e| field("heartbeat", e))?;
            Ok(Command::Heartbeat)
        }
        op::IDENTIFY => {
            let id: Identify = serde_json::from_str(d).map_err(|e| field("identify", e))?;
            Ok(Command::Identify(Box::new(id)))
        }
        op::RESUME => Ok(Command::Resume(
            serde_json::from_str(d).map_err(|e| field("resume", e))?,
        )),
        op::REQUEST_GUILD_MEMBERS => Ok(Command::RequestMembers(Box::new(
            serde_json::from_str(d).map_err(|e| field("request guild members", e))?,
        ))),
        op::VOICE_STATE_UPDATE => Ok(Command::VoiceState(Box::new(
            serde_json::from_str(d).map_err(|e| field("voice state update", e))?,
        ))),
        op::PRESENCE_UPDATE | op::REQUEST_SOUNDBOARD_SOUNDS => {
            if !d.trim_start().starts_with('{') {
                return Err(CloseReason::new(
                    close::DECODE_ERROR,
                    format!("op {op} needs an object as `d`"),
                ));
            }
            if code == op::PRESENCE_UPDATE {
                return Ok(Command::Presence);
            }
            Ok(Command::Other(code))
        }
        _ => Err(CloseReason::new(
            close::UNKNOWN_OPCODE,
            format!("unknown opcode {op}"),
        )),
    }
}

/// HELLO (op 10).
pub(crate) fn hello(interval_ms: u64) -> String {
    format!("{{\"op\":10,\"d\":{{\"heartbeat_interval\":{interval_ms}}},\"s\":null,\"t\":null}}")
}

/// Heartbeat ACK (op 11).
pub(crate) const HEARTBEAT_ACK: &str = r#"{"op":11,"d":null,"s":null,"t":null}"#;
/// Server heartbeat request (op 1).
pub(crate) const HEARTBEAT_REQUEST: &str = r#"{"op":1,"d":null,"s":null,"t":null}"#;
/// Reconnect (op 7).
pub(crate) const RECONNECT: &str = r#"{"op":7,"d":null,"s":null,"t":null}"#;

/// Invalid session (op 9).
pub(crate) fn invalid_session(resumable: bool) -> &'static str {
    if resumable {
        r#"{"op":9,"d":true,"s":null,"t":null}"#
    } else {
        r#"{"op":9,"d":false,"s":null,"t":null}"#
    }
}

/// A dispatch (op 0) around a pre-serialised `d`. Connections frame the
/// parts instead ([`super::transport::Transport::frame_dispatch_into`]).
#[cfg(test)]
pub(crate) fn dispatch_into(out: &mut String, seq: u64, event: &str, d: &str) {
    dispatch_head(out, seq, event);
    out.reserve(d.len() + 1);
    out.push_str(d);
    out.push('}');
}

/// The text of a dispatch before `d`: `{"op":0,"s":<seq>,"t":"<event>","d":`.
/// The dispatch is this, `d`, and `}`.
pub(crate) fn dispatch_head(out: &mut String, seq: u64, event: &str) {
    out.clear();
    out.push_str("{\"op\":0,\"s\":");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = seq;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &c in &digits[i..] {
        out.push(char::from(c));
    }
    out.push_str(",\"t\":\"");
    out.push_str(event);
    out.push_str("\",\"d\":");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn code(bytes: &str) -> u16 {
        parse(bytes.as_bytes()).unwrap_err().code
    }

    #[test]
    fn maps_bad_payloads_to_close_codes() {
        assert_eq!(code("{nope"), close::DECODE_ERROR);
        assert_eq!(code("[]"), close::DECODE_ERROR);
        assert_eq!(code(r#"{"d":null}"#), close::DECODE_ERROR);
        assert_eq!(code(r#"{"op":"1"}"#), close::DECODE_ERROR);
        assert_eq!(code(r#"{"op":1,"d":"x"}"#), close::DECODE_ERROR);
        assert_eq!(code(r#"{"op":2,"d":{"token":5}}"#), close::DECODE_ERROR);
        assert_eq!(
            code(r#"{"op":6,"d":{"token":"t","session_id":"s","seq":-1}}"#),
            4002
        );
        assert_eq!(code(r#"{"op":99,"d":null}"#), close::UNKNOWN_OPCODE);
        assert_eq!(code(r#"{"op":10,"d":null}"#), close::UNKNOWN_OPCODE);
        let huge = format!(r#"{{"op":1,"d":null,"x":"{}"}}"#, "a".repeat(5000));
        assert_eq!(code(&huge), close::DECODE_ERROR);
    }

    #[test]
    fn parses_valid_commands() {
        assert!(matches!(
            parse(br#"{"op":1,"d":null}"#),
            Ok(Command::Heartbeat)
        ));
        assert!(matches!(
            parse(br#"{"op":1,"d":7}"#),
            Ok(Command::Heartbeat)
        ));
        let id = br#"{"op":2,"d":{"token":"t","intents":513,"shard":[1,4],
            "properties":{"os":"linux","browser":"b","device":"b"}}}"#;
        match parse(id) {
            Ok(Command::Identify(i)) => {
                assert_eq!(i.shard, Some([1, 4]));
                assert_eq!(i.intents, 513);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dispatch_frames_are_valid_json() {
        let mut s = String::new();
        dispatch_into(&mut s, 3, "GUILD_UPDATE", r#"{"id":"1"}"#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["s"], 3);
        assert_eq!(v["d"]["id"], "1");
        for seq in [0, 9, 10, 1234567890, u64::MAX] {
            dispatch_into(&mut s, seq, "READY", "null");
            assert_eq!(s, format!(r#"{{"op":0,"s":{seq},"t":"READY","d":null}}"#));
        }
        serde_json::from_str::<serde_json::Value>(&hello(45000)).unwrap();
    }
}

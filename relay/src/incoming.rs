//! A clean event from the output exchange, as the workers publish it
//! (`worker::output`: routing key = clean name, body = Discord's `d`,
//! provenance in headers).

use bytes::Bytes;
use envelope::Version;
use lapin::types::{AMQPValue, FieldTable};
use worker::output::{EPOCH_HEADER, EVENT_HEADER, GUILD_HEADER, INITIAL_HEADER, SEQ_HEADER};

/// One clean event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// `<shard>:<epoch>:<seq>`: the same for every copy of the event.
    pub message_id: String,
    /// The clean name (`GUILD_JOINED`, `MESSAGE_CREATE`, ...).
    pub clean: String,
    /// The gateway name (`GUILD_CREATE`, `MESSAGE_CREATE`, ...).
    pub event: String,
    pub guild_id: Option<u64>,
    pub version: Version,
    /// `GUILD_AVAILABLE` of a guild loading after a shard's READY.
    pub initial: bool,
    /// Discord's `d`, unchanged.
    pub body: Bytes,
}

/// Why a message is not a clean event; it is skipped and counted.
#[derive(Debug, thiserror::Error)]
pub enum NotAnEvent {
    #[error("no message_id")]
    NoMessageId,
    #[error("header {0} is missing or not a number")]
    Header(&'static str),
    #[error("the body is not JSON")]
    Body,
}

fn number(headers: Option<&FieldTable>, name: &'static str) -> Option<u64> {
    let value = headers?.inner().get(name)?;
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

fn text(headers: Option<&FieldTable>, name: &'static str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

impl Incoming {
    /// Reads a delivery of the output exchange.
    pub fn parse(
        routing_key: &str,
        message_id: Option<&str>,
        headers: Option<&FieldTable>,
        body: &[u8],
    ) -> Result<Self, NotAnEvent> {
        let message_id = message_id.ok_or(NotAnEvent::NoMessageId)?.to_owned();
        let epoch = number(headers, EPOCH_HEADER).ok_or(NotAnEvent::Header(EPOCH_HEADER))?;
        let seq = number(headers, SEQ_HEADER).ok_or(NotAnEvent::Header(SEQ_HEADER))?;
        let event = text(headers, EVENT_HEADER).unwrap_or_else(|| routing_key.to_owned());
        if serde_json::from_slice::<&serde_json::value::RawValue>(body).is_err() {
            return Err(NotAnEvent::Body);
        }
        Ok(Self {
            message_id,
            clean: routing_key.to_owned(),
            event,
            guild_id: number(headers, GUILD_HEADER),
            version: Version { epoch, seq },
            initial: matches!(
                headers.and_then(|h| h.inner().get(INITIAL_HEADER)),
                Some(AMQPValue::Boolean(true))
            ),
            body: Bytes::copy_from_slice(body),
        })
    }
}

/// A guild message's `d` with its content fields emptied, as a session
/// without MESSAGE_CONTENT gets it.
pub fn without_content(d: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(d) else {
        return d.to_owned();
    };
    if let Some(o) = v.as_object_mut() {
        for (key, empty) in [
            ("content", serde_json::json!("")),
            ("embeds", serde_json::json!([])),
            ("attachments", serde_json::json!([])),
            ("components", serde_json::json!([])),
        ] {
            if o.contains_key(key) {
                o.insert(key.into(), empty);
            }
        }
        o.remove("poll");
    }
    v.to_string()
}

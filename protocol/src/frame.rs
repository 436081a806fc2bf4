//! Gateway frames, read in place.
//!
//! A sharder forwards every dispatch and needs only four facts about it: the
//! opcode, the sequence number, the event name and the guild it belongs to.
//! Deserialising `d` into structs (and serialising it again for the queue)
//! would cost more than the whole rest of the pipeline for a GUILD_CREATE of
//! a big guild, and would silently drop fields the model does not know.
//!
//! # Algorithm
//! 1. [`Frame::parse`] reads the whole payload in one validating pass (see
//!    `frame_scan.rs`): `op`, `s` and `t` as values (`t` borrows the input
//!    unless it contains escapes), `d` only validated and delimited, and the
//!    value ranges of `d`'s top-level keys `guild_id`, `id` and
//!    `unavailable` noted on the way.
//! 2. [`Frame::dispatch_keys`] reads those three small values. The guild of
//!    GUILD_CREATE / GUILD_UPDATE / GUILD_DELETE is `d.id`; every other
//!    event's is `d.guild_id`.
//! 3. [`Frame::d_range`] gives the byte range of `d` in the payload, so the
//!    event can be handed on as the original bytes.
//!
//! Any error here (bad JSON, a dispatch without `s` or `t`) means the
//! connection can no longer be trusted to be in step: the shard closes it and
//! resumes, and Discord replays from the last good sequence number.

use crate::frame_scan::{DataKeys, scan};
use crate::inflate::InflateError;
use crate::lexer::ScanError;
use crate::op;
use serde::Deserialize;
use std::borrow::Cow;
use std::ops::Range;

/// Why a payload could not be read. Each means "close and resume" (a
/// payload unreadable again at the same point after that is skipped:
/// the sharder's `LiveSession::unreadable`).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Transport decompression failed.
    #[error("cannot decompress gateway message: {0}")]
    Inflate(#[from] InflateError),
    /// The payload is not a JSON gateway frame.
    #[error("invalid gateway frame JSON at line {line} column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// A dispatch (op 0) lacks its sequence number or event name.
    #[error("dispatch frame without `{0}`")]
    MissingField(&'static str),
    /// `d` of a dispatch is not what the event requires.
    #[error("{event}: invalid `d`: {message}")]
    InvalidData { event: String, message: String },
}

impl FrameError {
    fn scan(payload: &[u8], e: &ScanError) -> Self {
        let before = payload.get(..e.offset).unwrap_or(payload);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        Self::Json {
            line,
            column: e.offset - line_start + 1,
            message: e.message.to_owned(),
        }
    }
}

/// One gateway payload, borrowed from its bytes.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// Opcode.
    pub op: u8,
    /// Sequence number; always set for dispatches.
    pub s: Option<u64>,
    /// Event name; always set for dispatches.
    pub t: Option<Cow<'a, str>>,
    /// The data, unparsed; valid JSON and UTF-8 (`None` when absent or
    /// `null`).
    pub d: Option<&'a [u8]>,
    d_range: Option<Range<usize>>,
    keys: DataKeys,
    payload: &'a [u8],
}

/// The routing facts of a dispatch's `d`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatchKeys {
    /// `d.id` for GUILD_CREATE/UPDATE/DELETE, else `d.guild_id`.
    pub guild_id: Option<u64>,
    /// `d.unavailable`, which tells an outage (GUILD_DELETE) or a guild still
    /// unavailable (GUILD_CREATE) from the real thing.
    pub unavailable: Option<bool>,
}

/// Parses a snowflake string.
pub fn parse_snowflake(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl<'a> Frame<'a> {
    /// Reads the envelope of `payload`.
    pub fn parse(payload: &'a [u8]) -> Result<Self, FrameError> {
        let scanned = scan(payload).map_err(|e| FrameError::scan(payload, &e))?;
        let op = scanned
            .op
            .and_then(|op| u8::try_from(op).ok())
            .unwrap_or(u8::MAX);
        if op == op::DISPATCH {
            if scanned.s.is_none() {
                return Err(FrameError::MissingField("s"));
            }
            if scanned.t.as_deref().is_none_or(str::is_empty) {
                return Err(FrameError::MissingField("t"));
            }
        }
        Ok(Self {
            op,
            s: scanned.s,
            t: scanned.t,
            d: scanned.d.clone().and_then(|r| payload.get(r)),
            d_range: scanned.d,
            keys: scanned.keys,
            payload,
        })
    }

    /// The event name, or "" for non-dispatches.
    pub fn event(&self) -> &str {
        self.t.as_deref().unwrap_or("")
    }

    /// Guild events route by `d.id`; every other dispatch by `d.guild_id`.
    fn is_guild_event(&self) -> bool {
        matches!(
            self.event(),
            "GUILD_CREATE" | "GUILD_UPDATE" | "GUILD_DELETE"
        )
    }

    /// The raw bytes of one of `d`'s routing values.
    fn value_bytes(&self, range: &Option<Range<usize>>) -> Option<&[u8]> {
        range.clone().and_then(|r| self.payload.get(r))
    }

    /// [`dispatch_keys`](Self::dispatch_keys) for the shapes nearly every
    /// event has (a snowflake string or nothing, a boolean or nothing),
    /// read from the bytes; `None` sends anything else, errors included,
    /// the long way.
    fn plain_dispatch_keys(&self) -> Option<DispatchKeys> {
        if self.keys.duplicate.is_some() {
            return None;
        }
        let is_guild_event = self.is_guild_event();
        let id = self.value_bytes(if is_guild_event {
            &self.keys.id
        } else {
            &self.keys.guild_id
        });
        let guild_id = match id {
            None | Some(b"null") if !is_guild_event => None,
            Some([b'"', digits @ .., b'"']) if (1..=20).contains(&digits.len()) => {
                let mut v: u64 = 0;
                for &c in digits {
                    if !c.is_ascii_digit() {
                        return None;
                    }
                    v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                }
                Some(v)
            }
            _ => return None,
        };
        let unavailable = match self.value_bytes(&self.keys.unavailable) {
            None | Some(b"null") => None,
            Some(b"true") => Some(true),
            Some(b"false") => Some(false),
            Some(_) => return None,
        };
        Some(DispatchKeys {
            guild_id,
            unavailable,
        })
    }

    /// The guild id and `unavailable` flag of a dispatch, from `d`'s own
    /// keys. `d` that is not an object has neither.
    pub fn dispatch_keys(&self) -> Result<DispatchKeys, FrameError> {
        match self.plain_dispatch_keys() {
            Some(keys) => Ok(keys),
            None => self.checked_dispatch_keys(),
        }
    }

    /// [`dispatch_keys`](Self::dispatch_keys) for any shape, with the
    /// error that says what is wrong.
    fn checked_dispatch_keys(&self) -> Result<DispatchKeys, FrameError> {
        let invalid = |message: String| FrameError::InvalidData {
            event: self.event().to_owned(),
            message,
        };
        if let Some(key) = self.keys.duplicate {
            return Err(invalid(format!("duplicate field `{key}`")));
        }
        // The scan checked these small values as JSON and UTF-8.
        let raw = |r: &Option<Range<usize>>| {
            self.value_bytes(r)
                .and_then(|v| std::str::from_utf8(v).ok())
        };
        let text = if self.is_guild_event() {
            match raw(&self.keys.id) {
                None | Some("null") => return Err(invalid("guild event without `id`".into())),
                Some(v) => Some(
                    json_text(v).ok_or_else(|| invalid("`id` is not a snowflake string".into()))?,
                ),
            }
        } else {
            match raw(&self.keys.guild_id) {
                None | Some("null") => None,
                Some(v) => Some(json_text(v).ok_or_else(|| {
                    invalid(format!(
                        "invalid type for `guild_id`: {v}, expected a string"
                    ))
                })?),
            }
        };
        let guild_id = match text {
            None => None,
            Some(t) => Some(
                parse_snowflake(&t).ok_or_else(|| invalid(format!("`{t}` is not a snowflake")))?,
            ),
        };
        let unavailable = match raw(&self.keys.unavailable) {
            None | Some("null") => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(v) => {
                return Err(invalid(format!(
                    "invalid type for `unavailable`: {v}, expected a boolean"
                )));
            }
        };
        Ok(DispatchKeys {
            guild_id,
            unavailable,
        })
    }

    /// The byte range of `d` inside `payload` (the slice this frame was
    /// parsed from), so `d` can travel on as its original bytes.
    pub fn d_range(&self, payload: &[u8]) -> Option<Range<usize>> {
        let r = self.d_range.clone()?;
        (payload.len() == self.payload.len() && r.end <= payload.len()).then_some(r)
    }

    /// Parses `d` as `T` (for the few payloads the shard itself reads:
    /// HELLO, READY, op 9).
    pub fn data<T: Deserialize<'a>>(&self) -> Result<T, FrameError> {
        let d = self.d.unwrap_or(b"null");
        serde_json::from_slice(d).map_err(|e| FrameError::InvalidData {
            event: match &self.t {
                Some(t) => t.to_string(),
                None => format!("op {}", self.op),
            },
            message: e.to_string(),
        })
    }
}

/// The text of a JSON string value (validated by the scan), or `None` when
/// the value is not a string.
fn json_text(value: &str) -> Option<Cow<'_, str>> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(value).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dispatch_envelope_and_guild_id() {
        let p = br#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"id":"9","guild_id":"81384788765712384","member":{"guild_id":"1"}}}"#;
        let f = Frame::parse(p).unwrap();
        assert_eq!((f.op, f.s, f.event()), (0, Some(42), "MESSAGE_CREATE"));
        assert!(matches!(f.t, Some(Cow::Borrowed(_))), "t must borrow");
        let k = f.dispatch_keys().unwrap();
        assert_eq!(k.guild_id, Some(81384788765712384));
        let r = f.d_range(p).unwrap();
        assert!(p[r.clone()].starts_with(br#"{"id":"9""#));
        assert!(p[r].ends_with(br#""1"}}"#));
    }

    #[test]
    fn the_plain_keys_agree_with_the_checked_ones() {
        let values = [
            "",
            r#""7""#,
            r#""0""#,
            r#""007""#,
            r#""18446744073709551615""#,
            r#""18446744073709551616""#,
            r#""123456789012345678901""#,
            r#""""#,
            r#""\u0037""#,
            r#""7a""#,
            r#""-7""#,
            "7",
            "null",
            "true",
            r#"["7"]"#,
        ];
        let flags = ["", "true", "false", "null", r#""true""#, "1"];
        let mut plain = 0;
        for t in ["MESSAGE_CREATE", "GUILD_CREATE", "GUILD_DELETE"] {
            for key in ["guild_id", "id"] {
                for v in values {
                    for u in flags {
                        let mut members = Vec::new();
                        if !v.is_empty() {
                            members.push(format!(r#""{key}":{v}"#));
                        }
                        if !u.is_empty() {
                            members.push(format!(r#""unavailable":{u}"#));
                        }
                        let p = format!(
                            r#"{{"op":0,"s":1,"t":"{t}","d":{{{}}}}}"#,
                            members.join(",")
                        );
                        let f = Frame::parse(p.as_bytes()).unwrap();
                        let checked = f.checked_dispatch_keys();
                        match f.plain_dispatch_keys() {
                            Some(k) => {
                                plain += 1;
                                assert_eq!(Some(k), checked.ok(), "{p}");
                            }
                            None => assert_eq!(f.dispatch_keys().ok(), checked.ok(), "{p}"),
                        }
                    }
                }
            }
        }
        assert!(plain > 50, "the plain path took {plain}");
        let dup =
            Frame::parse(br#"{"op":0,"s":1,"t":"X","d":{"guild_id":"1","guild_id":"2"}}"#).unwrap();
        assert!(dup.plain_dispatch_keys().is_none() && dup.dispatch_keys().is_err());
    }

    #[test]
    fn guild_events_use_id() {
        for t in ["GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"] {
            let p = format!(r#"{{"op":0,"s":1,"t":"{t}","d":{{"id":"7","unavailable":true}}}}"#);
            let f = Frame::parse(p.as_bytes()).unwrap();
            let k = f.dispatch_keys().unwrap();
            assert_eq!(k.guild_id, Some(7), "{t}");
            assert_eq!(k.unavailable, Some(true));
        }
        let f = Frame::parse(br#"{"op":0,"s":1,"t":"GUILD_CREATE","d":{"id":5}}"#).unwrap();
        assert!(f.dispatch_keys().is_err());
        let f = Frame::parse(br#"{"op":0,"s":1,"t":"GUILD_DELETE","d":{}}"#).unwrap();
        assert!(f.dispatch_keys().is_err());
    }

    #[test]
    fn non_guild_dispatches_and_ops() {
        let f = Frame::parse(br#"{"op":0,"s":3,"t":"TYPING_START","d":{"id":12}}"#).unwrap();
        assert_eq!(f.dispatch_keys().unwrap().guild_id, None);
        let f = Frame::parse(br#"{"op":11,"d":null,"s":null,"t":null}"#).unwrap();
        assert_eq!((f.op, f.s, f.d.is_none()), (11, None, true));
        let f = Frame::parse(br#"{"op":9,"d":false}"#).unwrap();
        assert!(!f.data::<bool>().unwrap());
        assert_eq!(f.dispatch_keys().unwrap(), DispatchKeys::default());
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"{",
            b"null",
            b"[]",
            br#"{"d":{}}"#,
            br#"{"op":"0"}"#,
            br#"{"op":300}"#,
            br#"{"op":0,"t":"READY","d":{}}"#,
            br#"{"op":0,"s":1,"d":{}}"#,
            br#"{"op":0,"s":1,"t":"","d":{}}"#,
            br#"{"op":0,"s":-1,"t":"X"}"#,
            br#"[0,{},1,"X"]"#,
            br#"  [0,{"guild_id":"1"},1,"GUILD_CREATE"]"#,
            b"{\"op\":0,\"s\":1,\"t\":\"X\",\"d\":\"\xff\"}",
        ];
        for c in cases {
            assert!(Frame::parse(c).is_err(), "{:?}", String::from_utf8_lossy(c));
        }
        let f = Frame::parse(br#"{"op":0,"s":1,"t":"X","d":{"guild_id":"12a"}}"#).unwrap();
        let e = f.dispatch_keys().unwrap_err().to_string();
        assert!(e.contains("12a") && e.contains('X'), "{e}");
    }

    #[test]
    fn snowflakes() {
        assert_eq!(parse_snowflake("0"), Some(0));
        assert_eq!(parse_snowflake("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "-1",
            "1.0",
            " 1",
            "18446744073709551616",
            "123456789012345678901",
        ] {
            assert_eq!(parse_snowflake(bad), None, "{bad}");
        }
    }

    fn check(bytes: &[u8]) {
        if let Ok(f) = Frame::parse(bytes) {
            let _ = f.dispatch_keys();
            if let Some(r) = f.d_range(bytes) {
                assert!(r.end <= bytes.len());
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            check(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(
            pos in 0usize..200,
            byte in any::<u8>(),
            cut in 0usize..200,
        ) {
            let base = br#"{"op":0,"s":17,"t":"GUILD_CREATE","d":{"id":"81384788765712384","unavailable":false,"channels":[{"id":"1","name":"a\"b"}]}}"#;
            let mut v = base.to_vec();
            let i = pos % v.len();
            v[i] = byte;
            check(&v);
            v.truncate(cut % (v.len() + 1));
            check(&v);
        }

        #[test]
        fn mutated_compressed_streams_never_panic(
            pos in 0usize..400,
            byte in any::<u8>(),
            zstd in any::<bool>(),
        ) {
            use crate::inflate::{Compression, Decompressor};
            use std::io::Write;
            let payload = br#"{"op":0,"s":1,"t":"GUILD_CREATE","d":{"id":"1","name":"guild"}}"#;
            let (kind, mut msg) = if zstd {
                let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
                enc.write_all(payload).unwrap();
                enc.flush().unwrap();
                (Compression::ZstdStream, std::mem::take(enc.get_mut()))
            } else {
                let mut c = flate2::Compress::new(flate2::Compression::default(), true);
                let mut out = Vec::with_capacity(4096);
                c.compress_vec(payload, &mut out, flate2::FlushCompress::Sync).unwrap();
                (Compression::ZlibStream, out)
            };
            let i = pos % msg.len();
            msg[i] = byte;
            let mut d = Decompressor::new(kind, 1 << 16).unwrap();
            if let Ok(Some(p)) = d.push(&msg) {
                check(&p);
            }
        }
    }
}

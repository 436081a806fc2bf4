//! One validating pass over a gateway payload: the frame reader on top of
//! the JSON [`Lexer`](crate::lexer).
//!
//! The sharder needs four facts per dispatch (`op`, `s`, `t`, and `d`'s
//! guild id) and a guarantee that `d`, which it forwards as its original
//! bytes, is valid JSON. serde_json gave both in two passes: the envelope
//! with `d` as a `RawValue` (which validates `d`), then `d` again for its
//! keys. Those passes were about 30 % of the sharder's CPU per event. This
//! reader does both in one pass and builds nothing.
//!
//! # Algorithm
//! 1. Tokens (strings, numbers, literals, skipped values, whitespace) are
//!    the lexer's, with its techniques: UTF-8 checked only inside strings
//!    that hold a byte above 0x7F, strings skipped eight bytes at a time,
//!    nested values skipped iteratively with a bit stack, failures recorded
//!    in the lexer with zero-sized step errors, and the cursor kept in a
//!    register (`lexer.rs`, points 1-5). The frame reader is written as
//!    methods of the lexer, so its loops keep the cursor in a register too.
//! 2. The top-level object is read key by key. `op`, `s` and `t` are read as
//!    values; any other key's value is validated and skipped.
//! 3. `d`, when it is an object, is read key by key as well: the value
//!    ranges of `guild_id`, `id` and `unavailable` are kept (only those of
//!    `d` itself, never of nested objects); every value is validated.
//!
//! It accepts exactly the JSON that serde_json accepts for a frame whose
//! `d` is an ignored value (escapes are checked for form, not for surrogate
//! pairing; integers may be of any length). The lexer's property tests hold
//! the lexer to serde_json; this reader's tests (`frame_scan_tests.rs`)
//! hold its verdict and its keys to serde_json on generated and mutated
//! frames.

use crate::lexer::{Lexer, ScanError, Step, apart, unescape};
use std::borrow::Cow;
use std::ops::Range;

type Scan<T> = Result<T, ScanError>;

/// The envelope and `d`'s routing keys, as ranges and borrowed text.
#[derive(Debug, Default)]
pub(crate) struct Scanned<'a> {
    pub(crate) op: Option<u64>,
    pub(crate) s: Option<u64>,
    pub(crate) t: Option<Cow<'a, str>>,
    /// `d` (absent or `null` is `None`).
    pub(crate) d: Option<Range<usize>>,
    /// Raw value ranges of `d.guild_id`, `d.id`, `d.unavailable`.
    pub(crate) keys: DataKeys,
}

/// Raw value ranges of `d`'s routing keys (in the payload).
#[derive(Debug, Default, Clone)]
pub(crate) struct DataKeys {
    pub(crate) guild_id: Option<Range<usize>>,
    pub(crate) id: Option<Range<usize>>,
    pub(crate) unavailable: Option<Range<usize>>,
    /// One of them appeared twice.
    pub(crate) duplicate: Option<&'static str>,
}

/// Scans `payload` as a gateway frame.
pub(crate) fn scan(payload: &[u8]) -> Scan<Scanned<'_>> {
    apart(payload, 0, Lexer::frame).map(|(_, out)| out)
}

impl<'a> Lexer<'a> {
    fn nullable_unsigned(&mut self, message: &'static str) -> Step<Option<u64>> {
        if self.literal_null()? {
            return Ok(None);
        }
        self.unsigned(message).map(Some)
    }

    fn nullable_string(&mut self) -> Step<Option<Cow<'a, str>>> {
        if self.literal_null()? {
            return Ok(None);
        }
        if self.peek() != Some(b'"') {
            return Err(self.fail("`t` must be null or a string"));
        }
        let start = self.i + 1;
        let escaped = self.string()?;
        let b: &'a [u8] = self.b;
        let raw = &b[start..self.i - 1];
        Ok(Some(if escaped {
            Cow::Owned(unescape(raw))
        } else {
            // `string` checked it.
            Cow::Borrowed(std::str::from_utf8(raw).unwrap_or_default())
        }))
    }

    /// The whole payload as a gateway frame.
    fn frame(&mut self) -> Step<Scanned<'a>> {
        let mut out = Scanned::default();
        if self.peek_token() != b'{' {
            return Err(self.fail("a gateway frame must be a JSON object"));
        }
        self.i += 1;
        let mut seen = [false; 4];
        if self.peek_token() == b'}' {
            self.i += 1;
        } else {
            loop {
                let key = self.key()?;
                let slot = match self.key_bytes(key).as_ref() {
                    b"op" => Some(0),
                    b"s" => Some(1),
                    b"t" => Some(2),
                    b"d" => Some(3),
                    _ => None,
                };
                if let Some(n) = slot {
                    if seen[n] {
                        return Err(self.fail("duplicate envelope field"));
                    }
                    seen[n] = true;
                }
                self.peek_token();
                match slot {
                    Some(0) => out.op = Some(self.unsigned("`op` must be an integer 0-255")?),
                    Some(1) => out.s = self.nullable_unsigned("`s` must be null or an integer")?,
                    Some(2) => out.t = self.nullable_string()?,
                    Some(3) => {
                        let start = self.i;
                        let null = if self.peek() == Some(b'{') {
                            out.keys = self.data_object()?;
                            false
                        } else if self.literal_null()? {
                            true
                        } else {
                            self.value()?;
                            false
                        };
                        out.d = (!null).then_some(start..self.i);
                    }
                    _ => self.value()?,
                }
                if !self.next_member(b'}')? {
                    break;
                }
            }
        }
        if self.peek_token() != 0 || self.i != self.b.len() {
            return Err(self.fail("trailing characters after the frame"));
        }
        if out.op.is_some_and(|op| op > 255) {
            return Err(self.fail("`op` must be an integer 0-255"));
        }
        if out.op.is_none() {
            return Err(self.fail("missing field `op`"));
        }
        Ok(out)
    }

    /// `d` as an object: validates it, keeping the routing keys' ranges.
    fn data_object(&mut self) -> Step<DataKeys> {
        self.i += 1;
        let mut keys = DataKeys::default();
        if self.peek_token() == b'}' {
            self.i += 1;
            return Ok(keys);
        }
        loop {
            let key = self.key()?;
            self.peek_token();
            let start = self.i;
            self.value()?;
            let (slot, name) = match self.key_bytes(key).as_ref() {
                b"guild_id" => (&mut keys.guild_id, "guild_id"),
                b"id" => (&mut keys.id, "id"),
                b"unavailable" => (&mut keys.unavailable, "unavailable"),
                _ => {
                    if !self.next_member(b'}')? {
                        return Ok(keys);
                    }
                    continue;
                }
            };
            if slot.is_some() {
                keys.duplicate = Some(name);
            }
            *slot = Some(start..self.i);
            if !self.next_member(b'}')? {
                return Ok(keys);
            }
        }
    }
}

#[cfg(test)]
#[path = "frame_scan_tests.rs"]
mod tests;

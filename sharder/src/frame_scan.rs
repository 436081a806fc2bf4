//! One validating pass over a gateway payload.
//!
//! The sharder needs four facts per dispatch (`op`, `s`, `t`, and `d`'s
//! guild id) and a guarantee that `d`, which it forwards as its original
//! bytes, is valid JSON. serde_json gave both in two passes: the envelope
//! with `d` as a `RawValue` (which validates `d`), then `d` again for its
//! keys. Those passes were about 30 % of the sharder's CPU per event. This
//! scanner does both in one pass and builds nothing.
//!
//! # Algorithm
//! 1. UTF-8 is checked where it can occur: outside strings the grammar
//!    accepts only ASCII, and a string holding a byte above 0x7F has its
//!    contents checked with `str::from_utf8` when it ends. An accepted
//!    payload is therefore valid UTF-8 as a whole, without a separate pass.
//! 2. The top-level object is read key by key. `op`, `s` and `t` are read as
//!    values; any other key's value is validated and skipped.
//! 3. `d`, when it is an object, is read key by key as well: the value
//!    ranges of `guild_id`, `id` and `unavailable` are kept (only those of
//!    `d` itself, never of nested objects); every value is validated.
//! 4. Skipping a value is iterative, with a bit stack of open containers, so
//!    nesting depth costs memory (one bit per level), never stack. Strings
//!    are skipped eight bytes at a time to the next quote, backslash or
//!    control character.
//!
//! It accepts exactly the JSON that serde_json accepts for an ignored value
//! (escapes are checked for form, not for surrogate pairing; integers may
//! be of any length). The property tests in this file hold it to that on
//! generated and on mutated payloads.

use std::borrow::Cow;
use std::ops::Range;

/// Why a payload is not a JSON gateway frame: a message and the byte offset
/// it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanError {
    pub(crate) offset: usize,
    pub(crate) message: &'static str,
}

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
    let mut r = Reader { b: payload, i: 0 };
    let mut out = Scanned::default();
    r.ws();
    if r.peek() != Some(b'{') {
        return Err(r.error("a gateway frame must be a JSON object"));
    }
    r.i += 1;
    let mut seen = [false; 4];
    if !r.object_empty()? {
        loop {
            let key = r.key()?;
            let slot = match key.as_ref() {
                b"op" => Some(0),
                b"s" => Some(1),
                b"t" => Some(2),
                b"d" => Some(3),
                _ => None,
            };
            if let Some(n) = slot {
                if seen[n] {
                    return Err(r.error("duplicate envelope field"));
                }
                seen[n] = true;
            }
            r.ws();
            match slot {
                Some(0) => out.op = Some(r.unsigned("`op` must be an integer 0-255")?),
                Some(1) => out.s = r.nullable_unsigned("`s` must be null or an integer")?,
                Some(2) => out.t = r.nullable_string()?,
                Some(3) => {
                    let start = r.i;
                    let null = if r.peek() == Some(b'{') {
                        out.keys = r.data_object()?;
                        false
                    } else if r.literal_null()? {
                        true
                    } else {
                        r.value()?;
                        false
                    };
                    out.d = (!null).then_some(start..r.i);
                }
                _ => r.value()?,
            }
            if !r.next_member(b'}')? {
                break;
            }
        }
    }
    r.ws();
    if r.i != r.b.len() {
        return Err(r.error("trailing characters after the frame"));
    }
    if out.op.is_some_and(|op| op > 255) {
        return Err(r.error("`op` must be an integer 0-255"));
    }
    if out.op.is_none() {
        return Err(r.error("missing field `op`"));
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes of `word` that are zero (exact for the lowest one).
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGHS
}

impl<'a> Reader<'a> {
    fn error(&self, message: &'static str) -> ScanError {
        ScanError {
            offset: self.i,
            message,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn expect(&mut self, byte: u8, message: &'static str) -> Scan<()> {
        self.ws();
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.error(message))
        }
    }

    /// After `{`: true (and consumed) when the object is empty.
    fn object_empty(&mut self) -> Scan<bool> {
        self.ws();
        match self.peek() {
            Some(b'}') => {
                self.i += 1;
                Ok(true)
            }
            Some(b'"') => Ok(false),
            _ => Err(self.error("expected a key or `}`")),
        }
    }

    /// A key and its colon; the key's raw bytes (unescaped only if needed).
    fn key(&mut self) -> Scan<Cow<'a, [u8]>> {
        let (range, escaped) = self.key_range()?;
        let raw = &self.b[range];
        Ok(if escaped {
            Cow::Owned(unescape(raw).into_bytes())
        } else {
            Cow::Borrowed(raw)
        })
    }

    /// A key and its colon: the key's raw range and whether it holds
    /// escapes. Compact JSON (no whitespace) takes no detours.
    #[inline]
    fn key_range(&mut self) -> Scan<(Range<usize>, bool)> {
        if self.peek() != Some(b'"') {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key"));
            }
        }
        let key = self.string()?;
        if self.peek() == Some(b':') {
            self.i += 1;
        } else {
            self.expect(b':', "expected `:` after a key")?;
        }
        Ok(key)
    }

    /// After a member: true after `,` (another follows), false after
    /// `close`.
    fn next_member(&mut self, close: u8) -> Scan<bool> {
        self.ws();
        match self.peek() {
            Some(b',') => {
                self.i += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.i += 1;
                Ok(false)
            }
            _ => Err(self.error("expected `,` or the end of the container")),
        }
    }

    /// At a `"`: moves past the closing quote; the contents' range and
    /// whether it holds escapes.
    fn string(&mut self) -> Scan<(Range<usize>, bool)> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        // Bytes above 0x7F stop the word loop until the first is seen; the
        // contents are then checked as UTF-8 once, at the end.
        let mut high = HIGHS;
        loop {
            // Eight bytes at a time to the next byte that needs a look.
            while let Some(chunk) = self.b.get(self.i..self.i + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let w = u64::from_le_bytes(word);
                let hits = zero_bytes(w ^ (ONES * u64::from(b'"')))
                    | zero_bytes(w ^ (ONES * u64::from(b'\\')))
                    | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS)
                    | (w & high);
                if hits != 0 {
                    self.i += (hits.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    let range = start..self.i - 1;
                    if high == 0 && std::str::from_utf8(&self.b[range.clone()]).is_err() {
                        self.i = start;
                        return Err(self.error("invalid UTF-8 in a string"));
                    }
                    return Ok((range, escaped));
                }
                Some(0x80..) => {
                    high = 0;
                    self.i += 1;
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 1..self.i + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.error("invalid \\u escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(c) if c < 0x20 => {
                    return Err(self.error("control character in a string"));
                }
                Some(_) => self.i += 1,
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    /// A JSON number (grammar only).
    fn number(&mut self) -> Scan<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Scan<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    /// `null` at the cursor: consumed, true.
    fn literal_null(&mut self) -> Scan<bool> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(true);
        }
        Ok(false)
    }

    /// An integer that fits u64, as serde_json reads one for `u64`.
    fn unsigned(&mut self, message: &'static str) -> Scan<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while let Some(c @ b'0'..=b'9') = self.peek() {
                    v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(c - b'0')))
                        .ok_or_else(|| self.error(message))?;
                    self.i += 1;
                }
            }
            _ => return Err(self.error(message)),
        }
        if let Some(b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.i = start;
            return Err(self.error(message));
        }
        Ok(v)
    }

    fn nullable_unsigned(&mut self, message: &'static str) -> Scan<Option<u64>> {
        if self.literal_null()? {
            return Ok(None);
        }
        self.unsigned(message).map(Some)
    }

    fn nullable_string(&mut self) -> Scan<Option<Cow<'a, str>>> {
        if self.literal_null()? {
            return Ok(None);
        }
        if self.peek() != Some(b'"') {
            return Err(self.error("`t` must be null or a string"));
        }
        let (range, escaped) = self.string()?;
        let raw = &self.b[range];
        Ok(Some(if escaped {
            Cow::Owned(unescape(raw))
        } else {
            // `string` checked it.
            Cow::Borrowed(std::str::from_utf8(raw).unwrap_or_default())
        }))
    }

    /// `d` as an object: validates it, keeping the routing keys' ranges.
    fn data_object(&mut self) -> Scan<DataKeys> {
        self.i += 1;
        let mut keys = DataKeys::default();
        if self.object_empty()? {
            return Ok(keys);
        }
        loop {
            let key = self.key()?;
            self.ws();
            let start = self.i;
            self.value()?;
            let (slot, name) = match key.as_ref() {
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

    /// Validates and skips one value, iteratively.
    fn value(&mut self) -> Scan<()> {
        let mut open = BitStack::default();
        loop {
            // A value starts here.
            self.ws();
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    if self.object_empty()? {
                        // fall through to "after a value"
                    } else {
                        open.push(true);
                        self.key_range()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        open.push(false);
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(self.error("expected a value")),
            }
            // After a value: close what ends here, or go on to the next one.
            loop {
                let Some(in_object) = open.top() else {
                    return Ok(());
                };
                let close = if in_object { b'}' } else { b']' };
                if self.next_member(close)? {
                    if in_object {
                        self.key_range()?;
                    }
                    break;
                }
                open.pop();
            }
        }
    }
}

/// Unescapes a JSON string's contents (rare: keys and `t` hardly ever hold
/// escapes). The contents were validated; serde_json decodes them, with
/// lone surrogates replaced.
fn unescape(raw: &[u8]) -> String {
    let mut quoted = Vec::with_capacity(raw.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(raw);
    quoted.push(b'"');
    let mut de = serde_json::Deserializer::from_slice(&quoted);
    let text: Result<Cow<'_, str>, _> = serde::Deserialize::deserialize(&mut de);
    match text {
        Ok(t) => t.into_owned(),
        Err(_) => String::from_utf8_lossy(raw).into_owned(),
    }
}

/// Open containers, one bit each (1 = object): 64 levels inline, deeper
/// ones spill to the heap.
#[derive(Default)]
struct BitStack {
    inline: u64,
    spill: Vec<u64>,
    depth: usize,
}

impl BitStack {
    fn push(&mut self, object: bool) {
        let bit = self.depth % 64;
        if bit == 0 && self.depth > 0 {
            self.spill.push(self.inline);
            self.inline = 0;
        }
        if object {
            self.inline |= 1 << bit;
        } else {
            self.inline &= !(1 << bit);
        }
        self.depth += 1;
    }

    fn top(&self) -> Option<bool> {
        let depth = self.depth.checked_sub(1)?;
        Some(self.inline & (1 << (depth % 64)) != 0)
    }

    fn pop(&mut self) {
        if self.depth == 0 {
            return;
        }
        self.depth -= 1;
        if self.depth.is_multiple_of(64) && self.depth > 0 {
            self.inline = self.spill.pop().unwrap_or(0);
        }
    }
}

#[cfg(test)]
#[path = "frame_scan_tests.rs"]
mod tests;

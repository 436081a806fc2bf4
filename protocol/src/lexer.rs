//! The JSON lexer under every gateway reader: the sharder's frame reader
//! (`frame_scan.rs`) and the worker's payload readers. It accepts exactly
//! the JSON that serde_json accepts for an ignored value (escapes are
//! checked for form, not for surrogate pairing; integers may be of any
//! length); the property tests in `lexer_tests.rs` hold it to that on
//! generated and on mutated input.
//!
//! # Algorithm
//! 1. UTF-8 is checked where it can occur: outside strings the grammar
//!    accepts only ASCII, and a string holding a byte above 0x7F has its
//!    contents checked with `str::from_utf8` when it ends. Accepted input
//!    is therefore valid UTF-8 as a whole, without a separate pass.
//! 2. A reader on top asks for one token at a time ([`Lexer::key`],
//!    [`Lexer::string`], [`Lexer::unsigned`], ...) and skips what it does
//!    not read with [`Lexer::value`], which validates it.
//! 3. Skipping a value is iterative, with a bit stack of open containers, so
//!    nesting depth costs memory (one bit per level), never stack. Strings
//!    are skipped eight bytes at a time to the next quote, backslash,
//!    control character or non-ASCII byte; a string that meets none of them
//!    before its quote (nearly all of them) never leaves that inlined loop.
//! 4. The cost is per token more than per byte (the simulator's frames
//!    average 645 bytes, about 40 strings and 16 numbers or literals, most
//!    strings under 20 bytes), so each step is kept small: a failure is
//!    recorded in the lexer and steps return a zero-sized error
//!    ([`LexFailed`]; results stay in registers), literals are one
//!    four-byte compare, and whitespace, which compact gateway JSON never
//!    has, is skipped out of line.
//! 5. The cursor stays in a register in every loop: nothing called from a
//!    loop that goes on is handed the lexer. What runs out of line (a
//!    nested value, a string's rare rest, whitespace) gets the bytes and a
//!    position, runs in a lexer of its own ([`apart`]) and returns the
//!    new position. One such call that could write the cursor kept it in
//!    memory for the whole loop, a store and a reload on every step.
//!    Moving them apart took the scan to 0.94x its time on a stream of
//!    distinct frames (the `frame_scan` bench), and 0.75x on frames the
//!    branch predictor has learnt. A reader keeps this by calling only the
//!    lexer's methods from its loops (closures it inlines are fine) and
//!    never storing the lexer behind a call it does not inline.

use std::borrow::Cow;
use std::ops::Range;

/// A failed step of a [`Lexer`]: the input is not JSON there (the lexer
/// keeps what failed and where). Keeping the error out of the return value
/// keeps every step's result in registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LexFailed;

/// One step's result.
pub(crate) type Step<T> = Result<T, LexFailed>;

/// Why input is not JSON: a message and the byte offset it refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanError {
    pub(crate) offset: usize,
    pub(crate) message: &'static str,
}

/// A cursor over JSON bytes with one method per token (module docs). A
/// reader on top calls them in the order its grammar expects; every method
/// validates what it moves over. [`Lexer::eat`], [`Lexer::key`],
/// [`Lexer::next_member`] and [`Lexer::value`] skip whitespace before their
/// token; the other token methods expect the cursor on their token's first
/// byte, which [`Lexer::peek_token`] moves it to.
pub struct Lexer<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) i: usize,
    pub(crate) error: ScanError,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes of `word` that are zero (exact for the lowest one).
#[inline(always)]
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGHS
}

/// Bytes of `word` that end a string's plain run: `"`, `\`, a control
/// character, or (when `high` is `HIGHS`) a byte above 0x7F. Exact for the
/// lowest one.
#[inline(always)]
fn special_bytes(word: u64, high: u64) -> u64 {
    zero_bytes(word ^ (ONES * u64::from(b'"')))
        | zero_bytes(word ^ (ONES * u64::from(b'\\')))
        | (word.wrapping_sub(ONES * 0x20) & !word & HIGHS)
        | (word & high)
}

/// The eight bytes at `i`, if there are eight.
#[inline(always)]
fn word_at(b: &[u8], i: usize) -> Option<u64> {
    let chunk: &[u8; 8] = b.get(i..i + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(*chunk))
}

impl<'a> Lexer<'a> {
    /// A lexer at the start of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Self::at(b, 0)
    }

    /// The byte offset of the cursor.
    #[inline(always)]
    pub fn pos(&self) -> usize {
        self.i
    }

    /// Consumes `c` if it is the next token; whether it was.
    #[inline(always)]
    pub fn eat(&mut self, c: u8) -> bool {
        if self.peek_token() == c {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.peek_token() == 0 && self.i == self.b.len()
    }

    /// `true` or `false` at the cursor.
    #[inline(always)]
    pub fn boolean(&mut self) -> Step<bool> {
        match self.peek() {
            Some(b't') => self.literal(b"true", 4).map(|()| true),
            Some(b'f') => self.literal(b"alse", 5).map(|()| false),
            _ => Err(self.fail("expected a boolean")),
        }
    }

    pub(crate) fn at(b: &'a [u8], i: usize) -> Self {
        Self {
            b,
            i,
            error: ScanError {
                offset: 0,
                message: "",
            },
        }
    }

    /// Takes over where a lexer of its own ([`apart`]) stopped.
    #[inline(always)]
    fn rejoin<T>(&mut self, out: Result<(usize, T), ScanError>) -> Step<T> {
        match out {
            Ok((end, v)) => {
                self.i = end;
                Ok(v)
            }
            Err(e) => {
                self.error = e;
                Err(LexFailed)
            }
        }
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn fail(&mut self, message: &'static str) -> LexFailed {
        self.error = ScanError {
            offset: self.i,
            message,
        };
        LexFailed
    }

    #[inline(always)]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The next byte that is not whitespace (0 at the end, which no rule
    /// accepts), without consuming it. Compact JSON takes the first branch.
    #[inline(always)]
    pub fn peek_token(&mut self) -> u8 {
        match self.b.get(self.i) {
            Some(&c) if c > b' ' => c,
            _ => {
                self.i = skip_whitespace(self.b, self.i);
                self.peek().unwrap_or(0)
            }
        }
    }

    /// After a member: true after `,` (another follows), false after
    /// `close`.
    #[inline(always)]
    pub fn next_member(&mut self, close: u8) -> Step<bool> {
        let c = self.peek_token();
        self.i += 1;
        if c == b',' {
            Ok(true)
        } else if c == close {
            Ok(false)
        } else {
            self.i -= 1;
            Err(self.fail("expected `,` or the end of the container"))
        }
    }

    /// A key and its colon: the key's raw range and whether it holds
    /// escapes.
    #[inline(always)]
    pub fn key(&mut self) -> Step<(Range<usize>, bool)> {
        if self.peek_token() != b'"' {
            return Err(self.fail("expected a key"));
        }
        let start = self.i + 1;
        let escaped = self.string()?;
        let range = start..self.i - 1;
        if self.peek_token() != b':' {
            return Err(self.fail("expected `:` after a key"));
        }
        self.i += 1;
        Ok((range, escaped))
    }

    /// A key's bytes, unescaped only if needed.
    pub(crate) fn key_bytes(&self, (range, escaped): (Range<usize>, bool)) -> Cow<'a, [u8]> {
        let b: &'a [u8] = self.b;
        let raw = &b[range];
        if escaped {
            Cow::Owned(unescape(raw).into_bytes())
        } else {
            Cow::Borrowed(raw)
        }
    }

    /// At a `"`: moves past the closing quote; whether the contents hold
    /// escapes. The common string (plain ASCII, its quote within the
    /// payload's last eight bytes) never leaves this loop.
    #[inline(always)]
    pub fn string(&mut self) -> Step<bool> {
        let start = self.i + 1;
        let mut i = start;
        while let Some(w) = word_at(self.b, i) {
            let hits = special_bytes(w, HIGHS);
            if hits != 0 {
                i += (hits.trailing_zeros() / 8) as usize;
                if self.b.get(i) == Some(&b'"') {
                    self.i = i + 1;
                    return Ok(false);
                }
                break;
            }
            i += 8;
        }
        self.string_rest(start, i)
    }

    /// The rest of a string from `i` (everything from `start` to `i` is
    /// plain ASCII), out of line, in a lexer of its own:
    /// [`Lexer::string_rest_here`].
    #[inline(always)]
    fn string_rest(&mut self, start: usize, i: usize) -> Step<bool> {
        self.rejoin(string_rest(self.b, start, i))
    }

    /// The rest of a string from the cursor: escapes, bytes above 0x7F
    /// (checked as UTF-8 once, at the end) and the payload's last bytes.
    fn string_rest_here(&mut self, start: usize) -> Step<bool> {
        let mut escaped = false;
        // Bytes above 0x7F stop the word loop until the first is seen.
        let mut high = HIGHS;
        loop {
            while let Some(w) = word_at(self.b, self.i) {
                let hits = special_bytes(w, high);
                if hits != 0 {
                    self.i += (hits.trailing_zeros() / 8) as usize;
                    break;
                }
                self.i += 8;
            }
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    if high == 0 && std::str::from_utf8(&self.b[start..self.i - 1]).is_err() {
                        self.i = start;
                        return Err(self.fail("invalid UTF-8 in a string"));
                    }
                    return Ok(escaped);
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
                                return Err(self.fail("invalid \\u escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.fail("invalid escape")),
                    }
                }
                Some(c) if c < 0x20 => {
                    return Err(self.fail("control character in a string"));
                }
                Some(_) => self.i += 1,
                None => return Err(self.fail("unterminated string")),
            }
        }
    }

    #[inline(always)]
    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    /// A JSON number (grammar only).
    #[inline(always)]
    pub fn number(&mut self) -> Step<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.fail("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        Ok(())
    }

    /// `true`, `false` or `null` (`len` bytes) at the cursor, as one
    /// four-byte compare of its last four bytes (`word`); the caller
    /// matched the first byte.
    #[inline(always)]
    fn literal(&mut self, word: &'static [u8; 4], len: usize) -> Step<()> {
        let at = self.i + len - 4;
        let four = self
            .b
            .get(at..at + 4)
            .and_then(|s| <&[u8; 4]>::try_from(s).ok());
        if four == Some(word) {
            self.i += len;
            Ok(())
        } else {
            Err(self.fail("invalid literal"))
        }
    }

    /// `null` at the cursor: consumed, true.
    pub fn literal_null(&mut self) -> Step<bool> {
        if self.peek() == Some(b'n') {
            self.literal(b"null", 4)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// An integer that fits u64, as serde_json reads one for `u64`.
    pub fn unsigned(&mut self, message: &'static str) -> Step<u64> {
        let start = self.i;
        let mut v: u64 = 0;
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                while let Some(c @ b'0'..=b'9') = self.peek() {
                    let Some(next) = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(c - b'0')))
                    else {
                        return Err(self.fail(message));
                    };
                    v = next;
                    self.i += 1;
                }
            }
            _ => return Err(self.fail(message)),
        }
        if let Some(b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.i = start;
            return Err(self.fail(message));
        }
        Ok(v)
    }

    /// Validates and skips one value, out of line and in a lexer of its
    /// own (`Lexer::value_here`), so a reader's member loops (the
    /// envelope's and `d`'s, the worker's objects) keep their cursor in a
    /// register.
    #[inline(always)]
    pub fn value(&mut self) -> Step<()> {
        self.rejoin(value(self.b, self.i))
    }

    /// Validates and skips one value from the cursor, iteratively.
    fn value_here(&mut self) -> Step<()> {
        let mut open = BitStack::default();
        loop {
            // A value starts here.
            match self.peek_token() {
                b'"' => {
                    self.string()?;
                }
                b'{' => {
                    self.i += 1;
                    if self.peek_token() == b'}' {
                        self.i += 1;
                    } else {
                        open.push(true);
                        self.key()?;
                        continue;
                    }
                }
                b'[' => {
                    self.i += 1;
                    if self.peek_token() == b']' {
                        self.i += 1;
                    } else {
                        open.push(false);
                        continue;
                    }
                }
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true", 4)?,
                b'f' => self.literal(b"alse", 5)?,
                b'n' => self.literal(b"null", 4)?,
                _ => return Err(self.fail("expected a value")),
            }
            // After a value: close what ends here, or go on to the next one.
            loop {
                let Some(in_object) = open.top() else {
                    return Ok(());
                };
                let close = if in_object { b'}' } else { b']' };
                if self.next_member(close)? {
                    if in_object {
                        self.key()?;
                    }
                    break;
                }
                open.pop();
            }
        }
    }
}

/// The cursor past any whitespace at `i`: out of line (compact JSON has
/// none), and a function of the bytes and a position, not of the lexer
/// (module docs, point 5).
#[inline(never)]
fn skip_whitespace(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// Runs `step` from `i` in a lexer of its own (module docs, point 5): the
/// cursor where it stopped and its answer, or the error.
#[inline(always)]
pub(crate) fn apart<'a, T>(
    b: &'a [u8],
    i: usize,
    step: impl FnOnce(&mut Lexer<'a>) -> Step<T>,
) -> Result<(usize, T), ScanError> {
    let mut r = Lexer::at(b, i);
    match step(&mut r) {
        Ok(v) => Ok((r.i, v)),
        Err(LexFailed) => Err(r.error),
    }
}

/// [`Lexer::value_here`] from `i`, out of line.
#[inline(never)]
fn value(b: &[u8], i: usize) -> Result<(usize, ()), ScanError> {
    apart(b, i, Lexer::value_here)
}

/// [`Lexer::string_rest_here`] from `i`, out of line.
#[inline(never)]
fn string_rest(b: &[u8], start: usize, i: usize) -> Result<(usize, bool), ScanError> {
    apart(b, i, |r| r.string_rest_here(start))
}

/// Unescapes a JSON string's contents (rare: keys and `t` hardly ever hold
/// escapes). The contents were validated; serde_json decodes them, with
/// lone surrogates replaced.
pub(crate) fn unescape(raw: &[u8]) -> String {
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
#[path = "lexer_tests.rs"]
pub(crate) mod tests;

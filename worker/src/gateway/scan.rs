//! A fast path for the simple-delta payloads (CHANNEL_*, GUILD_ROLE_CREATE
//! and _UPDATE, GUILD_MEMBER_ADD and _UPDATE): a hand-written scanner that
//! fills the same shapes serde would, skipping the keys the cache does not
//! read without building them.
//!
//! # Algorithm
//!
//! The scanner never decides that a payload is invalid: it only answers
//! `Some(shape)` for payloads it fully understands, and `None` for anything
//! else, in which case the caller parses the payload with serde as before
//! (so every error, and every rare-but-valid form, is serde's). It answers
//! `None` on:
//!
//! * any syntax error, trailing characters, or nesting deeper than
//!   [`MAX_DEPTH`] (serde_json's own limit is 128);
//! * a key, or a kept string, holding an escape (`\`), or any string holding
//!   a raw control character;
//! * a kept field of an unexpected type, an id sent as a JSON number, a
//!   number with a sign, fraction or exponent where an integer is kept, or an
//!   integer out of its field's range;
//! * a kept field given twice, or a required one missing.
//!
//! Skipped values are checked as strictly as serde_json checks them
//! (string escapes, number grammar, literals), so that `Some` implies serde
//! would have accepted the payload and produced the same shape: the tests
//! check that on generated payloads and on random mutations of them.

use super::{ChannelP, MemberEventP, RoleEventP, RoleP, Str, UserP};
use std::borrow::Cow;

/// Nesting (objects and arrays) the scanner follows before giving up.
const MAX_DEPTH: usize = 64;

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

/// `true` for a byte that ends the fast run of a string: `"`, `\` or a
/// control character.
fn special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// Whether any byte of the little-endian word `w` is `"`, `\` or below
/// 0x20 (the classic "has zero byte" bit trick, three times).
fn word_has_special(w: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let quote = zero(w ^ (LO * u64::from(b'"')));
    let backslash = zero(w ^ (LO * u64::from(b'\\')));
    // Bytes below 0x20: subtracting 0x20 borrows into the high bit.
    let control = w.wrapping_sub(LO * 0x20) & !w & HI;
    quote | backslash | control != 0
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.pos += 1)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        (self.bytes().get(self.pos..end)? == word.as_bytes()).then(|| self.pos = end)
    }

    /// Moves to the next `"`, `\` or control byte of a string body.
    fn run_to_special(&mut self) -> Option<u8> {
        let bytes = self.bytes();
        let mut at = self.pos;
        while let Some(chunk) = bytes.get(at..at + 8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            if word_has_special(u64::from_le_bytes(w)) {
                break;
            }
            at += 8;
        }
        while let Some(&b) = bytes.get(at) {
            if special(b) {
                self.pos = at;
                return Some(b);
            }
            at += 1;
        }
        self.pos = at;
        None
    }

    /// A string without escapes (the opening quote next), borrowed.
    fn plain_str(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        match self.run_to_special()? {
            b'"' => {
                let s = self.text.get(start..self.pos)?;
                self.pos += 1;
                Some(s)
            }
            _ => None,
        }
    }

    /// Skips a string (the opening quote next), checking its escapes as
    /// serde_json does for an ignored string.
    fn skip_str(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            match self.run_to_special()? {
                b'"' => {
                    self.pos += 1;
                    return Some(());
                }
                b'\\' => {
                    self.pos += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 1,
                        b'u' => {
                            let hex = self.bytes().get(self.pos + 1..self.pos + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos += 5;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Skips a number by JSON's grammar:
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn skip_number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.pos += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Skips any value.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_str(),
            b'{' => {
                let depth = depth.checked_sub(1)?;
                self.object(|s, _| s.skip_value(depth))
            }
            b'[' => {
                let depth = depth.checked_sub(1)?;
                self.array(|s| s.skip_value(depth))
            }
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => self.skip_number(),
        }
    }

    /// An object (its `{` next): `field(scanner, key)` reads or skips each
    /// value, positioned at it.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let key = self.plain_str()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            field(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array (its `[` next), `item` reading each element.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.ws();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            item(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A non-negative integer without sign, fraction or exponent.
    fn unsigned(&mut self) -> Option<u64> {
        let start = self.pos;
        let n = self.digits();
        let text = self.text.get(start..self.pos)?;
        if n == 0 || (n > 1 && text.starts_with('0')) {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return None;
        }
        text.parse().ok()
    }

    /// An integer, possibly negative, without fraction or exponent.
    fn signed(&mut self) -> Option<i64> {
        let negative = self.eat(b'-').is_some();
        let n = i64::try_from(self.unsigned()?).ok()?;
        match (negative, n) {
            // serde_json reads `-0` as a float, which integer fields refuse.
            (true, 0) => None,
            (true, n) => Some(-n),
            (false, n) => Some(n),
        }
    }

    /// A snowflake sent as a string (what the gateway sends).
    fn id(&mut self) -> Option<u64> {
        self.plain_str()?.parse().ok()
    }

    /// `null` or a snowflake string.
    fn opt_id(&mut self) -> Option<Option<u64>> {
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(None);
        }
        self.id().map(Some)
    }

    /// `null` or a string without escapes.
    fn opt_str(&mut self) -> Option<Option<Str<'a>>> {
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(None);
        }
        self.plain_str().map(|s| Some(Cow::Borrowed(s)))
    }

    fn bool(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal("true").map(|()| true),
            _ => self.literal("false").map(|()| false),
        }
    }

    fn int<T: TryFrom<i64>>(&mut self) -> Option<T> {
        T::try_from(self.signed()?).ok()
    }

    /// Sorted, deduplicated snowflake strings (as `id_list`).
    fn id_list(&mut self) -> Option<Box<[u64]>> {
        let mut out = Vec::new();
        self.array(|s| s.id().map(|id| out.push(id)))?;
        out.sort_unstable();
        out.dedup();
        Some(out.into_boxed_slice())
    }

    /// The whole payload is `value`, with nothing but whitespace around it.
    fn whole<T>(text: &'a str, value: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let mut s = Scanner::new(text);
        s.ws();
        let out = value(&mut s)?;
        s.ws();
        (s.pos == text.len()).then_some(out)
    }
}

/// Records `bit` as seen; `None` if it already was (a duplicate field).
fn first(seen: &mut u32, bit: u32) -> Option<()> {
    (*seen & bit == 0).then(|| *seen |= bit)
}

fn user<'a>(s: &mut Scanner<'a>) -> Option<UserP<'a>> {
    let (mut seen, mut id, mut username) = (0u32, None, None);
    let (mut global_name, mut avatar, mut bot) = (None, None, false);
    s.object(|s, key| match key {
        "id" => first(&mut seen, 1)
            .and_then(|()| s.id())
            .map(|v| id = Some(v)),
        "username" => first(&mut seen, 2)
            .and_then(|()| s.plain_str())
            .map(|v| username = Some(Cow::Borrowed(v))),
        "global_name" => first(&mut seen, 4)
            .and_then(|()| s.opt_str())
            .map(|v| global_name = v),
        "avatar" => first(&mut seen, 8)
            .and_then(|()| s.opt_str())
            .map(|v| avatar = v),
        "bot" => first(&mut seen, 16)
            .and_then(|()| s.bool())
            .map(|v| bot = v),
        _ => s.skip_value(MAX_DEPTH),
    })?;
    Some(UserP {
        id: id?,
        username: username?,
        global_name,
        avatar,
        bot,
    })
}

/// A channel object (CHANNEL_CREATE/UPDATE, THREAD_CREATE/UPDATE and the
/// deletes).
pub(super) fn channel(text: &str) -> Option<ChannelP<'_>> {
    Scanner::whole(text, |s| {
        let (mut seen, mut id, mut guild_id, mut kind) = (0u32, None, None, None);
        let (mut name, mut position, mut parent_id) = (None, 0, None);
        s.object(|s, key| match key {
            "id" => first(&mut seen, 1)
                .and_then(|()| s.id())
                .map(|v| id = Some(v)),
            "guild_id" => first(&mut seen, 2)
                .and_then(|()| s.opt_id())
                .map(|v| guild_id = v),
            "type" => first(&mut seen, 4)
                .and_then(|()| s.int())
                .map(|v| kind = Some(v)),
            "name" => first(&mut seen, 8)
                .and_then(|()| s.opt_str())
                .map(|v| name = v),
            "position" => first(&mut seen, 16)
                .and_then(|()| s.int())
                .map(|v| position = v),
            "parent_id" => first(&mut seen, 32)
                .and_then(|()| s.opt_id())
                .map(|v| parent_id = v),
            _ => s.skip_value(MAX_DEPTH),
        })?;
        Some(ChannelP {
            id: id?,
            guild_id,
            kind: kind?,
            name,
            position,
            parent_id,
        })
    })
}

fn role<'a>(s: &mut Scanner<'a>) -> Option<RoleP<'a>> {
    let (mut seen, mut id, mut name, mut permissions) = (0u32, None, None, None);
    let (mut position, mut color) = (0, 0);
    s.object(|s, key| match key {
        "id" => first(&mut seen, 1)
            .and_then(|()| s.id())
            .map(|v| id = Some(v)),
        "name" => first(&mut seen, 2)
            .and_then(|()| s.plain_str())
            .map(|v| name = Some(Cow::Borrowed(v))),
        "permissions" => first(&mut seen, 4)
            .and_then(|()| s.id())
            .map(|v| permissions = Some(v)),
        "position" => first(&mut seen, 8)
            .and_then(|()| s.int())
            .map(|v| position = v),
        "color" => first(&mut seen, 16)
            .and_then(|()| s.int())
            .map(|v| color = v),
        _ => s.skip_value(MAX_DEPTH),
    })?;
    Some(RoleP {
        id: id?,
        name: name?,
        permissions: permissions?,
        position,
        color,
    })
}

/// GUILD_ROLE_CREATE / GUILD_ROLE_UPDATE.
pub(super) fn role_event(text: &str) -> Option<RoleEventP<'_>> {
    Scanner::whole(text, |s| {
        let (mut seen, mut guild_id, mut role_p) = (0u32, None, None);
        s.object(|s, key| match key {
            "guild_id" => first(&mut seen, 1)
                .and_then(|()| s.id())
                .map(|v| guild_id = Some(v)),
            "role" => first(&mut seen, 2)
                .and_then(|()| role(s))
                .map(|v| role_p = Some(v)),
            _ => s.skip_value(MAX_DEPTH),
        })?;
        Some(RoleEventP {
            guild_id: guild_id?,
            role: role_p?,
        })
    })
}

/// GUILD_MEMBER_ADD / GUILD_MEMBER_UPDATE.
pub(super) fn member_event(text: &str) -> Option<MemberEventP<'_>> {
    Scanner::whole(text, |s| {
        let (mut seen, mut guild_id, mut user_p) = (0u32, None, None);
        let (mut nick, mut roles) = (None, None);
        s.object(|s, key| match key {
            "guild_id" => first(&mut seen, 1)
                .and_then(|()| s.id())
                .map(|v| guild_id = Some(v)),
            "user" => first(&mut seen, 2)
                .and_then(|()| user(s))
                .map(|v| user_p = Some(v)),
            "nick" => first(&mut seen, 4)
                .and_then(|()| s.opt_str())
                .map(|v| nick = v),
            "roles" => first(&mut seen, 8)
                .and_then(|()| s.id_list())
                .map(|v| roles = Some(v)),
            _ => s.skip_value(MAX_DEPTH),
        })?;
        Some(MemberEventP {
            guild_id: guild_id?,
            user: user_p?,
            nick,
            roles: roles?,
        })
    })
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;

//! A fast path for the simple-delta payloads (CHANNEL_*, GUILD_ROLE_CREATE
//! and _UPDATE, GUILD_MEMBER_ADD and _UPDATE): a reader on the gateway
//! protocol's JSON [`Lexer`] that fills the same shapes serde would,
//! skipping the keys the cache does not read without building them.
//!
//! # Algorithm
//!
//! The reader never decides that a payload is invalid: it only answers
//! `Some(shape)` for payloads it fully understands, and `None` for anything
//! else, in which case the caller parses the payload with serde as before
//! (so every error, and every rare-but-valid form, is serde's). It answers
//! `None` on:
//!
//! * any syntax error or trailing characters (the lexer's verdict);
//! * a key, or a kept string, holding an escape (`\`), or any string holding
//!   a raw control character;
//! * a kept field of an unexpected type, an id sent as a JSON number, a
//!   number with a sign, fraction or exponent where an integer is kept, or an
//!   integer out of its field's range;
//! * a kept field given twice, or a required one missing.
//!
//! Tokens, and the values it skips, are the lexer's: it accepts exactly
//! what serde_json accepts for an ignored value (its property tests hold it
//! to that), skips nested values of any depth with a bit stack, as serde
//! does, and keeps its cursor in a register through the reader's loops
//! (`gateway_protocol`'s `lexer.rs`, point 5), which is why the reader
//! works on the lexer only through its methods and inlined closures. So
//! `Some` implies serde would have accepted the payload and produced the
//! same shape: the tests here check that on generated payloads and on
//! random mutations of them.

use super::{ChannelP, MemberEventP, RoleEventP, RoleP, Str, UserP};
use gateway_protocol::Lexer;
use std::borrow::Cow;

/// The lexer over one payload, and the payload as text (so kept strings
/// borrow it as `&str`).
struct Scanner<'a> {
    text: &'a str,
    lx: Lexer<'a>,
}

impl<'a> Scanner<'a> {
    /// A string without escapes (the opening quote next), borrowed.
    #[inline(always)]
    fn plain_str(&mut self) -> Option<&'a str> {
        if self.lx.peek_token() != b'"' {
            return None;
        }
        let start = self.lx.pos() + 1;
        if self.lx.string().ok()? {
            return None;
        }
        self.text.get(start..self.lx.pos() - 1)
    }

    /// Skips any value.
    #[inline(always)]
    fn skip_value(&mut self) -> Option<()> {
        self.lx.value().ok()
    }

    /// An object (its `{` next): `field(scanner, key)` reads or skips each
    /// value, positioned at it.
    #[inline(always)]
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        if !self.lx.eat(b'{') {
            return None;
        }
        if self.lx.eat(b'}') {
            return Some(());
        }
        loop {
            let (range, escaped) = self.lx.key().ok()?;
            if escaped {
                return None;
            }
            let key = self.text.get(range)?;
            self.lx.peek_token();
            field(self, key)?;
            if !self.lx.next_member(b'}').ok()? {
                return Some(());
            }
        }
    }

    /// An array (its `[` next), `item` reading each element.
    #[inline(always)]
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if !self.lx.eat(b'[') {
            return None;
        }
        if self.lx.eat(b']') {
            return Some(());
        }
        loop {
            self.lx.peek_token();
            item(self)?;
            if !self.lx.next_member(b']').ok()? {
                return Some(());
            }
        }
    }

    /// A non-negative integer without sign, fraction or exponent.
    #[inline(always)]
    fn unsigned(&mut self) -> Option<u64> {
        self.lx.unsigned("").ok()
    }

    /// An integer, possibly negative, without fraction or exponent.
    #[inline(always)]
    fn signed(&mut self) -> Option<i64> {
        let negative = self.lx.peek_token() == b'-';
        if negative {
            self.lx.eat(b'-');
        }
        let n = i64::try_from(self.unsigned()?).ok()?;
        match (negative, n) {
            // serde_json reads `-0` as a float, which integer fields refuse.
            (true, 0) => None,
            (true, n) => Some(-n),
            (false, n) => Some(n),
        }
    }

    /// A snowflake sent as a string (what the gateway sends).
    #[inline(always)]
    fn id(&mut self) -> Option<u64> {
        self.plain_str()?.parse().ok()
    }

    /// `null` or a snowflake string.
    #[inline(always)]
    fn opt_id(&mut self) -> Option<Option<u64>> {
        if self.lx.literal_null().ok()? {
            return Some(None);
        }
        self.id().map(Some)
    }

    /// `null` or a string without escapes.
    #[inline(always)]
    fn opt_str(&mut self) -> Option<Option<Str<'a>>> {
        if self.lx.literal_null().ok()? {
            return Some(None);
        }
        self.plain_str().map(|s| Some(Cow::Borrowed(s)))
    }

    #[inline(always)]
    fn bool(&mut self) -> Option<bool> {
        self.lx.boolean().ok()
    }

    #[inline(always)]
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
        let mut s = Scanner {
            text,
            lx: Lexer::new(text.as_bytes()),
        };
        s.lx.peek_token();
        let out = value(&mut s)?;
        s.lx.at_end().then_some(out)
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
        _ => s.skip_value(),
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
            _ => s.skip_value(),
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
        _ => s.skip_value(),
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
            _ => s.skip_value(),
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
            _ => s.skip_value(),
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

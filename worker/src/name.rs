//! [`Name`]: a display string (user, nick, channel, role, guild, emoji name)
//! stored inline when short, which almost all Discord names are.
//!
//! A `Box<str>` costs 16 bytes plus a heap block of at least 32 bytes
//! (allocator header and rounding) for even a 5-byte name. A `Name` is 24
//! bytes with up to 22 bytes of text inline and no heap block, so every
//! cached member saves a heap allocation per name. Longer names fall back to
//! a `Box<str>`. The representation is canonical (inline exactly when the
//! text fits), so derived equality is string equality.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

const INLINE: usize = 22;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

/// A compact immutable string.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(Repr);

impl Name {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Built from a `&str` cut at its own length: always valid UTF-8.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Heap(s) => s,
        }
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Name(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Name(Repr::Heap(s.into()))
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Default for Name {
    fn default() -> Self {
        Name::from("")
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Name::from(&*s))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inline_and_heap_roundtrip_and_compare_by_text() {
        assert_eq!(std::mem::size_of::<Name>(), 24);
        assert_eq!(std::mem::size_of::<Option<Name>>(), 24);
        for s in [
            "",
            "otter",
            "exactly-22-bytes-long!",
            "a name longer than twenty-two bytes",
            "é漢字🦀",
        ] {
            let n = Name::from(s);
            assert_eq!(n.as_str(), s);
            assert_eq!(n, Name::from(s));
            let json = serde_json::to_string(&n).unwrap();
            assert_eq!(serde_json::from_str::<Name>(&json).unwrap(), n);
            assert_eq!(format!("{n:?}"), format!("{s:?}"));
        }
        assert!(matches!(
            Name::from("exactly-22-bytes-long!").0,
            Repr::Inline { .. }
        ));
        assert!(matches!(
            Name::from("exactly-23-bytes-long!!").0,
            Repr::Heap(_)
        ));
        assert_ne!(Name::from("a"), Name::from("b"));
    }
}

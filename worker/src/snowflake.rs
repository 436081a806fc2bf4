//! Discord ids (snowflakes) as `u64`: parsing them from the JSON strings the
//! gateway sends, and hashing them cheaply in the cache's maps.
//!
//! Ids are stored as plain `u64` everywhere: 8 bytes instead of a 17-20 byte
//! string plus its heap block. Maps keyed by ids use [`IdHasher`], a
//! multiplicative hash: snowflakes are already unique, so SipHash's
//! flood-resistance buys nothing here and costs most of a lookup.

use serde::de::{self, Deserializer, Visitor};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by snowflake.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Hasher for `u64` keys: Fibonacci multiply, high bits folded down.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }
}

struct IdVisitor;

impl Visitor<'_> for IdVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a snowflake id as a decimal string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        v.parse()
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }
}

/// `deserialize_with` for a required snowflake.
pub(crate) fn id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(IdVisitor)
}

/// `deserialize_with` for a nullable snowflake.
pub(crate) fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Opt;
    impl<'de> Visitor<'de> for Opt {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a snowflake id or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            id(d).map(Some)
        }
    }
    d.deserialize_option(Opt)
}

/// `deserialize_with` for a list of snowflakes, returned sorted and
/// deduplicated so equal sets compare equal.
pub(crate) fn id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Box<[u64]>, D::Error> {
    struct List;
    impl<'de> Visitor<'de> for List {
        type Value = Box<[u64]>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of snowflake ids")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            #[derive(serde::Deserialize)]
            struct Id(#[serde(deserialize_with = "id")] u64);
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
            while let Some(Id(x)) = seq.next_element()? {
                out.push(x);
            }
            out.sort_unstable();
            out.dedup();
            Ok(out.into_boxed_slice())
        }
    }
    d.deserialize_seq(List)
}

/// `deserialize_with` for a `u64` sent as a decimal string (permissions).
pub(crate) fn u64_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(IdVisitor)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(serde::Deserialize)]
    struct T {
        #[serde(deserialize_with = "id")]
        a: u64,
        #[serde(default, deserialize_with = "opt_id")]
        b: Option<u64>,
        #[serde(deserialize_with = "id_list")]
        c: Box<[u64]>,
    }

    #[test]
    fn parses_strings_numbers_null_and_lists() {
        let t: T = serde_json::from_str(r#"{"a":"81384788765712384","b":null,"c":["3","1","3"]}"#)
            .unwrap();
        assert_eq!(t.a, 81384788765712384);
        assert_eq!(t.b, None);
        assert_eq!(&*t.c, &[1, 3]);
        let t: T = serde_json::from_str(r#"{"a":7,"b":"9","c":[]}"#).unwrap();
        assert_eq!((t.a, t.b), (7, Some(9)));
        assert!(serde_json::from_str::<T>(r#"{"a":"x","c":[]}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"a":"-1","c":[]}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"a":true,"c":[]}"#).is_err());
    }

    #[test]
    fn hasher_spreads_sequential_ids() {
        let mut buckets = [0u32; 64];
        for i in 0..6400u64 {
            let mut h = IdHasher::default();
            h.write_u64(81384788765712384 + (i << 22));
            buckets[(h.finish() & 63) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| n > 50), "{buckets:?}");
    }
}

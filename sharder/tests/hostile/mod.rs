//! Mutations of valid inputs and valid gateway payloads, shared by the
//! hostile input tests of this crate.
#![allow(dead_code)]

use proptest::prelude::*;

#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Splice(usize, Vec<u8>),
    Cut(usize, usize),
    /// Overwrite up to 8 bytes with a huge little-endian number.
    Huge(usize, u64),
    /// Replace the digits at or after a position with a huge decimal.
    HugeDecimal(usize, &'static str),
}

pub const HUGE_DECIMALS: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1e400",
    "99999999999999999999999999999",
    "-9223372036854775809",
    "0.5",
];

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop::collection::vec(
                prop_oneof![Just(b'{'), Just(b'['), Just(b'"'), Just(b'\\'), any::<u8>()],
                1..12
            )
        )
            .prop_map(|(p, b)| Mutation::Splice(p, b)),
        (any::<usize>(), 1usize..32).prop_map(|(p, n)| Mutation::Cut(p, n)),
        (any::<usize>(), prop_oneof![Just(u64::MAX), any::<u64>()])
            .prop_map(|(p, v)| Mutation::Huge(p, v)),
        (any::<usize>(), prop::sample::select(HUGE_DECIMALS))
            .prop_map(|(p, v)| Mutation::HugeDecimal(p, v)),
    ]
}

pub fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len();
    if len == 0 {
        return;
    }
    match m {
        Mutation::Flip(p, b) => bytes[p % len] ^= 1 << b,
        Mutation::Truncate(p) => bytes.truncate(p % len),
        Mutation::Splice(p, b) => {
            let at = p % (len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Cut(p, n) => {
            let at = p % len;
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Huge(p, v) => {
            let at = p % len;
            let end = (at + 8).min(len);
            bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
        }
        Mutation::HugeDecimal(p, v) => {
            let Some(start) = bytes[p % len..].iter().position(u8::is_ascii_digit) else {
                return;
            };
            let start = p % len + start;
            let end = bytes[start..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(len, |n| start + n);
            bytes.splice(start..end, v.bytes());
        }
    }
}

pub fn mutated(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        apply(&mut bytes, m);
    }
    bytes
}

/// Gateway payloads of every kind the shard reads.
pub const FRAMES: &[&str] = &[
    r#"{"op":10,"d":{"heartbeat_interval":41250}}"#,
    r#"{"t":"READY","s":1,"op":0,"d":{"session_id":"abc","resume_gateway_url":"wss://x","guilds":[{"id":"1","unavailable":true}],"user":{"id":"5"}}}"#,
    r#"{"t":"GUILD_CREATE","s":2,"op":0,"d":{"id":"81384788765712384","name":"x","unavailable":false,"members":[{"user":{"id":"2"}}]}}"#,
    r#"{"t":"GUILD_DELETE","s":3,"op":0,"d":{"id":"81384788765712384","unavailable":true}}"#,
    r#"{"t":"MESSAGE_CREATE","s":4,"op":0,"d":{"id":"9","guild_id":"81384788765712384","content":"\u00e9\"x"}}"#,
    r#"{"op":11,"d":null}"#,
    r#"{"op":9,"d":false}"#,
    r#"{"op":7,"d":null}"#,
];

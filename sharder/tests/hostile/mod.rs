//! Mutations of valid inputs (the test kit's, tuned for JSON) and valid
//! gateway payloads, shared by the hostile input tests of this crate.
#![allow(dead_code)]

use proptest::prelude::*;

pub use testkit::mutated;

/// Decimals that break number parsers: past `u64`, negative, exponent,
/// fraction.
pub const HUGE_DECIMALS: &[&str] = &[
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "1e400",
    "99999999999999999999999999999",
    "-9223372036854775809",
    "0.5",
];

/// Damage to JSON: splices favour `{`, `[`, `"` and `\\`; 8-byte huge
/// numbers overwrite anything; decimals become [`HUGE_DECIMALS`].
pub fn mutation() -> impl Strategy<Value = testkit::Mutation> {
    testkit::Mutations::bytes(b"{[\"\\", 1..12, 1..32)
        .overwrite::<u64>(&[u64::MAX])
        .numbers(HUGE_DECIMALS)
        .strategy()
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

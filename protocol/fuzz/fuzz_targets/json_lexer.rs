//! The JSON lexer against serde_json on any bytes: one value skipped with
//! `Lexer::value`, then nothing but whitespace, is accepted exactly when
//! serde_json accepts the input as an ignored value and it is UTF-8 (the
//! lexer's contract; its property tests check the same on generated and
//! mutated JSON, this target on whatever the fuzzer finds).
//!
//! Input layout: the bytes are the JSON text.
#![no_main]

use gateway_protocol::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lexer = Lexer::new(data);
    let ours = lexer.value().is_ok() && lexer.at_end();
    let theirs = std::str::from_utf8(data).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(data));
});

//! The lexer against serde_json: the same verdict on generated and on
//! mutated JSON, for every token the readers on top use.
#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;
use serde::de::IgnoredAny;

/// The lexer's verdict on `input` as one value with nothing after it, and
/// where the value ended.
fn lex_value(input: &[u8]) -> Result<usize, LexFailed> {
    let mut lx = Lexer::new(input);
    lx.value()?;
    let end = lx.pos();
    if lx.at_end() { Ok(end) } else { Err(LexFailed) }
}

/// serde_json's verdict on `input` as an ignored value, plus UTF-8 for the
/// whole input (serde_json checks it only where it builds strings; the
/// gateway's JSON is text).
fn serde_accepts(input: &[u8]) -> bool {
    std::str::from_utf8(input).is_ok() && serde_json::from_slice::<IgnoredAny>(input).is_ok()
}

/// Any JSON value, with the routing keys as likely object keys (for the
/// frame reader's tests too).
pub(crate) fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        "[\\u{0}-\\u{7f}]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("guild_id".to_owned()),
                        Just("id".to_owned()),
                        Just("unavailable".to_owned()),
                        "\\PC{0,6}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

#[test]
fn word_test_finds_every_special_byte() {
    // A string's plain run ends at `"`, `\`, a control character and
    // (until the first is seen) a byte above 0x7F.
    for b in 0..=255u8 {
        for at in 0..8 {
            let mut w = [b'a'; 8];
            w[at] = b;
            let word = u64::from_le_bytes(w);
            let special = b == b'"' || b == b'\\' || b < 0x20;
            assert_eq!(special_bytes(word, 0) != 0, special, "byte {b:#x} at {at}");
            assert_eq!(
                special_bytes(word, HIGHS) != 0,
                special || b > 0x7f,
                "byte {b:#x} at {at}, high bytes too"
            );
            if special {
                assert_eq!(special_bytes(word, 0).trailing_zeros() / 8, at as u32);
            }
        }
    }
}

#[test]
fn tokens_one_by_one() {
    let input = br#" { "k\u0065y" : [ 12 , -0.5e+3 , true , false , null , "x" ] } "#;
    let mut lx = Lexer::new(input);
    assert!(lx.eat(b'{'));
    let (range, escaped) = lx.key().unwrap();
    assert!(escaped);
    assert_eq!(&*lx.key_bytes((range, escaped)), b"key");
    assert!(lx.eat(b'['));
    assert_eq!(lx.peek_token(), b'1');
    assert_eq!(lx.unsigned("").unwrap(), 12);
    assert!(lx.next_member(b']').unwrap());
    assert_eq!(lx.peek_token(), b'-');
    lx.number().unwrap();
    assert!(lx.next_member(b']').unwrap());
    assert_eq!(lx.peek_token(), b't');
    assert!(lx.boolean().unwrap());
    assert!(lx.next_member(b']').unwrap());
    assert_eq!(lx.peek_token(), b'f');
    assert!(!lx.boolean().unwrap());
    assert!(lx.next_member(b']').unwrap());
    assert_eq!(lx.peek_token(), b'n');
    assert!(lx.literal_null().unwrap());
    assert!(lx.next_member(b']').unwrap());
    assert_eq!(lx.peek_token(), b'"');
    assert!(!lx.string().unwrap());
    assert!(!lx.next_member(b']').unwrap());
    assert!(!lx.next_member(b'}').unwrap());
    assert!(lx.at_end());
    // Failures stay failures, and say where.
    let mut lx = Lexer::new(b"[1,tru]");
    assert_eq!(lx.value(), Err(LexFailed));
    assert_eq!(lx.error.offset, 3);
    assert!(Lexer::new(b"01").unsigned("").is_err());
    assert!(Lexer::new(b"18446744073709551616").unsigned("").is_err());
    assert_eq!(
        Lexer::new(b"18446744073709551615").unsigned(""),
        Ok(u64::MAX)
    );
    assert!(Lexer::new(b"1.5").unsigned("").is_err());
}

#[test]
fn refuses_what_serde_json_refuses() {
    let cases: &[&[u8]] = &[
        b"",
        b"{",
        b"[1,]",
        b"{\"a\":1,}",
        b"{\"a\" 1}",
        b"\"\\x\"",
        b"\"\\u12\"",
        b"1.",
        b"1e",
        b"-",
        b"01",
        b"tru",
        b"nul",
        b"{\"a\":[}]}",
        b"1 x",
        b"\"a\tb\"",
        b"\"\xff\"",
        b"\"abc",
        b"[\"\xc3\xa9\", \"\xed\xa0\x80\"]",
        b"\xc3\xa9",
    ];
    for c in cases {
        assert!(lex_value(c).is_err(), "{:?}", String::from_utf8_lossy(c));
        assert!(!serde_accepts(c), "serde: {:?}", String::from_utf8_lossy(c));
    }
}

proptest! {
    #[test]
    fn generated_values_lex_like_serde(v in json_value(), pretty in any::<bool>()) {
        let text = if pretty {
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            serde_json::to_string(&v).unwrap()
        };
        prop_assert_eq!(lex_value(text.as_bytes()), Ok(text.len()));
        // Every string, key or not, lexes to where serde_json ends it.
        let quoted = serde_json::to_string(&text).unwrap();
        let mut lx = Lexer::new(quoted.as_bytes());
        prop_assert_eq!(lx.string().is_ok(), true);
        prop_assert_eq!(lx.pos(), quoted.len());
    }

    #[test]
    fn mutated_values_get_serde_json_verdict(
        v in json_value(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut p = serde_json::to_vec(&v).unwrap();
        for (at, byte) in &edits {
            let i = at.index(p.len());
            p[i] = *byte;
        }
        if truncate {
            p.truncate(cut.index(p.len() + 1));
        }
        prop_assert_eq!(
            lex_value(&p).is_ok(),
            serde_accepts(&p),
            "{:?}",
            String::from_utf8_lossy(&p)
        );
    }
}

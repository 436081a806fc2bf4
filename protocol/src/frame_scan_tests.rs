//! The scanner against serde_json: the same verdict on valid, generated and
//! mutated payloads, and the same routing keys.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::lexer::tests::json_value;
use proptest::prelude::*;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// The two-pass serde_json reading the scanner replaced: the reference.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Reference<'a> {
    op: u8,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
    #[serde(default)]
    s: Option<u64>,
    #[serde(default)]
    t: Option<String>,
}

/// serde_json's verdict, plus UTF-8 for the whole payload (serde_json
/// checks it only where it builds strings; a gateway frame is text).
fn reference_accepts(payload: &[u8]) -> bool {
    std::str::from_utf8(payload).is_ok()
        && payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<Reference<'_>>(payload).is_ok()
}

fn d_text<'a>(payload: &'a [u8], s: &Scanned<'_>) -> Option<&'a [u8]> {
    s.d.clone().map(|r| &payload[r])
}

#[test]
fn reads_the_envelope_and_routing_keys() {
    let p = br#" {"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"id":"9","x":{"guild_id":"1"},"guild_id":"813","unavailable":false}} "#;
    let s = scan(p).unwrap();
    assert_eq!(
        (s.op, s.s, s.t.as_deref()),
        (Some(0), Some(42), Some("MESSAGE_CREATE"))
    );
    assert!(matches!(s.t, Some(Cow::Borrowed(_))));
    let d = d_text(p, &s).unwrap();
    assert!(d.starts_with(br#"{"id""#) && d.ends_with(b"false}"));
    let at = |r: &Option<Range<usize>>| &p[r.clone().unwrap()];
    assert_eq!(at(&s.keys.guild_id), br#""813""#, "d's own key, not x's");
    assert_eq!(at(&s.keys.id), br#""9""#);
    assert_eq!(at(&s.keys.unavailable), b"false");
    assert_eq!(s.keys.duplicate, None);
}

#[test]
fn null_and_missing_d_and_escaped_names() {
    let s = scan(br#"{"op":11,"d":null,"s":null,"t":null}"#).unwrap();
    assert_eq!(
        (s.op, s.s, s.t.is_none(), s.d.is_none()),
        (Some(11), None, true, true)
    );
    let s = scan(br#"{"op":1}"#).unwrap();
    assert!(s.d.is_none());
    let s = scan(br#"{"op":0,"s":1,"t":"A\u0042","d":[1,{"a":[]},"x"]}"#).unwrap();
    assert_eq!(s.t.as_deref(), Some("AB"));
    let p = "{\"op\":0,\"s\":1,\"t\":\"Ünïcödé\",\"d\":{\"naïve\":\"日本語 🎉\"}}";
    let s = scan(p.as_bytes()).unwrap();
    assert_eq!(s.t.as_deref(), Some("Ünïcödé"));
    let s = scan(br#"{"\u006fp":9,"d":false}"#).unwrap();
    assert_eq!(s.op, Some(9), "an escaped key is still the key");
    let s = scan(br#"{"op":0,"s":1,"t":"X","d":{"id":"1","id":"2"}}"#).unwrap();
    assert_eq!(s.keys.duplicate, Some("id"));
}

#[test]
fn refuses_what_serde_json_refuses() {
    let cases: &[&[u8]] = &[
        b"",
        b"{",
        b"null",
        b"[]",
        br#"{"d":{}}"#,
        br#"{"op":"0"}"#,
        br#"{"op":300}"#,
        br#"{"op":1.0}"#,
        br#"{"op":01}"#,
        br#"{"op":-1}"#,
        br#"{"op":0,"op":0}"#,
        br#"{"op":0,"s":18446744073709551616}"#,
        br#"{"op":0,"t":5}"#,
        br#"{"op":0,"d":{"a":1,}}"#,
        br#"{"op":0,"d":[1,]}"#,
        br#"{"op":0,"d":{"a" 1}}"#,
        br#"{"op":0,"d":"\x"}"#,
        br#"{"op":0,"d":"\u12"}"#,
        br#"{"op":0,"d":1.}"#,
        br#"{"op":0,"d":1e}"#,
        br#"{"op":0,"d":-}"#,
        br#"{"op":0,"d":tru}"#,
        br#"{"op":0,"d":{"a":[}]}}"#,
        br#"{"op":0} x"#,
        br#"{"op":0,}"#,
        b"{\"op\":0,\"d\":\"a\tb\"}",
        b"{\"op\":0,\"d\":\"\xff\"}",
        b"{\"op\":0,\"d\":\"abc",
        b"{\"op\":0,\"d\":{\"k\xc3\":1}}",
        b"{\"op\":0,\"s\":1,\"t\":\"X\xe2\x82\"}",
        b"{\"op\":0,\"d\":[\"\xc3\xa9\", \"\xed\xa0\x80\"]}",
        b"{\"op\":0,\"d\":\xc3\xa9}",
    ];
    for c in cases {
        assert!(scan(c).is_err(), "{:?}", String::from_utf8_lossy(c));
        assert!(
            !reference_accepts(c),
            "reference: {:?}",
            String::from_utf8_lossy(c)
        );
    }
}

#[test]
fn depth_costs_no_stack() {
    let deep = format!(
        r#"{{"op":0,"s":1,"t":"X","d":{}1{}}}"#,
        "[{\"a\":".repeat(50_000),
        "}]".repeat(50_000)
    );
    let s = scan(deep.as_bytes()).unwrap();
    assert_eq!(d_text(deep.as_bytes(), &s).unwrap().len(), 50_000 * 8 + 1);
    let unbalanced = format!(r#"{{"op":0,"d":{}1{}}}"#, "[".repeat(200), "]".repeat(199));
    assert!(scan(unbalanced.as_bytes()).is_err());
}

#[test]
fn error_offsets_point_into_the_payload() {
    let e = scan(br#"{"op":0,"d":{"a":tru}}"#).unwrap_err();
    assert_eq!(e.offset, 17);
}

fn frame_with(d: &serde_json::Value, pretty: bool) -> Vec<u8> {
    let d = if pretty {
        serde_json::to_string_pretty(d).unwrap()
    } else {
        serde_json::to_string(d).unwrap()
    };
    format!(r#"{{"op":0,"s":7,"t":"GUILD_CREATE","d":{d}}}"#).into_bytes()
}

proptest! {
    #[test]
    fn valid_frames_scan_and_keys_match_serde(d in json_value(), pretty in any::<bool>()) {
        let p = frame_with(&d, pretty);
        let s = scan(&p).unwrap();
        let text = d_text(&p, &s);
        // Compared after one parse each way: floats need not round-trip.
        let d: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        if d.is_null() {
            prop_assert!(text.is_none());
        } else {
            let back: serde_json::Value = serde_json::from_slice(text.unwrap()).unwrap();
            prop_assert_eq!(&back, &d);
        }
        if let serde_json::Value::Object(map) = &d {
            for (key, range) in [
                ("guild_id", &s.keys.guild_id),
                ("id", &s.keys.id),
                ("unavailable", &s.keys.unavailable),
            ] {
                let got = range
                    .clone()
                    .map(|r| serde_json::from_slice::<serde_json::Value>(&p[r]).unwrap());
                prop_assert_eq!(got.as_ref(), map.get(key), "{}", key);
            }
        }
    }

    #[test]
    fn mutated_frames_get_serde_json_verdict(
        d in json_value(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut p = frame_with(&d, false);
        for (at, byte) in &edits {
            let i = at.index(p.len());
            p[i] = *byte;
        }
        if truncate {
            p.truncate(cut.index(p.len() + 1));
        }
        let ours = scan(&p);
        let theirs = reference_accepts(&p);
        prop_assert_eq!(ours.is_ok(), theirs, "{:?}", String::from_utf8_lossy(&p));
        if let Ok(s) = ours
            && let Some(d) = d_text(&p, &s)
        {
            prop_assert!(serde_json::from_slice::<IgnoredAny>(d).is_ok());
        }
    }
}

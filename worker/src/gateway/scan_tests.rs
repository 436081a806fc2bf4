//! The scanner against serde_json: the same shapes on every payload it
//! answers, an answer on the clean payloads the gateway sends, and no panic
//! (and no answer serde would refuse) on malformed or mutated input.
#![allow(clippy::unwrap_used)]

use super::super::{ChannelP, MemberEventP, RoleEventP};
use super::*;
use crate::gateway::{CacheOptions, parse};
use envelope::{Event, ShardRef};
use proptest::prelude::*;
use serde_json::Value;

/// The scanner's answer, if any, equals serde's; returns whether it
/// answered.
fn agree(text: &str) -> bool {
    let c = channel(text);
    if let Some(c) = &c {
        assert_eq!(
            Some(c),
            serde_json::from_str::<ChannelP>(text).ok().as_ref()
        );
    }
    let r = role_event(text);
    if let Some(r) = &r {
        assert_eq!(
            Some(r),
            serde_json::from_str::<RoleEventP>(text).ok().as_ref()
        );
    }
    let m = member_event(text);
    if let Some(m) = &m {
        assert_eq!(
            Some(m),
            serde_json::from_str::<MemberEventP>(text).ok().as_ref()
        );
    }
    c.is_some() || r.is_some() || m.is_some()
}

fn event<'a>(t: &'a str, d: &'a [u8]) -> Event<'a> {
    Event {
        epoch: 1,
        seq: 2,
        received_at: 3,
        t,
        guild_id: Some(9),
        guild_create: None,
        d,
    }
}

const CHANNEL: &str = r#"{"id":"1100","type":0,"guild_id":"9","name":"general","position":3,"permission_overwrites":[],"parent_id":"1099","nsfw":false,"flags":0,"topic":"a \"quoted\" topic \u00e9\n","rate_limit_per_user":0,"last_message_id":null}"#;
const ROLE: &str = r#"{"guild_id":"9","role":{"id":"77","name":"mods","color":16711680,"colors":{"primary_color":16711680,"secondary_color":null,"tertiary_color":null},"hoist":true,"icon":null,"unicode_emoji":null,"position":2,"permissions":"2248473465835073","managed":false,"mentionable":false,"flags":0}}"#;
const MEMBER: &str = r#"{"guild_id":"9","user":{"id":"5","username":"otter","global_name":null,"discriminator":"0","avatar":"a_0123456789abcdef0123456789abcdef","bot":false,"public_flags":0},"nick":"Otty","avatar":null,"roles":["77","3","77"],"joined_at":"2024-01-01T00:00:00.000000+00:00","premium_since":null,"deaf":false,"mute":false,"flags":0,"pending":false}"#;

#[test]
fn gateway_shapes_take_the_fast_path() {
    let c = channel(CHANNEL).unwrap();
    assert_eq!(
        (c.id, c.guild_id, c.kind, c.position, c.parent_id),
        (1100, Some(9), 0, 3, Some(1099))
    );
    assert_eq!(c.name.as_deref(), Some("general"));
    let r = role_event(ROLE).unwrap();
    assert_eq!(
        (r.guild_id, r.role.id, r.role.permissions, r.role.color),
        (9, 77, 2248473465835073, 16711680)
    );
    let m = member_event(MEMBER).unwrap();
    assert_eq!((m.guild_id, m.user.id, &*m.roles), (9, 5, &[3u64, 77][..]));
    assert_eq!(m.nick.as_deref(), Some("Otty"));
    for text in [CHANNEL, ROLE, MEMBER] {
        assert!(agree(text));
        // Whitespace anywhere JSON allows it.
        let spaced = text
            .replace("\":", "\" :\n ")
            .replace(",\"", " ,\t\"")
            .replace('{', "{ ");
        assert!(agree(&format!(" \r\n{spaced}\n ")), "{spaced}");
    }
}

#[test]
fn rare_valid_forms_fall_back_to_serde() {
    for text in [
        // Escapes in a key or a kept string.
        r#"{"id":"1","type":0,"guild_id":"9","name":"gen\u0065ral"}"#,
        r#"{"\u0069d":"1","type":0,"guild_id":"9"}"#,
        // An id as a JSON number.
        r#"{"id":1,"type":0,"guild_id":"9"}"#,
        // A struct as an array, serde accepts it.
        r#"["1",null,0,"general",0,null]"#,
        // A duplicated unknown key is fine for serde.
        r#"{"guild_id":"9","role":{"id":"7","name":"a","permissions":"0"},"x":1,"x":2}"#,
    ] {
        assert!(serde_json::from_str::<Value>(text).is_ok(), "{text}");
        agree(text);
    }
    assert!(channel(r#"{"id":"1","type":0,"guild_id":"9","name":"gen\u0065ral"}"#).is_none());
    // Deeper than serde's recursion limit (128): serde skips an ignored
    // value of any depth, and so does the lexer, so this takes the fast
    // path with serde's answer.
    let deep = format!(
        r#"{{"id":"1","type":0,"guild_id":"9","x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert!(agree(&deep));
    assert!(
        parse(
            ShardRef::new(0, 1),
            &event("CHANNEL_UPDATE", deep.as_bytes()),
            &CacheOptions::default()
        )
        .is_ok()
    );
    assert!(
        role_event(
            r#"{"guild_id":"9","role":{"id":"7","name":"a","permissions":"0"},"x":1,"x":2}"#
        )
        .is_some()
    );
    // The fallback still parses them: same mutation as without escapes.
    let a = parse(
        ShardRef::new(0, 1),
        &event(
            "CHANNEL_UPDATE",
            br#"{"id":"1","type":0,"guild_id":"9","name":"gen\u0065ral"}"#,
        ),
        &CacheOptions::default(),
    )
    .unwrap();
    let b = parse(
        ShardRef::new(0, 1),
        &event(
            "CHANNEL_UPDATE",
            br#"{"id":"1","type":0,"guild_id":"9","name":"general"}"#,
        ),
        &CacheOptions::default(),
    )
    .unwrap();
    assert_eq!(a.mutations, b.mutations);
}

#[test]
fn malformed_payloads_are_serde_errors_never_fast_answers() {
    let cases: Vec<(&str, String)> = vec![
        ("CHANNEL_UPDATE", String::new()),
        ("CHANNEL_UPDATE", "{".into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0,}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0} x"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":"0"}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":256}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":1.0}"#.into()),
        (
            "CHANNEL_UPDATE",
            r#"{"id":"1","type":0,"position":-0}"#.into(),
        ),
        (
            "CHANNEL_UPDATE",
            r#"{"id":"1","type":0,"position":01}"#.into(),
        ),
        (
            "CHANNEL_UPDATE",
            r#"{"id":"1","type":0,"position":null}"#.into(),
        ),
        ("CHANNEL_UPDATE", r#"{"id":"x","type":0}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"-1","type":0}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","id":"1","type":0}"#.into()),
        ("CHANNEL_UPDATE", r#"{"type":0}"#.into()),
        (
            "CHANNEL_UPDATE",
            "{\"id\":\"1\",\"type\":0,\"name\":\"a\tb\"}".into(),
        ),
        (
            "CHANNEL_UPDATE",
            "{\"id\":\"1\",\"type\":0,\"x\":\"a\u{1}b\"}".into(),
        ),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0,"x":"\q"}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0,"x":"\u12"}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0,"x":nul}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0,"x":1.}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0,"x":1e}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0,"x":-}"#.into()),
        ("CHANNEL_UPDATE", r#"{"id":"1","type":0,"x":[1,]}"#.into()),
        (
            "CHANNEL_UPDATE",
            r#"{"id":"1","type":0,"x":{"a" 1}}"#.into(),
        ),
        (
            "GUILD_ROLE_UPDATE",
            r#"{"guild_id":"9","role":null}"#.into(),
        ),
        (
            "GUILD_ROLE_UPDATE",
            r#"{"guild_id":"9","role":{"id":"7","name":"a"}}"#.into(),
        ),
        (
            "GUILD_ROLE_UPDATE",
            r#"{"guild_id":"9","role":{"id":"7","name":"a","permissions":"1","color":-1}}"#.into(),
        ),
        (
            "GUILD_MEMBER_UPDATE",
            r#"{"guild_id":"9","user":{"id":"5","username":"a"},"roles":null}"#.into(),
        ),
        (
            "GUILD_MEMBER_UPDATE",
            r#"{"guild_id":"9","user":{"id":"5","username":"a","bot":null},"roles":[]}"#.into(),
        ),
        (
            "GUILD_MEMBER_UPDATE",
            r#"{"guild_id":"9","user":{"id":"5"},"roles":[]}"#.into(),
        ),
        (
            "GUILD_MEMBER_UPDATE",
            r#"{"guild_id":"9","user":{"id":"5","username":"a"},"roles":["1",2.5]}"#.into(),
        ),
    ];
    for (t, d) in &cases {
        assert!(!agree(d), "scanner answered {d}");
        let err = parse(
            ShardRef::new(0, 1),
            &event(t, d.as_bytes()),
            &CacheOptions::default(),
        )
        .expect_err(d)
        .to_string();
        assert!(err.starts_with(&format!("invalid {t} payload: ")), "{err}");
    }
    // Not UTF-8: refused before any scanning.
    let err = parse(
        ShardRef::new(0, 1),
        &event(
            "CHANNEL_UPDATE",
            b"{\"id\":\"1\",\"type\":0,\"name\":\"\xff\"}",
        ),
        &CacheOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[test]
fn huge_payloads_scan_linearly() {
    let big = "x".repeat(8 << 20);
    let text = format!(
        r#"{{"id":"1","type":0,"guild_id":"9","topic":"{big}","name":"n","more":[{}0]}}"#,
        "0,".repeat(1 << 20)
    );
    assert!(agree(&text));
    let unterminated = format!(r#"{{"id":"1","type":0,"topic":"{big}"#);
    assert!(!agree(&unterminated));
}

/// Any JSON value, for the keys the scanner skips.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[a-z\"\\\\/\n é]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A snowflake as the gateway sends it; sometimes another form.
fn id_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => any::<u64>().prop_map(|n| Value::String(n.to_string())),
        1 => any::<u64>().prop_map(Value::from),
        1 => "[+0-9a ]{0,4}".prop_map(Value::String),
    ]
}

fn opt(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop_oneof![1 => Just(Value::Null), 4 => v]
}

fn name_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => "[a-z0-9 _-]{0,30}".prop_map(Value::String),
        1 => any::<String>().prop_map(Value::String),
    ]
}

fn int_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0i64..300).prop_map(Value::from),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
    ]
}

type Fields = Vec<(String, Value)>;

/// Known fields (each present or not) plus skipped ones, shuffled.
fn object(known: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Fields> {
    let known: Vec<_> = known
        .into_iter()
        .map(|(k, v)| {
            prop::option::weighted(0.9, v).prop_map(move |v| v.map(|v| (k.to_owned(), v)))
        })
        .collect();
    (
        known,
        prop::collection::vec(("[a-z_]{1,12}", any_value()), 0..8),
    )
        .prop_flat_map(|(known, extra)| {
            let fields: Fields = known.into_iter().flatten().chain(extra).collect();
            Just(fields).prop_shuffle()
        })
        .boxed()
}

fn text(fields: &Fields) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn user_fields() -> BoxedStrategy<Value> {
    object(vec![
        ("id", id_value().boxed()),
        ("username", name_value().boxed()),
        ("global_name", opt(name_value()).boxed()),
        ("avatar", opt(name_value()).boxed()),
        ("bot", any::<bool>().prop_map(Value::Bool).boxed()),
    ])
    .prop_map(|f| serde_json::from_str(&text(&f)).unwrap())
    .boxed()
}

fn payload() -> BoxedStrategy<String> {
    let channel = object(vec![
        ("id", id_value().boxed()),
        ("guild_id", opt(id_value()).boxed()),
        ("type", int_value().boxed()),
        ("name", opt(name_value()).boxed()),
        ("position", int_value().boxed()),
        ("parent_id", opt(id_value()).boxed()),
    ]);
    let role = object(vec![
        ("id", id_value().boxed()),
        ("name", name_value().boxed()),
        ("permissions", id_value().boxed()),
        ("position", int_value().boxed()),
        ("color", int_value().boxed()),
    ])
    .prop_map(|f| serde_json::from_str::<Value>(&text(&f)).unwrap());
    let role_event = object(vec![
        ("guild_id", id_value().boxed()),
        ("role", role.boxed()),
    ]);
    let member = object(vec![
        ("guild_id", id_value().boxed()),
        ("user", user_fields()),
        ("nick", opt(name_value()).boxed()),
        (
            "roles",
            prop::collection::vec(id_value(), 0..4)
                .prop_map(Value::Array)
                .boxed(),
        ),
    ]);
    prop_oneof![channel, role_event, member]
        .prop_map(|f| text(&f))
        .boxed()
}

/// One byte-level edit: delete, insert or replace at a position (taken
/// modulo the length).
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, u8),
    Replace(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        prop::sample::select(b"{}[]:,\"\\ -+.0123456789eEnultrfa\x01\xff".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Replace(i, b)),
    ]
}

proptest! {
    /// Clean gateway-like payloads: whenever every kept value is in the
    /// gateway's usual form the scanner answers, and every answer is
    /// serde's.
    #[test]
    fn scanner_agrees_with_serde(d in payload()) {
        let answered = agree(&d);
        let v: Value = serde_json::from_str(&d).unwrap();
        // Payloads with only plain strings anywhere and serde's approval
        // must take the fast path for at least one shape.
        let serde_ok = serde_json::from_str::<ChannelP>(&d).is_ok()
            || serde_json::from_str::<RoleEventP>(&d).is_ok()
            || serde_json::from_str::<MemberEventP>(&d).is_ok();
        let plain = !d.contains('\\');
        let ids_as_strings = {
            let o = v.as_object().unwrap();
            ["id", "guild_id", "parent_id", "permissions"].iter().all(|k| !o.get(*k).is_some_and(Value::is_number))
                && !o.get("user").and_then(|u| u.get("id")).is_some_and(Value::is_number)
                && !o.get("role").and_then(|u| u.get("id")).is_some_and(Value::is_number)
                && !o.get("role").and_then(|u| u.get("permissions")).is_some_and(Value::is_number)
                && !o.get("roles").and_then(Value::as_array).is_some_and(|a| a.iter().any(Value::is_number))
        };
        if serde_ok && plain && ids_as_strings {
            prop_assert!(answered, "no fast answer for {d}");
        }
    }

    /// Mutated payloads: no panic, and any answer is serde's.
    #[test]
    fn mutations_never_panic_or_disagree(d in payload(), edits in prop::collection::vec(edit(), 1..4)) {
        let mut bytes = d.into_bytes();
        for e in edits {
            let n = bytes.len().max(1);
            match e {
                Edit::Delete(i) if !bytes.is_empty() => { bytes.remove(i % n); }
                Edit::Delete(_) => {}
                Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
                Edit::Replace(i, b) if !bytes.is_empty() => bytes[i % n] = b,
                Edit::Replace(..) => {}
            }
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            agree(text);
        }
        for t in ["CHANNEL_UPDATE", "GUILD_ROLE_UPDATE", "GUILD_MEMBER_UPDATE"] {
            let _ = parse(ShardRef::new(0, 1), &event(t, &bytes), &CacheOptions::default());
        }
    }
}

#[test]
fn generated_payloads_parse_the_same_through_either_path() {
    // The full `parse` output (mutations, class, guild) through the fast
    // path equals the serde path's for the fixed gateway shapes.
    for (t, d) in [
        ("CHANNEL_UPDATE", CHANNEL),
        ("GUILD_ROLE_UPDATE", ROLE),
        ("GUILD_MEMBER_UPDATE", MEMBER),
        ("GUILD_MEMBER_ADD", MEMBER),
    ] {
        let fast = parse(
            ShardRef::new(0, 1),
            &event(t, d.as_bytes()),
            &CacheOptions::default(),
        )
        .unwrap();
        // The same payload with an escaped key forces the serde path.
        let slow_text = d.replacen("\"guild_id\"", "\"guild\\u005fid\"", 1);
        assert!(!agree(&slow_text));
        let slow = parse(
            ShardRef::new(0, 1),
            &event(t, slow_text.as_bytes()),
            &CacheOptions::default(),
        )
        .unwrap();
        assert_eq!(fast.mutations, slow.mutations, "{t}");
        assert_eq!((fast.class, fast.guild_id), (slow.class, slow.guild_id));
        assert!(!fast.mutations.is_empty());
    }
}

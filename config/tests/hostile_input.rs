//! Hostile input smoke (the stable, bounded counterpart of the
//! `config_load` fuzz target): random text, a valid file mutated by bit
//! flips, truncations, splices and huge numbers, and hostile `BULWARK_*`
//! overrides. Loading must answer each with a clear error or a
//! configuration that validates, never a panic; an accepted configuration
//! never holds a duration that overflows `Instant` arithmetic downstream.
#![allow(clippy::unwrap_used)]

use config::{Config, ConfigError, SharderConfig, redact_url};
use proptest::prelude::*;
use std::time::{Duration, Instant};
use testkit::{Mutation, Mutations, mutated};

/// A file that sets a key of every section.
const VALID: &str = r#"[discord]
intents = 513
large_threshold = 100
[dns]
upstreams = ["127.0.0.1:53"]
min_ttl = "1s"
max_ttl = "1h"
max_stale = "2h"
refresh_ahead = 0.5
cache_size = 1000
[redis]
url = "redis://127.0.0.1:6379/0"
session_ttl = "1d"
[sharder]
total_shards = 8
process_count = 2
process_index = 1
assignment = "ranges"
shard_ranges = [[0, 4], [4, 8]]
compression = "zlib-stream"
reconnect_base = "100ms"
reconnect_max = "30s"
shed_events = ["TYPING_START"]
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
partitions = 4
[worker]
consume = [0, 3]
prefetch = 32
tombstone_horizon = "2h"
"#;

/// Keys an override may name, valid or not.
const KEYS: &[&str] = &[
    "DNS__CACHE_SIZE",
    "DNS__MAX_STALE",
    "DNS__MAX_TTL",
    "DNS__REFRESH_AHEAD",
    "DNS__UPSTREAMS",
    "DNS__NDOTS",
    "DISCORD__TOKEN",
    "DISCORD__INTENTS",
    "SHARDER__TOTAL_SHARDS",
    "SHARDER__SHARD_RANGES",
    "SHARDER__RECONNECT_MAX",
    "SHARDER__MAX_PAYLOAD_BYTES",
    "AMQP__PARTITIONS",
    "AMQP__URL",
    "REDIS__SESSION_TTL",
    "WORKER__CONSUME",
    "WORKER__TOMBSTONE_HORIZON",
    "DNS",
    "DNS__CACHE_SIZE__X",
    "",
    "__",
];

/// Values that break parsers: huge and negative numbers, overflowing
/// durations, non-finite floats, unbalanced brackets, multi-line text.
const VALUES: &[&str] = &[
    "99999999999999999999999",
    "-1",
    "-9223372036854775808",
    "18446744073709551615",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "18446744073709551615s",
    "584942417355y",
    "99999999999999999999h",
    "200y",
    "0s",
    "1ns",
    "[[[[[[",
    "\"unterminated",
    "1\nx = 2",
    "[[0, 4294967295]]",
    "[4294967295]",
    "{a = 1}",
    "",
    "auto",
    "0x1F",
];

/// Every duration of a loaded configuration.
fn durations(c: &Config) -> Vec<Duration> {
    vec![
        c.dns.min_ttl,
        c.dns.max_ttl,
        c.dns.negative_ttl,
        c.dns.max_stale,
        c.dns.stale_answer_timeout,
        c.dns.retry_interval,
        c.dns.query_timeout,
        c.dns.connect_timeout,
        c.redis.session_ttl,
        c.worker.tombstone_horizon,
        c.sharder.shutdown_grace,
        c.sharder.identify_window,
        c.sharder.identify_min_interval,
        c.sharder.persist_interval,
        c.sharder.reconnect_base,
        c.sharder.reconnect_max,
        c.sharder.hello_timeout,
    ]
}

fn check(text: &str, env: Vec<(String, String)>) -> Result<(), TestCaseError> {
    let _ = SharderConfig::toml_sets_process_index(text);
    let _ = redact_url(text);
    match Config::from_toml_str(text, "hostile.toml", env) {
        Ok(c) => {
            prop_assert!(c.validate().is_ok());
            let now = Instant::now();
            for d in durations(&c) {
                // What the resolver and the shards do with them.
                prop_assert!(
                    d.checked_add(d).and_then(|x| now.checked_add(x)).is_some(),
                    "{d:?}"
                );
            }
            let _ = redact_url(c.amqp.url.expose());
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(!msg.is_empty());
            if let ConfigError::Parse { origin, .. } = &e {
                prop_assert!(origin.starts_with("hostile.toml"), "{msg}");
            }
        }
    }
    Ok(())
}

/// Damage to TOML (the test kit's mutations): splices favour `[`, `"`,
/// `=` and newline; a value after `=` becomes one of [`VALUES`], bare or
/// quoted.
fn mutation() -> impl Strategy<Value = Mutation> {
    Mutations::bytes(b"[\"=\n", 1..8, 1..24)
        .values(VALUES)
        .strategy()
}

fn env_pair() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            prop::sample::select(KEYS).prop_map(str::to_owned),
            "[A-Z_]{0,24}",
        ],
        prop_oneof![
            prop::sample::select(VALUES).prop_map(str::to_owned),
            any::<String>(),
        ],
    )
        .prop_map(|(k, v)| (format!("BULWARK_{k}"), v))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_text_never_panics(text in any::<String>()) {
        check(&text, Vec::new())?;
    }

    #[test]
    fn toml_shaped_noise_never_panics(
        text in "([\\[\\]{}=\",.a-z0-9_ \n-]|dns|sharder|\"1h\"){0,120}",
    ) {
        check(&text, Vec::new())?;
    }

    #[test]
    fn mutated_valid_file_never_panics(mutations in prop::collection::vec(mutation(), 1..5)) {
        let bytes = mutated(VALID.as_bytes().to_vec(), &mutations);
        check(&String::from_utf8_lossy(&bytes), Vec::new())?;
    }

    #[test]
    fn hostile_overrides_never_panic(env in prop::collection::vec(env_pair(), 1..6)) {
        check(VALID, env)?;
    }
}

#[test]
fn the_valid_file_loads() {
    let c = Config::from_toml_str(VALID, "t", Vec::new()).unwrap();
    assert_eq!(c.sharder.shard_ranges, vec![[0, 4], [4, 8]]);
}

#[test]
fn deeply_nested_text_is_an_error_not_a_stack_overflow() {
    for depth in [64, 1_000, 100_000] {
        for (open, close) in [("[", "]"), ("{a = ", "}")] {
            let text = format!("a = {}1{}\n", open.repeat(depth), close.repeat(depth));
            assert!(Config::from_toml_str(&text, "t", Vec::new()).is_err());
            let _ = SharderConfig::toml_sets_process_index(&text);
        }
        let dotted = format!("{} = 1\n", vec!["a"; depth].join("."));
        assert!(Config::from_toml_str(&dotted, "t", Vec::new()).is_err());
        let headers = format!("[{}]\n", vec!["a"; depth].join("."));
        assert!(Config::from_toml_str(&headers, "t", Vec::new()).is_err());
    }
}

#[test]
fn a_huge_environment_path_is_an_error_not_a_stack_overflow() {
    let var = format!("BULWARK_{}", vec!["DNS"; 100_000].join("__"));
    let e = Config::from_toml_str("", "t", vec![(var, "1".into())])
        .unwrap_err()
        .to_string();
    assert!(e.contains("levels"), "{e}");
}

#[test]
fn overflowing_durations_are_errors_naming_the_key() {
    for (key, value) in [
        ("dns.max_stale", "584942417355y"),
        ("dns.max_ttl", "200y"),
        ("dns.query_timeout", "18446744073709551615s"),
        ("redis.session_ttl", "1000y"),
        ("worker.tombstone_horizon", "500y"),
        ("sharder.persist_interval", "584942417355y"),
        ("sharder.identify_window", "2y"),
        ("sharder.reconnect_max", "1000y"),
        ("sharder.hello_timeout", "18446744073709551615s"),
    ] {
        let (section, name) = key.split_once('.').unwrap();
        let text = format!("[{section}]\n{name} = \"{value}\"\n");
        let e = Config::from_toml_str(&text, "t", Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) || e.contains(name), "{text} -> {e}");
    }
}

#[test]
fn payload_bound_is_bounded() {
    let e = Config::from_toml_str(
        "[sharder]\nmax_payload_bytes = 9223372036854775807\n",
        "t",
        Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_payload_bytes"), "{e}");
}

#[test]
fn numeric_looking_secrets_arrive_verbatim() {
    let c = Config::from_toml_str(
        "",
        "t",
        vec![
            ("BULWARK_DISCORD__TOKEN".into(), "0x1F".into()),
            ("BULWARK_SHARDER__ADMIN_TOKEN".into(), "1e3".into()),
        ],
    )
    .unwrap();
    assert_eq!(c.discord.token.expose(), "0x1F");
    assert_eq!(c.sharder.admin_token.expose(), "1e3");
}

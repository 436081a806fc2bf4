//! The binary's flags: every bad flag is a clear clap error (exit 2), a
//! bad URL a configuration error (exit 78, as every Bulwark binary), and
//! neither starts anything.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn demo(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark-demo"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_2_with_the_reason() {
    for (args, says) in [
        (&["--shards", "0"][..], "--shards"),
        (&["--queue", "kafka"], "kafka"),
        (&["--window", "forever"], "--window"),
        (&["--event-rate=-5"], "--event-rate"),
        (&["--amqp-url", "amqp://h"], "--queue rabbitmq"),
        (&["--redis-url", "redis://h"], "--cache redis"),
        (
            &["--shards", "4096", "--guilds-per-shard", "2500"],
            "guilds",
        ),
        (&["--no-such-flag"], "--no-such-flag"),
    ] {
        let (code, err) = demo(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, out) = demo(&["--help"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn bad_urls_are_configuration_errors() {
    for (args, key) in [
        (
            &["--queue", "rabbitmq", "--amqp-url", "http://h"][..],
            "amqp.url",
        ),
        (
            &["--cache", "redis", "--redis-url", "memcached://h"],
            "redis.url",
        ),
    ] {
        let (code, err) = demo(args);
        assert_eq!(code, 78, "{args:?}: {err}");
        assert!(err.contains(key), "{args:?}: {err}");
    }
}

//! The `relay` binary refuses what it cannot run with, at start-up, with
//! exit code 78 and a message that says what to set.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn missing_token_redis_or_bad_values_exit_78_naming_the_key() {
    for (env, says) in [
        (vec![], "BULWARK_DISCORD__TOKEN"),
        (vec![("BULWARK_DISCORD__TOKEN", "t")], "BULWARK_REDIS__URL"),
        (
            vec![
                ("BULWARK_DISCORD__TOKEN", "t"),
                ("BULWARK_RELAY__SHARDS", "0"),
            ],
            "relay.shards",
        ),
        (
            vec![("BULWARK_RELAY__PUBLIC_URL", "http://relay")],
            "relay.public_url",
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
        cmd.env_remove("BULWARK_CONFIG")
            .env_remove("BULWARK_DISCORD__TOKEN")
            .env_remove("BULWARK_REDIS__URL")
            .env("BULWARK_RELAY__LISTEN", "127.0.0.1:0");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{env:?}: {err}");
        assert!(err.contains(says), "{env:?}: {err}");
    }
}

//! The binary: every flag is documented, and bad values are clear errors.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_discord-sim"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn help_documents_every_flag() {
    let (code, help) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--listen",
        "--token",
        "--shards",
        "--guild-cap",
        "--guilds",
        "--channels-per-guild",
        "--roles-per-guild",
        "--members-per-guild",
        "--event-mix",
        "--outage-events",
        "--seed",
        "--event-rate",
        "--max-concurrency",
        "--identify-window-ms",
        "--session-start-total",
        "--session-start-reset-ms",
        "--heartbeat-ms",
        "--send-limit",
        "--send-window-ms",
        "--session-expiry-ms",
        "--replay-buffer",
        "--allowed-privileged-intents",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn bad_values_are_clear_errors() {
    for (args, needle, code) in [
        (&["--shards", "0"][..], "shards", 78),
        (&["--shards", "many"][..], "--shards", 2),
        (&["--listen", "10.1.2.3:80"][..], "listen", 78),
        (&["--event-mix", "NOPE=1"][..], "unknown event kind", 2),
        (&["--event-rate=-5"][..], "event_rate", 78),
        (&["--allowed-privileged-intents", "ADMIN"][..], "ADMIN", 78),
        (&["--guilds", "2501"][..], "2500", 78),
        (&["--guild-cap", "0"][..], "guild_cap", 78),
        (&["--bogus"][..], "--bogus", 2),
    ] {
        let (c, text) = run(args);
        assert_eq!(c, Some(code), "{args:?}: {text}");
        assert!(text.contains(needle), "{args:?}: {text}");
    }
}

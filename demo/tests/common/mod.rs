//! Options and assertions shared by the demo's end-to-end tests.

#![allow(clippy::unwrap_used, dead_code)]

use bulwark_demo::{DemoOptions, Summary};
use discord_sim::{EventKind, EventMix};
use std::time::Duration;

/// Longest a test run may take (a debug build on a busy 2-core machine).
pub const BOUND: Duration = Duration::from_secs(180);

/// A small, lively run: a window long enough for a debug-build simulator
/// (it answers IDENTIFY late under 32 handshakes, so the sharder keeps a
/// wide margin), frequent joins, outages and removals so the join
/// classification is exercised, and a second of traffic after the boot.
pub fn small() -> DemoOptions {
    let mut mix = EventMix::default();
    mix.set(EventKind::GuildJoin, 40);
    mix.set(EventKind::GuildOutage, 20);
    mix.set(EventKind::GuildRemove, 10);
    DemoOptions {
        window: Duration::from_secs(2),
        identify_margin: Some(Duration::from_millis(400)),
        event_rate: 400.0,
        traffic: Duration::from_secs(1),
        event_mix: mix,
        patience: Duration::from_secs(60),
        ..DemoOptions::default()
    }
}

/// Runs the demo once under `base` within [`BOUND`], quietly; panics if
/// it fails or overruns.
pub async fn run_quiet(opts: &DemoOptions, base: &str) -> Summary {
    tokio::time::timeout(
        BOUND,
        bulwark_demo::run(
            opts,
            base,
            &mut bulwark_demo::Progress::Quiet,
            &tokio_util::sync::CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap()
}

/// What every passing run shows.
/// `joins`: the mix makes joins (a real one is announced).
pub fn assert_clean(s: &Summary, opts: &DemoOptions, joins: bool) {
    let table = s.table();
    println!("{table}");
    assert!(
        s.cache_check.equal(),
        "cache differs from the truth\n{table}"
    );
    assert!(s.cache_check.guilds >= (opts.shards * opts.guilds_per_shard) as usize);
    assert_eq!(s.joins.false_joins, 0, "{table}");
    assert_eq!(s.joins.missed, 0, "{table}");
    assert_eq!(s.joins.sessions_without_ready, 0, "{table}");
    assert!(!joins || s.joins.real > 0, "the mix makes joins\n{table}");
    if s.reshard.is_none() {
        assert_eq!(s.forwarded, s.dispatched, "lost or extra events\n{table}");
    } else {
        // A retired shard's connection is read up to its close frame for at
        // most RETIRE_DRAIN: what the simulator buffered for it after that
        // is never read. Those are copies whose twins came through the new
        // total (each logical event once in the clean stream is asserted
        // by `passed` below), so the shortfall stays within the events
        // both totals received.
        assert!(s.forwarded <= s.dispatched, "extra events\n{table}");
        assert!(
            s.dispatched - s.forwarded <= s.stream.both as u64,
            "more dispatches unread than events both totals received\n{table}"
        );
    }
    assert!(s.processed >= s.forwarded, "{table}");
    assert!(s.identifies >= u64::from(opts.shards), "{table}");
    let ratio = s.floor_ratio().unwrap();
    assert!(
        ratio >= 0.95,
        "the boot beat the protocol floor: {ratio}\n{table}"
    );
    assert!(s.drained, "{table}");
    assert!(s.passed(), "{table}");
    assert!(table.contains("PASS"));
}

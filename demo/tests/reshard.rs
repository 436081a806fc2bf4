//! The demo with `--reshard-to`: half-way through the traffic the sharder
//! is asked (over its admin API, as an operator would) to grow from 32 to
//! 64 shards live. The run must end as a plain one does (the truth, no
//! false join, nothing lost), with the reshard done, 64 identifies spent
//! on it, and no guild announced as loading again.
//! Its own test binary: the demo reads the process-wide metrics registry.

#![allow(clippy::unwrap_used)]

mod common;

use bulwark_demo::{DemoOptions, unique_name};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_reshard_half_way_keeps_the_truth_and_announces_no_guild_again() {
    // The simulator's realistic mix: joins, outages and removals at the
    // rates Discord sends them (the small runs' storm of them repeats one
    // guild's identical GUILD_DELETEs inside the overlap, the pairing's
    // known limit; see worker/src/reshard.rs).
    let opts = DemoOptions {
        shards: 32,
        guilds_per_shard: 8,
        traffic: Duration::from_secs(2),
        reshard_to: Some(64),
        event_mix: discord_sim::EventMix::default(),
        ..common::small()
    };
    let summary = common::run_quiet(&opts, &unique_name()).await;
    common::assert_clean(&summary, &opts, false);
    let table = summary.table();
    let r = summary.reshard.as_ref().expect("the reshard ran");
    assert_eq!((r.from, r.to), (32, 64), "{table}");
    assert_eq!(r.identifies, 64, "one identify per new shard\n{table}");
    assert_eq!(r.reannounced, 0, "{table}");
    assert_eq!(summary.identifies, 32 + 64, "{table}");
    assert!(table.contains("32 -> 64 shards in"), "{table}");
}

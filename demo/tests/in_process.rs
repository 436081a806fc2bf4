//! The demo in its default shape (in-process queue, in-memory cache), with
//! a small world: the cache must equal the simulator's truth, every real
//! join must be announced exactly once and nothing else announced as one,
//! no event may be lost, and the cold boot may not beat the protocol floor.
//! Its own test binary: the demo reads the process-wide metrics registry.

#![allow(clippy::unwrap_used)]

mod common;

use bulwark_demo::{DemoOptions, unique_name};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_demo_ends_with_the_truth_and_no_false_join() {
    let opts = DemoOptions {
        shards: 32,
        guilds_per_shard: 8,
        ..common::small()
    };
    let summary = common::run_quiet(&opts, &unique_name()).await;
    common::assert_clean(&summary, &opts, true);
    assert_eq!(summary.queue, "in-process channel");
}

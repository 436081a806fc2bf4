//! Ctrl-C: the run stops at once with `Interrupted` (exit 130), after
//! stopping the sharder and the consumers. Its own test binary, so its
//! events do not count in another run's metrics.

#![allow(clippy::unwrap_used)]

mod common;

use bulwark_demo::{DemoOptions, Progress, run, unique_name};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupt_stops_the_run_cleanly() {
    let opts = DemoOptions {
        shards: 16,
        guilds_per_shard: 2,
        ..common::small()
    };
    let interrupt = CancellationToken::new();
    interrupt.cancel();
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        run(&opts, &unique_name(), &mut Progress::Quiet, &interrupt),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, bulwark_demo::DemoError::Interrupted), "{err}");
    assert_eq!(err.exit_code(), 130);
}

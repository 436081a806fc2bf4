//! The runtime every Bulwark service runs on, stopped by a signal.
//!
//! The binary's library function (`sharder::run`, `worker::run`, the
//! simulator's serve loop, the demo's run) takes a cancellation token and
//! drains on its own terms once it fires; this is where that token comes
//! from, so a signal means the same thing in every binary.

use crate::failure::{EXIT_FAILURE, Failure};
use crate::signal::cancel_on_signal;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// Builds the multi-threaded runtime and runs `body` on it with a token
/// that the first SIGTERM or SIGINT cancels, until `body` returns. The
/// runtime (and whatever `body` left running) is gone when this returns.
///
/// Fails only when the runtime cannot start (exit 1).
pub fn run_until_signal<F, Fut>(body: F) -> Result<Fut::Output, Failure>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    run_until_signal_on(builder, body)
}

/// [`run_until_signal`] on a runtime of the binary's own making (the
/// sharder's coalesces its wake-ups).
pub fn run_until_signal_on<F, Fut>(
    mut builder: tokio::runtime::Builder,
    body: F,
) -> Result<Fut::Output, Failure>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future,
{
    let rt = builder
        .build()
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot start the async runtime: {e}")))?;
    let out = rt.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = cancel_on_signal(shutdown.clone());
        let out = body(shutdown).await;
        signals.abort();
        out
    });
    drop(rt);
    Ok(out)
}

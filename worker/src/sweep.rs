//! Background collection of what the cache no longer needs.
//!
//! Tombstones (the memory store's record of a deleted entity's version)
//! are kept `worker.tombstone_horizon`, longer than any redelivery, so a
//! late duplicate cannot resurrect what it deleted; past it they are
//! dropped. Users no member refers to any more are dropped the same way
//! ([`Store::collect_users`]). The Redis store expires its own tombstones;
//! its user sweep runs on every replica, which is safe (idempotent) and
//! needs no leader.

use crate::memory::MemoryStore;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// How often the in-memory store is swept.
const MEMORY_SWEEP: Duration = Duration::from_secs(60);
/// How often the Redis store's unreferenced users are swept.
const REDIS_SWEEP: Duration = Duration::from_secs(600);

/// Sweeps the in-memory store every minute, forever.
pub(crate) async fn sweep_memory(store: Arc<MemoryStore>, horizon: Duration) {
    let mut tick = tokio::time::interval(MEMORY_SWEEP);
    loop {
        tick.tick().await;
        let cutoff = cutoff_ms(horizon);
        let n = store.collect_tombstones(cutoff);
        metrics::counter!("worker_tombstones_collected_total").increment(n as u64);
        collect_users(&*store, cutoff).await;
    }
}

/// Sweeps a shared store's unreferenced users every ten minutes, forever.
pub(crate) async fn sweep_shared<S: Store>(store: Arc<S>, horizon: Duration) {
    let mut tick = tokio::time::interval(REDIS_SWEEP);
    loop {
        tick.tick().await;
        collect_users(&*store, cutoff_ms(horizon)).await;
    }
}

/// Unix ms `horizon` ago: writes older than that are past redelivery.
fn cutoff_ms(horizon: Duration) -> u64 {
    envelope::unix_now_ms().saturating_sub(horizon.as_millis() as u64)
}

/// Drops the users no member refers to (see [`Store::collect_users`]).
async fn collect_users<S: Store>(store: &S, cutoff: u64) {
    match store.collect_users(cutoff).await {
        Ok(n) => metrics::counter!("worker_users_collected_total").increment(n as u64),
        Err(e) => tracing::warn!(error = %e, "collecting unreferenced users failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_the_horizon_ago() {
        let now = envelope::unix_now_ms();
        let cutoff = cutoff_ms(Duration::from_secs(3600));
        assert!(cutoff <= now - 3_600_000 && cutoff + 60_000 > now - 3_600_000);
    }
}

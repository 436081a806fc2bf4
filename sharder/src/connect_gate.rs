//! Connect just ahead of the identify queue, not all at once.
//!
//! A cold boot of N shards at `max_concurrency` C identifies over
//! `ceil(N/C)` windows. Opening all N connections at start, only for most
//! of them to idle until their window, costs N handshakes in one burst (on
//! the gateway, on our CPU, and on whatever stamps the IDENTIFYs: the
//! simulator in a debug build stamped the first batch 100+ ms late under
//! 288 of them) and keeps N heartbeating sockets that carry nothing.
//!
//! # Algorithm
//! Each identify key (`shard_id % max_concurrency`) has [`DEPTH`] connect
//! slots. A shard that is going to identify takes a slot of its key before
//! it connects and gives it back once its IDENTIFY has left, or when the
//! connection ends before that. So per key one shard identifies while the
//! next one is already connected and waiting for the window: every window
//! still opens with a shard ready to send, and at most `DEPTH x C`
//! connections wait at once. RESUMEs never take a slot: they are not
//! rate-limited, and after a restart every shard must resume at once.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections per identify key that may be open before their IDENTIFY:
/// the one identifying and the next in line.
pub(crate) const DEPTH: usize = 2;

/// The connect slots of every identify key.
pub(crate) struct ConnectGate {
    keys: Vec<Arc<Semaphore>>,
}

/// A held slot; dropping it lets the key's next shard connect.
#[derive(Debug)]
pub struct ConnectSlot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl ConnectGate {
    pub(crate) fn new(keys: u16) -> Self {
        Self {
            keys: (0..keys.max(1))
                .map(|_| Arc::new(Semaphore::new(DEPTH)))
                .collect(),
        }
    }

    /// Waits for a slot of `key` (FIFO per key). A key out of range, or a
    /// closed semaphore (never closed here), gets an empty slot rather than
    /// a shard that can never connect.
    pub(crate) async fn slot(&self, key: u16) -> ConnectSlot {
        match self.keys.get(usize::from(key)) {
            Some(s) => ConnectSlot(s.clone().acquire_owned().await.ok()),
            None => ConnectSlot(None),
        }
    }

    /// Slots of `key` free now.
    #[cfg(test)]
    pub(crate) fn free(&self, key: u16) -> usize {
        self.keys
            .get(usize::from(key))
            .map_or(0, |s| s.available_permits())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_key_lets_two_connect_and_the_third_waits_for_one_to_finish() {
        let gate = Arc::new(ConnectGate::new(2));
        let a = gate.slot(0).await;
        let _b = gate.slot(0).await;
        assert_eq!(gate.free(0), 0);
        // Another key is not held up by key 0.
        let _c = gate.slot(1).await;
        let third = tokio::spawn({
            let gate = gate.clone();
            async move { gate.slot(0).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            !third.is_finished(),
            "a third connection of key 0 must wait"
        );
        drop(a); // the first shard's IDENTIFY left
        tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .unwrap()
            .unwrap();
        assert!(gate.slot(9).await.0.is_none(), "out of range: no wait");
    }
}

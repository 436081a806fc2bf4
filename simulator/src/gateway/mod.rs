//! The network side: HTTP and websocket server, connections, sessions,
//! rate limits, compression and the event generator.

pub(crate) mod connection;
pub(crate) mod generator;
pub(crate) mod handshake;
pub(crate) mod hostility;
pub(crate) mod http;
pub(crate) mod limits;
pub(crate) mod member_requests;
pub(crate) mod protocol;
pub(crate) mod records;
pub(crate) mod replay;
pub(crate) mod sessions;
pub(crate) mod transport;
pub(crate) mod voice;

use crate::config::{MAX_SHARD_TOTAL, SimConfig};
use sessions::Core;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use tokio::sync::{Notify, watch};

/// State shared by every task of one simulator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub addr: SocketAddr,
    core: Mutex<Core>,
    rate_bits: AtomicU64,
    pub rate_changed: Notify,
    pub shutdown: watch::Sender<bool>,
    next_conn: AtomicU64,
    /// The `shards` `/gateway/bot` recommends (starts at `cfg.shards`).
    recommended: AtomicU32,
    /// Callers in [`Shared::core_urgent`] waiting for the core.
    pub(crate) urgent: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig, addr: SocketAddr, core: Core) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            rate_bits: AtomicU64::new(cfg.event_rate.to_bits()),
            recommended: AtomicU32::new(cfg.shards),
            cfg,
            addr,
            core: Mutex::new(core),
            rate_changed: Notify::new(),
            shutdown,
            next_conn: AtomicU64::new(1),
            urgent: AtomicUsize::new(0),
        }
    }

    /// Locks the core. A panic while holding the lock is a bug; the state is
    /// still usable, so a poisoned lock is recovered rather than spread.
    pub(crate) fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the core for a rare caller that must not wait long: the HTTP
    /// endpoints, IDENTIFY and RESUME. A saturated generator holds the core
    /// for a whole chunk (tens of ms) and takes it again at once; a plain
    /// waiter on another thread could lose that race for seconds (a bench's
    /// `/sim/counters` timed out after 10 s). The generator checks for
    /// urgent waiters between small batches and steps aside.
    pub(crate) fn core_urgent(&self) -> MutexGuard<'_, Core> {
        self.urgent.fetch_add(1, Ordering::AcqRel);
        let core = self.core();
        self.urgent.fetch_sub(1, Ordering::AcqRel);
        core
    }

    /// Whether a [`Shared::core_urgent`] caller is waiting.
    pub(crate) fn urgent_waiting(&self) -> bool {
        self.urgent.load(Ordering::Acquire) > 0
    }

    pub(crate) fn event_rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }

    /// Changes the dispatch rate. The rate is stored under the core lock,
    /// and the generator checks it under that lock before producing, so
    /// once this returns nothing is produced at the old rate: a client that
    /// sets 0 and then reads the truth reads a final state.
    pub(crate) fn set_event_rate(&self, rate: f64) {
        {
            let _core = self.core();
            self.rate_bits.store(rate.to_bits(), Ordering::Relaxed);
        }
        self.rate_changed.notify_one();
    }

    /// The shard total `/gateway/bot` recommends now.
    pub(crate) fn recommended_shards(&self) -> u32 {
        self.recommended.load(Ordering::Relaxed)
    }

    /// Changes the recommendation (1 to [`MAX_SHARD_TOTAL`]). It does not
    /// change which totals IDENTIFY accepts.
    pub(crate) fn set_recommended_shards(&self, shards: u32) -> Result<(), crate::SimError> {
        if !(1..=MAX_SHARD_TOTAL).contains(&shards) {
            return Err(crate::SimError::config(
                "recommended_shards",
                format!("{shards} is not in 1..={MAX_SHARD_TOTAL}"),
            ));
        }
        self.recommended.store(shards, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn gateway_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub(crate) fn resume_url(&self) -> String {
        format!("ws://{}/resume", self.addr)
    }
}

/// Resolves once shutdown was requested, even if it was requested before
/// the receiver subscribed.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await.is_ok();
}

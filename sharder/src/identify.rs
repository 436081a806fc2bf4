//! Identify scheduling: who may send IDENTIFY, and when.
//!
//! Discord lets each rate-limit key (`shard_id % max_concurrency`) identify
//! once per 5 s, and counts every IDENTIFY against a daily session start
//! budget; exceeding the first costs an op 9 and a retry, running out of the
//! second ends sessions and can reset the token. A cold boot must still run
//! at the protocol's floor: `max_concurrency` identifies per window, the
//! first batch at once.
//!
//! # Algorithm
//! [`IdentifyScheduler::acquire`] grants one identify for a shard:
//! 1. **Bucket.** Each key has a FIFO async mutex holding the instant its
//!    window ends. The caller takes the mutex (shards of one key queue in
//!    arrival order) and sleeps until that instant. Unused keys have no
//!    window, so the first `max_concurrency` shards of distinct keys pass at
//!    once.
//! 2. **Throttle.** A global gate enforces a minimum interval between any two
//!    grants. The interval lives in a `watch` channel so operators can change
//!    it at runtime ([`IdentifyScheduler::set_min_interval`]): a waiter
//!    re-computes its deadline whenever the value changes. Zero (the
//!    default) is no throttle.
//! 3. **Budget.** Still under the gate, one identify is taken from the
//!    session start budget. If that would spend the last `reserve` of
//!    `remaining`, the caller logs an error, counts
//!    `sharder_identify_budget_waits_total`, and waits for `reset_after` (or
//!    for a fresher limit from [`IdentifyScheduler::update_limit`]).
//! 4. **Cross-process lock** (optional). With Redis, the bucket's window is
//!    also claimed with `SET key token NX PX window`, retried (after the
//!    key's remaining TTL, or a capped backoff on Redis errors) until it
//!    succeeds, so pods that share a key never identify in one window.
//! 5. The bucket's window is set to `now + window` and the mutex released.
//!
//! Without Redis, processes must not share keys at all: see
//! [`crate::assignment::plan_shards`].

use crate::connect_gate::{ConnectGate, ConnectSlot};
use crate::identify_lock::RedisIdentifyLock;
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Mutex, Notify, watch};
use tokio::time::Instant;

/// The session start budget, as `GET /gateway/bot` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStartLimit {
    /// Identifies allowed per reset period.
    pub total: u32,
    /// Identifies left before the reset.
    pub remaining: u32,
    /// Time until `remaining` is back to `total`.
    pub reset_after: Duration,
    /// Identify rate-limit keys.
    pub max_concurrency: u16,
}

/// How long a budget lasts after it was reset, when Discord has not told
/// us more (Discord's period is a day).
const BUDGET_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// Settings of an [`IdentifyScheduler`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifySettings {
    /// Length of one key's window; Discord's is 5 s.
    pub window: Duration,
    /// Identifies never spent by this process except after a reset.
    pub reserve: u32,
    /// Initial minimum interval between any two identifies.
    pub min_interval: Duration,
}

impl Default for IdentifySettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(5),
            reserve: 10,
            min_interval: Duration::ZERO,
        }
    }
}

impl From<&config::SharderConfig> for IdentifySettings {
    fn from(c: &config::SharderConfig) -> Self {
        Self {
            window: c.identify_window,
            reserve: c.identify_reserve,
            min_interval: c.identify_min_interval,
        }
    }
}

#[derive(Debug)]
struct Budget {
    total: u32,
    remaining: u32,
    reset_at: Instant,
}

struct Inner {
    settings: IdentifySettings,
    buckets: Vec<Mutex<Option<Instant>>>,
    /// When each key's last IDENTIFY actually left ([`IdentifyScheduler::identify_sent`]).
    sent: Vec<StdMutex<Option<Instant>>>,
    /// Instant of the last grant, for the throttle.
    gate: Mutex<Option<Instant>>,
    min_interval: watch::Sender<Duration>,
    budget: StdMutex<Budget>,
    budget_changed: Notify,
    lock: Option<RedisIdentifyLock>,
    /// Who may connect ahead of their identify (see `connect_gate.rs`).
    connect: ConnectGate,
}

/// Grants identifies within Discord's limits. Cheap to clone; all clones
/// share one state.
#[derive(Clone)]
pub struct IdentifyScheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IdentifyScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentifyScheduler")
            .field("max_concurrency", &self.inner.buckets.len())
            .field("settings", &self.inner.settings)
            .field("shared", &self.inner.lock.is_some())
            .finish()
    }
}

/// Proof that a shard may send IDENTIFY now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifyPermit {
    /// The shard it was granted to.
    pub shard_id: u32,
    /// The shard's rate-limit key.
    pub bucket: u16,
}

impl IdentifyScheduler {
    /// A scheduler for one process, optionally sharing keys with other
    /// processes through `lock`.
    pub fn new(
        limit: SessionStartLimit,
        settings: IdentifySettings,
        lock: Option<RedisIdentifyLock>,
    ) -> Self {
        let buckets = (0..limit.max_concurrency.max(1))
            .map(|_| Mutex::new(None))
            .collect();
        let (min_interval, _) = watch::channel(settings.min_interval);
        metrics::gauge!("sharder_session_start_remaining").set(f64::from(limit.remaining));
        Self {
            inner: Arc::new(Inner {
                settings,
                buckets,
                sent: (0..limit.max_concurrency.max(1))
                    .map(|_| StdMutex::new(None))
                    .collect(),
                gate: Mutex::new(None),
                min_interval,
                budget: StdMutex::new(Budget {
                    total: limit.total,
                    remaining: limit.remaining,
                    reset_at: Instant::now() + limit.reset_after,
                }),
                budget_changed: Notify::new(),
                lock,
                connect: ConnectGate::new(limit.max_concurrency),
            }),
        }
    }

    /// Number of rate-limit keys.
    pub fn max_concurrency(&self) -> u16 {
        u16::try_from(self.inner.buckets.len()).unwrap_or(u16::MAX)
    }

    /// The rate-limit key of `shard_id`.
    pub fn bucket_of(&self, shard_id: u32) -> u16 {
        let n = u32::from(self.max_concurrency());
        u16::try_from(shard_id % n).unwrap_or(0)
    }

    /// Waits until `shard_id` may open the connection it will identify on:
    /// a slot of its key, held until the IDENTIFY has left (drop it then).
    pub(crate) async fn connect_slot(&self, shard_id: u32) -> ConnectSlot {
        self.inner.connect.slot(self.bucket_of(shard_id)).await
    }

    /// Changes the minimum interval between two identifies at runtime
    /// (load shedding while recovering). Waiters pick it up at once.
    pub fn set_min_interval(&self, interval: Duration) {
        tracing::info!(?interval, "identify throttle changed");
        self.inner.min_interval.send_replace(interval);
    }

    /// The current minimum interval between two identifies.
    pub fn min_interval(&self) -> Duration {
        *self.inner.min_interval.borrow()
    }

    /// Replaces the budget with a fresh `GET /gateway/bot` answer, waking
    /// any shard waiting for a reset.
    pub fn update_limit(&self, limit: SessionStartLimit) {
        {
            let mut b = self.budget_lock();
            b.total = limit.total;
            b.remaining = limit.remaining;
            b.reset_at = Instant::now() + limit.reset_after;
        }
        metrics::gauge!("sharder_session_start_remaining").set(f64::from(limit.remaining));
        self.inner.budget_changed.notify_waiters();
    }

    /// Identifies left in the budget as this process counts them.
    pub fn remaining(&self) -> u32 {
        self.budget_lock().remaining
    }

    fn budget_lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.inner
            .budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `shard_id` may identify. Cancel-safe: dropping the future
    /// gives up the place in the queue without spending anything, unless the
    /// budget was already taken.
    pub(crate) async fn acquire(&self, shard_id: u32) -> IdentifyPermit {
        let asked = Instant::now();
        let bucket = self.bucket_of(shard_id);
        let Some(slot) = self.inner.buckets.get(usize::from(bucket)) else {
            unreachable_bucket(bucket);
            return IdentifyPermit { shard_id, bucket };
        };
        let mut window_end = slot.lock().await;
        if let Some(end) = *window_end {
            tokio::time::sleep_until(end).await;
        }
        // The window runs from the IDENTIFY's departure, not its grant: a
        // permit whose send was delayed (a busy runtime at a cold boot)
        // would otherwise let the next one arrive less than a window later.
        loop {
            let sent = self
                .inner
                .sent
                .get(usize::from(bucket))
                .and_then(|m| *m.lock().unwrap_or_else(PoisonError::into_inner));
            match sent.map(|t| t + self.inner.settings.window) {
                Some(end) if end > Instant::now() => tokio::time::sleep_until(end).await,
                _ => break,
            }
        }
        {
            let mut last = self.inner.gate.lock().await;
            self.pace(*last).await;
            self.take_budget(shard_id).await;
            *last = Some(Instant::now());
        }
        if let Some(lock) = &self.inner.lock {
            lock.acquire(bucket, self.max_concurrency(), self.inner.settings.window)
                .await;
        }
        *window_end = Some(Instant::now() + self.inner.settings.window);
        metrics::counter!("sharder_identify_granted_total").increment(1);
        metrics::histogram!("sharder_identify_wait_seconds").record(asked.elapsed().as_secs_f64());
        tracing::debug!(shard_id, bucket, "identify granted");
        IdentifyPermit { shard_id, bucket }
    }

    /// The IDENTIFY of `permit` was just sent: the key's window starts now.
    pub(crate) fn identify_sent(&self, permit: IdentifyPermit) {
        if let Some(m) = self.inner.sent.get(usize::from(permit.bucket)) {
            *m.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
    }

    /// When the last identify window this process opened closes, if one
    /// is still open: the latest `identify_sent` plus the window. `None` when keys are shared through Redis, whose
    /// lock keys outlive this process anyway.
    pub fn open_windows_close_at(&self) -> Option<Instant> {
        if self.inner.lock.is_some() {
            return None;
        }
        let window = self.inner.settings.window;
        self.inner
            .sent
            .iter()
            .filter_map(|m| *m.lock().unwrap_or_else(PoisonError::into_inner))
            .map(|at| at + window)
            .max()
            .filter(|&at| at > Instant::now())
    }

    async fn pace(&self, last: Option<Instant>) {
        let Some(last) = last else { return };
        let mut rx = self.inner.min_interval.subscribe();
        loop {
            let at = last + *rx.borrow_and_update();
            if Instant::now() >= at {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(at) => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }

    async fn take_budget(&self, shard_id: u32) {
        loop {
            let notified = self.inner.budget_changed.notified();
            let wait = {
                let mut b = self.budget_lock();
                let now = Instant::now();
                if b.remaining > self.inner.settings.reserve {
                    b.remaining -= 1;
                    metrics::gauge!("sharder_session_start_remaining").set(f64::from(b.remaining));
                    return;
                }
                if now >= b.reset_at {
                    b.remaining = b.total;
                    b.reset_at = now + BUDGET_PERIOD;
                    continue;
                }
                (b.reset_at - now, b.remaining)
            };
            let (wait, remaining) = wait;
            tracing::error!(
                shard_id,
                remaining,
                reserve = self.inner.settings.reserve,
                wait_secs = wait.as_secs(),
                "session start budget is down to its reserve: holding identifies until it resets \
                 instead of spending the last ones (check for a reconnect loop)"
            );
            metrics::counter!("sharder_identify_budget_waits_total").increment(1);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = notified => {}
            }
        }
    }
}

fn unreachable_bucket(bucket: u16) {
    tracing::error!(
        bucket,
        "identify bucket out of range; granting without a window"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn limit(remaining: u32, mc: u16) -> SessionStartLimit {
        SessionStartLimit {
            total: 1000,
            remaining,
            reset_after: Duration::from_secs(3600),
            max_concurrency: mc,
        }
    }

    fn settings() -> IdentifySettings {
        IdentifySettings {
            window: Duration::from_secs(5),
            reserve: 0,
            min_interval: Duration::ZERO,
        }
    }

    /// Grants `shards` concurrently and returns each grant's offset from start.
    async fn grant_times(s: &IdentifyScheduler, shards: u32) -> BTreeMap<u32, Duration> {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for id in 0..shards {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                let p = s.acquire(id).await;
                (p.shard_id, start.elapsed())
            }));
            // Let each task queue in shard order.
            tokio::task::yield_now().await;
        }
        let mut out = BTreeMap::new();
        for t in tasks {
            let (id, at) = t.await.unwrap();
            out.insert(id, at);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn sixty_four_shards_at_sixteen_make_four_batches() {
        let s = IdentifyScheduler::new(limit(1000, 16), settings(), None);
        let times = grant_times(&s, 64).await;
        let mut batches: BTreeMap<Duration, Vec<u32>> = BTreeMap::new();
        for (id, at) in times {
            batches.entry(at).or_default().push(id);
        }
        let offsets: Vec<u64> = batches.keys().map(Duration::as_secs).collect();
        assert_eq!(offsets, vec![0, 5, 10, 15], "{batches:?}");
        for (at, ids) in &batches {
            assert_eq!(ids.len(), 16, "{at:?}");
            let mut keys: Vec<u32> = ids.iter().map(|id| id % 16).collect();
            keys.sort_unstable();
            assert_eq!(keys, (0..16).collect::<Vec<_>>(), "one per key at {at:?}");
            assert_eq!(at.subsec_nanos(), 0, "exactly one window apart");
        }
        assert_eq!(s.remaining(), 1000 - 64);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_open_window_is_known_until_it_closes() {
        let s = IdentifyScheduler::new(limit(1000, 16), settings(), None);
        assert_eq!(s.open_windows_close_at(), None, "nothing sent yet");
        let start = Instant::now();
        let first = s.acquire(3).await;
        s.identify_sent(first);
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = s.acquire(4).await;
        s.identify_sent(second);
        assert_eq!(
            s.open_windows_close_at(),
            Some(start + Duration::from_secs(7)),
            "the later of the two keys' windows"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(s.open_windows_close_at(), None, "every window closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_waits_a_full_window_after_a_late_identify() {
        let s = IdentifyScheduler::new(limit(1000, 2), settings(), None);
        let t0 = Instant::now();
        s.acquire(0).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        s.acquire(1).await; // other key: immediate
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        s.acquire(2).await; // key 0 again: at 5 s
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        s.acquire(3).await; // key 1: its window ends at 3 + 5
        assert_eq!(t0.elapsed(), Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_runs_from_a_delayed_send() {
        let s = IdentifyScheduler::new(limit(1000, 1), settings(), None);
        let t0 = Instant::now();
        let p = s.acquire(0).await;
        // The IDENTIFY leaves 300 ms after its grant.
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.identify_sent(p);
        s.acquire(1).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(5300));
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_spaces_grants_and_applies_at_runtime() {
        let s = IdentifyScheduler::new(limit(1000, 16), settings(), None);
        let t0 = Instant::now();
        s.acquire(0).await;
        s.set_min_interval(Duration::from_secs(2));
        s.acquire(1).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        s.acquire(2).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(4));
        // A waiter sees the throttle lifted while it waits.
        s.set_min_interval(Duration::from_secs(60));
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                s.acquire(3).await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiter.is_finished());
        s.set_min_interval(Duration::ZERO);
        let granted = waiter.await.unwrap();
        assert_eq!(granted - t0, Duration::from_secs(14));
        assert_eq!(s.min_interval(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_is_not_spent_until_reset() {
        let mut st = settings();
        st.reserve = 2;
        let lim = SessionStartLimit {
            total: 1000,
            remaining: 3,
            reset_after: Duration::from_secs(600),
            max_concurrency: 16,
        };
        let s = IdentifyScheduler::new(lim, st, None);
        let t0 = Instant::now();
        s.acquire(0).await;
        assert_eq!((t0.elapsed(), s.remaining()), (Duration::ZERO, 2));
        s.acquire(1).await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(600),
            "waited for the reset"
        );
        assert_eq!(s.remaining(), 999);
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_limit_wakes_budget_waiters() {
        let mut st = settings();
        st.reserve = 5;
        let s = IdentifyScheduler::new(limit(5, 16), st, None);
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                s.acquire(0).await;
                Instant::now()
            })
        };
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiter.is_finished());
        s.update_limit(limit(500, 16));
        assert_eq!(waiter.await.unwrap() - t0, Duration::from_secs(30));
        assert_eq!(s.remaining(), 499);
    }
}

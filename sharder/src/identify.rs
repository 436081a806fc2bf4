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
//!    With Redis ([`crate::SharedBudget`]) the budget is the cluster's: one
//!    atomic take in Redis per identify, so the reserve holds cluster-wide,
//!    and the gauge shows the shared figure. Before the budget, the
//!    identify circuit breaker (`identify_breaker.rs`) is asked: while it
//!    is open, identifies wait out its cool-down.
//! 4. **Cross-process lock** (optional). With Redis, the bucket's window is
//!    also claimed with `SET key token NX PX window`, retried (after the
//!    key's remaining TTL, or a capped backoff on Redis errors) until it
//!    succeeds, so pods that share a key never identify in one window.
//! 5. The bucket's window is set to `now + window` and the mutex released.
//!
//! Without Redis, processes must not share keys at all: see
//! [`crate::assignment::plan_shards`].

use crate::connect_gate::{ConnectGate, ConnectSlot};
use crate::identify_breaker::{BreakerPolicy, IdentifyBreaker};
use crate::identify_budget::{BudgetMark, SharedBudget, Take};
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
    /// The cluster's budget (with Redis); `budget` then mirrors it.
    shared: Option<SharedBudget>,
    breaker: IdentifyBreaker,
    policy: BreakerPolicy,
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
        Self::with_cluster(limit, settings, lock, None, BreakerPolicy::default())
    }

    /// A scheduler whose budget and circuit breaker are the cluster's when
    /// `shared` is given (seed it with [`Self::refresh_budget`]), and this
    /// process's otherwise.
    pub fn with_cluster(
        limit: SessionStartLimit,
        settings: IdentifySettings,
        lock: Option<RedisIdentifyLock>,
        shared: Option<SharedBudget>,
        policy: BreakerPolicy,
    ) -> Self {
        let breaker = match &shared {
            Some(b) => IdentifyBreaker::redis(b.connection().clone(), b.prefix()),
            None => IdentifyBreaker::local(),
        };
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
                shared,
                breaker,
                policy,
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

    /// Applies a fresh `GET /gateway/bot` answer: to the shared budget
    /// (with `mark`, read before the request; see `identify_budget.rs`),
    /// or as [`Self::update_limit`] without Redis.
    pub async fn refresh_budget(&self, limit: SessionStartLimit, mark: BudgetMark) {
        let Some(shared) = &self.inner.shared else {
            return self.update_limit(limit);
        };
        match shared
            .refresh(limit.total, limit.remaining, limit.reset_after, mark)
            .await
        {
            Ok((remaining, reset_in)) => self.mirror(Some(limit.total), remaining, reset_in),
            Err(e) => tracing::warn!(error = %e, "cannot refresh the shared session start budget"),
        }
        self.inner.budget_changed.notify_waiters();
    }

    /// The identifies granted so far cluster-wide (none without Redis).
    pub async fn budget_mark(&self) -> BudgetMark {
        match &self.inner.shared {
            Some(s) => s.mark().await,
            None => SharedBudget::no_mark(),
        }
    }

    /// Time until the budget's reset, as last seen.
    pub fn budget_reset_in(&self) -> Duration {
        self.budget_lock()
            .reset_at
            .saturating_duration_since(Instant::now())
    }

    /// The budget as last seen: total, remaining and time to its reset.
    pub fn budget(&self) -> (u32, u32, Duration) {
        let b = self.budget_lock();
        (
            b.total,
            b.remaining,
            b.reset_at.saturating_duration_since(Instant::now()),
        )
    }

    /// The budget is the cluster's, shared through Redis.
    pub fn shares_budget(&self) -> bool {
        self.inner.shared.is_some()
    }

    /// Identifies left in the budget (the cluster's with Redis, as last seen).
    pub fn remaining(&self) -> u32 {
        self.budget_lock().remaining
    }

    fn mirror(&self, total: Option<u32>, remaining: u32, reset_in: Duration) {
        let mut b = self.budget_lock();
        b.total = total.unwrap_or(b.total);
        b.remaining = remaining;
        b.reset_at = Instant::now() + reset_in;
        metrics::gauge!("sharder_session_start_remaining").set(f64::from(remaining));
    }

    /// A READY after IDENTIFY: the breaker closes.
    pub(crate) async fn identify_succeeded(&self) {
        self.inner.breaker.succeeded().await;
    }

    /// An IDENTIFY ended in op 9 or a close before READY.
    pub(crate) async fn identify_failed(&self, shard_id: u32) {
        self.inner
            .breaker
            .failed(shard_id, &self.inner.policy)
            .await;
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
            self.breaker_closed(shard_id).await;
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
        // The cluster-wide window, too, runs from the IDENTIFY's departure
        // (`identify_lock.rs`).
        if let Some(lock) = self.inner.lock.clone() {
            let (mc, window) = (self.max_concurrency(), self.inner.settings.window);
            tokio::spawn(async move { lock.sent(permit.bucket, mc, window).await });
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

    /// Waits while the identify circuit breaker is open.
    async fn breaker_closed(&self, shard_id: u32) {
        while let Some(wait) = self.inner.breaker.open_for().await {
            tracing::warn!(
                shard_id,
                wait_secs = wait.as_secs_f64(),
                "identify circuit breaker open: identify paused"
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn take_budget(&self, shard_id: u32) {
        if let Some(shared) = &self.inner.shared {
            return self.take_shared(shared, shard_id).await;
        }
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

impl IdentifyScheduler {
    /// Step 3 with Redis: the cluster's budget; refused at the reserve,
    /// the caller waits for the reset (or a refresh, polled every
    /// [`SHARED_POLL`]), and Redis errors are retried with a capped backoff.
    async fn take_shared(&self, shared: &SharedBudget, shard_id: u32) {
        let reserve = self.inner.settings.reserve;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), SHARED_POLL);
        loop {
            let notified = self.inner.budget_changed.notified();
            let wait = match shared.take(reserve, BUDGET_PERIOD).await {
                Ok(Take::Granted {
                    remaining,
                    reset_in,
                }) => return self.mirror(None, remaining, reset_in),
                Ok(Take::Missing) => {
                    // Expired or deleted: seed it from this process's last figure.
                    let (total, remaining) = {
                        let b = self.budget_lock();
                        (b.total, b.remaining)
                    };
                    let limit = SessionStartLimit {
                        total,
                        remaining,
                        reset_after: self.budget_reset_in(),
                        max_concurrency: self.max_concurrency(),
                    };
                    self.refresh_budget(limit, SharedBudget::no_mark()).await;
                    continue;
                }
                Ok(Take::AtReserve {
                    remaining,
                    reset_in,
                }) => {
                    self.mirror(None, remaining, reset_in);
                    tracing::error!(
                        shard_id,
                        remaining,
                        reserve,
                        wait_secs = reset_in.as_secs(),
                        "the cluster's session start budget is down to its reserve: holding \
                         identifies until it resets instead of spending the last ones (check \
                         for a reconnect loop)"
                    );
                    metrics::counter!("sharder_identify_budget_waits_total").increment(1);
                    reset_in.clamp(Duration::from_millis(10), SHARED_POLL)
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(shard_id, error = %e, retry_in = ?wait, "cannot take from the shared session start budget in Redis; retrying");
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = notified => {}
            }
        }
    }
}

/// How often an identify held at the cluster's reserve looks again (a
/// refresh by another pod, or the reset).
const SHARED_POLL: Duration = Duration::from_secs(5);

fn unreachable_bucket(bucket: u16) {
    tracing::error!(
        bucket,
        "identify bucket out of range; granting without a window"
    );
}

#[cfg(test)]
#[path = "identify_tests.rs"]
mod tests;

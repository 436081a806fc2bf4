//! The dispatch stream: produces world events at the configured rate and
//! buffers each into the sessions of its shard; also expires sessions.
//!
//! # Algorithm
//! A token bucket refilled at `event_rate` per second, checked every
//! few milliseconds; whole tokens become dispatches, produced in chunks
//! under the core lock so connections can pull between chunks. The bucket
//! holds at most 100 ms of events, so a generator that falls behind does not
//! burst forever afterwards. Detached sessions are expired every 50 ms.

use super::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

/// Dispatches produced per lock of the core. Large chunks let every
/// connection write many frames per syscall: at 256 saturated connections,
/// 64 Ki dispatches are about 256 frames (one pull batch) per write. 4 Ki
/// (16 per write) gave ~25% fewer dispatches per CPU-second than 16 Ki, and
/// 16 Ki ~12% fewer than 64 Ki. The price: a saturated generator holds the
/// core for one chunk (about 0.1 s on the bench machine) before the
/// connections write. Below saturation a 4 ms tick holds far fewer events,
/// so latency at the configured rate is unchanged.
const CHUNK: u64 = 65_536;

/// How often the bucket is checked. Longer ticks batch more frames per
/// write (fewer syscalls) at the cost of up to this much added latency.
const TICK: Duration = Duration::from_millis(4);

/// Runs until shutdown.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut last_sweep = last;
    let mut tokens = 0.0f64;
    loop {
        let rate = shared.event_rate();
        if rate <= 0.0 {
            tokio::select! {
                _ = super::stopped(&mut shutdown) => return,
                _ = shared.rate_changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            tokens = 0.0;
        } else {
            tokio::select! {
                _ = super::stopped(&mut shutdown) => return,
                _ = tick.tick() => {}
            }
        }
        let now = Instant::now();
        let elapsed = now.duration_since(last).as_secs_f64();
        last = now;
        if rate > 0.0 {
            tokens = (tokens + rate * elapsed).min((rate * 0.1).max(1.0));
            let mut n = tokens.floor() as u64;
            tokens -= n as f64;
            while n > 0 {
                let chunk = n.min(CHUNK);
                if !emit_at(&shared, chunk, rate) {
                    // The rate changed after these tokens were counted at
                    // the old one: they are void.
                    tokens = 0.0;
                    break;
                }
                n -= chunk;
                if n > 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
        if now.duration_since(last_sweep) >= Duration::from_millis(50) {
            last_sweep = now;
            shared.core().expire(&shared.cfg, std::time::Instant::now());
        }
    }
}

/// Produces `n` dispatches if the rate is still `rate` (checked under the
/// core lock, where [`Shared::set_event_rate`] stores it); false, producing
/// nothing, when it changed. Without this check a generator that had read
/// the rate before a change to 0 went on to produce its tick's events after
/// the change, so `/sim/truth` read right after stopping missed them (the
/// cold-boot scenario's "truth differs from what was sent").
fn emit_at(shared: &Shared, n: u64, rate: f64) -> bool {
    let mut core = shared.core();
    if shared.event_rate().to_bits() != rate.to_bits() {
        return false;
    }
    for _ in 0..n {
        let d = core.world.next_dispatch();
        core.deliver(&d, &shared.cfg);
    }
    true
}

/// Produces `n` dispatches now and buffers them into their sessions.
pub(crate) fn emit(shared: &Shared, n: u64) {
    let mut core = shared.core();
    for _ in 0..n {
        let d = core.world.next_dispatch();
        core.deliver(&d, &shared.cfg);
    }
}

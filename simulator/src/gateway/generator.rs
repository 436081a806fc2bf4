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
                let Some(done) = emit_at(&shared, chunk, rate) else {
                    // The rate changed after these tokens were counted at
                    // the old one: they are void.
                    tokens = 0.0;
                    break;
                };
                n -= done;
                if n > 0 {
                    step_aside(&shared).await;
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
///
/// Returns how many it produced: fewer than `n` when an urgent caller (see
/// [`Shared::core_urgent`]) started waiting for the core meanwhile.
fn emit_at(shared: &Shared, n: u64, rate: f64) -> Option<u64> {
    let mut core = shared.core();
    if shared.event_rate().to_bits() != rate.to_bits() {
        return None;
    }
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(URGENT_CHECK);
        for _ in 0..batch {
            let d = core.world.next_dispatch();
            core.deliver(&d, &shared.cfg);
        }
        done += batch;
        if shared.urgent_waiting() {
            break;
        }
    }
    Some(done)
}

/// Dispatches produced between two looks for an urgent waiter (about 1 ms).
const URGENT_CHECK: u64 = 1024;

/// Between two chunks: lets the other tasks run and, if an urgent caller
/// waits for the core, lets it take the core before the next chunk (for at
/// most a few ms, in case it never comes).
async fn step_aside(shared: &Shared) {
    tokio::task::yield_now().await;
    let start = Instant::now();
    while shared.urgent_waiting() && start.elapsed() < Duration::from_millis(5) {
        tokio::task::yield_now().await;
    }
}

/// Produces `n` dispatches now and buffers them into their sessions.
pub(crate) fn emit(shared: &Shared, n: u64) {
    let mut core = shared.core();
    for _ in 0..n {
        let d = core.world.next_dispatch();
        core.deliver(&d, &shared.cfg);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::SimConfig;
    use crate::gateway::sessions::Core;
    use crate::world::World;

    fn shared() -> Shared {
        let cfg = SimConfig::default();
        let world = World::new(cfg.seed, cfg.world_config()).unwrap();
        let core = Core::new(&cfg, world, std::time::Instant::now());
        let rate = cfg.event_rate;
        let shared = Shared::new(cfg, "127.0.0.1:1".parse().unwrap(), core);
        shared.set_event_rate(rate);
        shared
    }

    #[test]
    fn a_chunk_stops_early_for_an_urgent_waiter_and_only_then() {
        let shared = shared();
        let rate = shared.event_rate();
        assert_eq!(
            emit_at(&shared, 3 * URGENT_CHECK, rate),
            Some(3 * URGENT_CHECK)
        );
        shared
            .urgent
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        assert!(shared.urgent_waiting());
        assert_eq!(emit_at(&shared, 3 * URGENT_CHECK, rate), Some(URGENT_CHECK));
        shared
            .urgent
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        assert_eq!(emit_at(&shared, 5, rate), Some(5));
        assert_eq!(emit_at(&shared, 5, rate + 1.0), None, "rate changed");
    }
}

//! A runtime whose idle threads coalesce their wake-ups
//! (`sharder.wake_coalesce`, `worker.wake_coalesce`).
//!
//! At ordinary rates a gateway frame arrives alone: 16 shards at 12.8k
//! events/s is a frame every 78 µs, each on its own socket. A runtime
//! thread that sleeps on its sockets (epoll) as soon as it runs out of work
//! is woken for nearly every frame, and every confirm from the broker wakes
//! it again. On the 2-vCPU machine of BENCHMARKS.md a thread switch costs
//! more than reading, decompressing, scanning and framing the event, so the
//! sharder's CPU per event followed its wake-ups, not its events (issue
//! #23: 13-20 µs per event at 12.8k events/s, 1.9 µs at saturation).
//!
//! # Algorithm
//! A runtime thread that is about to park (nothing left to run) first
//! sleeps `wake_coalesce`, without watching its sockets. Whatever arrives
//! meanwhile waits in the kernel's socket buffers; when the thread parks,
//! epoll returns at once with all of it, and the thread handles every
//! frame, confirm and due timer of that interval in one wake-up, so it
//! wakes at most once per interval (500/s at 2 ms). A busy thread never
//! parks, so under load this never engages; a quiet one, after its wait,
//! sleeps on epoll as before until something arrives.
//!
//! Under load it must not engage either: a sink whose rounds wait on
//! broker confirms leaves the thread idle between them, and a wait before
//! each confirm is read slowed every round (at 150k events/s offered on one
//! thread: 103k/s confirmed against 137k/s). So while any part of the
//! process holds a [`Backlog`] idle threads park at once: the sharder's
//! AMQP sink while it holds four full messages' worth of events, buffered
//! or unconfirmed; a worker's partition consumer from a delivery until it
//! runs out of ready work, so a message that waits on Redis round trips is
//! not delayed at each.
//!
//! The price is latency: an event, a confirm or a timer waits at most
//! `wake_coalesce` longer per hop. The default, 2 ms, is small beside the
//! gateway's own latency (tens of ms) and beside every deadline the
//! sharder keeps: heartbeats (seconds), identify windows (5 s, with a
//! 50 ms margin), session and status intervals. It is capped at 20 ms.
//!
//! Measured (`amqp_e2e`, BENCHMARKS.md, issue #23), one runtime thread as
//! the shipped manifests give, publish linger off: at 12.8k events/s,
//! 17.3 µs of sharder CPU per event without it and 6.0 µs with 2 ms, the
//! broker's messages 3,681/s against 958/s, the worker's apply p50 2.5
//! against 8.9 ms (p99 18.7 against 38.7 ms); at 1k events/s 74 against
//! 45 µs, p50 0.6 against 2.8 ms.
//!
//! The worker's side (its consumer no longer awaits lapin's I/O thread per
//! publish and ack, see `worker/src/queued.rs`, or the wait starved it): at
//! 1k events/s 141-158 → 82-85 µs of worker CPU per event, at 12.8k/s
//! 22.7-25.3 → 17.6-18.0 µs, for 2 ms more at p50.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Backlogs held in this process: no waiting while any is.
static BACKLOGS: AtomicUsize = AtomicUsize::new(0);

/// One component's word on its backlog (see the module docs): while it is
/// set, idle runtime threads park at once. Cleared when dropped.
#[derive(Debug)]
pub struct Backlog {
    count: &'static AtomicUsize,
    held: bool,
}

impl Default for Backlog {
    fn default() -> Self {
        Self::on(&BACKLOGS)
    }
}

impl Backlog {
    fn on(count: &'static AtomicUsize) -> Self {
        Self { count, held: false }
    }

    /// Says whether this component has work waiting now.
    pub fn set(&mut self, backlogged: bool) {
        if backlogged != self.held {
            if backlogged {
                self.count.fetch_add(1, Ordering::Relaxed);
            } else {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            self.held = backlogged;
        }
    }

    /// Whether it is set.
    pub fn is_set(&self) -> bool {
        self.held
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// A multi-threaded runtime (one thread per core the process may use: the
/// shipped manifests' CPU limit of 1 gives one), I/O and timers enabled,
/// whose idle threads wait `wake_coalesce` before they park unless a
/// [`Backlog`] is held; `ZERO`: a plain runtime.
pub fn runtime_builder(wake_coalesce: Duration) -> tokio::runtime::Builder {
    builder_with(wake_coalesce, &BACKLOGS)
}

/// [`runtime_builder`] counting backlogs in `backlogs` (tests use their
/// own).
fn builder_with(
    wake_coalesce: Duration,
    backlogs: &'static AtomicUsize,
) -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if !wake_coalesce.is_zero() {
        builder.on_thread_park(move || {
            if backlogs.load(Ordering::Relaxed) == 0 {
                std::thread::sleep(wake_coalesce);
            }
        });
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn backlogs_count_their_holders_and_clear_when_dropped() {
        static HELD: AtomicUsize = AtomicUsize::new(0);
        let (mut a, mut b) = (Backlog::on(&HELD), Backlog::on(&HELD));
        a.set(true);
        a.set(true);
        b.set(true);
        assert_eq!(HELD.load(Ordering::Relaxed), 2, "one count per holder");
        a.set(false);
        a.set(false);
        assert_eq!(HELD.load(Ordering::Relaxed), 1);
        assert!(b.is_set() && !a.is_set());
        drop(b);
        assert_eq!(HELD.load(Ordering::Relaxed), 0, "cleared by its drop");
    }

    /// Runs a runtime of one thread that receives `n` messages sent from
    /// another thread every `gap`; returns how many it received and how
    /// many times its thread woke from a park, and how long it all took.
    fn wakeups(
        coalesce: Duration,
        backlogs: &'static AtomicUsize,
        n: usize,
        gap: Duration,
    ) -> (usize, usize, Duration) {
        let unparks = Arc::new(AtomicUsize::new(0));
        let counted = unparks.clone();
        let rt = builder_with(coalesce, backlogs)
            .worker_threads(1)
            .on_thread_unpark(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            })
            .build()
            .expect("runtime");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let received = rt.spawn(async move {
            let mut got = 0;
            while rx.recv().await.is_some() {
                got += 1;
            }
            got
        });
        let before = unparks.load(Ordering::Relaxed);
        let started = std::time::Instant::now();
        // The sender paces itself with sleeps: it plays a socket on which
        // frames arrive alone. Nothing waits on them for synchronisation.
        let sender = std::thread::spawn(move || {
            for i in 0..n {
                tx.send(i).expect("receiver alive");
                std::thread::sleep(gap);
            }
        });
        sender.join().expect("sender");
        let got = rt.block_on(received).expect("receiver");
        let took = started.elapsed();
        (got, unparks.load(Ordering::Relaxed) - before, took)
    }

    /// Every park is preceded by the wait, so a thread that waits 10 ms
    /// wakes at most once per 10 ms however the messages come (and however
    /// slow the machine is); without the wait it wakes about once per
    /// message. Nothing is lost either way.
    #[test]
    fn an_idle_thread_wakes_once_per_interval_not_once_per_message() {
        static QUIET: AtomicUsize = AtomicUsize::new(0);
        let wait = Duration::from_millis(10);
        let (got, coalesced, took) = wakeups(wait, &QUIET, 200, Duration::from_millis(1));
        assert_eq!(got, 200);
        let most = took.as_millis() / wait.as_millis() + 2;
        assert!(
            coalesced as u128 <= most,
            "{coalesced} wake-ups in {took:?} with {wait:?} coalescing (at most {most})"
        );
        let (got, plain, _) = wakeups(Duration::ZERO, &QUIET, 200, Duration::from_millis(1));
        assert_eq!(got, 200);
        assert!(
            plain > coalesced,
            "without coalescing {plain} wake-ups, with it {coalesced}"
        );
    }

    /// With a backlog flagged, the same thread parks at once: it wakes
    /// for nearly every message, far more than one per interval.
    #[test]
    fn a_backlog_turns_the_wait_off() {
        static BUSY: AtomicUsize = AtomicUsize::new(0);
        let mut backlog = Backlog::on(&BUSY);
        backlog.set(true);
        let wait = Duration::from_millis(10);
        let (got, wakes, took) = wakeups(wait, &BUSY, 200, Duration::from_millis(1));
        assert_eq!(got, 200);
        let most_if_waiting = took.as_millis() / wait.as_millis() + 2;
        assert!(
            wakes as u128 > most_if_waiting,
            "{wakes} wake-ups in {took:?}: the wait was not turned off"
        );
    }
}

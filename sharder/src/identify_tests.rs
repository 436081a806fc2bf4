//! The identify scheduler's grants against paused time: batches per key,
//! windows from the departure, the throttle, and the reserve.

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

#[tokio::test(start_paused = true)]
async fn an_open_breaker_pauses_grants_for_its_cool_down() {
    let policy = BreakerPolicy {
        failures: 2,
        cooldown: Duration::from_secs(10),
        cooldown_max: Duration::from_secs(40),
    };
    let s = IdentifyScheduler::with_cluster(limit(1000, 16), settings(), None, None, policy);
    let t0 = Instant::now();
    s.identify_failed(0).await;
    s.acquire(1).await;
    assert_eq!(t0.elapsed(), Duration::ZERO, "one failure: still closed");
    s.identify_failed(1).await;
    s.acquire(2).await;
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(10),
        "waited the cool-down"
    );
    s.identify_failed(2).await;
    s.acquire(3).await;
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(30),
        "the probe failed: doubled"
    );
    s.identify_succeeded().await;
    s.identify_failed(3).await;
    s.acquire(4).await;
    assert_eq!(t0.elapsed(), Duration::from_secs(30), "a READY closed it");
    assert_eq!(s.remaining(), 1000 - 4, "nothing spent while paused");
}

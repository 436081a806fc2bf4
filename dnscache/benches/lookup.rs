//! Cached-lookup latency and throughput, side by side: dnscache, hickory-
//! resolver used directly (its own cache), and `tokio::net::lookup_host`
//! (getaddrinfo). Run: `cargo bench -p dnscache --bench lookup`.
//!
//! dnscache and hickory ask a real dnsmasq on a loopback port for
//! `bench.test` (TTL 2 s). getaddrinfo cannot be pointed at that dnsmasq
//! without editing /etc/resolv.conf, so it resolves `localhost` from
//! /etc/hosts: its cheapest path, with no network at all, which flatters it.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};
use testkit::bench_report::Stats;

const RUNS: usize = 5;
const SAMPLES: usize = 200_000;
/// Sequential samples for the two slow resolvers (each lookup is 10-200 µs).
const SLOW_SAMPLES: usize = 5_000;
const THROUGHPUT_FOR: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
struct Run {
    p50_ns: f64,
    p99_ns: f64,
    per_sec: f64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64
}

/// Latency of `n` sequential lookups, then throughput of 2 concurrent tasks
/// (one per core) for [`THROUGHPUT_FOR`].
async fn measure<F, Fut>(n: usize, f: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let ok = f().await;
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(ok, "lookup failed");
    }
    lat.sort_unstable();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut count = 0u64;
            while start.elapsed() < THROUGHPUT_FOR {
                for _ in 0..64 {
                    assert!(f().await);
                }
                count += 64;
                // Let the runtime run other tasks (the background refresh),
                // as any real caller between lookups does.
                tokio::task::yield_now().await;
            }
            count
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    Run {
        p50_ns: percentile(&lat, 0.50),
        p99_ns: percentile(&lat, 0.99),
        per_sec: total as f64 / start.elapsed().as_secs_f64(),
    }
}

fn mmm(runs: &[Run], pick: fn(&Run) -> f64) -> (f64, f64, f64) {
    let v: Vec<f64> = runs.iter().map(pick).collect();
    let s = Stats::middle_of(&v).expect("at least one finite run");
    (s.min, s.median, s.max)
}

/// Upstream queries (A, AAAA) for the bench name so far.
fn queries(dns: &common::Dnsmasq) -> (usize, usize) {
    (
        dns.count("A", "bench.test").unwrap(),
        dns.count("AAAA", "bench.test").unwrap(),
    )
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dns = common::Dnsmasq::start(
        common::free_port().unwrap(),
        &[("bench.test", "127.0.0.1")],
        2,
    )
    .unwrap();
    let cfg = common::config(dns.addr());
    let cache = dnscache::Resolver::new(&cfg).unwrap();
    cache.lookup("bench.test", 443).await.unwrap();

    let mut hickory_builder = hickory_resolver::TokioResolver::builder_with_config(
        hickory_resolver::config::ResolverConfig::from_parts(
            None,
            vec![],
            vec![{
                let mut udp = hickory_resolver::config::ConnectionConfig::udp();
                udp.port = dns.port();
                hickory_resolver::config::NameServerConfig::new(dns.addr().ip(), true, vec![udp])
            }],
        ),
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    );
    hickory_builder.options_mut().cache_size = 1024;
    let hickory = hickory_builder.build().unwrap();
    hickory.lookup_ip("bench.test.").await.unwrap();

    // (name, runs, upstream (A, AAAA) queries, seconds)
    type Row = (&'static str, Vec<Run>, (usize, usize), f64);
    let mut results: Vec<Row> = Vec::new();

    let bench_start = Instant::now();
    let before = queries(&dns);
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let r = cache.clone();
        runs.push(
            measure(SAMPLES, move || {
                let r = r.clone();
                async move { r.lookup("bench.test", 443).await.is_ok() }
            })
            .await,
        );
    }
    let now = queries(&dns);
    let asked = (now.0 - before.0, now.1 - before.1);
    results.push((
        "dnscache (cache hit)",
        runs,
        asked,
        bench_start.elapsed().as_secs_f64(),
    ));

    let bench_start = Instant::now();
    let before = queries(&dns);
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        let h = hickory.clone();
        runs.push(
            measure(SLOW_SAMPLES, move || {
                let h = h.clone();
                async move { h.lookup_ip("bench.test.").await.is_ok() }
            })
            .await,
        );
    }
    let now = queries(&dns);
    let asked = (now.0 - before.0, now.1 - before.1);
    results.push((
        "hickory-resolver 0.26 direct (own cache)",
        runs,
        asked,
        bench_start.elapsed().as_secs_f64(),
    ));

    let bench_start = Instant::now();
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(
            measure(SLOW_SAMPLES, || async {
                tokio::net::lookup_host("localhost:443").await.is_ok()
            })
            .await,
        );
    }
    results.push((
        "tokio::net::lookup_host (getaddrinfo, /etc/hosts)",
        runs,
        (0, 0),
        bench_start.elapsed().as_secs_f64(),
    ));

    println!(
        "| resolver | p50 ns (min/med/max) | p99 ns (min/med/max) | lookups/s, 2 tasks (min/med/max) | upstream queries during its runs |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, runs, queries, secs) in &results {
        let (a, b, c) = mmm(runs, |r| r.p50_ns);
        let (d, e, f) = mmm(runs, |r| r.p99_ns);
        let (g, h, i) = mmm(runs, |r| r.per_sec);
        println!(
            "| {name} | {a:.0} / {b:.0} / {c:.0} | {d:.0} / {e:.0} / {f:.0} | {g:.0} / {h:.0} / {i:.0} | A {} + AAAA {} in {secs:.1} s |",
            queries.0, queries.1
        );
    }
    let med = |i: usize, pick: fn(&Run) -> f64| mmm(&results[i].1, pick).1;
    println!();
    println!(
        "ratios (medians): dnscache/lookup_host throughput = {:.0}x, dnscache/hickory throughput = {:.1}x, lookup_host/dnscache p99 = {:.0}x",
        med(0, |r| r.per_sec) / med(2, |r| r.per_sec),
        med(0, |r| r.per_sec) / med(1, |r| r.per_sec),
        med(2, |r| r.p99_ns) / med(0, |r| r.p99_ns),
    );
    let s = cache.stats();
    println!(
        "dnscache stats: hits {}, misses {}, refreshes {}, upstream queries {} (A+AAAA) over {} lookups",
        s.hits,
        s.misses,
        s.refreshes,
        s.upstream_queries,
        s.hits + s.misses
    );
}

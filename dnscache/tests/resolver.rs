//! The resolver against a real dnsmasq: coalescing, storm, outage,
//! restart, search list, negative caching. Upstream queries are counted
//! from dnsmasq's own query log.
#![allow(clippy::unwrap_used)]

mod common;

use common::{BlackHole, Dnsmasq, config, free_port};
use dnscache::{DnsError, Resolver, Served};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// Bound 1: 1,000 concurrent cold lookups of one name reach the upstream
/// once per record type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_lookups_send_one_query_per_record_type() {
    let dns = Dnsmasq::start(free_port().unwrap(), &[("one.test", "127.0.0.11")], 2).unwrap();
    let r = Resolver::new(&config(dns.addr())).unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (r, b) = (r.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            b.wait().await;
            r.resolve("one.test", 443).await
        }));
    }
    for t in tasks {
        let got = t.await.unwrap().unwrap();
        assert_eq!(got.addrs, vec![sa([127, 0, 0, 11], 443)]);
    }
    let a = dns.count("A", "one.test").unwrap();
    assert_eq!(
        a,
        1,
        "{}",
        std::fs::read_to_string(dns.query_log()).unwrap()
    );
    assert_eq!(dns.count("AAAA", "one.test").unwrap(), 1);
    let s = r.stats();
    assert_eq!(s.upstream_queries, 2, "{s:?}");
    assert!(s.coalesced + s.hits >= 999, "{s:?}");
}

/// Bound 2: 20,000 lookups/s of one name for 10 s with TTL 2 s reach the
/// upstream about once per TTL, and no caller waits on the upstream after
/// the first lookup (refresh-ahead keeps the entry fresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_lookups_reaches_upstream_once_per_ttl() {
    let dns = Dnsmasq::start(free_port().unwrap(), &[("hot.test", "127.0.0.12")], 2).unwrap();
    let cfg = config::DnsConfig {
        // Refresh at 90% of the 2 s TTL: 0.2 s of head room for the refresh.
        refresh_ahead: 0.9,
        ..config(dns.addr())
    };
    let r = Resolver::new(&cfg).unwrap();
    let first = r.resolve("hot.test", 80).await.unwrap();
    assert_eq!(first.served, Served::Upstream);

    let run = Duration::from_secs(10);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let r = r.clone();
        workers.push(tokio::spawn(async move {
            // 2 workers x 100 lookups per 10 ms tick = 20,000 lookups/s.
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let (mut total, mut not_cached, mut errors) = (0u64, 0u64, 0u64);
            while start.elapsed() < run {
                tick.tick().await;
                for _ in 0..100 {
                    match r.resolve("hot.test", 80).await {
                        Ok(x) if x.served == Served::Cache => {}
                        Ok(_) => not_cached += 1,
                        Err(_) => errors += 1,
                    }
                    total += 1;
                }
            }
            (total, not_cached, errors)
        }));
    }
    let (mut total, mut not_cached, mut errors) = (0, 0, 0);
    for w in workers {
        let (t, n, e) = w.await.unwrap();
        total += t;
        not_cached += n;
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        total as f64 / elapsed >= 18_000.0,
        "only {total} lookups in {elapsed:.1}s"
    );
    assert_eq!(errors, 0);
    assert_eq!(
        not_cached, 0,
        "callers waited on the upstream after warm-up"
    );
    // Warm-up plus one refresh per ~1.8 s over 10 s: 6 expected, 7 allowed.
    let bound = 10usize.div_ceil(2) + 2;
    for qtype in ["A", "AAAA"] {
        let n = dns.count(qtype, "hot.test").unwrap();
        assert!(n <= bound, "{n} {qtype} queries for {total} lookups");
        assert!(
            n >= 5,
            "only {n} {qtype} queries: refresh-ahead did not run"
        );
    }
    assert!(r.stats().refreshes >= 4, "{:?}", r.stats());
}

/// Bound 3: with the upstream dead, a warmed name answers within the stale
/// answer timeout for the whole stale window, the dead upstream sees at most
/// one attempt per retry interval, and past max stale the error names host
/// and upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_serves_stale_within_retry_budget_then_fails_clearly() {
    let port = free_port().unwrap();
    let mut dns = Dnsmasq::start(port, &[("svc.test", "127.0.0.13")], 1).unwrap();
    let cfg = config::DnsConfig {
        refresh_ahead: 0.5,
        max_stale: Duration::from_secs(2),
        stale_answer_timeout: Duration::from_millis(200),
        retry_interval: Duration::from_millis(500),
        query_timeout: Duration::from_millis(300),
        ..config(dns.addr())
    };
    let r = Resolver::new(&cfg).unwrap();
    r.resolve("svc.test", 5672).await.unwrap();
    let fetched = Instant::now();
    dns.stop();
    let hole = BlackHole::bind(port);
    let killed = Instant::now();

    // TTL 1 s (dnsmasq) + max stale 2 s: stale until ~3 s after the fetch.
    let stale_end = fetched + Duration::from_secs(3);
    let slack = Duration::from_millis(150);
    let mut served_stale = 0;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while Instant::now() < stale_end + Duration::from_millis(600) {
                let at = Instant::now();
                let got = r.resolve("svc.test", 5672).await;
                seen.push((at, at.elapsed(), got));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    let mut after = Vec::new();
    for t in tasks {
        for (at, took, got) in t.await.unwrap() {
            if at + took < stale_end - slack {
                let got =
                    got.unwrap_or_else(|e| panic!("lookup inside the stale window failed: {e}"));
                assert_eq!(got.addrs, vec![sa([127, 0, 0, 13], 5672)]);
                assert!(
                    took <= cfg.stale_answer_timeout + slack,
                    "a lookup took {took:?}"
                );
                served_stale += usize::from(got.served == Served::Stale);
            } else if at > stale_end + slack {
                after.push(got);
            }
        }
    }
    assert!(served_stale > 100, "only {served_stale} stale answers");
    assert!(!after.is_empty());
    for got in after {
        let e = got.unwrap_err();
        assert!(
            matches!(
                e,
                DnsError::UpstreamFailed { .. } | DnsError::RetryLater { .. }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.contains("svc.test"), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }
    // Each attempt is one A and one AAAA datagram; at most one attempt per
    // retry interval, plus the one that may straddle the start.
    let window = killed.elapsed().as_secs_f64();
    let attempts_allowed = (window / cfg.retry_interval.as_secs_f64()).ceil() as u32 + 1;
    let packets = hole.packets();
    assert!(packets >= 2, "the dead upstream was never retried");
    assert!(
        packets <= 2 * attempts_allowed,
        "{packets} datagrams in {window:.1}s: more than {attempts_allowed} attempts"
    );
}

/// Bound 4: the upstream restarts with a changed address; the new address is
/// served within one TTL plus the refresh time, and no lookup fails during
/// the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_upstream_with_new_address_is_picked_up_within_a_ttl() {
    let port = free_port().unwrap();
    let mut dns = Dnsmasq::start(port, &[("moved.test", "127.0.0.21")], 1).unwrap();
    let cfg = config::DnsConfig {
        refresh_ahead: 0.5,
        retry_interval: Duration::from_millis(100),
        ..config(dns.addr())
    };
    let r = Resolver::new(&cfg).unwrap();
    let old = vec![sa([127, 0, 0, 21], 80)];
    let new = vec![sa([127, 0, 0, 22], 80)];
    assert_eq!(r.lookup("moved.test", 80).await.unwrap(), old);
    dns.stop();
    let _dns = Dnsmasq::start(port, &[("moved.test", "127.0.0.22")], 1).unwrap();
    let restarted = Instant::now();
    let limit = Duration::from_secs(1)
        + cfg.retry_interval
        + cfg.query_timeout
        + Duration::from_millis(300);
    loop {
        let got = r.lookup("moved.test", 80).await.unwrap();
        if got == new {
            break;
        }
        assert_eq!(got, old);
        assert!(
            restarted.elapsed() < limit,
            "still the old address after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bound 5: a two-label name that exists, with a search list configured, is
/// one upstream name by default (asked as given; the list is walked only
/// for a name that does not exist, see tests/search.rs); the same lookup
/// under ndots:5 walks the search list (the fan-out the default avoids).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_fully_qualified_unless_ndots_is_set() {
    let search: Vec<String> = ["a.test", "b.test", "c.test"].map(String::from).to_vec();
    let dns = Dnsmasq::start(free_port().unwrap(), &[("two.test", "127.0.0.31")], 2).unwrap();
    let r = Resolver::new(&config::DnsConfig {
        search: search.clone(),
        ..config(dns.addr())
    })
    .unwrap();
    assert_eq!(
        r.lookup("two.test", 1).await.unwrap(),
        vec![sa([127, 0, 0, 31], 1)]
    );
    assert_eq!(dns.names().unwrap(), vec!["two.test".to_owned()]);

    let walked = Dnsmasq::start(free_port().unwrap(), &[("two.test", "127.0.0.31")], 2).unwrap();
    let libc_like = Resolver::new(&config::DnsConfig {
        search,
        ndots: Some(5),
        ..config(walked.addr())
    })
    .unwrap();
    assert_eq!(
        libc_like.lookup("two.test", 1).await.unwrap(),
        vec![sa([127, 0, 0, 31], 1)]
    );
    assert!(
        walked.names().unwrap().len() >= 2,
        "{:?}",
        walked.names().unwrap()
    );
}

/// NXDOMAIN is cached for the negative TTL; after it, the name is asked
/// again. IP literals and localhost never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_are_cached_for_a_bounded_time() {
    let dns = Dnsmasq::start(free_port().unwrap(), &[], 2).unwrap();
    let r = Resolver::new(&config(dns.addr())).unwrap();
    for _ in 0..50 {
        let e = r.lookup("missing.test", 1).await.unwrap_err();
        assert!(matches!(e, DnsError::NotFound { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.test"));
    }
    assert_eq!(dns.count("A", "missing.test").unwrap(), 1);
    // negative_ttl is 1 s in the test config; wait for the entry's expiry.
    let deadline = Instant::now() + Duration::from_secs(5);
    while dns.count("A", "missing.test").unwrap() < 2 {
        assert!(
            Instant::now() < deadline,
            "negative answer cached past its TTL"
        );
        let _ = r.lookup("missing.test", 1).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = r.stats();
    let lit = r.resolve("10.1.2.3", 9).await.unwrap();
    assert_eq!(
        (lit.addrs, lit.served),
        (vec![sa([10, 1, 2, 3], 9)], Served::Literal)
    );
    assert_eq!(r.lookup("localhost", 9).await.unwrap().len(), 2);
    // Counted as literals, not as cache hits or misses.
    let after = r.stats();
    assert_eq!(after.literals - before.literals, 2);
    assert_eq!((after.hits, after.misses), (before.hits, before.misses));
    for bad in ["", "a..b", &"x".repeat(300)] {
        assert!(r.lookup(bad, 1).await.is_err(), "{bad:?}");
    }
    assert!(
        dns.names().unwrap().iter().all(|n| n == "missing.test"),
        "{:?}",
        dns.names().unwrap()
    );
}

/// The metrics facade series are registered per resolver and move with the
/// work done: hits, misses, coalesced waits, upstream queries per upstream,
/// entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_series_count_the_work() {
    let dns = Dnsmasq::start(free_port().unwrap(), &[("m.test", "127.0.0.41")], 2).unwrap();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let r = metrics::with_local_recorder(&recorder, || Resolver::new(&config(dns.addr()))).unwrap();
    let mut cold = Vec::new();
    for _ in 0..10 {
        let r = r.clone();
        cold.push(tokio::spawn(async move { r.lookup("m.test", 1).await }));
    }
    for c in cold {
        c.await.unwrap().unwrap();
    }
    for _ in 0..100 {
        r.lookup("m.test", 1).await.unwrap();
    }
    let s = r.stats();
    let text = handle.render();
    let value = |series: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
    };
    assert_eq!(value("dnscache_hits_total"), s.hits);
    assert!(s.hits >= 100, "{s:?}");
    assert_eq!(value("dnscache_misses_total"), s.misses);
    assert_eq!(value("dnscache_coalesced_total"), s.coalesced);
    assert_eq!(s.hits + s.misses, 110, "{s:?}");
    let upstream = format!(
        "dnscache_upstream_queries_total{{upstream=\"127.0.0.1:{}\"}}",
        dns.port()
    );
    assert_eq!(value(&upstream), 2);
    assert_eq!(value("dnscache_entries"), 1);
}

//! Counters of the resolver, as `metrics` facade series and as per-instance
//! numbers ([`Stats`]) that tests and health endpoints can read.
//!
//! # Algorithm
//! Handles are registered once when the resolver is built, so the hot path
//! pays one relaxed atomic add and one call on an already-resolved handle,
//! never a key lookup in the recorder. Install the process's recorder (the
//! binaries' Prometheus exporter) before building the resolver.
//!
//! Series (Prometheus names once exported):
//! - `dnscache_hits_total`: lookups answered from a fresh cache entry
//! - `dnscache_misses_total`: lookups that had to wait on the upstream
//! - `dnscache_coalesced_total`: lookups that joined a query already in flight
//! - `dnscache_refreshes_total`: background refreshes started before expiry
//! - `dnscache_stale_served_total`: lookups answered from an expired entry
//! - `dnscache_upstream_queries_total{upstream}`: queries sent (A and AAAA count one each)
//! - `dnscache_upstream_errors_total{upstream}`: failed queries (timeouts, SERVFAIL, ...)
//! - `dnscache_literals_total`: lookups of IP literals and `localhost`, answered without DNS
//! - `dnscache_entries`: names cached

use metrics::{Counter, Gauge};
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one resolver's counters since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lookups answered from a fresh cache entry (positive or negative).
    pub hits: u64,
    /// Lookups that waited on the upstream (cold, or expired without a
    /// usable stale answer, or expired and the refresh answered in time).
    pub misses: u64,
    /// Lookups that joined a query already in flight instead of sending one.
    pub coalesced: u64,
    /// Refreshes started ahead of expiry for names still in use.
    pub refreshes: u64,
    /// Lookups answered from an expired last-good entry.
    pub stale_served: u64,
    /// Queries sent upstream (one per record type).
    pub upstream_queries: u64,
    /// Queries that failed (timeout, SERVFAIL, refused, network).
    pub upstream_errors: u64,
    /// Lookups of IP literals and `localhost`: answered without DNS, so a
    /// process configured with addresses only shows no hits or misses.
    pub literals: u64,
}

#[derive(Default)]
struct Atomics {
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    refreshes: AtomicU64,
    stale_served: AtomicU64,
    upstream_queries: AtomicU64,
    upstream_errors: AtomicU64,
    literals: AtomicU64,
}

pub(crate) struct Metrics {
    n: Atomics,
    hits: Counter,
    misses: Counter,
    coalesced: Counter,
    refreshes: Counter,
    stale_served: Counter,
    upstream_queries: Counter,
    upstream_errors: Counter,
    literals: Counter,
    entries: Gauge,
}

impl Metrics {
    pub(crate) fn new(upstream: &str) -> Self {
        let upstream = upstream.to_owned();
        Self {
            n: Atomics::default(),
            hits: metrics::counter!("dnscache_hits_total"),
            misses: metrics::counter!("dnscache_misses_total"),
            coalesced: metrics::counter!("dnscache_coalesced_total"),
            refreshes: metrics::counter!("dnscache_refreshes_total"),
            stale_served: metrics::counter!("dnscache_stale_served_total"),
            upstream_queries: metrics::counter!(
                "dnscache_upstream_queries_total",
                "upstream" => upstream.clone()
            ),
            upstream_errors: metrics::counter!(
                "dnscache_upstream_errors_total",
                "upstream" => upstream
            ),
            literals: metrics::counter!("dnscache_literals_total"),
            entries: metrics::gauge!("dnscache_entries"),
        }
    }

    pub(crate) fn hit(&self) {
        self.n.hits.fetch_add(1, Ordering::Relaxed);
        self.hits.increment(1);
    }
    pub(crate) fn miss(&self) {
        self.n.misses.fetch_add(1, Ordering::Relaxed);
        self.misses.increment(1);
    }
    pub(crate) fn coalesced(&self) {
        self.n.coalesced.fetch_add(1, Ordering::Relaxed);
        self.coalesced.increment(1);
    }
    pub(crate) fn refresh(&self) {
        self.n.refreshes.fetch_add(1, Ordering::Relaxed);
        self.refreshes.increment(1);
    }
    pub(crate) fn stale(&self) {
        self.n.stale_served.fetch_add(1, Ordering::Relaxed);
        self.stale_served.increment(1);
    }
    pub(crate) fn upstream_query(&self, queries: u64) {
        self.n
            .upstream_queries
            .fetch_add(queries, Ordering::Relaxed);
        self.upstream_queries.increment(queries);
    }
    pub(crate) fn upstream_error(&self) {
        self.n.upstream_errors.fetch_add(1, Ordering::Relaxed);
        self.upstream_errors.increment(1);
    }
    pub(crate) fn literal(&self) {
        self.n.literals.fetch_add(1, Ordering::Relaxed);
        self.literals.increment(1);
    }
    pub(crate) fn entries(&self, n: u64) {
        // Precision loss only above 2^53 entries.
        #[allow(clippy::cast_precision_loss)]
        self.entries.set(n as f64);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            hits: g(&self.n.hits),
            misses: g(&self.n.misses),
            coalesced: g(&self.n.coalesced),
            refreshes: g(&self.n.refreshes),
            stale_served: g(&self.n.stale_served),
            upstream_queries: g(&self.n.upstream_queries),
            upstream_errors: g(&self.n.upstream_errors),
            literals: g(&self.n.literals),
        }
    }
}

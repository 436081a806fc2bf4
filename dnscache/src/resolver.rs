//! The caching resolver: TTL cache, merged lookups, refresh-ahead,
//! serve-stale and a per-name retry budget.
//!
//! # Algorithm
//! A lookup first reads the cache (a lock-free moka read, no upstream):
//! - fresh entry: answered at once. Inside the refresh window, the first
//!   caller per retry interval starts a background refresh and still gets
//!   the cached answer, so callers of hot names never wait on the upstream.
//! - expired positive entry younger than `max_stale` (RFC 8767): a query is
//!   started (or joined) and the caller waits for it at most
//!   `stale_answer_timeout`; if it fails or is slower, the caller gets the
//!   last good answer. The query keeps running and refills the cache.
//! - nothing usable: the caller waits for the query (bounded by the query
//!   timeout) and gets its answer or an error naming host and upstream.
//!
//! Queries are merged: one in-flight query per host (one A and one AAAA
//! upstream query), however many callers wait; callers subscribe to a watch
//! channel the fetch task fills. A failed query is remembered for
//! `retry_interval`; until then no new query for that name is sent, stale
//! answers are served at once and cold callers get [`DnsError::RetryLater`].
//! So a dead upstream sees at most one attempt per name per retry interval.
//! Timeouts and SERVFAIL are never cached as answers; NXDOMAIN / no-data
//! are, for the (bounded) negative TTL.

use crate::entry::{Answer, Entry};
use crate::error::DnsError;
use crate::host::{literal, normalize};
use crate::metrics::{Metrics, Stats};
use crate::store::Store;
use crate::upstream::{Fetched, Upstream};
use config::DnsConfig;
use hickory_resolver::proto::rr::Name;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Where an answer came from; lets callers and tests see whether they
/// waited on the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// An IP literal or `localhost`: no DNS at all.
    Literal,
    /// A fresh cache entry: no wait on the upstream.
    Cache,
    /// An expired last-good entry, because the upstream failed or was slower
    /// than the stale answer timeout.
    Stale,
    /// The caller waited on an upstream query (cold or expired name).
    Upstream,
}

/// The addresses of one lookup and how they were obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addrs: Vec<SocketAddr>,
    pub served: Served,
}

/// A failed query, remembered for the retry interval.
struct Failure {
    at: Instant,
    cause: String,
}

type Flight = watch::Receiver<Option<Fetched>>;

enum Join {
    /// A query finished between the caller's cache read and this check:
    /// its answer is used, no second query is sent.
    Fresh(Arc<Entry>),
    Started(Flight),
    Joined(Flight),
    Backoff(Arc<Failure>),
}

pub(crate) struct Inner {
    upstream: Upstream,
    cache: Store,
    failures: moka::sync::Cache<Arc<str>, Arc<Failure>>,
    inflight: Mutex<HashMap<Arc<str>, Flight>>,
    pub(crate) metrics: Metrics,
    refresh_ahead: f64,
    max_stale: Duration,
    stale_answer_timeout: Duration,
    retry_interval: Duration,
    query_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

/// The process's caching resolver. Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct Resolver {
    pub(crate) inner: Arc<Inner>,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) trust: Arc<crate::Trust>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("upstream", &self.inner.upstream.label)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Resolver> = OnceLock::new();

impl Resolver {
    /// Builds a resolver with its own cache from `[dns]` settings. Reads
    /// resolv.conf when `cfg.upstreams` or `cfg.search` is empty.
    pub fn new(cfg: &DnsConfig) -> Result<Self, DnsError> {
        // A `DnsConfig` built in code skips the loader's checks; out-of-
        // bounds values would panic later in `Instant` arithmetic.
        cfg.check().map_err(|e| DnsError::Setup(e.to_string()))?;
        let upstream = Upstream::new(cfg).map_err(DnsError::Setup)?;
        let metrics = Metrics::new(&upstream.label);
        let inner = Inner {
            cache: Store::new(cfg.cache_size),
            failures: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_size)
                .time_to_live(cfg.retry_interval)
                .build(),
            inflight: Mutex::new(HashMap::new()),
            upstream,
            metrics,
            refresh_ahead: cfg.refresh_ahead,
            max_stale: cfg.max_stale,
            stale_answer_timeout: cfg.stale_answer_timeout,
            retry_interval: cfg.retry_interval,
            query_timeout: cfg.query_timeout,
            connect_timeout: cfg.connect_timeout,
        };
        Ok(Self {
            inner: Arc::new(inner),
            tls: crate::tls::default_client_config(),
            trust: crate::Trust::public(),
        })
    }

    /// The process-wide resolver: built from `cfg` on the first call, the
    /// same (shared cache) on every later call, whatever `cfg` is then.
    pub fn shared(cfg: &DnsConfig) -> Result<Self, DnsError> {
        if let Some(r) = SHARED.get() {
            return Ok(r.clone());
        }
        let built = Self::new(cfg)?;
        Ok(SHARED.get_or_init(|| built).clone())
    }

    /// The same cache with another TLS client configuration (private CA,
    /// client certificates) for [`Resolver::connect_tls`] and the URL
    /// connectors. The default trusts the webpki roots.
    #[must_use]
    pub fn with_tls_config(&self, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            inner: self.inner.clone(),
            tls,
            trust: self.trust.clone(),
        }
    }

    /// The same cache trusting `trust` (from `[tls]`, see [`crate::Trust`]):
    /// its services configuration for `amqps://` and `rediss://`, its
    /// Discord configuration for [`Resolver::connect_tls`] and the URL
    /// connectors.
    #[must_use]
    pub fn with_trust(&self, trust: Arc<crate::Trust>) -> Self {
        Self {
            inner: self.inner.clone(),
            tls: trust.discord.clone(),
            trust,
        }
    }

    /// The upstream servers, as named in errors and metric labels.
    pub fn upstream(&self) -> &str {
        &self.inner.upstream.label
    }

    /// This resolver's counters since it was built.
    pub fn stats(&self) -> Stats {
        self.inner.metrics.snapshot()
    }

    /// Socket addresses of `host:port` (A and AAAA), from the cache when
    /// possible. IP literals (also `[v6]`) and `localhost` bypass DNS.
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
        self.resolve(host, port).await.map(|r| r.addrs)
    }

    /// Like [`Resolver::lookup`], and tells where the answer came from.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Resolved, DnsError> {
        let to_addrs =
            |ips: &Arc<[IpAddr]>| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        if literal(host).is_none() {
            let key = normalize(host);
            if let Some(hit) = self.fresh(&key, to_addrs) {
                return hit.map(|addrs| Resolved {
                    addrs,
                    served: Served::Cache,
                });
            }
        }
        let (ips, served) = self.lookup_ip(host).await?;
        Ok(Resolved {
            addrs: ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
            served,
        })
    }

    /// The IP addresses of `host` and where they came from.
    pub async fn lookup_ip(&self, host: &str) -> Result<(Arc<[IpAddr]>, Served), DnsError> {
        if let Some(ips) = literal(host) {
            self.inner.metrics.literal();
            return Ok((ips, Served::Literal));
        }
        let key = normalize(host);
        if key.is_empty() || key.len() > 253 {
            return Err(DnsError::InvalidName {
                host: host.to_owned(),
                reason: "a host name has 1 to 253 characters".into(),
            });
        }
        self.lookup_key(&key).await
    }

    /// The hot path: a fresh entry, read under the shared lock and copied
    /// out by `out`, with no allocation besides `out`'s. Starts the
    /// background refresh when due. `None`: not fresh, take the slow path.
    fn fresh<T>(
        &self,
        key: &str,
        out: impl FnOnce(&Arc<[IpAddr]>) -> T,
    ) -> Option<Result<T, DnsError>> {
        let inner = &*self.inner;
        let now = Instant::now();
        let (result, refresh) = inner.cache.with(key, |entry| {
            let entry = entry.filter(|e| now < e.expires)?;
            let refresh = now >= entry.refresh_at && entry.claim_refresh(now, inner.retry_interval);
            let result = match &entry.answer {
                Answer::Positive(addrs) => Ok(out(addrs)),
                Answer::Negative => Err(()),
            };
            Some((result, refresh))
        })?;
        // Outside the read lock: starting a query takes the in-flight lock.
        if refresh {
            self.refresh(key);
        }
        inner.metrics.hit();
        Some(result.map_err(|()| DnsError::NotFound {
            host: key.to_owned(),
            upstream: inner.upstream.label.to_string(),
        }))
    }

    async fn lookup_key(&self, key: &str) -> Result<(Arc<[IpAddr]>, Served), DnsError> {
        if let Some(hit) = self.fresh(key, Arc::clone) {
            return hit.map(|ips| (ips, Served::Cache));
        }
        let inner = &*self.inner;
        let now = Instant::now();
        if let Some(entry) = inner.cache.get(key)
            && let Answer::Positive(stale) = &entry.answer
            && now < entry.evict_at
        {
            return Ok(self.expired(key, stale).await);
        }
        self.cold(key).await
    }

    /// Expired but within max stale: wait for the upstream at most the stale
    /// answer timeout, then fall back to the last good answer.
    async fn expired(&self, key: &str, stale: &Arc<[IpAddr]>) -> (Arc<[IpAddr]>, Served) {
        let inner = &*self.inner;
        let fallback = || {
            inner.metrics.stale();
            (stale.clone(), Served::Stale)
        };
        let Ok(name) = inner.upstream.name(key) else {
            return fallback();
        };
        let flight = match self.start_or_join(key, name, false) {
            Join::Fresh(entry) => {
                if let Answer::Positive(addrs) = &entry.answer {
                    inner.metrics.hit();
                    return (addrs.clone(), Served::Cache);
                }
                return fallback();
            }
            Join::Started(f) => f,
            Join::Joined(f) => {
                inner.metrics.coalesced();
                f
            }
            Join::Backoff(_) => return fallback(),
        };
        match tokio::time::timeout(inner.stale_answer_timeout, wait(flight)).await {
            Ok(Some(Fetched::Positive { addrs, .. })) => {
                inner.metrics.miss();
                (addrs, Served::Upstream)
            }
            // NXDOMAIN for a name we had: RFC 8767 serves stale only when the
            // upstream fails, but a vanished name with a stale answer is more
            // likely a broken zone than a real removal; keep serving.
            _ => fallback(),
        }
    }

    /// Nothing usable cached: wait on the upstream.
    async fn cold(&self, key: &str) -> Result<(Arc<[IpAddr]>, Served), DnsError> {
        let inner = &*self.inner;
        let name = inner
            .upstream
            .name(key)
            .map_err(|reason| DnsError::InvalidName {
                host: key.to_owned(),
                reason,
            })?;
        let flight = match self.start_or_join(key, name, false) {
            Join::Fresh(entry) => {
                inner.metrics.hit();
                return self.answer(key, &entry.answer, Served::Cache);
            }
            Join::Started(f) => f,
            Join::Joined(f) => {
                inner.metrics.coalesced();
                f
            }
            Join::Backoff(failure) => {
                return Err(DnsError::RetryLater {
                    host: key.to_owned(),
                    upstream: inner.upstream.label.to_string(),
                    cause: failure.cause.clone(),
                    ago: failure.at.elapsed(),
                    retry_interval: inner.retry_interval,
                });
            }
        };
        inner.metrics.miss();
        match wait(flight).await {
            Some(Fetched::Positive { addrs, .. }) => Ok((addrs, Served::Upstream)),
            Some(Fetched::Negative { .. }) => self.answer(key, &Answer::Negative, Served::Upstream),
            Some(Fetched::Failed { cause }) => Err(self.failed(key, cause)),
            None => Err(self.failed(key, "query task ended without an answer".into())),
        }
    }

    fn failed(&self, key: &str, cause: String) -> DnsError {
        DnsError::UpstreamFailed {
            host: key.to_owned(),
            upstream: self.inner.upstream.label.to_string(),
            cause,
            max_stale: self.inner.max_stale,
        }
    }

    fn answer(
        &self,
        key: &str,
        answer: &Answer,
        served: Served,
    ) -> Result<(Arc<[IpAddr]>, Served), DnsError> {
        match answer {
            Answer::Positive(addrs) => Ok((addrs.clone(), served)),
            Answer::Negative => Err(DnsError::NotFound {
                host: key.to_owned(),
                upstream: self.inner.upstream.label.to_string(),
            }),
        }
    }

    /// Starts a background refresh of a name still in use.
    fn refresh(&self, key: &str) {
        let Ok(name) = self.inner.upstream.name(key) else {
            return;
        };
        if let Join::Started(_) = self.start_or_join(key, name, true) {
            self.inner.metrics.refresh();
        }
    }

    /// Joins the query in flight for `key`, or starts one unless the name
    /// failed less than the retry interval ago. A fetch stores its answer
    /// before it leaves the in-flight map, so the cache is re-read under the
    /// lock: a caller that missed the cache just before a query finished
    /// uses that answer instead of sending a second query. `refresh` callers
    /// only accept an entry that is not yet due for refresh.
    fn start_or_join(&self, key: &str, name: Name, refresh: bool) -> Join {
        let inner = &self.inner;
        // A poisoned lock only means a panic elsewhere while holding it; the
        // map itself stays consistent (single inserts and removes).
        let mut map = inner.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get(key) {
            return Join::Joined(flight.clone());
        }
        if let Some(entry) = inner.cache.get(key) {
            let now = Instant::now();
            let due = if refresh {
                entry.refresh_at
            } else {
                entry.expires
            };
            if now < due {
                return Join::Fresh(entry);
            }
        }
        if let Some(failure) = inner.failures.get(key) {
            return Join::Backoff(failure);
        }
        let key: Arc<str> = Arc::from(key);
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx.clone());
        drop(map);
        let guard = FlightGuard {
            inner: self.inner.clone(),
            key,
        };
        tokio::spawn(async move {
            let inner = guard.inner.clone();
            // hickory bounds each query by the query timeout; this is a
            // backstop so a stuck task can never pin the name.
            // A search walk asks up to max_names names one after another.
            let limit =
                inner.query_timeout * (inner.upstream.max_names() + 1) + Duration::from_secs(1);
            let fetched =
                match tokio::time::timeout(limit, inner.upstream.fetch(name, &inner.metrics)).await
                {
                    Ok(f) => f,
                    Err(_) => Fetched::Failed {
                        cause: format!("no answer within {limit:?}"),
                    },
                };
            inner.store(&guard.key, &fetched);
            drop(guard);
            tx.send_replace(Some(fetched));
        });
        Join::Started(rx)
    }
}

impl Inner {
    fn store(&self, key: &Arc<str>, fetched: &Fetched) {
        let now = Instant::now();
        let mut entries = None;
        match fetched {
            Fetched::Positive { addrs, ttl } => {
                let entry =
                    Entry::positive(addrs.clone(), *ttl, self.refresh_ahead, self.max_stale, now);
                entries = Some(self.cache.insert(key.clone(), entry));
                self.failures.invalidate(key);
                tracing::debug!(host = %key, ?addrs, ?ttl, "dnscache: stored answer");
            }
            Fetched::Negative { ttl } => {
                entries = Some(self.cache.insert(key.clone(), Entry::negative(*ttl, now)));
                self.failures.invalidate(key);
                tracing::debug!(host = %key, ?ttl, "dnscache: stored negative answer");
            }
            Fetched::Failed { cause } => {
                self.failures.insert(
                    key.clone(),
                    Arc::new(Failure {
                        at: now,
                        cause: cause.clone(),
                    }),
                );
                tracing::warn!(
                    host = %key,
                    upstream = %self.upstream.label,
                    %cause,
                    retry_in = ?self.retry_interval,
                    "dnscache: upstream query failed"
                );
            }
        }
        if let Some(n) = entries {
            self.metrics.entries(n as u64);
        }
    }
}

/// Removes the in-flight marker even if the fetch task is cancelled.
struct FlightGuard {
    inner: Arc<Inner>,
    key: Arc<str>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let mut map = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.remove(&self.key);
    }
}

async fn wait(mut flight: Flight) -> Option<Fetched> {
    flight
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|v| v.clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_config_built_in_code_is_checked_not_panicked_on() {
        for cfg in [
            DnsConfig {
                min_ttl: Duration::from_secs(600),
                max_ttl: Duration::from_secs(60),
                ..DnsConfig::default()
            },
            DnsConfig {
                max_stale: Duration::MAX,
                ..DnsConfig::default()
            },
            DnsConfig {
                refresh_ahead: f64::NAN,
                ..DnsConfig::default()
            },
        ] {
            let e = Resolver::new(&cfg).map(|_| ()).unwrap_err();
            assert!(matches!(e, DnsError::Setup(_)), "{e}");
            assert!(e.to_string().contains("dns."), "names the key: {e}");
        }
    }
}

//! The upstream side: one hickory-resolver used as a plain query engine.
//!
//! # Algorithm
//! hickory-resolver caches and merges on its own, but it cannot serve stale
//! answers, refresh ahead, or rate-limit retries. So its cache is switched
//! off (`cache_size = 0`) and its retries too (`attempts = 0`): every call
//! here is exactly one query per record type to the upstream, and
//! [`crate::Resolver`]'s cache is the only source of truth.
//!
//! A host is fetched as one A and one AAAA query, run concurrently. The two
//! answers are folded into one [`Fetched`]:
//! - any address at all: positive, TTL = smallest record TTL, clamped to
//!   `[min_ttl, max_ttl]`;
//! - both NXDOMAIN / no-data: negative, cached for the negative TTL;
//! - otherwise (timeout, SERVFAIL, refused, network): a failure, never cached
//!   as an answer.
//!
//! # Names and the search list
//! Without `ndots` (the default) a name is first asked as given, fully
//! qualified, so a lookup of `gateway.discord.gg` is one upstream name, not
//! the ndots:5 walk down the Kubernetes search list. Only when that name does
//! not exist (NXDOMAIN / no-data for both types) are the search domains
//! appended in order (`dns.search`, or resolv.conf's `search` line) and the
//! first name that answers wins; this is what makes a partially qualified
//! in-cluster name such as `bulwark-rabbitmq.bulwark.svc` resolve. The
//! qualified name that answered is remembered per host, so refreshes ask it
//! directly: the walk costs its extra queries once per host (and again only
//! if the remembered name stops existing), never once per TTL. A candidate
//! that fails (timeout, SERVFAIL) does not end the walk, as in glibc, but a
//! walk that found no address and had a failure is a failure, never cached
//! as NXDOMAIN.
//!
//! With `ndots` set, hickory walks the search list itself, as libc does.

use crate::metrics::Metrics;
use config::DnsConfig;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Result of one fetch of a host (A and AAAA).
#[derive(Debug, Clone)]
pub(crate) enum Fetched {
    Positive { addrs: Arc<[IpAddr]>, ttl: Duration },
    Negative { ttl: Duration },
    Failed { cause: String },
}

/// hickory-resolver configured as a cache-less, retry-less query engine.
pub(crate) struct Upstream {
    resolver: TokioResolver,
    /// The configured servers as text, for errors and metric labels.
    pub(crate) label: Arc<str>,
    /// `ndots` unset: names are asked as given first (see the module docs).
    as_given_first: bool,
    /// Suffixes tried, in order, for a name that does not exist as given.
    search: Arc<[Name]>,
    /// Host as asked -> the qualified name that answered it, so a refresh is
    /// one query per record type, not a new walk.
    qualified: moka::sync::Cache<Name, Name>,
    min_ttl: Duration,
    max_ttl: Duration,
    negative_ttl: Duration,
}

impl Upstream {
    pub(crate) fn new(cfg: &DnsConfig) -> Result<Self, String> {
        // resolv.conf is read only when it is needed: for the servers when
        // none are configured, for the search list when none is configured.
        // Only the servers make it mandatory: with `dns.upstreams` set, an
        // unreadable resolv.conf just means no search list.
        let sys_config = if cfg.upstreams.is_empty() {
            let (c, _opts) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("reading resolv.conf: {e}"))?;
            Some(c)
        } else if cfg.search.is_empty() {
            hickory_resolver::system_conf::read_system_conf()
                .ok()
                .map(|(c, _opts)| c)
        } else {
            None
        };
        let servers: Vec<NameServerConfig> = if cfg.upstreams.is_empty() {
            sys_config
                .as_ref()
                .map(|c| c.name_servers().to_vec())
                .unwrap_or_default()
        } else {
            cfg.upstreams
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect()
        };
        if servers.is_empty() {
            return Err("no upstream DNS server: set dns.upstreams or fix resolv.conf".into());
        }
        let label = if cfg.upstreams.is_empty() {
            let mut seen: Vec<String> = Vec::new();
            for s in &servers {
                for c in &s.connections {
                    let text = std::net::SocketAddr::new(s.ip, c.port).to_string();
                    if !seen.contains(&text) {
                        seen.push(text);
                    }
                }
            }
            seen.join(",")
        } else {
            cfg.upstreams
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut search: Vec<Name> = if cfg.search.is_empty() {
            sys_config
                .as_ref()
                .map(|c| c.search().to_vec())
                .unwrap_or_default()
        } else {
            cfg.search
                .iter()
                .map(|d| Name::from_ascii(d).map_err(|e| format!("search domain {d:?}: {e}")))
                .collect::<Result<_, _>>()?
        };
        for domain in &mut search {
            domain.set_fqdn(true);
        }
        let as_given_first = cfg.ndots.is_none();
        // Without ndots the walk is ours (fetch), so hickory gets no list.
        let hickory_search = if as_given_first {
            Vec::new()
        } else {
            search.clone()
        };
        let resolver_config = ResolverConfig::from_parts(None, hickory_search, servers);
        let mut builder =
            TokioResolver::builder_with_config(resolver_config, TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        opts.cache_size = 0;
        opts.attempts = 0;
        opts.timeout = cfg.query_timeout;
        opts.ndots = cfg.ndots.map_or(0, usize::from);
        opts.num_concurrent_reqs = 1;
        opts.try_tcp_on_error = false;
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        opts.edns0 = true;
        let resolver = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            resolver,
            label: label.into(),
            as_given_first,
            search: search.into(),
            qualified: moka::sync::Cache::builder()
                .max_capacity(cfg.cache_size)
                .build(),
            min_ttl: cfg.min_ttl,
            max_ttl: cfg.max_ttl,
            negative_ttl: cfg.negative_ttl,
        })
    }

    /// Parses `host` into the name sent upstream (fully qualified unless
    /// ndots is configured; the search walk appends to it).
    pub(crate) fn name(&self, host: &str) -> Result<Name, String> {
        let mut name = Name::from_ascii(host).map_err(|e| e.to_string())?;
        if name.num_labels() == 0 {
            return Err("empty name".into());
        }
        if self.as_given_first {
            name.set_fqdn(true);
        }
        Ok(name)
    }

    /// Most names one fetch may ask (as given plus the search list): bounds
    /// how long a fetch may take.
    pub(crate) fn max_names(&self) -> u32 {
        u32::try_from(self.search.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The answer for `name`: with ndots, one hickory lookup (which walks the
    /// search list itself); without, the name as given, then the search
    /// list while nothing exists (see the module docs).
    pub(crate) async fn fetch(&self, name: Name, metrics: &Metrics) -> Fetched {
        if !self.as_given_first || self.search.is_empty() {
            return self.fetch_one(name, metrics).await;
        }
        if let Some(known) = self.qualified.get(&name) {
            let fetched = self.fetch_one(known, metrics).await;
            if !matches!(fetched, Fetched::Negative { .. }) {
                return fetched;
            }
            // The remembered name is gone: walk again from the top.
            self.qualified.invalidate(&name);
        }
        let mut negative: Option<Duration> = None;
        let mut failure: Option<String> = None;
        for candidate in self.candidates(&name) {
            match self.fetch_one(candidate.clone(), metrics).await {
                positive @ Fetched::Positive { .. } => {
                    if candidate != name {
                        self.qualified.insert(name, candidate);
                    }
                    return positive;
                }
                Fetched::Negative { ttl } => {
                    negative = Some(negative.map_or(ttl, |n| n.min(ttl)));
                }
                Fetched::Failed { cause } => {
                    failure.get_or_insert(format!("{candidate}: {cause}"));
                }
            }
        }
        match (failure, negative) {
            (Some(cause), _) => Fetched::Failed { cause },
            (None, Some(ttl)) => Fetched::Negative { ttl },
            (None, None) => Fetched::Failed {
                cause: "no name to ask".into(),
            },
        }
    }

    /// `name` as given, then with each search domain appended (a name too
    /// long for a suffix skips it).
    fn candidates(&self, name: &Name) -> Vec<Name> {
        let mut bare = name.clone();
        bare.set_fqdn(false);
        std::iter::once(name.clone())
            .chain(
                self.search
                    .iter()
                    .filter_map(|domain| bare.clone().append_domain(domain).ok()),
            )
            .collect()
    }

    /// One A and one AAAA query for `name`, folded into one answer.
    async fn fetch_one(&self, name: Name, metrics: &Metrics) -> Fetched {
        metrics.upstream_query(2);
        let (v4, v6) = tokio::join!(
            self.resolver.lookup(name.clone(), RecordType::A),
            self.resolver.lookup(name, RecordType::AAAA),
        );
        let mut addrs = Vec::new();
        let mut min_ttl: Option<u32> = None;
        let mut negative = 0;
        let mut negative_ttl: Option<u32> = None;
        let mut failure: Option<String> = None;
        for result in [v4, v6] {
            match result {
                Ok(lookup) => {
                    for record in lookup.answers() {
                        let ip = match &record.data {
                            RData::A(a) => IpAddr::V4(a.0),
                            RData::AAAA(a) => IpAddr::V6(a.0),
                            _ => continue,
                        };
                        if !addrs.contains(&ip) {
                            addrs.push(ip);
                        }
                        min_ttl = Some(min_ttl.map_or(record.ttl, |t| t.min(record.ttl)));
                    }
                }
                Err(NetError::Dns(HickoryDnsError::NoRecordsFound(no))) => {
                    negative += 1;
                    if let Some(t) = no.negative_ttl {
                        negative_ttl = Some(negative_ttl.map_or(t, |n| n.min(t)));
                    }
                }
                Err(e) => {
                    metrics.upstream_error();
                    failure = Some(e.to_string());
                }
            }
        }
        if !addrs.is_empty() {
            let ttl = Duration::from_secs(u64::from(min_ttl.unwrap_or(0)))
                .clamp(self.min_ttl, self.max_ttl);
            return Fetched::Positive {
                addrs: addrs.into(),
                ttl,
            };
        }
        if negative == 2 {
            let ttl = negative_ttl
                .map(|t| Duration::from_secs(u64::from(t)))
                .unwrap_or(self.negative_ttl)
                .min(self.negative_ttl);
            return Fetched::Negative { ttl };
        }
        Fetched::Failed {
            cause: failure.unwrap_or_else(|| "no answer".into()),
        }
    }
}

//! In-cluster names as the manifests write them: a partially qualified
//! service name (`bulwark-rabbitmq.bulwark.svc`, the host the RabbitMQ
//! operator generates) resolves with the default `[dns]` settings through
//! the pod's search list, and the search walk is paid once per host, not
//! once per lookup or per TTL. A real dnsmasq plays CoreDNS: authoritative
//! for `cluster.local` and for the `svc` pseudo-TLD, query log counted.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Dnsmasq, config, free_port};
use dnscache::{DnsError, Resolver};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const RABBIT: &str = "bulwark-rabbitmq.bulwark.svc";
const RABBIT_FQDN: &str = "bulwark-rabbitmq.bulwark.svc.cluster.local";

/// The search line kubelet writes into a pod's resolv.conf in namespace
/// `bulwark` (cluster domain `cluster.local`).
fn pod_search() -> Vec<String> {
    [
        "bulwark.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ]
    .map(String::from)
    .to_vec()
}

fn cluster_dns(ttl: u32) -> Dnsmasq {
    Dnsmasq::start_zones(
        free_port().unwrap(),
        &[(RABBIT_FQDN, "127.0.0.61"), ("gateway.test", "127.0.0.62")],
        ttl,
        &["cluster.local", "svc"],
    )
    .unwrap()
}

/// Default settings (no ndots) with the pod's search list: the partial
/// name resolves; an external-style name is still one upstream name; a name
/// that exists nowhere is NXDOMAIN after one walk, cached like any negative
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partially_qualified_service_name_resolves_by_default() {
    let dns = cluster_dns(30);
    let cfg = config::DnsConfig {
        search: pod_search(),
        ..config(dns.addr())
    };
    assert_eq!(cfg.ndots, None, "the default must resolve it");
    let r = Resolver::new(&cfg).unwrap();

    let got = r.lookup(RABBIT, 5672).await.unwrap();
    assert_eq!(got, vec![SocketAddr::from(([127, 0, 0, 61], 5672))]);
    // As given first (NXDOMAIN), then the search list in order, up to the
    // first name that exists.
    for name in [
        RABBIT,
        "bulwark-rabbitmq.bulwark.svc.bulwark.svc.cluster.local",
        "bulwark-rabbitmq.bulwark.svc.svc.cluster.local",
        RABBIT_FQDN,
    ] {
        assert_eq!(
            dns.count("A", name).unwrap(),
            1,
            "{name}: {:?}",
            dns.names().unwrap()
        );
    }

    assert_eq!(
        r.lookup("gateway.test", 443).await.unwrap(),
        vec![SocketAddr::from(([127, 0, 0, 62], 443))]
    );
    assert_eq!(dns.count("A", "gateway.test").unwrap(), 1);
    assert!(
        !dns.names()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("gateway.test.")),
        "a name that exists as given walked the search list: {:?}",
        dns.names().unwrap()
    );

    for _ in 0..20 {
        let e = r.lookup("missing.bulwark.svc", 1).await.unwrap_err();
        assert!(matches!(e, DnsError::NotFound { .. }), "{e:?}");
    }
    for name in [
        "missing.bulwark.svc",
        "missing.bulwark.svc.bulwark.svc.cluster.local",
        "missing.bulwark.svc.svc.cluster.local",
        "missing.bulwark.svc.cluster.local",
    ] {
        assert_eq!(
            dns.count("A", name).unwrap(),
            1,
            "{name}: {:?}",
            dns.names().unwrap()
        );
    }
}

/// The caching bound holds through the walk: thousands of lookups over
/// several TTLs ask the as-given name and each wrong candidate once, and the
/// qualified name about once per TTL (refreshes go straight to it), the
/// same bound as a fully qualified name has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_walk_is_paid_once_per_host_not_per_lookup_or_ttl() {
    let dns = cluster_dns(2);
    let r = Resolver::new(&config::DnsConfig {
        search: pod_search(),
        // Refresh at 90% of the 2 s TTL, as in the resolver's storm test.
        refresh_ahead: 0.9,
        ..config(dns.addr())
    })
    .unwrap();
    let run = Duration::from_secs(6);
    let start = Instant::now();
    let mut lookups = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while start.elapsed() < run {
        tick.tick().await;
        for _ in 0..50 {
            let got = r.lookup(RABBIT, 5672).await.unwrap();
            assert_eq!(got, vec![SocketAddr::from(([127, 0, 0, 61], 5672))]);
            lookups += 1;
        }
    }
    assert!(lookups >= 5_000, "only {lookups} lookups");
    for name in [
        RABBIT,
        "bulwark-rabbitmq.bulwark.svc.bulwark.svc.cluster.local",
        "bulwark-rabbitmq.bulwark.svc.svc.cluster.local",
    ] {
        for qtype in ["A", "AAAA"] {
            assert_eq!(
                dns.count(qtype, name).unwrap(),
                1,
                "{qtype} {name} asked again: the walk was repeated"
            );
        }
    }
    // The cold query plus one refresh per ~1.8 s over 6 s: 4 expected, 5
    // allowed; a walk per refresh would also have asked the names above.
    let bound = 6usize.div_ceil(2) + 2;
    for qtype in ["A", "AAAA"] {
        let n = dns.count(qtype, RABBIT_FQDN).unwrap();
        assert!(
            (3..=bound).contains(&n),
            "{n} {qtype} queries of {RABBIT_FQDN} for {lookups} lookups"
        );
    }
}

//! `[tls]` against real TLS endpoints signed by a CA made in the test, as an
//! operator's cert-manager would sign them: RabbitMQ behind a TLS
//! terminator that requires a client certificate, and `redis-server` with
//! its own TLS listener (no plain port), requiring one too. Each name is
//! resolved through the cache (dnsmasq). What must hold:
//! - with the CA bundle and the client certificate, AMQP and Redis work;
//! - with only the public roots, or another CA, the handshake fails with an
//!   error naming the host and port and the CA file (or the missing one);
//! - without the client certificate the server refuses the connection.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Dnsmasq, config, free_port};
use config::TlsConfig;
use dnscache::{RedisConnection, Resolver, Trust};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ConnectionProperties};
use std::sync::Arc;
use std::time::Duration;
use testkit::tls::{RedisTls, TestCa, TlsTerminator};

const BOUND: Duration = Duration::from_secs(20);

fn dns() -> Dnsmasq {
    Dnsmasq::start(
        free_port().unwrap(),
        &[("rabbit.test", "127.0.0.1"), ("redis.test", "127.0.0.1")],
        30,
    )
    .unwrap()
}

struct Setup {
    ca: TestCa,
    other: TestCa,
    client: testkit::tls::IssuedFiles,
}

fn setup(server: &str) -> (Setup, testkit::tls::IssuedFiles) {
    let ca = TestCa::new("bulwark-test-ca").unwrap();
    let other = TestCa::new("some-other-ca").unwrap();
    let server = ca.server(server).unwrap();
    let client = ca.client("bulwark-client").unwrap();
    (Setup { ca, other, client }, server)
}

fn trust(s: &Setup, ca: Option<&TestCa>, with_client: bool, urls: &[&str]) -> Arc<Trust> {
    let cfg = TlsConfig {
        ca_file: ca.map(TestCa::ca_file),
        client_cert_file: with_client.then(|| s.client.cert.clone()),
        client_key_file: with_client.then(|| s.client.key.clone()),
        ca_for_discord: false,
    };
    Trust::load(&cfg, urls).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_trusts_the_private_ca_and_presents_the_client_certificate() {
    let dns = dns();
    let (s, server) = setup("rabbit.test");
    let proxy = TlsTerminator::start("127.0.0.1:5672".parse().unwrap(), &server, Some(&s.ca))
        .await
        .unwrap();
    let url = format!("amqps://guest:guest@rabbit.test:{}/%2f", proxy.port());
    let resolver = Resolver::new(&config(dns.addr())).unwrap();
    let connect = |trust: Arc<Trust>| {
        let r = resolver.with_trust(trust);
        let url = url.clone();
        async move {
            tokio::time::timeout(BOUND, r.amqp_connect(&url, ConnectionProperties::default()))
                .await
                .expect("amqps connect did not finish")
        }
    };

    // The CA bundle and the client certificate: a working channel.
    let conn = connect(trust(&s, Some(&s.ca), true, &[&url]))
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "".into(),
        q.name().as_str().into(),
        BasicPublishOptions::default(),
        b"over tls",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let got = ch
        .basic_get(q.name().as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message published over TLS");
    assert_eq!(got.delivery.data, b"over tls");
    conn.close(200, "bye".into()).await.unwrap();
    assert_eq!(proxy.refused(), 0);

    // Public roots only: refused, and the error says what to set.
    let e = connect(trust(&s, None, true, &[&url]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("rabbit.test:{}", proxy.port())), "{e}");
    assert!(e.contains("tls.ca_file"), "{e}");
    // Another CA: refused, naming that CA's file.
    let e = connect(trust(&s, Some(&s.other), true, &[&url]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("rabbit.test:{}", proxy.port())), "{e}");
    assert!(e.contains(&s.other.ca_file().display().to_string()), "{e}");
    assert!(!e.contains("guest:guest"), "{e}");
    // The right CA without a client certificate: the server refuses it.
    let before = proxy.refused();
    assert!(
        connect(trust(&s, Some(&s.ca), false, &[&url]))
            .await
            .is_err()
    );
    assert!(
        proxy.refused() > before,
        "the terminator saw no refused handshake"
    );
    assert!(
        dns.count("A", "rabbit.test").unwrap() >= 1,
        "not resolved by the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_trusts_the_private_ca_and_presents_the_client_certificate() {
    let dns = dns();
    let (s, server) = setup("redis.test");
    let redis = RedisTls::start(&s.ca, &server, true).unwrap();
    let url = format!("rediss://redis.test:{}/0", redis.port());
    let resolver = Resolver::new(&config(dns.addr())).unwrap();
    let connect = |trust: Arc<Trust>| {
        let r = resolver.with_trust(trust);
        let url = url.clone();
        async move {
            tokio::time::timeout(BOUND, RedisConnection::connect(&r, &url))
                .await
                .expect("rediss connect did not finish")
        }
    };

    let mut conn = connect(trust(&s, Some(&s.ca), true, &[&url]))
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("bulwark:tls")
        .arg("ok")
        .query_async(&mut conn)
        .await
        .unwrap();
    let got: String = redis::cmd("GET")
        .arg("bulwark:tls")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(got, "ok");

    let e = connect(trust(&s, None, true, &[&url]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("redis.test:{}", redis.port())), "{e}");
    assert!(e.contains("tls.ca_file"), "{e}");
    let e = connect(trust(&s, Some(&s.other), true, &[&url]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("redis.test:{}", redis.port())), "{e}");
    assert!(e.contains(&s.other.ca_file().display().to_string()), "{e}");
    // Without the client certificate the server closes the connection: the
    // dial or the first command fails.
    let refused = match connect(trust(&s, Some(&s.ca), false, &[&url])).await {
        Err(_) => true,
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_err(),
    };
    assert!(
        refused,
        "redis-server accepted a client without a certificate"
    );
    assert!(
        dns.count("A", "redis.test").unwrap() >= 1,
        "not resolved by the cache"
    );
}

/// Discord keeps the public roots unless `tls.ca_for_discord` adds the
/// bundle (an egress proxy that re-signs TLS): a host signed by the private
/// CA fails without it and passes with it; `amqps`/`rediss` are unaffected.
#[tokio::test]
async fn the_bundle_reaches_discord_connections_only_when_asked() {
    let dns = Dnsmasq::start(free_port().unwrap(), &[("gateway.test", "127.0.0.1")], 30).unwrap();
    let (s, server) = setup("gateway.test");
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = upstream.accept().await {
            held.push(c);
        }
    });
    let proxy = TlsTerminator::start(upstream_addr, &server, None)
        .await
        .unwrap();
    let resolver = Resolver::new(&config(dns.addr())).unwrap();
    let cfg = |ca_for_discord| TlsConfig {
        ca_file: Some(s.ca.ca_file()),
        ca_for_discord,
        ..TlsConfig::default()
    };
    let without = resolver.with_trust(Trust::load(&cfg(false), &[]).unwrap());
    let e = without
        .connect_tls("gateway.test", proxy.port())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("gateway.test:{}", proxy.port())), "{e}");
    let with = resolver.with_trust(Trust::load(&cfg(true), &[]).unwrap());
    with.connect_tls("gateway.test", proxy.port())
        .await
        .unwrap();
    accept.abort();
}

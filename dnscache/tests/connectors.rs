//! The connectors against real local servers, with every name served by a
//! real dnsmasq (the system resolver cannot resolve `*.test`, so a success
//! proves the connection went through the cache, not getaddrinfo).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Dnsmasq, config, free_port};
use dnscache::{ConnectError, DnsError, Resolver};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn start_dns() -> Dnsmasq {
    Dnsmasq::start(
        free_port().unwrap(),
        &[
            ("svc.test", "127.0.0.1"),
            ("rabbit.test", "127.0.0.1"),
            ("redis.test", "127.0.0.1"),
        ],
        2,
    )
    .unwrap()
}

#[tokio::test]
async fn tcp_connects_to_the_resolved_address_and_reports_failures() {
    let dns = start_dns();
    let r = Resolver::new(&config(dns.addr())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
    });
    let mut s = r.connect_tcp("svc.test", port).await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    server.await.unwrap();
    assert_eq!(dns.count("A", "svc.test").unwrap(), 1);

    // Nobody listens any more: a clear error naming host and port.
    let e = r.connect_tcp("svc.test", port).await.unwrap_err();
    assert!(matches!(e, ConnectError::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("svc.test:{port}")), "{e}");
    // An unknown name: the DNS error, naming host and upstream.
    let e = r.connect_tcp("nowhere.test", port).await.unwrap_err();
    assert!(
        matches!(e, ConnectError::Dns(DnsError::NotFound { .. })),
        "{e:?}"
    );
}

#[tokio::test]
async fn websocket_handshake_runs_over_our_stream() {
    let dns = start_dns();
    let r = Resolver::new(&config(dns.addr())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() {
                ws.send(msg).await.unwrap();
            }
        }
    });
    let url = format!("ws://svc.test:{port}/?v=10&encoding=json");
    let (mut ws, response) = r.connect_websocket(&url, None).await.unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("{\"op\":1}")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "{\"op\":1}");
    ws.close(None).await.unwrap();
    server.await.unwrap();
    assert!(r.connect_websocket("http://svc.test/", None).await.is_err());
}

#[tokio::test]
async fn http_get_sends_origin_form_and_host_header() {
    let dns = start_dns();
    let r = Resolver::new(&config(dns.addr())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed early");
            req.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"url":"wss://gateway.discord.gg","shards":16}"#;
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8(req).unwrap()
    });
    let url = format!("http://svc.test:{port}/api/v10/gateway/bot");
    let resp = r
        .http_get(&url, &[("authorization", "Bot x")], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.body()
            .starts_with(b"{\"url\":\"wss://gateway.discord.gg\"")
    );
    let req = server.await.unwrap().to_ascii_lowercase();
    assert!(
        req.starts_with("get /api/v10/gateway/bot http/1.1\r\n"),
        "{req}"
    );
    assert!(req.contains(&format!("host: svc.test:{port}\r\n")), "{req}");
    assert!(req.contains("authorization: bot x\r\n"), "{req}");
}

/// A self-signed certificate for `tls.test`: the server's acceptor and a
/// client configuration trusting it.
fn tls_pair() -> (tokio_rustls::TlsAcceptor, Arc<rustls::ClientConfig>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["tls.test".to_owned()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg)),
        Arc::new(client_cfg),
    )
}

/// A TLS echo server that records the SNI it was sent.
async fn tls_server() -> (
    u16,
    tokio::task::JoinHandle<Option<String>>,
    Arc<rustls::ClientConfig>,
) {
    let (acceptor, client_cfg) = tls_pair();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(s).await.ok()?;
        let sni = tls.get_ref().1.server_name().map(str::to_owned);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.ok()?;
        tls.write_all(&buf).await.ok()?;
        tls.shutdown().await.ok()?;
        sni
    });
    (port, server, client_cfg)
}

#[tokio::test]
async fn tls_uses_the_host_name_for_sni_and_verification() {
    let dns = Dnsmasq::start(free_port().unwrap(), &[("tls.test", "127.0.0.1")], 2).unwrap();
    let r = Resolver::new(&config(dns.addr())).unwrap();
    let (port, server, client_cfg) = tls_server().await;
    let r = r.with_tls_config(client_cfg);
    let mut s = r.connect_tls("tls.test", port).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(server.await.unwrap().as_deref(), Some("tls.test"));

    // The default roots do not trust the self-signed certificate.
    let (port, _server, _) = tls_server().await;
    let plain = Resolver::new(&config(dns.addr())).unwrap();
    let e = plain.connect_tls("tls.test", port).await.unwrap_err();
    assert!(matches!(e, ConnectError::Tls { .. }), "{e:?}");
}

#[tokio::test]
async fn wss_takes_sni_from_the_url() {
    let dns = Dnsmasq::start(free_port().unwrap(), &[("tls.test", "127.0.0.1")], 2).unwrap();
    let (acceptor, client_cfg) = tls_pair();
    let r = Resolver::new(&config(dns.addr()))
        .unwrap()
        .with_tls_config(client_cfg);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(s).await.unwrap();
        let sni = tls.get_ref().1.server_name().map(str::to_owned);
        let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
        if let Some(Ok(msg)) = ws.next().await {
            ws.send(msg).await.unwrap();
        }
        sni
    });
    let url = format!("wss://tls.test:{port}/?v=10");
    let (mut ws, _) = r.connect_websocket(&url, None).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello");
    assert_eq!(server.await.unwrap().as_deref(), Some("tls.test"));
}

#[tokio::test]
async fn rabbitmq_connects_through_the_cache() {
    let dns = start_dns();
    let r = Resolver::new(&config(dns.addr())).unwrap();
    let conn = r
        .amqp_connect(
            "amqp://guest:guest@rabbit.test:5672/%2f",
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    assert!(channel.status().connected());
    conn.close(200, "test done".into()).await.unwrap();
    assert!(dns.count("A", "rabbit.test").unwrap() >= 1);

    let e = r
        .amqp_connect(
            "amqp://guest:secret@absent.test:5672/%2f",
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.test") && !e.contains("secret"), "{e}");
}

#[tokio::test]
async fn redis_resolves_through_the_cache() {
    let dns = start_dns();
    let r = Resolver::new(&config(dns.addr())).unwrap();
    let client = redis::Client::open("redis://redis.test:6379/").unwrap();
    let mut con = client
        .get_multiplexed_async_connection_with_config(&r.redis_config())
        .await
        .unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
    assert_eq!(pong, "PONG");
    assert!(dns.count("A", "redis.test").unwrap() >= 1);
}

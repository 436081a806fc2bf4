//! Who may read the cache: every `/v1/*` route answers 401 without the
//! read token, with a wrong one and with another scheme, and the same body
//! each time; with the token it answers as before. The probes need no
//! token, and `/metrics` moves to its own router when asked to.
#![allow(clippy::unwrap_used)]

use envelope::{Event, GuildCreateKind, ShardRef};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use testkit::http_with;
use worker::http::{ApiState, Health, api_router, metrics_router};
use worker::{MemoryStore, Report, Worker};

const G: u64 = 81384788765712384;
const C: u64 = 81384788765712385;
const U: u64 = 80351110224678912;
const TOKEN: &str = "r3ad-t0ken-0123456789";

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn every_read_route_needs_the_token_and_the_probes_do_not() {
    let store = Arc::new(MemoryStore::new());
    let worker = Worker::with_shared_store(store.clone());
    let d = json!({"id": G.to_string(), "name": "g", "owner_id": "1", "member_count": 1,
        "channels": [{"id": C.to_string(), "type": 0, "name": "general"}],
        "roles": [{"id": G.to_string(), "name": "@everyone", "permissions": "0", "position": 0}],
        "members": [{"user": {"id": U.to_string(), "username": "u"}, "roles": []}]})
    .to_string();
    let mut report = Report::default();
    worker
        .process_event(
            ShardRef::new(0, 1),
            &Event {
                epoch: 1,
                seq: 1,
                received_at: 0,
                t: "GUILD_CREATE",
                guild_id: Some(G),
                guild_create: Some(GuildCreateKind::Joined),
                d: d.as_bytes(),
            },
            &mut report,
        )
        .await
        .unwrap();
    let api = ApiState {
        store,
        health: Arc::new(Health::default()),
        metrics: Some(PrometheusBuilder::new().build_recorder().handle()),
        stats: None,
        read_token: Some(config::Secret::new(TOKEN)),
    };
    let addr = serve(api_router(api.clone())).await;
    let metrics_addr = serve(metrics_router(api)).await;

    let bearer = format!("Bearer {TOKEN}");
    let routes = [
        (format!("/v1/guilds/{G}"), 200),
        (format!("/v1/guilds/{G}/channels"), 200),
        (format!("/v1/guilds/{G}/roles"), 200),
        (format!("/v1/guilds/{G}/members/{U}"), 200),
        ("/v1/stats".to_owned(), 200),
        ("/v1/guilds/1".to_owned(), 404),
        ("/v1/no-such-route".to_owned(), 404),
    ];
    let (longer, basic) = (format!("Bearer {TOKEN}x"), format!("Basic {TOKEN}"));
    let refused: [&[(&str, &str)]; 6] = [
        &[],
        &[("Authorization", "Bearer wrong")],
        &[("Authorization", "Bearer ")],
        &[("Authorization", &longer)],
        &[("Authorization", &basic)],
        &[("Authorization", TOKEN)],
    ];
    let mut bodies = std::collections::BTreeSet::new();
    for (path, want) in &routes {
        for headers in refused {
            let (status, body) = http_with(addr, "GET", path, headers, "").await;
            assert_eq!(status, 401, "{path} {headers:?}: {body}");
            assert!(!body.contains("general"), "{path}: {body}");
            bodies.insert(body);
        }
        let (status, body) = http_with(addr, "GET", path, &[("Authorization", &bearer)], "").await;
        assert_eq!(status, *want, "{path} with the token: {body}");
        let (status, _) = http_with(
            addr,
            "GET",
            path,
            &[("authorization", &format!("bearer {TOKEN}"))],
            "",
        )
        .await;
        assert_eq!(status, *want, "{path}: the scheme is case-insensitive");
    }
    assert_eq!(bodies.len(), 1, "401 bodies differ: {bodies:?}");
    let (_, channels) = http_with(
        addr,
        "GET",
        &format!("/v1/guilds/{G}/channels"),
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert!(channels.contains("general"), "{channels}");

    // Probes stay open; /metrics is not on the API listener but on its own,
    // without a token.
    assert_eq!(http_with(addr, "GET", "/healthz", &[], "").await.0, 200);
    assert_eq!(http_with(addr, "GET", "/readyz", &[], "").await.0, 503);
    assert_eq!(http_with(addr, "GET", "/metrics", &[], "").await.0, 404);
    let (status, _) = http_with(metrics_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    let (status, _) = http_with(metrics_addr, "GET", &format!("/v1/guilds/{G}"), &[], "").await;
    assert_eq!(status, 404, "the metrics listener serves no cache data");
}

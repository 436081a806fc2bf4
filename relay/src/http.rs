//! The relay's one port: the gateway (websocket upgrade, by hand so the
//! workspace keeps one tokio-tungstenite, as the simulator does), Discord's
//! `GET /api/v10/gateway/bot` and `/gateway` so that libraries asking for
//! them work unchanged, and the probes (and `/metrics` unless it has a
//! listener of its own).

use crate::Ctx;
use crate::compression::Compression;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

fn error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "message": msg, "code": 0 }))).into_response()
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The URL bots connect to: `relay.public_url`, else this request's host.
fn gateway_url(ctx: &Ctx, req: &Request) -> String {
    if !ctx.cfg.public_url.is_empty() {
        return ctx.cfg.public_url.clone();
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| ctx.resume_url.clone(), |h| format!("ws://{h}"))
}

async fn gateway_bot(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bot "));
    if !auth.is_some_and(|t| ctx.token.matches(t)) {
        return error(StatusCode::UNAUTHORIZED, "401: Unauthorized");
    }
    axum::Json(json!({
        "url": gateway_url(&ctx, &req),
        "shards": ctx.cfg.shards,
        // The relay's own limits (its identifies never reach Discord).
        "session_start_limit": ctx.identify_limit.limit_json(tokio::time::Instant::now()),
    }))
    .into_response()
}

async fn gateway(State(ctx): State<Arc<Ctx>>, req: Request) -> Response {
    axum::Json(json!({ "url": gateway_url(&ctx, &req) })).into_response()
}

async fn upgrade(State(ctx): State<Arc<Ctx>>, mut req: Request) -> Response {
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        return error(StatusCode::BAD_REQUEST, "expected a websocket upgrade");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let query = req.uri().query().unwrap_or("").to_owned();
    if !matches!(query_param(&query, "encoding"), None | Some("json")) {
        return error(StatusCode::BAD_REQUEST, "only encoding=json is supported");
    }
    let compression = match Compression::from_query(query_param(&query, "compress")) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let version_ok = matches!(query_param(&query, "v"), None | Some("10"));
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = ctx.connections.clone();
    tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        // Bots send small payloads; tungstenite zero-fills its read buffer
        // up to this size on every read, and keeps it per connection.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        if !version_ok {
            let frame = CloseFrame {
                code: CloseCode::from(gateway_protocol::close::INVALID_API_VERSION),
                reason: "invalid API version; use v=10".into(),
            };
            let _ = ws.close(Some(frame)).await;
            return;
        }
        crate::connection::serve(ws, ctx, compression).await;
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

async fn readyz(State(ctx): State<Arc<Ctx>>) -> Response {
    if !ctx.feed_up.load(std::sync::atomic::Ordering::Relaxed) {
        let msg = "not consuming the output exchange\n";
        return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    }
    if let Err(e) = ctx.redis.ready().await {
        let msg = format!("the cache (Redis) is unreachable: {e}\n");
        return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics_text(State(ctx): State<Arc<Ctx>>) -> Response {
    match &ctx.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no metrics recorder").into_response(),
    }
}

/// The gateway, Discord's two HTTP routes and the probes; `/metrics` too
/// when `with_metrics`.
pub fn router(ctx: Arc<Ctx>, with_metrics: bool) -> Router {
    let mut r = Router::new()
        .route("/", get(upgrade))
        .route("/api/v10/gateway/bot", get(gateway_bot))
        .route("/api/v10/gateway", get(gateway))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    if with_metrics {
        r = r.route("/metrics", get(metrics_text));
    }
    r.with_state(ctx)
}

/// `/metrics` alone.
pub fn metrics_router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(ctx)
}

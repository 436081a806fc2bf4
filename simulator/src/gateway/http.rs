//! The one port: Discord's HTTP endpoint, the websocket gateway (upgraded by
//! hand so the workspace has one tokio-tungstenite), and the simulator's own
//! control API under `/sim`.
//!
//! Routes:
//! - `GET /api/v10/gateway/bot` (needs `Authorization: Bot <token>`)
//! - `GET /api/v10/gateway`
//! - websocket upgrade on `/` (gateway URL) and `/resume` (resume URL),
//!   query `v=10&encoding=json[&compress=zlib-stream|zstd-stream]`
//! - `GET /sim/truth`, `/sim/ledger`, `/sim/counters`
//! - `POST /sim/faults/{reconnect,drop,zombie,heartbeat-request,
//!   invalid-session,malformed,outage,restore}`, `POST
//!   /sim/faults/slow-resume` (`{"ms": n}`: the next RESUME of the
//!   sessions reached waits `n` ms before RESUMED), `POST /sim/faults/hostile`
//!   (`{"break_after_handshake": bool, "refuse_identify": bool}`: kept up on
//!   every connection until changed; answers the settings now in force),
//!   `POST /sim/event-rate`,
//!   `POST /sim/emit`, `POST /sim/recommended_shards` (`{"shards": n}`:
//!   what `/gateway/bot` recommends from now on; answers `{"shards": n}`)
//!   (JSON bodies, see [`crate::SimHandle`]). Fault bodies take an optional
//!   `"total": n` to reach only the sessions of that shard total.

use super::Shared;
use super::connection;
use super::protocol::close;
use super::sessions::{Control, Malformed, Target};
use super::transport::Transport;
use crate::handle::{emit_now, outage, restore, set_rate};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

type Resp = Response<Full<Bytes>>;

/// Largest control request body.
const MAX_BODY: usize = 64 * 1024;

/// Routes one request.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Resp, Infallible> {
    // `ws://host/resume` + "/?v=10..." gives `/resume/`: same route.
    let raw = req.uri().path();
    let path = match raw.trim_end_matches('/') {
        "" => "/".to_owned(),
        p => p.to_owned(),
    };
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    Ok(match (req.method().clone(), path.as_str()) {
        (Method::GET, "/" | "/resume") if is_upgrade => upgrade(req, shared, path),
        (Method::GET, "/api/v10/gateway/bot") => gateway_bot(&req, &shared),
        (Method::GET, "/api/v10/gateway") => {
            json_resp(StatusCode::OK, &json!({"url": shared.gateway_url()}))
        }
        (Method::GET, "/sim/truth") => {
            json_resp(StatusCode::OK, &shared.core_urgent().world.truth())
        }
        (Method::GET, "/sim/ledger") => {
            json_resp(StatusCode::OK, &shared.core_urgent().ledger.snapshot())
        }
        (Method::GET, "/sim/counters") => json_resp(StatusCode::OK, &shared.core_urgent().counters),
        (Method::GET, "/sim/attached") => {
            // Connections attached per shard total, read without touching
            // a session (a heartbeat request would).
            let core = shared.core_urgent();
            let attached: std::collections::BTreeMap<String, usize> = core
                .totals()
                .into_iter()
                .map(|t| (t.to_string(), core.attached(Target::of(t, &[]))))
                .collect();
            json_resp(StatusCode::OK, &json!({ "attached": attached }))
        }
        (Method::POST, p) if p.starts_with("/sim/") => control(req, &shared, p).await,
        (_, "/" | "/resume") => error(StatusCode::BAD_REQUEST, "expected a websocket upgrade"),
        _ => error(StatusCode::NOT_FOUND, &format!("no route for {path}")),
    })
}

fn json_resp<T: serde::Serialize>(status: StatusCode, body: &T) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Resp {
    json_resp(status, &json!({"message": message, "code": 0}))
}

fn gateway_bot(req: &Request<Incoming>, shared: &Shared) -> Resp {
    let want = format!("Bot {}", shared.cfg.token);
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth != Some(want.as_str()) {
        tracing::info!("GET /gateway/bot without a valid Authorization: 401");
        return error(StatusCode::UNAUTHORIZED, "401: Unauthorized");
    }
    let (remaining, reset_after) = shared
        .core_urgent()
        .budget
        .status(std::time::Instant::now());
    json_resp(
        StatusCode::OK,
        &json!({
            "url": shared.gateway_url(),
            "shards": shared.recommended_shards(),
            "session_start_limit": {
                "total": shared.cfg.session_start_total,
                "remaining": remaining,
                "reset_after": reset_after.as_millis() as u64,
                "max_concurrency": shared.cfg.max_concurrency,
            }
        }),
    )
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn upgrade(req: Request<Incoming>, shared: Arc<Shared>, path: String) -> Resp {
    let headers = req.headers();
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return error(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13");
    }
    let query = req.uri().query().unwrap_or("").to_owned();
    match query_param(&query, "encoding") {
        None | Some("json") => {}
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("encoding={other} is not supported; use json"),
            );
        }
    }
    let transport = match Transport::from_query(query_param(&query, "compress")) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let version_ok = query_param(&query, "v") == Some("10");
    *shared
        .core_urgent()
        .counters
        .connections
        .entry(path.clone())
        .or_default() += 1;
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        // Clients send small payloads; tungstenite zero-fills its read
        // buffer up to this size on every read, so keep it small.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        if !version_ok {
            tracing::info!(%query, "gateway connection without v=10: closing 4012");
            let frame = CloseFrame {
                code: CloseCode::from(close::INVALID_API_VERSION),
                reason: "invalid API version; use v=10".into(),
            };
            let _ = ws.close(Some(frame)).await;
            return;
        }
        tracing::debug!(%path, %query, "gateway connection");
        connection::serve(ws, shared, transport).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// A snowflake given as a JSON string or number.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdParam {
    Str(String),
    Num(u64),
}

/// `shards`: a list of shard ids for the faults, one number for
/// `recommended_shards` (a number given to a fault is a one-shard list).
#[derive(Deserialize)]
#[serde(untagged)]
enum ShardsParam {
    One(u32),
    List(Vec<u32>),
}

impl Default for ShardsParam {
    fn default() -> Self {
        Self::List(Vec::new())
    }
}

/// Body of every `/sim` POST; each route reads the fields it needs.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ControlBody {
    #[serde(default)]
    shards: ShardsParam,
    /// Faults reach only the sessions of this shard total.
    total: Option<u32>,
    kind: Option<String>,
    resumable: Option<bool>,
    guild_id: Option<IdParam>,
    events_per_sec: Option<f64>,
    count: Option<u64>,
    break_after_handshake: Option<bool>,
    refuse_identify: Option<bool>,
    /// `slow-resume`: how long the next RESUME waits before RESUMED.
    ms: Option<u64>,
}

async fn control(req: Request<Incoming>, shared: &Shared, path: &str) -> Resp {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")),
    };
    let body: ControlBody = if body.iter().all(u8::is_ascii_whitespace) {
        ControlBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")),
        }
    };
    let shards = match &body.shards {
        ShardsParam::One(n) => std::slice::from_ref(n),
        ShardsParam::List(list) => list.as_slice(),
    };
    let target = Target {
        total: body.total,
        shards,
    };
    let affected = |n: usize| json_resp(StatusCode::OK, &json!({"affected": n}));
    let guild = || match &body.guild_id {
        Some(IdParam::Num(n)) => Ok(*n),
        Some(IdParam::Str(s)) => s
            .parse()
            .map_err(|_| format!("guild_id {s:?} is not a snowflake")),
        None => Err("guild_id is required".to_owned()),
    };
    let core_ctl = |ctl| affected(shared.core_urgent().control(target, ctl));
    match path.trim_start_matches("/sim/") {
        "faults/reconnect" => core_ctl(Control::Reconnect),
        "faults/drop" => core_ctl(Control::Drop),
        "faults/slow-resume" => match body.ms {
            Some(ms) if ms <= 60_000 => affected(
                shared
                    .core_urgent()
                    .slow_resume(target, std::time::Duration::from_millis(ms)),
            ),
            _ => error(
                StatusCode::BAD_REQUEST,
                "ms is required: how long the next RESUME waits (at most 60000)",
            ),
        },
        "faults/zombie" => core_ctl(Control::Zombie),
        "faults/heartbeat-request" => core_ctl(Control::RequestHeartbeat),
        "faults/invalid-session" => {
            core_ctl(Control::InvalidSession(body.resumable.unwrap_or(false)))
        }
        "faults/malformed" => {
            let kind = match body.kind.as_deref() {
                Some("invalid_json") => Malformed::InvalidJson,
                Some("truncated") => Malformed::Truncated,
                Some("unknown_op") => Malformed::UnknownOp,
                Some("invalid_data") => Malformed::InvalidData,
                other => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "kind {other:?}: use invalid_json, truncated, unknown_op or invalid_data"
                        ),
                    );
                }
            };
            affected(shared.core_urgent().malformed(target, kind, &shared.cfg))
        }
        "faults/outage" | "faults/restore" => match guild() {
            Ok(g) => {
                let done = if path.ends_with("outage") {
                    outage(shared, g)
                } else {
                    restore(shared, g)
                };
                affected(usize::from(done))
            }
            Err(e) => error(StatusCode::BAD_REQUEST, &e),
        },
        "faults/hostile" => {
            let mut core = shared.core_urgent();
            let h = &mut core.hostility;
            h.break_after_handshake = body
                .break_after_handshake
                .unwrap_or(h.break_after_handshake);
            h.refuse_identify = body.refuse_identify.unwrap_or(h.refuse_identify);
            let now = *h;
            drop(core);
            json_resp(StatusCode::OK, &now)
        }
        "event-rate" => match body.events_per_sec.map(|r| set_rate(shared, r)) {
            Some(Ok(())) => affected(1),
            Some(Err(e)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            None => error(StatusCode::BAD_REQUEST, "events_per_sec is required"),
        },
        "recommended_shards" => match body.shards {
            ShardsParam::One(n) => match shared.set_recommended_shards(n) {
                Ok(()) => json_resp(StatusCode::OK, &json!({"shards": n})),
                Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            },
            ShardsParam::List(_) => error(
                StatusCode::BAD_REQUEST,
                "shards (one number, at least 1) is required",
            ),
        },
        "emit" => match body.count {
            Some(n) if n <= 1_000_000 => {
                emit_now(shared, n);
                affected(n as usize)
            }
            _ => error(StatusCode::BAD_REQUEST, "count (0..=1000000) is required"),
        },
        _ => error(StatusCode::NOT_FOUND, &format!("no control route {path}")),
    }
}

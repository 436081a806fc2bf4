//! The sharder's HTTP endpoints: metrics, probes and runtime controls.
//!
//! - `GET /metrics`: Prometheus text of the process's `metrics` series.
//! - `GET /healthz`: the process answers. It is served from the first
//!   moment of start-up, before `GET /gateway/bot`, Redis and the sink: a
//!   Discord API hiccup or a DNS fault during start-up is a pod that is
//!   alive and not ready, never a liveness failure and a CrashLoopBackOff
//!   that delays every resume.
//! - `GET /readyz`: 200 once every shard of this process is READY or
//!   RESUMED (state `Active`), else 503 with the count (and, while the
//!   process is still starting, what it waits for); a rolling update
//!   therefore waits for this pod's shards before stopping the next pod.
//! - `GET /`: the status page, and `GET /status.json` its data: every
//!   shard of the bot (of this process without Redis) by state, with the
//!   identify queue, the budget, sinks and DNS (see [`crate::status`]).
//!   Read-only and free of secrets, so it needs no token.
//! - `GET /admin/shards`: each shard's state.
//! - `POST /admin/identify-throttle` `{"min_interval_ms": n}`: minimum time
//!   between two identifies of this process, at runtime (0: off).
//! - `GET`/`POST /admin/shed` `{"events": [...]}`: the event names dropped
//!   at the sharder (see [`crate::ShedList`]).
//! - `POST /admin/reshard` `{"total": n, "force_shrink": false}`: starts a
//!   live reshard to `n` shards (202 with the plan; 400 with what to do
//!   when refused; 409 while one runs).
//! - `GET /admin/reshard`: the running total and the reshard in progress.
//!
//! Admin endpoints need `Authorization: Bearer <sharder.admin_token>` when
//! a token is configured; without one they answer only on a loopback
//! listener (403 otherwise), so an exposed port never means an open admin.

use crate::identify::IdentifyScheduler;
use crate::reshard_plan::ReshardRequest;
use crate::resharder::{ReshardCommand, Trigger};
use crate::shard::{ShardHandle, ShardState};
use crate::shed::ShedList;
use crate::status::StatusBoard;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use serde_json::json;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Longest identify throttle accepted at runtime.
pub const MAX_IDENTIFY_THROTTLE: Duration = Duration::from_secs(600);

/// The process's Prometheus recorder ([`bulwark_process::prometheus`]:
/// one per process, its histograms drained even when nobody scrapes),
/// installed on first use. When another kind of recorder holds the slot,
/// a detached one: `/metrics` then shows nothing recorded.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(
        || match bulwark_process::prometheus(|| Ok(PrometheusBuilder::new())) {
            Ok(Some(handle)) => handle,
            Ok(None) => PrometheusBuilder::new().build_recorder().handle(),
            Err(e) => {
                tracing::warn!(error = %e, "no Prometheus recorder; /metrics shows nothing");
                PrometheusBuilder::new().build_recorder().handle()
            }
        },
    )
}

/// What the endpoints look at and change.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once the shards run; until then the process is starting.
    started: OnceLock<Started>,
    /// What start-up waits for, while `started` is unset.
    phase: Mutex<&'static str>,
    shed: ShedList,
    token: config::Secret,
    loopback: bool,
    /// Where reshard requests go, once the shards run.
    reshard: OnceLock<mpsc::Sender<ReshardCommand>>,
    /// The running total and the reshard in progress, for `GET`.
    generation: Mutex<serde_json::Value>,
    /// The status page's reports.
    status: StatusBoard,
}

/// The process's shards and their identify scheduler.
struct Started {
    /// The serving generation's shards (replaced by a live reshard).
    shards: Mutex<Vec<(u32, ShardHandle)>>,
    scheduler: IdentifyScheduler,
}

impl AdminState {
    /// The state of a process whose shards run.
    pub fn new(
        cfg: &config::SharderConfig,
        shards: Vec<(u32, ShardHandle)>,
        scheduler: IdentifyScheduler,
        shed: ShedList,
    ) -> Self {
        let state = Self::starting(cfg, shed);
        state.start(shards, scheduler);
        state
    }

    /// The state of a process still starting: `/healthz` answers,
    /// `/readyz` says what start-up waits for, and the endpoints that need
    /// the shards answer 503 until [`AdminState::start`].
    pub(crate) fn starting(cfg: &config::SharderConfig, shed: ShedList) -> Self {
        prometheus();
        Self {
            inner: Arc::new(Inner {
                started: OnceLock::new(),
                phase: Mutex::new("starting"),
                shed,
                token: cfg.admin_token.clone(),
                loopback: cfg.http_listen.ip().is_loopback(),
                reshard: OnceLock::new(),
                generation: Mutex::new(json!({ "total": cfg.total_shards, "reshard": null })),
                status: StatusBoard::new(cfg),
            }),
        }
    }

    /// Records what start-up waits for now (shown by `/readyz`).
    pub(crate) fn set_phase(&self, phase: &'static str) {
        if let Ok(mut p) = self.inner.phase.lock() {
            *p = phase;
        }
    }

    /// The shards run: every endpoint answers from them from now on.
    pub(crate) fn start(&self, shards: Vec<(u32, ShardHandle)>, scheduler: IdentifyScheduler) {
        if self
            .inner
            .started
            .set(Started {
                shards: Mutex::new(shards),
                scheduler,
            })
            .is_err()
        {
            tracing::warn!("the HTTP endpoints were given the shards twice; kept the first");
        }
    }

    pub(crate) fn phase(&self) -> &'static str {
        self.inner.phase.lock().map_or("starting", |p| *p)
    }

    /// A live reshard replaced the serving shards.
    pub(crate) fn set_shards(&self, shards: Vec<(u32, ShardHandle)>) {
        if let Some(s) = self.inner.started.get() {
            *s.shards.lock().unwrap_or_else(|e| e.into_inner()) = shards;
        }
    }

    /// Reshard requests go to `tx` from now on.
    pub(crate) fn set_reshard(&self, tx: mpsc::Sender<ReshardCommand>) {
        let _ = self.inner.reshard.set(tx);
    }

    /// What `GET /admin/reshard` answers.
    pub(crate) fn set_generation(&self, state: serde_json::Value) {
        *self
            .inner
            .generation
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// The serving generation's shards (empty while starting).
    pub fn serving_shards(&self) -> Vec<(u32, ShardHandle)> {
        self.shards()
    }

    fn shards(&self) -> Vec<(u32, ShardHandle)> {
        self.inner.started.get().map_or_else(Vec::new, |s| {
            s.shards.lock().unwrap_or_else(|e| e.into_inner()).clone()
        })
    }

    fn active(&self) -> usize {
        self.shards()
            .iter()
            .filter(|(_, h)| h.state() == ShardState::Active)
            .count()
    }

    /// Every shard of the process is READY/RESUMED (and there is one).
    fn ready(&self) -> bool {
        let total = self.shards().len();
        total > 0 && self.active() == total
    }

    /// The status page's board.
    pub(crate) fn status(&self) -> &StatusBoard {
        &self.inner.status
    }

    /// The running total and the reshard in progress.
    pub(crate) fn generation(&self) -> serde_json::Value {
        self.inner
            .generation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The scheduler, once the shards run.
    pub(crate) fn scheduler(&self) -> Option<&IdentifyScheduler> {
        self.inner.started.get().map(|s| &s.scheduler)
    }

    /// The answer of an endpoint that needs the shards, before they run.
    fn still_starting(&self) -> Response {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "the sharder is still starting ({}); try again",
                self.phase()
            ),
        )
    }

    /// Refuses an admin request that lacks the token (or any admin request
    /// on a non-loopback listener without a token).
    fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let token = self.inner.token.expose();
        if token.is_empty() {
            if self.inner.loopback {
                return None;
            }
            return Some(error(
                StatusCode::FORBIDDEN,
                "admin endpoints need sharder.admin_token on a non-loopback listener",
            ));
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if self.inner.token.matches_bearer(given) {
            None
        } else {
            Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer realm=\"bulwark-admin\"")],
                    axum::Json(json!({ "error": "missing or wrong bearer token" })),
                )
                    .into_response(),
            )
        }
    }
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(json!({ "error": msg }))).into_response()
}

/// The router over `state`, `/metrics` included.
pub fn router(state: AdminState) -> Router {
    admin_router(state.clone()).merge(metrics_router(state))
}

/// `/metrics` alone, for `sharder.metrics_listen`: a network policy can
/// then admit Prometheus to it and not to the admin endpoints.
pub fn metrics_router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Probes and admin endpoints, without `/metrics`.
pub fn admin_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/admin/shards", get(shards))
        .route("/admin/identify-throttle", post(identify_throttle))
        .route("/admin/shed", get(get_shed).post(set_shed))
        .route("/admin/reshard", get(get_reshard).post(post_reshard))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, state: AdminState, stop: CancellationToken) {
    serve_app(listener, router(state), stop).await;
}

/// Serves `app` on `listener` until `stop`.
pub(crate) async fn serve_app(listener: TcpListener, app: Router, stop: CancellationToken) {
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// The status page: one HTML file with its script and styles inline, so it
/// fetches nothing from outside.
const STATUS_PAGE: &str = include_str!("status_page.html");

async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

async fn status_json(State(s): State<AdminState>) -> Response {
    let view = s.status().view(&s).await;
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(view)).into_response()
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    metrics::gauge!("sharder_shards").set(s.shards().len() as f64);
    metrics::gauge!("sharder_shards_active").set(s.active() as f64);
    metrics::gauge!("sharder_ready").set(f64::from(u8::from(s.ready())));
    for (id, h) in s.shards() {
        let active = h.state() == ShardState::Active;
        metrics::gauge!("sharder_shard_active", "shard" => id.to_string())
            .set(f64::from(u8::from(active)));
    }
    if let Some(scheduler) = s.scheduler() {
        metrics::gauge!("sharder_identify_min_interval_seconds")
            .set(scheduler.min_interval().as_secs_f64());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let (active, total) = (s.active(), s.shards().len());
    let body = if s.inner.started.get().is_some() {
        json!({ "active": active, "shards": total })
    } else {
        json!({ "active": active, "shards": total, "starting": s.phase() })
    };
    if s.ready() {
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

fn state_name(s: &ShardState) -> String {
    match s {
        ShardState::Stopped(exit) => format!("Stopped({exit:?})"),
        other => format!("{other:?}"),
    }
}

async fn shards(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = s.refuse(&headers) {
        return r;
    }
    if s.scheduler().is_none() {
        return s.still_starting();
    }
    let list: Vec<_> = s
        .shards()
        .iter()
        .map(|(id, h)| json!({ "shard_id": id, "state": state_name(&h.state()) }))
        .collect();
    axum::Json(json!({ "shards": list })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Throttle {
    min_interval_ms: u64,
}

async fn identify_throttle(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = s.refuse(&headers) {
        return r;
    }
    let t: Throttle = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"min_interval_ms\": n}}: {e}"),
            );
        }
    };
    let interval = Duration::from_millis(t.min_interval_ms);
    if interval > MAX_IDENTIFY_THROTTLE {
        return error(
            StatusCode::BAD_REQUEST,
            "min_interval_ms is above 600000 (10 minutes)",
        );
    }
    let Some(scheduler) = s.scheduler() else {
        return s.still_starting();
    };
    scheduler.set_min_interval(interval);
    tracing::info!(?interval, "identify throttle changed");
    axum::Json(json!({ "min_interval_ms": t.min_interval_ms })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Shed {
    events: Vec<String>,
}

async fn get_shed(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = s.refuse(&headers) {
        return r;
    }
    axum::Json(json!({ "events": s.inner.shed.get() })).into_response()
}

async fn set_shed(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = s.refuse(&headers) {
        return r;
    }
    let req: Shed = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"events\": [...]}}: {e}"),
            );
        }
    };
    if let Err(e) = s.inner.shed.set(&req.events) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    tracing::info!(events = ?req.events, "shed list changed");
    axum::Json(json!({ "events": s.inner.shed.get() })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reshard {
    total: u32,
    #[serde(default)]
    force_shrink: bool,
}

async fn get_reshard(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(r) = s.refuse(&headers) {
        return r;
    }
    let state = s
        .inner
        .generation
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    axum::Json(state).into_response()
}

async fn post_reshard(State(s): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = s.refuse(&headers) {
        return r;
    }
    let req: Reshard = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"total\": n, \"force_shrink\": false}}: {e}"),
            );
        }
    };
    let Some(tx) = s.inner.reshard.get() else {
        return s.still_starting();
    };
    let (reply, answer) = oneshot::channel();
    let command = ReshardCommand {
        request: ReshardRequest {
            to_total: req.total,
            force_shrink: req.force_shrink,
        },
        trigger: Trigger::Operator,
        reply: Some(reply),
    };
    if tx.send(command).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the sharder is stopping");
    }
    match answer.await {
        Ok(Ok(plan)) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "from": plan.from_total,
                "to": plan.to_total,
                "identifies": plan.identifies,
                "cold_boot_floor_s": plan.cold_boot_floor.as_secs_f64(),
                "session_starts_after": plan.session_starts_after,
            })),
        )
            .into_response(),
        Ok(Err(busy)) if busy.starts_with("busy:") => {
            error(StatusCode::CONFLICT, busy.trim_start_matches("busy: "))
        }
        Ok(Err(refused)) => error(StatusCode::BAD_REQUEST, &refused),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "the sharder is stopping"),
    }
}

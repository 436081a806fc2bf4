//! The HTTP side of the worker: a read API over the cache for bot processes
//! and dashboards, Prometheus metrics, and the probes Kubernetes needs for
//! safe rollouts.
//!
//! * `GET /v1/guilds/{id}`, `/v1/guilds/{id}/channels`, `/roles`,
//!   `/members/{user_id}`: JSON, snowflakes as strings (as Discord does: they
//!   exceed JavaScript's exact integers). 400 for a non-numeric id, 404 for
//!   an unknown one, 503 when the store fails; errors are
//!   `{"error": "..."}`.
//! * `GET /v1/stats`: cache sizes (in-memory store only; `null` for Redis,
//!   where counting would scan the server), consumers running, readiness.
//! * `GET /metrics`: Prometheus text; cache gauges are refreshed per scrape.
//! * `GET /healthz`: 200 while the process serves HTTP. It deliberately
//!   ignores RabbitMQ and Redis: a liveness failure restarts the pod, and a
//!   restart empties the in-memory cache, so a broker outage must never
//!   fail it (restarts should wait for warm caches, not cause cold ones).
//! * Who may read: `/v1/*` needs `Authorization: Bearer <worker.read_token>`
//!   when a token is configured (the production overlay requires one; see
//!   [`config::WorkerConfig::read_token`]); anything else gets 401 with one
//!   message, whatever was wrong, and counts in
//!   `worker_read_api_unauthorized_total`. The token is compared in
//!   constant time ([`config::Secret::matches_bearer`]). The probes stay
//!   open, and `/metrics` carries no cache data; with `worker.metrics_listen`
//!   it moves to a listener of its own ([`metrics_router`]), so a network
//!   policy can admit Prometheus there and bots to the API.
//! * `GET /readyz`: 200 once a partition consumer runs and the cache has
//!   caught up: the backlog of every partition this replica holds now is under
//!   `worker.ready_backlog` (see [`crate::readiness`]), so a rolling update
//!   waits for a warm cache and traffic leaves a worker cut off from the
//!   broker.

use crate::memory::CacheStats;
use crate::model::{GuildView, ImageHash};
use crate::store::Store;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Liveness and readiness, shared by the consumers, the backlog watcher and
/// the HTTP handlers.
#[derive(Debug, Default)]
pub struct Health {
    consumers: AtomicUsize,
    ready: AtomicBool,
}

/// Counts one running consumer until dropped.
#[derive(Debug)]
pub struct ConsumerGuard(Arc<Health>);

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        self.0.consumers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Health {
    /// Marks a consumer as running while the guard lives.
    pub fn consumer(self: &Arc<Self>) -> ConsumerGuard {
        self.consumers.fetch_add(1, Ordering::Relaxed);
        ConsumerGuard(self.clone())
    }

    /// Partition consumers running now.
    pub fn consumers(&self) -> usize {
        self.consumers.load(Ordering::Relaxed)
    }

    /// Sets whether the backlog is under the threshold.
    pub fn set_caught_up(&self, caught_up: bool) {
        self.ready.store(caught_up, Ordering::Relaxed);
    }

    /// Ready: caught up and consuming.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.consumers() > 0
    }
}

type StatsFn = Arc<dyn Fn() -> CacheStats + Send + Sync>;

/// What the handlers read.
pub struct ApiState<S> {
    pub store: Arc<S>,
    pub health: Arc<Health>,
    /// `None`: `/metrics` answers 404 (no recorder installed).
    pub metrics: Option<PrometheusHandle>,
    /// Cache sizes, when the store can count cheaply.
    pub stats: Option<StatsFn>,
    /// Bearer token `/v1/*` requires; `None`: open.
    pub read_token: Option<config::Secret>,
}

impl<S> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            stats: self.stats.clone(),
            read_token: self.read_token.clone(),
        }
    }
}

/// An error answer: status plus `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn snowflake(what: &str, raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().map_err(|_| {
        let shown: String = raw.chars().take(40).collect();
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("{what} must be a numeric snowflake, got {shown:?}"),
        )
    })
}

async fn load<S: Store>(st: &ApiState<S>, raw: &str) -> Result<(u64, GuildView), ApiError> {
    let id = snowflake("guild id", raw)?;
    match st.store.guild(id).await {
        Ok(Some(g)) if g.core.is_some() => Ok((id, g)),
        Ok(_) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("guild {id} is not cached"),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "read API: store failed");
            Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cache store is unavailable".into(),
            ))
        }
    }
}

async fn guild<S: Store>(State(st): State<ApiState<S>>, Path(id): Path<String>) -> ApiResult {
    let (id, g) = load(&st, &id).await?;
    let core = g.core.as_ref().map(|c| &c.value);
    Ok(Json(json!({
        "id": id.to_string(),
        "name": core.map(|c| c.name.as_str()),
        "owner_id": core.map(|c| c.owner_id.to_string()),
        "icon": core.and_then(|c| c.icon.as_ref()).map(ImageHash::to_hex),
        "available": g.available,
        "member_count": g.member_count,
        "cached": {
            "channels": g.channels.len(),
            "roles": g.roles.len(),
            "members": g.members.len(),
            "emojis": g.emojis.len(),
        },
        "version": g.core.as_ref().map(|c| json!({"epoch": c.version.epoch, "seq": c.version.seq})),
    })))
}

async fn channels<S: Store>(State(st): State<ApiState<S>>, Path(id): Path<String>) -> ApiResult {
    let (_, g) = load(&st, &id).await?;
    let list: Vec<Value> = g
        .channels
        .iter()
        .map(|(id, c)| {
            json!({
                "id": id.to_string(),
                "type": c.value.kind,
                "name": c.value.name.as_ref().map(|n| n.as_str()),
                "position": c.value.position,
                "parent_id": c.value.parent_id.map(|p| p.to_string()),
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

async fn roles<S: Store>(State(st): State<ApiState<S>>, Path(id): Path<String>) -> ApiResult {
    let (_, g) = load(&st, &id).await?;
    let list: Vec<Value> = g
        .roles
        .iter()
        .map(|(id, r)| {
            json!({
                "id": id.to_string(),
                "name": r.value.name.as_str(),
                "permissions": r.value.permissions.to_string(),
                "position": r.value.position,
                "color": r.value.color,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

async fn member<S: Store>(
    State(st): State<ApiState<S>>,
    Path((gid, uid)): Path<(String, String)>,
) -> ApiResult {
    let uid = snowflake("user id", &uid)?;
    let gid = snowflake("guild id", &gid)?;
    let m = match st.store.member(gid, uid).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("member {uid} of guild {gid} is not cached"),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "read API: store failed");
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cache store is unavailable".into(),
            ));
        }
    };
    let user = st.store.user(uid).await.ok().flatten();
    Ok(Json(json!({
        "user_id": uid.to_string(),
        "nick": m.value.nick.as_ref().map(|n| n.as_str()),
        "roles": m.value.roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "user": user.map(|u| json!({
            "username": u.name.as_str(),
            "global_name": u.global_name.as_ref().map(|n| n.as_str()),
            "avatar": u.avatar.as_ref().map(ImageHash::to_hex),
            "bot": u.bot,
        })),
    })))
}

async fn stats<S: Store>(State(st): State<ApiState<S>>) -> Json<Value> {
    let cache = st.stats.as_ref().map(|f| f());
    Json(json!({
        "cache": cache,
        "consumers": st.health.consumers(),
        "ready": st.health.ready(),
    }))
}

/// Sets the cache gauges from `s`.
pub fn record_cache_gauges(s: &CacheStats) {
    for (kind, n) in [
        ("guilds", s.guilds),
        ("channels", s.channels),
        ("roles", s.roles),
        ("members", s.members),
        ("emojis", s.emojis),
        ("presences", s.presences),
        ("voice_states", s.voice_states),
        ("users", s.users),
    ] {
        metrics::gauge!("worker_cache_entries", "kind" => kind).set(n as f64);
    }
    metrics::gauge!("worker_cache_bytes_estimate").set(s.bytes_estimate as f64);
}

async fn prometheus<S: Store>(State(st): State<ApiState<S>>) -> Response {
    let Some(handle) = &st.metrics else {
        return (StatusCode::NOT_FOUND, "no metrics recorder").into_response();
    };
    if let Some(f) = &st.stats {
        record_cache_gauges(&f());
    }
    metrics::gauge!("worker_consumers_running").set(st.health.consumers() as f64);
    (
        [("content-type", "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

async fn healthz() -> (StatusCode, &'static str) {
    (StatusCode::OK, "ok\n")
}

async fn readyz<S: Store>(State(st): State<ApiState<S>>) -> (StatusCode, &'static str) {
    if st.health.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "catching up\n")
    }
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

/// Lets a `/v1/*` request through only with the read token, when one is
/// set. One answer for a missing header, another scheme and a wrong token.
async fn require_token<S: Store>(
    State(st): State<ApiState<S>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &st.read_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !token.matches_bearer(given) {
            metrics::counter!("worker_read_api_unauthorized_total").increment(1);
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"bulwark-worker\"")],
                Json(json!({ "error": "missing or wrong bearer token" })),
            )
                .into_response();
        }
    }
    next.run(request).await
}

fn routes<S: Store>(state: ApiState<S>, with_metrics: bool) -> Router {
    let v1 = Router::new()
        .route("/guilds/{id}", get(guild::<S>))
        .route("/guilds/{id}/channels", get(channels::<S>))
        .route("/guilds/{id}/roles", get(roles::<S>))
        .route("/guilds/{id}/members/{user_id}", get(member::<S>))
        .route("/stats", get(stats::<S>))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token::<S>,
        ));
    let mut router = Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>));
    if with_metrics {
        router = router.route("/metrics", get(prometheus::<S>));
    }
    router.fallback(not_found).with_state(state)
}

/// The worker's HTTP routes over `state`, `/metrics` included.
pub fn router<S: Store>(state: ApiState<S>) -> Router {
    routes(state, true)
}

/// The routes of `http_listen` when `/metrics` has a listener of its own.
pub fn api_router<S: Store>(state: ApiState<S>) -> Router {
    routes(state, false)
}

/// `/metrics` alone, for `worker.metrics_listen`.
pub fn metrics_router<S: Store>(state: ApiState<S>) -> Router {
    Router::new()
        .route("/metrics", get(prometheus::<S>))
        .fallback(not_found)
        .with_state(state)
}

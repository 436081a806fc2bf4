//! What a sharder process sets up before its shards, kept apart from the
//! run loop (`runtime.rs`): `GET /gateway/bot` with retries, the Redis
//! connection dialled until it answers, the budget refresh task, and the
//! sink and session store a run chooses between.

use crate::amqp_sink::AmqpSink;
use crate::backoff::Backoff;
use crate::gateway_bot::{GatewayBotError, fetch_gateway_bot};
use crate::identify::IdentifyScheduler;
use crate::runtime::RunError;
use crate::session_redis::RedisSessionStore;
use crate::session_store::{FileSessionStore, SessionKey, SessionStore, StoreError};
use crate::sink::{ChannelSink, EventSink, ShardEvent, SinkClosed, TrySend};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The sink of a run.
pub(crate) enum AnySink {
    Amqp(AmqpSink),
    Channel(ChannelSink),
}

impl EventSink for AnySink {
    async fn send(&self, event: ShardEvent) -> Result<(), SinkClosed> {
        match self {
            Self::Amqp(s) => s.send(event).await,
            Self::Channel(s) => s.send(event).await,
        }
    }

    fn try_send(&self, event: ShardEvent) -> TrySend {
        match self {
            Self::Amqp(s) => s.try_send(event),
            Self::Channel(s) => s.try_send(event),
        }
    }
}

/// The session store of a run.
pub(crate) enum AnyStore {
    File(FileSessionStore),
    Redis(RedisSessionStore),
}

impl SessionStore for AnyStore {
    async fn load(&self, key: SessionKey) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::File(s) => s.load(key).await,
            Self::Redis(s) => s.load(key).await,
        }
    }
    async fn save(&self, key: SessionKey, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Self::File(s) => s.save(key, bytes).await,
            Self::Redis(s) => s.save(key, bytes).await,
        }
    }
    async fn remove(&self, key: SessionKey) -> Result<(), StoreError> {
        match self {
            Self::File(s) => s.remove(key).await,
            Self::Redis(s) => s.remove(key).await,
        }
    }
    async fn retire_generation(&self, total_shards: u32) -> Result<u64, StoreError> {
        match self {
            Self::File(s) => s.retire_generation(total_shards).await,
            Self::Redis(s) => s.retire_generation(total_shards).await,
        }
    }
    async fn load_generation(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Self::File(s) => s.load_generation().await,
            Self::Redis(s) => s.load_generation().await,
        }
    }
    async fn save_generation(&self, bytes: Vec<u8>) -> Result<(), StoreError> {
        match self {
            Self::File(s) => s.save_generation(bytes).await,
            Self::Redis(s) => s.save_generation(bytes).await,
        }
    }
}

/// `GET /gateway/bot`, retried on 429 and transport errors (not on 401 or
/// a bad body) until `shutdown`.
pub(crate) async fn gateway_bot(
    resolver: &dnscache::Resolver,
    cfg: &config::Config,
    token: &config::Secret,
    shutdown: &CancellationToken,
) -> Result<Option<crate::GatewayBot>, RunError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let r = fetch_gateway_bot(
            resolver,
            &cfg.discord.api_base,
            token,
            Duration::from_secs(10),
        )
        .await;
        let delay = match r {
            Ok(g) => return Ok(Some(g)),
            Err(GatewayBotError::RateLimited { retry_after }) => retry_after,
            Err(GatewayBotError::Connect(e)) => {
                tracing::warn!(error = %e, "GET /gateway/bot failed; retrying");
                backoff.next_delay()
            }
            Err(e) => return Err(e.into()),
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// A Redis connection that reconnects after an outage (a plain multiplexed
/// connection never does), dialled now: an invalid URL fails start-up, an
/// unreachable Redis is retried with capped backoff until it answers or
/// `shutdown` (`None`), so a Redis restart during a rollout is a pod that
/// waits, not a crash loop.
pub(crate) async fn redis_connection(
    resolver: &dnscache::Resolver,
    cfg: &config::Config,
    shutdown: &CancellationToken,
) -> Result<Option<dnscache::RedisConnection>, RunError> {
    let conn = dnscache::RedisConnection::lazy(resolver, cfg.redis.url.expose())
        .map_err(|e| RunError::Redis(format!("invalid redis.url ({:?})", e.kind())))?;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match conn.ready().await {
            Ok(()) => return Ok(Some(conn)),
            Err(e) => tracing::warn!(
                error_kind = ?e.kind(),
                "cannot reach Redis (redis.url); retrying; check the URL, its password and that Redis is up"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// Keeps the shared budget fresh: `GET /gateway/bot` every `every`, and
/// as soon as the reset time (as last seen) has passed, with the budget's
/// mark read before each request (see `identify_budget.rs`). Errors are
/// logged and retried at the next turn.
pub(crate) async fn refresh_budget(
    scheduler: IdentifyScheduler,
    resolver: dnscache::Resolver,
    api_base: String,
    token: config::Secret,
    every: Duration,
    max_concurrency: Option<u16>,
) {
    loop {
        let reset_in = scheduler.budget_reset_in() + Duration::from_secs(1);
        tokio::time::sleep(every.min(reset_in)).await;
        let mark = scheduler.budget_mark().await;
        match fetch_gateway_bot(&resolver, &api_base, &token, Duration::from_secs(10)).await {
            Ok(bot) => {
                let mut limit = bot.session_start_limit;
                if let Some(mc) = max_concurrency {
                    limit.max_concurrency = mc;
                }
                scheduler.refresh_budget(limit, mark).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "GET /gateway/bot for the session start budget failed; retrying at the next refresh");
            }
        }
    }
}

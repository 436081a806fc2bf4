//! A Redis connection that comes back after Redis does, dialled through the
//! cache.
//!
//! redis 1.x's `MultiplexedConnection` never reconnects: once Redis restarts
//! or the network drops it, every later command fails, and a process holding
//! one (the worker's Redis store, the sharder's session store and identify
//! lock) stays broken until it is restarted while `/healthz` still answers.
//! The crate's own `ConnectionManager` reconnects but has no DNS hook, so it
//! would dial through getaddrinfo, around this cache.
//!
//! # Algorithm
//! [`RedisConnection`] is cheap to clone; clones share one slot holding the
//! current multiplexed connection and its generation. A command takes the
//! connection from the slot (dialling first if the slot is empty) and runs
//! on it. An error that means the connection is gone (I/O, dropped,
//! refused, unrecoverable) empties the slot, if it still holds the
//! generation that failed, and is returned to the caller: the caller's own
//! retry policy decides what happens to that command. Dials are rate-limited
//! with a capped exponential delay, so a Redis outage costs a few connection
//! attempts, not one per command: between attempts commands fail at once
//! with an error that says when the next dial is due.

use crate::Resolver;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// First delay between two dials after a failure; doubles up to [`MAX_REDIAL`].
const FIRST_REDIAL: Duration = Duration::from_millis(100);
const MAX_REDIAL: Duration = Duration::from_secs(5);

/// A reconnecting, multiplexed Redis connection. Use it wherever a
/// `ConnectionLike` goes (`query_async`, `invoke_async`, pipelines).
#[derive(Clone)]
pub struct RedisConnection {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    slot: Mutex<Slot>,
    /// For `rediss://`: what the server's certificate is checked against,
    /// added to dial errors.
    tls_trust: Option<String>,
}

struct Slot {
    conn: Option<MultiplexedConnection>,
    generation: u64,
    dials: u64,
    next_dial: Option<Instant>,
    delay: Duration,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's connection info holds the password: not printed.
        f.debug_struct("RedisConnection").finish_non_exhaustive()
    }
}

impl RedisConnection {
    /// A connection to `url` through `resolver`, dialled now so that a bad
    /// URL or an unreachable Redis is an error at start-up.
    pub async fn connect(resolver: &Resolver, url: &str) -> Result<Self, RedisError> {
        let conn = Self::lazy(resolver, url)?;
        conn.ready().await?;
        Ok(conn)
    }

    /// Dials now if there is no live connection (subject to the redial
    /// delay after a failure).
    pub async fn ready(&self) -> Result<(), RedisError> {
        self.current().await.map(|_| ())
    }

    /// A connection to `url` through `resolver`, dialled on first use. A
    /// `rediss://` URL trusts the resolver's services CA and presents its
    /// client certificate ([`crate::Trust`]).
    pub fn lazy(resolver: &Resolver, url: &str) -> Result<Self, RedisError> {
        let tls = url.starts_with("rediss://");
        let client = match resolver.trust.redis_certificates() {
            Some(certs) if tls => redis::Client::build_with_tls(url, certs)?,
            _ => redis::Client::open(url)?,
        };
        let tls_trust = tls.then(|| resolver.trust.describe());
        Ok(Self::build(client, resolver.redis_config(), tls_trust))
    }

    /// A connection from a client and a connection config of the caller's.
    pub fn with_client(client: redis::Client, config: redis::AsyncConnectionConfig) -> Self {
        Self::build(client, config, None)
    }

    fn build(
        client: redis::Client,
        config: redis::AsyncConnectionConfig,
        tls_trust: Option<String>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                config,
                slot: Mutex::new(Slot {
                    conn: None,
                    generation: 0,
                    dials: 0,
                    next_dial: None,
                    delay: FIRST_REDIAL,
                }),
                tls_trust,
            }),
        }
    }

    /// Successful dials so far (1 after the first connection).
    pub async fn dials(&self) -> u64 {
        self.shared.slot.lock().await.dials
    }

    /// The live connection and its generation, dialling if there is none
    /// and the redial delay has passed.
    async fn current(&self) -> Result<(MultiplexedConnection, u64), RedisError> {
        let mut slot = self.shared.slot.lock().await;
        if let Some(c) = &slot.conn {
            return Ok((c.clone(), slot.generation));
        }
        let now = Instant::now();
        if let Some(at) = slot.next_dial.filter(|at| *at > now) {
            return Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!(
                    "Redis is unreachable; next connection attempt in {:?}",
                    at - now
                ),
            )));
        }
        let dialled = self
            .shared
            .client
            .get_multiplexed_async_connection_with_config(&self.shared.config)
            .await;
        match dialled {
            Ok(c) => {
                slot.generation += 1;
                slot.dials += 1;
                slot.delay = FIRST_REDIAL;
                slot.next_dial = None;
                slot.conn = Some(c.clone());
                if slot.dials > 1 {
                    tracing::info!(dials = slot.dials, "reconnected to Redis");
                }
                Ok((c, slot.generation))
            }
            Err(e) => {
                slot.next_dial = Some(Instant::now() + slot.delay);
                slot.delay = (slot.delay * 2).min(MAX_REDIAL);
                Err(match &self.shared.tls_trust {
                    Some(trust) => self.tls_context(e, trust),
                    None => e,
                })
            }
        }
    }

    /// A `rediss://` dial error that names the server and the CA its
    /// certificate was checked against (the password stays out).
    fn tls_context(&self, e: RedisError, trust: &str) -> RedisError {
        let addr = &self.shared.client.get_connection_info().addr();
        RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("connecting to Redis at {addr} (rediss) failed: {e}; {trust}"),
        ))
    }

    /// Forgets connection `generation` after an error that means it is gone.
    async fn broken(&self, generation: u64, error: &RedisError) {
        let mut slot = self.shared.slot.lock().await;
        if slot.generation == generation && slot.conn.is_some() {
            tracing::warn!(kind = ?error.kind(), "Redis connection lost; reconnecting on next use");
            slot.conn = None;
        }
    }
}

/// Whether `e` means the connection cannot carry another command.
fn is_gone(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (mut conn, generation) = self.current().await?;
            let r = conn.req_packed_command(cmd).await;
            if let Err(e) = &r
                && is_gone(e)
            {
                self.broken(generation, e).await;
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (mut conn, generation) = self.current().await?;
            let r = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &r
                && is_gone(e)
            {
                self.broken(generation, e).await;
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.shared
            .client
            .get_connection_info()
            .redis_settings()
            .db()
    }
}

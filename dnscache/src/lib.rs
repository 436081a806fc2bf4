//! In-process caching DNS resolver: TTL cache, merged lookups,
//! refresh-ahead, serve-stale, and the connectors that dial through it.
//!
//! Built after an incident where a statistics library asked the cluster DNS
//! for one host 20,000 times a second, pinned CoreDNS, slowed gateway
//! reconnects until resume sessions expired, and then hard-failed when the
//! DNS server restarted. Every outbound name of the sharder and the worker
//! (gateway, RabbitMQ, Redis, Discord HTTP, metrics) goes through one
//! [`Resolver`] per process.
//!
//! # Algorithm
//! A lookup is served from a fresh cache entry when there is one, and a
//! name still in use is refreshed in the background before it expires. When
//! a name has expired, a caller waits at most the stale answer timeout and
//! then gets the last good answer. Concurrent lookups of one name share one
//! upstream query per record type. A name whose query failed is not asked
//! again before the retry interval. The `resolver` module's docs give the
//! details. The connectors resolve through the cache and never call
//! getaddrinfo.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let resolver = dnscache::Resolver::new(&config::DnsConfig::default())?;
//! let addrs = resolver.lookup("gateway.discord.gg", 443).await?;
//! let (ws, _response) = resolver
//!     .connect_websocket("wss://gateway.discord.gg/?v=10&encoding=json", None)
//!     .await?;
//! let redis = redis::Client::open("redis://redis.bulwark.svc.cluster.local/")?
//!     .get_multiplexed_async_connection_with_config(&resolver.redis_config())
//!     .await?;
//! # drop((addrs, ws, redis)); Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod amqp;
mod entry;
mod error;
mod host;
mod http;
mod metrics;
mod redis_connection;
mod redis_dns;
mod resolver;
mod store;
mod stream;
mod tcp;
mod tls;
mod trust;
mod upstream;
mod websocket;

pub use error::{ConnectError, DnsError};
pub use metrics::Stats;
pub use redis_connection::RedisConnection;
pub use resolver::{Resolved, Resolver, Served};
pub use stream::MaybeTls;
pub use tcp::STAGGER;
pub use trust::{Trust, TrustError};
pub use websocket::WebSocket;

//! The redis 1.x client's DNS hook, answered by the cache.
//!
//! # Algorithm
//! redis 1.x lets a client replace its resolver (`redis::io::AsyncDNSResolver`,
//! set through `AsyncConnectionConfig::set_dns_resolver`). [`Resolver`]
//! implements it, so the client connects to our cached (fresh, refreshed or
//! stale) addresses and keeps the original host name for TLS and errors.
//! redis 1.8's `ConnectionManagerConfig` has no such hook, so callers that
//! need reconnects rebuild a multiplexed connection with [`Resolver::redis_config`].

use crate::Resolver;
use redis::io::AsyncDNSResolver;
use redis::{AsyncConnectionConfig, RedisFuture};
use std::net::SocketAddr;

impl AsyncDNSResolver for Resolver {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let addrs = self.lookup(host, port).await.map_err(|e| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    e.to_string(),
                ))
            })?;
            let addrs = crate::tcp::interleave(addrs);
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

impl Resolver {
    /// A redis connection config that resolves through this cache, for
    /// `Client::get_multiplexed_async_connection_with_config`.
    pub fn redis_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new().set_dns_resolver(self.clone())
    }
}

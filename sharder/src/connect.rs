//! Opening a gateway websocket.
//!
//! The shard does not dial by itself: a [`Connector`] does, so the process
//! can route every connection through its caching resolver (crate
//! `dnscache`), and tests can count or fail connections.
//!
//! # Algorithm
//! [`gateway_url`] builds `{base}/?v=10&encoding=json[&compress=...]` (or
//! `{base}?v=10...` when the base has a path) from the
//! URL Discord gave (from `GET /gateway/bot`, or READY's
//! `resume_gateway_url`), dropping any query or trailing slash it carried, so
//! a resume uses the same version, encoding and compression as the original
//! connection. [`ResolverConnector`] (the one to use) resolves through
//! `dnscache`; [`PlainConnector`] dials with tokio-tungstenite's own
//! getaddrinfo path and exists for tools and tests without a resolver. Both
//! bound the message size so a hostile server cannot make them buffer
//! gigabytes.

use gateway_protocol::Compression;
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A gateway connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {url}: {message}")]
pub struct ConnectError {
    /// The URL (gateway URLs carry no secrets).
    pub url: String,
    pub message: String,
}

/// Opens websocket connections.
pub trait Connector: Send + Sync + 'static {
    /// The byte stream under the websocket.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Connects to `url` (ws:// or wss://).
    fn connect(
        &self,
        url: &str,
        max_message: usize,
    ) -> impl Future<Output = Result<WebSocketStream<Self::Stream>, ConnectError>> + Send;
}

/// Dials with tokio-tungstenite directly.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainConnector;

impl Connector for PlainConnector {
    type Stream = tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>;

    async fn connect(
        &self,
        url: &str,
        max_message: usize,
    ) -> Result<WebSocketStream<Self::Stream>, ConnectError> {
        let config = ws_config(max_message);
        tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map(|(ws, _response)| ws)
            .map_err(|e| ConnectError {
                url: url.to_owned(),
                message: e.to_string(),
            })
    }
}

/// Websocket limits and buffers of a gateway connection. tungstenite's
/// default 128 KiB read buffer per connection dominated the memory of an
/// idle shard (about 186 KiB each at 1,000 shards); gateway frames arrive
/// in small reads, and a large payload grows the frame buffer on its own.
fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 8 * 1024;

/// Dials through the process's caching resolver (`dnscache`), so a
/// reconnect storm of hundreds of shards costs one DNS query per name per
/// TTL and keeps working on a stale answer while the cluster DNS is down.
#[derive(Debug, Clone)]
pub struct ResolverConnector {
    resolver: dnscache::Resolver,
}

impl ResolverConnector {
    /// A connector over `resolver`.
    pub fn new(resolver: dnscache::Resolver) -> Self {
        Self { resolver }
    }
}

impl Connector for ResolverConnector {
    type Stream = dnscache::MaybeTls;

    async fn connect(
        &self,
        url: &str,
        max_message: usize,
    ) -> Result<WebSocketStream<Self::Stream>, ConnectError> {
        let config = ws_config(max_message);
        self.resolver
            .connect_websocket(url, Some(config))
            .await
            .map(|(ws, _response)| ws)
            .map_err(|e| ConnectError {
                url: url.to_owned(),
                message: e.to_string(),
            })
    }
}

/// The URL to connect to, from a base URL Discord gave.
pub fn gateway_url(base: &str, compression: Compression) -> String {
    let base = base
        .split(['?', '#'])
        .next()
        .unwrap_or(base)
        .trim_end_matches('/');
    let after_scheme = base.find("://").map_or(base, |i| &base[i + 3..]);
    let slash = if after_scheme.contains('/') { "" } else { "/" };
    match compression.query_value() {
        Some(c) => format!("{base}{slash}?v=10&encoding=json&compress={c}"),
        None => format!("{base}{slash}?v=10&encoding=json"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            gateway_url("wss://gateway.discord.gg", Compression::ZstdStream),
            "wss://gateway.discord.gg/?v=10&encoding=json&compress=zstd-stream"
        );
        assert_eq!(
            gateway_url("wss://r.discord.gg/?v=9&encoding=etf", Compression::None),
            "wss://r.discord.gg/?v=10&encoding=json"
        );
        assert_eq!(
            gateway_url("ws://127.0.0.1:9/", Compression::ZlibStream),
            "ws://127.0.0.1:9/?v=10&encoding=json&compress=zlib-stream"
        );
        assert_eq!(
            gateway_url("ws://127.0.0.1:9/resume/", Compression::None),
            "ws://127.0.0.1:9/resume?v=10&encoding=json"
        );
    }

    #[tokio::test]
    async fn refused_connection_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = PlainConnector
            .connect(&format!("ws://127.0.0.1:{port}/"), 1024)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("127.0.0.1"), "{e}");
    }
}

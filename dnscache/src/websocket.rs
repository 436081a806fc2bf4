//! Websocket client connections (`ws://`, `wss://`) dialled through the
//! cache.
//!
//! # Algorithm
//! The URL's host is resolved by [`Resolver`], connected with
//! [`Resolver::connect_tcp`], wrapped in TLS with SNI = the URL's host for
//! `wss`, and the websocket handshake of tokio-tungstenite runs over that
//! stream (`client_async_with_config`). tokio-tungstenite's own connect
//! functions, which would call getaddrinfo, are never used.

use crate::Resolver;
use crate::error::ConnectError;
use crate::stream::{MaybeTls, Target};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A websocket over [`MaybeTls`].
pub type WebSocket = WebSocketStream<MaybeTls>;

impl Resolver {
    /// Opens a websocket to `url` (`ws://` or `wss://`); `config` sets frame
    /// and message limits (tungstenite's defaults when `None`).
    pub async fn connect_websocket(
        &self,
        url: &str,
        config: Option<WebSocketConfig>,
    ) -> Result<(WebSocket, Response), ConnectError> {
        let (_, target) = Target::parse(url)?;
        if !url.starts_with("ws://") && !url.starts_with("wss://") {
            return Err(ConnectError::InvalidUrl {
                url: url.to_owned(),
                reason: "a websocket URL starts with ws:// or wss://".into(),
            });
        }
        let stream = self.dial(&target).await?;
        tokio_tungstenite::client_async_with_config(url, stream, config)
            .await
            .map_err(|e| ConnectError::WebSocket {
                url: url.to_owned(),
                source: Box::new(e),
            })
    }
}

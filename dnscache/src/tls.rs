//! TLS on top of [`Resolver::connect_tcp`], with rustls and the `ring`
//! provider.
//!
//! # Algorithm
//! The server name for SNI and certificate checks is the host name the
//! caller asked for, never the resolved IP. The default client
//! configuration trusts the webpki roots and offers ALPN `http/1.1`, since
//! every TLS use here (websocket, HTTP) is HTTP/1.1 based.

use crate::Resolver;
use crate::error::ConnectError;
use rustls::pki_types::ServerName;
use std::sync::{Arc, OnceLock};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The webpki-roots client configuration, built once per process.
pub(crate) fn default_client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| crate::trust::build(crate::trust::webpki_roots(), None, true))
        .clone()
}

/// The ring provider supports the safe default protocol versions; this is
/// unreachable in practice.
#[allow(clippy::panic)]
pub(crate) fn unreachable_builder() -> ! {
    panic!("rustls ring provider supports no TLS version")
}

impl Resolver {
    /// TCP through the cache, then a TLS handshake with SNI `host`.
    pub async fn connect_tls(
        &self,
        host: &str,
        port: u16,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let tcp = self.connect_tcp(host, port).await?;
        tls_handshake(&self.tls, tcp, host, port).await
    }
}

pub(crate) async fn tls_handshake(
    config: &Arc<rustls::ClientConfig>,
    tcp: TcpStream,
    host: &str,
    port: u16,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let server_name = ServerName::try_from(bare.to_owned()).map_err(|e| ConnectError::Tls {
        host: host.to_owned(),
        port,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    TlsConnector::from(config.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            host: host.to_owned(),
            port,
            source,
        })
}

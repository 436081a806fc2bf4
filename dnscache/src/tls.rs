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
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|e| {
                // The ring provider supports the safe defaults; this branch
                // is unreachable in practice but must not panic.
                tracing::error!(error = %e, "dnscache: rustls defaults rejected");
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map(|b| {
                    b.with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| unreachable_config())
            });
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

#[allow(clippy::panic)]
fn unreachable_config() -> rustls::ClientConfig {
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

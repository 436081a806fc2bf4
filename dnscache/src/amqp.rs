//! RabbitMQ (lapin 4) connections whose broker name is resolved by the
//! cache.
//!
//! # Algorithm
//! lapin 4 has a transport hook, `Connection::connector`, which takes a
//! closure that opens the socket; lapin calls it for the first connection
//! and again for every reconnect. Our closure resolves the URI's host
//! through [`Resolver`] (fresh, refreshed or stale answer; no getaddrinfo)
//! and hands lapin's reactor the resolved addresses, which it tries in turn.
//! For `amqps://` the stream is upgraded with the original host name for SNI
//! and the certificate check, by rustls with the resolver's services trust
//! (`[tls]`: the operator's CA bundle and client certificate, see
//! [`crate::Trust`]), never lapin's own root selection. A failed handshake
//! names the broker and the CA it was checked against.
//! We did not rewrite the URI to an IP literal: that would lose the name for
//! TLS and for lapin's own error messages.

use crate::Resolver;
use lapin::tcp::AsyncTcpStream;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

impl Resolver {
    /// Connects to the broker at `uri` (`amqp://user:pass@host:port/vhost`),
    /// resolving `host` through the cache on every (re)connect.
    pub async fn amqp_connect(
        &self,
        uri: &str,
        properties: ConnectionProperties,
    ) -> lapin::Result<Connection> {
        let parsed: AMQPUri = uri.parse().map_err(|e: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid AMQP URI {}: {e}", redact(uri)),
            )
        })?;
        let runtime = lapin::runtime::default_runtime()?;
        let resolver = self.clone();
        let connector = tcp_stream::RustlsConnector::from(self.trust.services.clone());
        Connection::connector(
            parsed,
            runtime,
            async move |uri: AMQPUri, runtime| {
                let host = uri.authority.host.clone();
                let addrs = resolver
                    .lookup(&host, uri.authority.port)
                    .await
                    .map_err(std::io::Error::other)?;
                let addrs = crate::tcp::interleave(addrs);
                let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
                Ok(match uri.scheme {
                    AMQPScheme::AMQP => stream,
                    AMQPScheme::AMQPS => {
                        let name = host.trim_start_matches('[').trim_end_matches(']');
                        stream.into_rustls(&connector, name).await.map_err(|e| {
                            std::io::Error::new(
                                e.kind(),
                                format!(
                                    "TLS to the broker {host}:{} failed: {e}; {}",
                                    uri.authority.port,
                                    resolver.trust.describe()
                                ),
                            )
                        })?
                    }
                })
            },
            properties,
        )
        .await
    }
}

/// The URI without its password, for error messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &uri[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &uri[..s + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("amqp://guest:secret@rabbit:5672/%2f"),
            "amqp://guest:***@rabbit:5672/%2f"
        );
        assert_eq!(super::redact("amqp://rabbit"), "amqp://rabbit");
    }
}

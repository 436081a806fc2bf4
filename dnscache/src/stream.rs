//! A connection that is plain TCP or TLS over TCP, chosen by URL scheme.
//!
//! # Algorithm
//! `ws://`/`http://` give [`MaybeTls::Plain`], `wss://`/`https://` give
//! [`MaybeTls::Tls`] (SNI and certificate name = the URL's host). Both
//! inner streams are `Unpin`, so the enum forwards the tokio I/O traits by
//! matching, with no pin projection. [`Target`] is the parsed URL authority
//! every URL connector dials.

use crate::Resolver;
use crate::error::ConnectError;
use hyper::Uri;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Host, port and TLS choice of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

impl Target {
    /// Reads a `ws`, `wss`, `http` or `https` URL.
    pub(crate) fn parse(url: &str) -> Result<(Uri, Self), ConnectError> {
        let bad = |reason: &str| ConnectError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("ws" | "http") => (false, 80),
            Some("wss" | "https") => (true, 443),
            Some(other) => return Err(bad(&format!("unsupported scheme {other:?}"))),
            None => return Err(bad("no scheme; use ws://, wss://, http:// or https://")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(default_port);
        Ok((uri, Self { host, port, tls }))
    }
}

impl Resolver {
    /// Dials `target` through the cache, with TLS when its scheme says so.
    pub(crate) async fn dial(&self, target: &Target) -> Result<MaybeTls, ConnectError> {
        let tcp = self.connect_tcp(&target.host, target.port).await?;
        if target.tls {
            let tls = crate::tls::tls_handshake(&self.tls, tcp, &target.host, target.port).await?;
            Ok(MaybeTls::Tls(Box::new(tls)))
        } else {
            Ok(MaybeTls::Plain(tcp))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_targets_or_clear_errors() {
        let (_, t) = Target::parse("wss://gateway.discord.gg/?v=10&encoding=json")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            t,
            Target {
                host: "gateway.discord.gg".into(),
                port: 443,
                tls: true
            }
        );
        let (_, t) = Target::parse("http://127.0.0.1:8080/x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.port, t.tls), (8080, false));
        for bad in [
            "",
            "gateway.discord.gg",
            "ftp://x/",
            "ws:///nohost",
            "http://[::1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}

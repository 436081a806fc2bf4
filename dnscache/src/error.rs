//! Errors of the resolver and of the connectors built on it.
//!
//! # Algorithm
//! Every error carries the context an operator needs at 3 a.m. without a
//! debugger: the host that was looked up and the upstream that was asked
//! (`upstream` is the configured server list, e.g. `10.96.0.10:53`), wrapped
//! around the underlying cause. Connect errors wrap a [`DnsError`] when
//! resolution failed, so a caller can tell "DNS is down" from "the peer
//! refused".

use std::net::SocketAddr;
use std::time::Duration;

/// A lookup that could not be answered, not even from a stale answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    /// The host name cannot be a DNS name (empty, too long, bad label).
    #[error("invalid host name {host:?}: {reason}")]
    InvalidName { host: String, reason: String },
    /// The upstream said the name does not exist, or has no A/AAAA records.
    /// Cached for the negative TTL.
    #[error("{host}: no such host (answered by {upstream})")]
    NotFound { host: String, upstream: String },
    /// The upstream failed (timeout, SERVFAIL, refused, network) and no last
    /// good answer is younger than the max stale age.
    #[error(
        "{host}: upstream {upstream} failed ({cause}) and no answer younger than the max stale age {max_stale:?} is cached"
    )]
    UpstreamFailed {
        host: String,
        upstream: String,
        cause: String,
        max_stale: Duration,
    },
    /// The upstream failed less than the retry interval ago; the name is not
    /// asked again before then (no retry storm), and nothing usable is cached.
    #[error(
        "{host}: upstream {upstream} failed {ago:?} ago ({cause}); next attempt after the retry interval {retry_interval:?}"
    )]
    RetryLater {
        host: String,
        upstream: String,
        cause: String,
        ago: Duration,
        retry_interval: Duration,
    },
    /// The resolver could not be built (bad upstream list, unreadable
    /// resolv.conf).
    #[error("building the resolver: {0}")]
    Setup(String),
}

impl DnsError {
    /// The host the failed lookup was for, when there is one.
    pub fn host(&self) -> Option<&str> {
        match self {
            Self::InvalidName { host, .. }
            | Self::NotFound { host, .. }
            | Self::UpstreamFailed { host, .. }
            | Self::RetryLater { host, .. } => Some(host),
            Self::Setup(_) => None,
        }
    }
}

/// A connection that could not be made through the resolver.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Resolution failed; see the wrapped error for host and upstream.
    #[error(transparent)]
    Dns(#[from] DnsError),
    /// Every resolved address was tried and none accepted the connection.
    #[error("{host}:{port}: could not connect to any of {addrs:?}: {last}")]
    Unreachable {
        host: String,
        port: u16,
        addrs: Vec<SocketAddr>,
        last: std::io::Error,
    },
    /// The name resolved to no address at all.
    #[error("{host}:{port}: resolved to no address")]
    NoAddress { host: String, port: u16 },
    /// The TLS handshake failed.
    #[error("{host}:{port}: TLS handshake failed: {source}")]
    Tls {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    /// The URL is unusable (bad scheme, no host, bad port).
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The websocket handshake failed.
    #[error("{url}: websocket handshake failed: {source}")]
    WebSocket {
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The HTTP exchange failed.
    #[error("{url}: HTTP request failed: {source}")]
    Http { url: String, source: hyper::Error },
    /// The HTTP exchange exceeded its deadline.
    #[error("{url}: HTTP request timed out after {timeout:?}")]
    HttpTimeout { url: String, timeout: Duration },
}

//! TCP connections to a host name, resolved through the cache.
//!
//! # Algorithm
//! Happy-eyeballs-lite (after RFC 8305): the resolved addresses are
//! interleaved by family (IPv6 and IPv4 alternate, starting with the family
//! of the first answer), then attempted in that order. Each attempt has the
//! configured per-address timeout; if an attempt has neither succeeded nor
//! failed after [`STAGGER`], the next address is started in parallel. The
//! first connection to succeed wins and the others are dropped. A refused
//! address moves on at once. No caller ever falls back to getaddrinfo.

use crate::Resolver;
use crate::error::ConnectError;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Delay before the next address is tried alongside a slow one (RFC 8305's
/// "Connection Attempt Delay").
pub const STAGGER: Duration = Duration::from_millis(250);

impl Resolver {
    /// Connects to `host:port`, trying every resolved address (see the
    /// module docs for the order and timeouts).
    pub async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let addrs = self.lookup(host, port).await?;
        connect_any(host, port, interleave(addrs), self.inner.connect_timeout).await
    }
}

/// Alternates address families, keeping each family's order.
pub(crate) fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (v6, v4): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv6);
    let (mut a, mut b) = if first_v6 {
        (v6.into_iter(), v4.into_iter())
    } else {
        (v4.into_iter(), v6.into_iter())
    };
    let mut out = Vec::with_capacity(a.len() + b.len());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

async fn connect_any(
    host: &str,
    port: u16,
    addrs: Vec<SocketAddr>,
    per_address: Duration,
) -> Result<TcpStream, ConnectError> {
    if addrs.is_empty() {
        return Err(ConnectError::NoAddress {
            host: host.to_owned(),
            port,
        });
    }
    let mut pending = addrs.clone().into_iter();
    let mut attempts: JoinSet<std::io::Result<TcpStream>> = JoinSet::new();
    let mut last = std::io::Error::other("no attempt made");
    let start = |attempts: &mut JoinSet<_>, addr: SocketAddr| {
        attempts.spawn(async move {
            match tokio::time::timeout(per_address, TcpStream::connect(addr)).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{addr}: no connection within {per_address:?}"),
                )),
            }
        });
    };
    if let Some(addr) = pending.next() {
        start(&mut attempts, addr);
    }
    loop {
        let more = pending.len() > 0;
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(stream))) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Some(Ok(Err(e))) => {
                    last = e;
                    if let Some(addr) = pending.next() {
                        start(&mut attempts, addr);
                    }
                }
                Some(Err(join)) => {
                    last = std::io::Error::other(join.to_string());
                    if let Some(addr) = pending.next() {
                        start(&mut attempts, addr);
                    }
                }
                None => {
                    return Err(ConnectError::Unreachable {
                        host: host.to_owned(),
                        port,
                        addrs,
                        last,
                    });
                }
            },
            () = tokio::time::sleep(STAGGER), if more => {
                if let Some(addr) = pending.next() {
                    start(&mut attempts, addr);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_alternate() {
        let a4 = |n: u8| SocketAddr::from(([10, 0, 0, n], 1));
        let a6 = |n: u16| SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, n], 1));
        assert_eq!(
            interleave(vec![a4(1), a4(2), a4(3), a6(1)]),
            vec![a4(1), a6(1), a4(2), a4(3)]
        );
        assert_eq!(
            interleave(vec![a6(1), a6(2), a4(1)]),
            vec![a6(1), a4(1), a6(2)]
        );
        assert!(interleave(Vec::new()).is_empty());
    }

    #[tokio::test]
    async fn refused_addresses_fall_through_to_a_listening_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let good = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        // A port that was free a moment ago refuses connections.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            l.local_addr().unwrap_or_else(|e| panic!("{e}"))
        };
        let s = connect_any("t", 1, vec![closed, good], Duration::from_secs(2))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.peer_addr().unwrap_or_else(|e| panic!("{e}")), good);
        let e = connect_any("t", 1, vec![closed], Duration::from_secs(2)).await;
        assert!(matches!(e, Err(ConnectError::Unreachable { .. })));
    }

    #[tokio::test]
    async fn a_silent_address_does_not_hold_up_the_next_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let good = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        // TEST-NET-1 (RFC 5737): never routed, so a SYN there goes
        // unanswered on hosts with a default route, and the stagger is what
        // moves on. On hosts without a route it fails at once, and this
        // checks only the fall-through.
        let silent = SocketAddr::from(([192, 0, 2, 1], 9));
        let started = std::time::Instant::now();
        let s = connect_any("t", 1, vec![silent, good], Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.peer_addr().unwrap_or_else(|e| panic!("{e}")), good);
        // Without the stagger this would wait for the 30 s per-address timeout.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}

//! A TCP proxy on `127.0.0.1:<free port>` that a test cuts and restores:
//! the broker or Redis outage, without touching the shared RabbitMQ and
//! Redis that other tests use.
//!
//! The client under test dials [`CutProxy::addr`] instead of the service.
//! [`CutProxy::cut`] drops every open connection and from then on accepts
//! each new connection and closes it at once, as a client sees a broker
//! whose pod was deleted; [`CutProxy::restore`] forwards again.
//! [`CutProxy::hold`] keeps the service's bytes (a broker's confirms, say)
//! from reaching the client until [`CutProxy::release`], with the
//! connection open: a busy pipe for exactly as long as a test needs.
//! [`CutProxy::retarget`] sends new connections to another upstream while
//! open ones stay: a Service whose endpoints changed in a rolling update.
//!
//! Every accepted connection is timestamped, so a test can count the
//! client's reconnect attempts during an outage ([`CutProxy::refused`],
//! [`CutProxy::attempts_between`]) and hold them against its backoff
//! ([`crate::reconnect_budget`]).
//!
//! # Algorithm
//! One accept loop; each forwarded connection copies both ways, the
//! service-to-client half waiting while held, each half closing its
//! writer at end of stream (as `tokio::io::copy_bidirectional` does). A
//! watch channel carries "up": a forwarder ends as soon as it reads
//! "down", whenever the cut came.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
struct State {
    /// When each connection was accepted, forwarded or refused.
    attempts: Mutex<Vec<Instant>>,
    /// Connections accepted (and closed at once) while cut.
    refused: AtomicU64,
    /// `true` while forwarding.
    up: watch::Sender<bool>,
    /// `true` while the service's bytes are held back.
    held: watch::Sender<bool>,
    /// Where new connections go.
    upstream: Mutex<SocketAddr>,
}

/// A running proxy to one upstream; stops (cut) when dropped.
#[derive(Debug)]
pub struct CutProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl CutProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            attempts: Mutex::new(Vec::new()),
            refused: AtomicU64::new(0),
            up: watch::channel(true).0,
            held: watch::channel(false).0,
            upstream: Mutex::new(upstream),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.attempts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Instant::now());
                if !*s.up.borrow() {
                    s.refused.fetch_add(1, Ordering::Relaxed);
                    drop(client); // the client sees the connection close
                    continue;
                }
                let upstream = *s
                    .upstream
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                tokio::spawn(forward(
                    client,
                    upstream,
                    s.up.subscribe(),
                    s.held.subscribe(),
                ));
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The address the client under test dials.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port of [`CutProxy::addr`].
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The outage: drops every connection and refuses new ones until
    /// [`CutProxy::restore`].
    pub fn cut(&self) {
        self.state.up.send_replace(false);
    }

    /// Ends the outage.
    pub fn restore(&self) {
        self.state.up.send_replace(true);
    }

    /// Sends new connections to `upstream`; open ones stay where they are.
    pub fn retarget(&self, upstream: SocketAddr) {
        *self
            .state
            .upstream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = upstream;
    }

    /// Holds back what the service sends (the connections stay open).
    pub fn hold(&self) {
        self.state.held.send_replace(true);
    }

    /// Lets the held bytes through, and what follows.
    pub fn release(&self) {
        self.state.held.send_replace(false);
    }

    /// Connections accepted while cut: the client's attempts to reconnect.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// Connections accepted (forwarded or refused) so far.
    pub fn attempts(&self) -> usize {
        self.attempt_times().len()
    }

    /// Connections accepted (forwarded or refused) in `[from, to)`.
    pub fn attempts_between(&self, from: Instant, to: Instant) -> usize {
        self.attempt_times()
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    }

    fn attempt_times(&self) -> std::sync::MutexGuard<'_, Vec<Instant>> {
        self.state
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// Copies both ways until both sides are done, either fails, or the proxy
/// is cut.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut up: watch::Receiver<bool>,
    held: watch::Receiver<bool>,
) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rd, mut client_wr) = client.split();
    let (mut server_rd, mut server_wr) = server.split();
    let to_service = async {
        tokio::io::copy(&mut client_rd, &mut server_wr).await?;
        server_wr.shutdown().await
    };
    let to_client = copy_unless_held(&mut server_rd, &mut client_wr, held);
    tokio::select! {
        _ = async { tokio::try_join!(to_service, to_client) } => {}
        _ = up.wait_for(|up| !up) => {}
    }
}

/// Copies `from` to `to`, each read passed on only while not held; shuts
/// `to` down at the end of `from`.
async fn copy_unless_held(
    from: &mut (impl AsyncRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    mut held: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 || held.wait_for(|held| !held).await.is_err() {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    /// An echo server on a free port.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await?;
        Ok(got)
    }

    #[tokio::test]
    async fn forwards_cuts_refuses_and_restores() {
        let proxy = CutProxy::start(echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"one").await.unwrap(), b"one");

        proxy.cut();
        let mut buf = [0u8; 1];
        let read = timeout(Duration::from_secs(5), a.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "the open connection is cut");
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        let read = timeout(Duration::from_secs(5), b.read(&mut buf))
            .await
            .unwrap();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a new one is closed at once"
        );
        assert_eq!(proxy.refused(), 1);

        proxy.restore();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut c, b"two").await.unwrap(), b"two");
        assert_eq!(proxy.attempts(), 3);
        let now = Instant::now();
        assert_eq!(proxy.attempts_between(now, now), 0);
    }

    /// An upstream that answers every connection with `tag` and closes.
    async fn tagged(tag: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(tag).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn retargeting_moves_new_connections_only() {
        let proxy = CutProxy::start(echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"old").await.unwrap(), b"old");
        proxy.retarget(tagged(b"new").await);
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut got = [0u8; 3];
        timeout(Duration::from_secs(5), b.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"new");
        assert_eq!(
            round_trip(&mut a, b"still").await.unwrap(),
            b"still",
            "the open connection stays on the old upstream"
        );
    }

    #[tokio::test]
    async fn holding_keeps_the_answer_until_released() {
        let proxy = CutProxy::start(echo().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"warm").await.unwrap(), b"warm");
        proxy.hold();
        a.write_all(b"held").await.unwrap();
        let mut got = [0u8; 4];
        let early = timeout(Duration::from_millis(200), a.read_exact(&mut got)).await;
        assert!(early.is_err(), "answered while held");
        proxy.release();
        timeout(Duration::from_secs(5), a.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"held");
    }
}

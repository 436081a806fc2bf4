//! A fault-injecting TCP proxy: the broker or Redis outage, without
//! touching the shared RabbitMQ and Redis that other tests use.
//!
//! The process under test dials the proxy's loopback port instead of the
//! service. [`FaultProxy::down`] cuts every open connection and from then
//! on accepts each new connection and closes it at once, as a restarting
//! broker does; [`FaultProxy::up`] forwards again. Every accepted
//! connection is timestamped, so a scenario can count reconnect attempts
//! per second of outage and compare them with the client's backoff budget.

use crate::{Result, ScenarioError};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
struct State {
    attempts: Mutex<Vec<Instant>>,
    /// `true` while forwarding; every change cuts open connections.
    up: watch::Sender<bool>,
}

/// A running proxy to one upstream.
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts forwarding `127.0.0.1:<free port>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| ScenarioError::io("binding the proxy", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ScenarioError::io("proxy address", e))?;
        let (up, _) = watch::channel(true);
        let state = Arc::new(State {
            attempts: Mutex::new(Vec::new()),
            up,
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.attempts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Instant::now());
                if !*s.up.borrow() {
                    drop(client);
                    continue;
                }
                let cut = s.up.subscribe();
                tokio::spawn(forward(client, upstream, cut));
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The outage: cuts every connection and refuses service until [`up`].
    ///
    /// [`up`]: FaultProxy::up
    pub fn down(&self) {
        self.state.up.send_replace(false);
    }

    /// Ends the outage.
    pub fn up(&self) {
        self.state.up.send_replace(true);
    }

    /// Connections accepted (forwarded or refused) in `[from, to)`.
    pub fn attempts_between(&self, from: Instant, to: Instant) -> usize {
        self.state
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    }

    /// Connections accepted so far.
    pub fn attempts(&self) -> usize {
        self.state
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.down();
        self.task.abort();
    }
}

/// Copies both ways until either side closes or the proxy state changes.
async fn forward(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
    }
}

/// The most connection attempts a client with "equal jitter" capped
/// exponential backoff can make in `window` after a loss: one at once,
/// then attempt `n` waits at least `min(max, base * 2^n) / 2`.
pub fn backoff_budget(base_ms: u64, max_ms: u64, window_ms: u64) -> usize {
    let mut attempts = 1;
    let mut elapsed = 0u64;
    for n in 0..64u32 {
        let cap = base_ms.saturating_mul(1u64 << n.min(40)).min(max_ms);
        elapsed = elapsed.saturating_add(cap / 2);
        if elapsed > window_ms {
            break;
        }
        attempts += 1;
    }
    attempts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_minimum_waits() {
        // 200 ms base: waits >= 100, 200, 400, 800 ms ... within 1 s: 1 + 3.
        assert_eq!(backoff_budget(200, 15_000, 1_000), 4);
        // A 10 ms cap cannot make a storm vanish: 5 ms each.
        assert_eq!(backoff_budget(10, 10, 100), 21);
    }
}

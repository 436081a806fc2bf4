//! The worker's AMQP session, kept alive until shutdown.
//!
//! # Algorithm
//! A session connects (through the process's caching resolver), declares
//! the shared topology, and runs one consumer per consumed partition on its
//! own channel, plus the backlog watcher that drives `/readyz`. It ends when
//! a consumer stops (its channel or the connection closed) or the watcher
//! fails; the supervisor then reconnects after a capped, jittered backoff
//! (100 ms doubling to 30 s, half to full of it), so a broker restart does
//! not bring every replica back at once. A session that ran and ended
//! cleanly resets the backoff.
//!
//! On shutdown every consumer cancels its subscription after acking what
//! it finished (see [`crate::consume_partition_with`]), so the
//! single-active-consumer role moves to another replica at once and the
//! unacked prefetch is redelivered there; the supervisor then returns. The
//! caller bounds that drain with its grace.

use crate::consumer::{AmqpTopology, ConsumeError, consume_partition_with};
use crate::http::Health;
use crate::output::Unconfirmed;
use crate::processor::Worker;
use crate::store::Store;
use config::{Config, redact_url};
use dnscache::Resolver;
use lapin::ConnectionProperties;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the partition backlogs are checked for `/readyz`.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

/// Why a session ended (it is retried).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting to RabbitMQ: {0}")]
    Connect(#[source] lapin::Error),
    #[error("opening a channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error("declaring the topology: {0}")]
    Declare(#[source] lapin::Error),
    #[error("consumer: {0}")]
    Consumer(#[from] ConsumeError),
    #[error("consumer task panicked: {0}")]
    Panicked(#[from] tokio::task::JoinError),
    #[error("a consumer stopped: the channel or connection closed")]
    ConsumerStopped,
    #[error("checking the partition backlog: {0}")]
    Backlog(#[source] lapin::Error),
}

/// What every session of the process shares.
pub(crate) struct Supervisor<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) resolver: Resolver,
    pub(crate) health: Arc<Health>,
    /// The record of unconfirmed output, when publishing.
    pub(crate) unconfirmed: Option<Arc<Unconfirmed>>,
    pub(crate) topology: AmqpTopology,
    pub(crate) partitions: Vec<u32>,
}

impl Supervisor<'_> {
    /// Runs sessions, reconnecting with backoff, until `stop` is cancelled
    /// and the current session has drained.
    pub(crate) async fn run<S: Store>(&self, worker: Arc<Worker<S>>, stop: &CancellationToken) {
        let url = self.cfg.amqp.url.expose();
        let mut attempt = 0u32;
        while !stop.is_cancelled() {
            match self.session(&worker, stop).await {
                Ok(()) => attempt = 0,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    let wait = reconnect_delay(attempt);
                    tracing::warn!(error = %e, ?wait, url = %redact_url(url), "amqp session ended; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => {}
                    }
                }
            }
        }
    }

    async fn session<S: Store>(
        &self,
        worker: &Arc<Worker<S>>,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let conn = self
            .resolver
            .amqp_connect(self.cfg.amqp.url.expose(), ConnectionProperties::default())
            .await
            .map_err(SessionError::Connect)?;
        let ch = conn.create_channel().await.map_err(SessionError::Channel)?;
        self.topology
            .declare(&ch)
            .await
            .map_err(SessionError::Declare)?;
        let mut tasks = tokio::task::JoinSet::new();
        for &p in &self.partitions {
            let ch = conn.create_channel().await.map_err(SessionError::Channel)?;
            let guard = self.health.consumer();
            let run = consume_partition_with(
                worker.clone(),
                ch,
                self.topology.clone(),
                p,
                self.cfg.worker.prefetch,
                self.unconfirmed.clone(),
                stop.clone().cancelled_owned(),
            );
            tasks.spawn(async move {
                let out = run.await;
                drop(guard);
                out
            });
        }
        tracing::info!(
            partitions = self.partitions.len(),
            publish = self.unconfirmed.is_some(),
            "consuming"
        );
        let watcher = crate::readiness::watch_backlog(
            conn.create_channel().await.map_err(SessionError::Channel)?,
            self.topology.clone(),
            self.partitions.clone(),
            self.cfg.worker.ready_backlog,
            self.health.clone(),
            BACKLOG_INTERVAL,
        );
        let consumers = async {
            while let Some(done) = tasks.join_next().await {
                let stats = done??;
                tracing::info!(?stats, "consumer stopped");
                if !stop.is_cancelled() {
                    return Err(SessionError::ConsumerStopped);
                }
            }
            Ok(())
        };
        tokio::select! {
            r = consumers => r,
            e = watcher => Err(SessionError::Backlog(e)),
        }
    }
}

/// The wait before reconnect `attempt` (1-based): a random point in the
/// upper half of 100 ms doubled per attempt, capped at 30 s.
fn reconnect_delay(attempt: u32) -> Duration {
    let cap = 100u64.saturating_mul(1 << attempt.min(9)).min(30_000);
    Duration::from_millis(rand::rng().random_range(cap / 2..=cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_delay_doubles_to_a_30_s_cap_with_jitter() {
        for attempt in 1..40 {
            let d = reconnect_delay(attempt);
            let cap = Duration::from_millis(100u64 << attempt.min(9)).min(Duration::from_secs(30));
            assert!(d <= cap && d >= cap / 2, "{attempt}: {d:?}");
        }
    }
}

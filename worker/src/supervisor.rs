//! The worker's AMQP session, kept alive until shutdown.
//!
//! # Algorithm
//! A session connects (through the process's caching resolver), declares
//! the shared topology, and runs one consumer per partition the
//! [`PartitionGate`] allows, each on its own channel, plus the backlog
//! watcher that drives `/readyz` from those partitions only. When the gate
//! changes (a lease won or handed over, see [`crate::membership`]) it starts
//! the new consumers and stops the disallowed ones: a stopped consumer
//! finishes and acks what it holds, closes its channel without cancelling
//! first (the queue returns its unprocessed prefetch to the head and only
//! then makes the next consumer active), and only then is marked stopped in
//! the gate, which lets its lease go. A session ends when a
//! consumer stops on its own (its channel or the connection closed) or the
//! watcher fails; the supervisor then reconnects after a capped, jittered backoff
//! (100 ms doubling to 30 s, half to full of it), so a broker restart does
//! not bring every replica back at once. A session that ran and ended
//! cleanly resets the backoff.
//!
//! On shutdown every consumer closes its channel after acking what it
//! finished (see [`crate::consume_partition_with`]), so the
//! single-active-consumer role moves to another replica, which gets the
//! unacked prefetch first; the supervisor then returns. The caller bounds
//! that drain with its grace.

use crate::consumer::{AmqpTopology, ConsumeError, ConsumeStats, consume_partition_with};
use crate::gate::PartitionGate;
use crate::http::Health;
use crate::output::Unconfirmed;
use crate::processor::Worker;
use crate::store::Store;
use config::{Config, redact_url};
use dnscache::Resolver;
use lapin::ConnectionProperties;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the partition backlogs are checked for `/readyz`.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(5);

/// How often a session checks that its connection is still up.
const CONNECTION_CHECK: Duration = Duration::from_millis(250);

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
    #[error("the connection to RabbitMQ broke")]
    ConnectionLost,
}

/// What every session of the process shares.
pub(crate) struct Supervisor<'a> {
    pub(crate) cfg: &'a Config,
    pub(crate) resolver: Resolver,
    pub(crate) health: Arc<Health>,
    /// The record of unconfirmed output, when publishing.
    pub(crate) unconfirmed: Option<Arc<Unconfirmed>>,
    pub(crate) topology: AmqpTopology,
    /// The partitions this replica may be given.
    pub(crate) partitions: Vec<u32>,
    /// Which of them it consumes now.
    pub(crate) gate: Arc<PartitionGate>,
}

impl Supervisor<'_> {
    /// Runs sessions, reconnecting with backoff, until `stop` is cancelled
    /// and the current session has drained.
    pub(crate) async fn run<S: Store>(&self, worker: Arc<Worker<S>>, stop: &CancellationToken) {
        let url = self.cfg.amqp.url.expose();
        let mut attempt = 0u32;
        while !stop.is_cancelled() {
            let began = tokio::time::Instant::now();
            match self.session(&worker, stop).await {
                Ok(()) => attempt = 0,
                Err(e) => {
                    attempt = next_attempt(attempt, began.elapsed());
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
        tracing::info!(
            candidates = self.partitions.len(),
            publish = self.unconfirmed.is_some(),
            "consuming the partitions this replica is given"
        );
        let watcher = crate::readiness::watch_own_backlog(
            conn.create_channel().await.map_err(SessionError::Channel)?,
            self.topology.clone(),
            self.gate.clone(),
            self.cfg.worker.ready_backlog,
            self.health.clone(),
            BACKLOG_INTERVAL,
        );
        tokio::pin!(watcher);
        let mut consumers = Consumers::default();
        let mut changes = self.gate.subscribe();
        // The connection's status decides, not only what its futures
        // report: after an abrupt loss some of them never resolve.
        let mut liveness = tokio::time::interval(CONNECTION_CHECK);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            if !stop.is_cancelled()
                && let Err(e) = consumers.start_new(self, worker, &conn, stop).await
            {
                break Err(SessionError::Channel(e));
            }
            for (&p, token) in &consumers.tokens {
                if !self.gate.is_allowed(p) {
                    token.cancel();
                }
            }
            changes.borrow_and_update();
            tokio::select! {
                r = changes.changed() => if r.is_err() { break Ok(()) },
                Some(done) = consumers.tasks.join_next() => {
                    let (p, out) = match done {
                        Ok(done) => done,
                        Err(e) => break Err(e.into()),
                    };
                    let handed_over = consumers.finished(p);
                    self.gate.stopped(p);
                    match out {
                        Ok(stats) => tracing::info!(partition = p, ?stats, "consumer stopped"),
                        Err(e) => break Err(e.into()),
                    }
                    if !handed_over && !stop.is_cancelled() {
                        break Err(SessionError::ConsumerStopped);
                    }
                }
                () = stop.cancelled(), if consumers.tokens.is_empty() => break Ok(()),
                _ = liveness.tick() => if !conn.status().connected() {
                    break Err(SessionError::ConnectionLost);
                },
                e = &mut watcher => break Err(SessionError::Backlog(e)),
            }
        };
        // On an error, the others stop too (a dead channel ends them at
        // once) before their partitions count as stopped.
        consumers.stop_all(&self.gate).await;
        ended
    }
}

/// The consumers of one session, by partition.
#[derive(Default)]
struct Consumers {
    tasks: tokio::task::JoinSet<(u32, Result<ConsumeStats, ConsumeError>)>,
    tokens: HashMap<u32, CancellationToken>,
}

impl Consumers {
    /// Starts a consumer for each partition the gate newly allows.
    async fn start_new<S: Store>(
        &mut self,
        sup: &Supervisor<'_>,
        worker: &Arc<Worker<S>>,
        conn: &lapin::Connection,
        stop: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        let mut new = sup.gate.claim_new().into_iter();
        while let Some(p) = new.next() {
            match conn.create_channel().await {
                Ok(ch) => self.start(sup, worker, ch, p, stop),
                Err(e) => {
                    sup.gate.stopped(p);
                    for p in new {
                        sup.gate.stopped(p);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Starts `p`'s consumer on `ch` (already marked running in the gate).
    fn start<S: Store>(
        &mut self,
        sup: &Supervisor<'_>,
        worker: &Arc<Worker<S>>,
        ch: lapin::Channel,
        p: u32,
        stop: &CancellationToken,
    ) {
        let token = stop.child_token();
        let guard = sup.health.consumer();
        let closing = ch.clone();
        let run = consume_partition_with(
            worker.clone(),
            ch,
            sup.topology.clone(),
            p,
            sup.cfg.worker.prefetch,
            sup.unconfirmed.clone(),
            token.clone().cancelled_owned(),
        );
        self.tokens.insert(p, token);
        self.tasks.spawn(async move {
            let out = run.await;
            // The consumer closed its channel when it stopped by itself; one
            // that failed may not have: closing returns the unprocessed
            // prefetch to the head of the queue before the partition counts
            // as stopped, so its next owner receives it in order.
            if closing.status().connected()
                && let Err(e) = closing.close(200, "partition handed over".into()).await
            {
                tracing::debug!(partition = p, error = %e, "closing a consumer channel");
            }
            drop(guard);
            (p, out)
        });
    }

    /// Forgets `p`'s consumer; true when it was told to stop.
    fn finished(&mut self, p: u32) -> bool {
        self.tokens.remove(&p).is_some_and(|t| t.is_cancelled())
    }

    /// Stops every consumer and waits for them.
    async fn stop_all(&mut self, gate: &PartitionGate) {
        for token in self.tokens.values() {
            token.cancel();
        }
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((p, _)) = done {
                self.tokens.remove(&p);
                gate.stopped(p);
            }
        }
        // A panicked consumer's partition is released too.
        for (p, _) in self.tokens.drain() {
            gate.stopped(p);
        }
    }
}

/// A session that ran this long was healthy: its failure starts the
/// backoff over instead of adding to the failures before it.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// The attempt after a session that ended in an error after `ran`. Only
/// failures in a row count: before, a worker whose broker connection broke
/// once a day waited longer each day, up to the 30 s cap, although each
/// session had run for hours (waits of 23.6 s were seen in scenarios).
fn next_attempt(attempt: u32, ran: Duration) -> u32 {
    if ran >= HEALTHY_SESSION {
        1
    } else {
        attempt.saturating_add(1)
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
    fn only_failures_in_a_row_grow_the_backoff() {
        let quick = Duration::from_millis(20);
        let mut attempt = 0;
        for expected in 1..=5 {
            attempt = next_attempt(attempt, quick);
            assert_eq!(attempt, expected);
        }
        assert_eq!(
            next_attempt(attempt, HEALTHY_SESSION),
            1,
            "after a healthy session"
        );
        assert_eq!(next_attempt(u32::MAX, quick), u32::MAX);
        assert!(
            reconnect_delay(next_attempt(9, Duration::from_secs(3600)))
                <= Duration::from_millis(200)
        );
    }

    #[test]
    fn the_reconnect_delay_doubles_to_a_30_s_cap_with_jitter() {
        for attempt in 1..40 {
            let d = reconnect_delay(attempt);
            let cap = Duration::from_millis(100u64 << attempt.min(9)).min(Duration::from_secs(30));
            assert!(d <= cap && d >= cap / 2, "{attempt}: {d:?}");
        }
    }
}

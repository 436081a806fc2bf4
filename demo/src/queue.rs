//! The queue between the sharder and the worker, in one of two shapes.
//!
//! - **In-process**: the sharder's [`ChannelSink`]. Each event is encoded
//!   into an envelope (as the AMQP sink would publish it) and handed to
//!   [`Worker::process_message`], the same call the worker's consumer makes
//!   per queue message; the event is confirmed back to its shard only once
//!   the cache has applied it, so the shard's persisted seq never passes an
//!   event the cache has not seen.
//! - **RabbitMQ**: the production topology under a unique base name,
//!   declared here, fed by the sharder's AMQP sink, and consumed by the
//!   worker's own [`consume_partition`], one consumer per partition. The
//!   topology (queues, exchanges, messages) is deleted at the end.

use crate::error::DemoError;
use crate::options::{DemoOptions, QueueKind};
use lapin::{Connection, ConnectionProperties};
use sharder::{ChannelSink, ShardEvent, SinkChoice};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::{AmqpTopology, ProcessError, Store, Worker, consume_partition};

/// Unread events the in-process channel holds before the shards wait.
const CHANNEL_CAPACITY: usize = 8192;

/// Messages in flight per partition consumer.
const PREFETCH: u16 = 256;

/// A running queue and its consumers.
pub struct Queue {
    stop: CancellationToken,
    consumers: Vec<JoinHandle<()>>,
    rabbit: Option<(Connection, AmqpTopology)>,
}

impl Queue {
    /// Starts the queue's consumers into `worker`; returns the sink the
    /// sharder is to use.
    pub async fn start<S: Store>(
        opts: &DemoOptions,
        topology_base: &str,
        worker: Arc<Worker<S>>,
    ) -> Result<(Self, SinkChoice), DemoError> {
        let stop = CancellationToken::new();
        match opts.queue {
            QueueKind::InProcess => {
                let (sink, rx) = ChannelSink::new(CHANNEL_CAPACITY, false);
                let task = tokio::spawn(feed(worker, rx, stop.clone()));
                let queue = Self {
                    stop,
                    consumers: vec![task],
                    rabbit: None,
                };
                Ok((queue, SinkChoice::Channel(sink)))
            }
            QueueKind::Rabbitmq => {
                let topo = AmqpTopology::named(topology_base, opts.partitions);
                let conn = Connection::connect(&opts.amqp_url, ConnectionProperties::default())
                    .await
                    .map_err(DemoError::amqp("connecting"))?;
                let ch = conn
                    .create_channel()
                    .await
                    .map_err(DemoError::amqp("opening a channel"))?;
                topo.declare(&ch)
                    .await
                    .map_err(DemoError::amqp("declaring the topology"))?;
                let mut consumers = Vec::new();
                for p in 0..topo.partitions {
                    let ch = conn
                        .create_channel()
                        .await
                        .map_err(DemoError::amqp("opening a channel"))?;
                    let run = consume_partition(
                        worker.clone(),
                        ch,
                        topo.clone(),
                        p,
                        PREFETCH,
                        stop.clone().cancelled_owned(),
                    );
                    consumers.push(tokio::spawn(async move {
                        if let Err(e) = run.await {
                            tracing::error!(partition = p, error = %e, "consumer stopped");
                        }
                    }));
                }
                let queue = Self {
                    stop,
                    consumers,
                    rabbit: Some((conn, topo)),
                };
                Ok((queue, SinkChoice::Amqp))
            }
        }
    }

    /// A consumer ended early (the pipeline cannot finish).
    pub fn broken(&self) -> bool {
        self.consumers.iter().any(JoinHandle::is_finished)
    }

    /// Stops the consumers and deletes what was declared.
    pub async fn close(self) -> Result<(), DemoError> {
        self.stop.cancel();
        for c in self.consumers {
            let _ = c.await;
        }
        if let Some((conn, topo)) = self.rabbit {
            let ch = conn
                .create_channel()
                .await
                .map_err(DemoError::amqp("opening a channel"))?;
            topo.delete(&ch)
                .await
                .map_err(DemoError::amqp("deleting the topology"))?;
            let _ = conn.close(200, "demo done".into()).await;
        }
        Ok(())
    }
}

/// The in-process consumer: envelope per event, processed, then confirmed.
async fn feed<S: Store>(
    worker: Arc<Worker<S>>,
    mut rx: mpsc::Receiver<ShardEvent>,
    stop: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        let message =
            envelope::BatchEncoder::new(ev.shard_id, ev.num_shards).and_then(|mut enc| {
                enc.push(&ev.envelope())?;
                Ok(enc.finish())
            });
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(shard_id = ev.shard_id, seq = ev.seq, error = %e, "event not encodable; skipped");
                ev.ack().confirm();
                continue;
            }
        };
        loop {
            match worker.process_message(&message).await {
                Ok(report) => {
                    for (version, why) in &report.invalid {
                        tracing::warn!(shard_id = ev.shard_id, %version, %why, "invalid event skipped");
                    }
                    break;
                }
                Err(ProcessError::Decode(e)) => {
                    tracing::warn!(shard_id = ev.shard_id, error = %e, "undecodable envelope");
                    break;
                }
                Err(ProcessError::Store(e)) => {
                    // As the worker's consumer does: the event is fine, the
                    // store is not; retry it in place.
                    tracing::warn!(error = %e, "store failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
        ev.ack().confirm();
    }
}

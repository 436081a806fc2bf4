//! RabbitMQ topology shared by the sharder (publisher) and the worker
//! (consumer). Both sides must agree on these names and rules; changing one
//! is a breaking change of the deployment.
//!
//! ```text
//! sharder --publish--> EXCHANGE (topic) --"<p>.#"--> queue_name(p)  (quorum, single active consumer)
//!                                                        | reject (no requeue)
//!                                                        v
//!                                DEAD_LETTER_EXCHANGE (fanout) --> DEAD_LETTER_QUEUE
//! worker --publish clean events--> OUTPUT_EXCHANGE (topic, routing key = clean event name)
//! ```
//!
//! Why: a partition is `shard_id % P`, so every event of one shard lands in
//! one queue and a single active consumer sees them in gateway order, while P
//! queues spread load over workers. Quorum queues survive a broker node loss.
//! Poison messages are dead-lettered with a reason header instead of being
//! requeued forever.

/// Topic exchange the sharder publishes envelopes to.
pub const EXCHANGE: &str = "bulwark.gateway";
/// Exchange that rejected (poison) messages are dead-lettered to (fanout).
pub const DEAD_LETTER_EXCHANGE: &str = "bulwark.gateway.dlx";
/// The single queue bound to [`DEAD_LETTER_EXCHANGE`].
pub const DEAD_LETTER_QUEUE: &str = "bulwark.gateway.dead";
/// Topic exchange the worker publishes clean events to; routing key is the
/// clean event name (e.g. `GUILD_JOINED`, `MESSAGE_CREATE`).
pub const OUTPUT_EXCHANGE: &str = "bulwark.events";
/// Topic exchange of gateway commands (op 3, 4, 8) that relays forward to
/// the sharders; routing key = [`crate::command::Command::routing_key`].
/// Every sharder process binds its own queue to it and sends each command
/// on the shard of its own that owns the guild.
pub const COMMANDS_EXCHANGE: &str = "bulwark.commands";
/// Header the worker sets on a message it dead-letters: why it was poison.
/// (The worker republishes poison messages to the DLX itself, with this
/// header, then acks the original.)
pub const REASON_HEADER: &str = "x-bulwark-reason";
/// Routing-key event name used when one message batches several events.
pub const BATCH_EVENT_NAME: &str = "BATCH";
/// Partitions used when not configured.
pub const DEFAULT_PARTITIONS: u32 = 16;

/// Arguments of every partition queue, as `(name, value)` in AMQP terms.
pub const QUEUE_ARGUMENTS: &[(&str, QueueArgument)] = &[
    ("x-queue-type", QueueArgument::Str("quorum")),
    ("x-single-active-consumer", QueueArgument::Bool(true)),
    (
        "x-dead-letter-exchange",
        QueueArgument::Str(DEAD_LETTER_EXCHANGE),
    ),
];

/// A queue argument value, kept free of any AMQP client type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueArgument {
    Str(&'static str),
    Bool(bool),
}

/// Partition of a shard: `shard_id % partitions` (`partitions` >= 1; 0 is
/// treated as 1).
pub fn partition(shard_id: u32, partitions: u32) -> u32 {
    shard_id % partitions.max(1)
}

/// Routing key `"<partition>.<EVENT_NAME>"`. For a message batching several
/// events, pass [`BATCH_EVENT_NAME`].
pub fn routing_key(partition: u32, event_name: &str) -> String {
    format!("{partition}.{event_name}")
}

/// Name of partition `p`'s quorum queue.
pub fn queue_name(partition: u32) -> String {
    format!("bulwark.gateway.p{partition}")
}

/// Binding key of partition `p`'s queue on [`EXCHANGE`]: every event name.
pub fn binding_key(partition: u32) -> String {
    format!("{partition}.*")
}

/// The names of one deployment's exchanges and queues.
///
/// Sharder and worker both declare this topology (idempotently, whichever
/// starts first), and their declarations must agree argument by argument,
/// or the second `queue_declare` fails with PRECONDITION_FAILED and that
/// side cannot start. So there is exactly one declaration, here.
/// [`AmqpTopology::production`] gives the names above; tests give every run
/// its own base with [`AmqpTopology::named`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpTopology {
    /// Topic exchange the envelopes are published to.
    pub exchange: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Topic exchange of the worker's clean events.
    pub output_exchange: String,
    /// Topic exchange of the relays' gateway commands.
    pub commands_exchange: String,
    /// Partition `p`'s queue is `"<queue_base>.p<p>"`.
    pub queue_base: String,
    /// Number of partitions, at least 1.
    pub partitions: u32,
}

impl Default for AmqpTopology {
    fn default() -> Self {
        Self::production(DEFAULT_PARTITIONS)
    }
}

impl AmqpTopology {
    /// Every name under `base`. `base` = [`EXCHANGE`] gives the production
    /// names, [`OUTPUT_EXCHANGE`] included; another base gives
    /// `<base>`, `<base>.dlx`, `<base>.dead`, `<base>.events`,
    /// `<base>.commands`.
    pub fn named(base: &str, partitions: u32) -> Self {
        if base == EXCHANGE {
            return Self::production(partitions);
        }
        Self {
            exchange: base.into(),
            dead_letter_exchange: format!("{base}.dlx"),
            dead_letter_queue: format!("{base}.dead"),
            output_exchange: format!("{base}.events"),
            commands_exchange: format!("{base}.commands"),
            queue_base: base.into(),
            partitions: partitions.max(1),
        }
    }

    /// The production names with `partitions` partitions.
    pub fn production(partitions: u32) -> Self {
        Self {
            exchange: EXCHANGE.into(),
            dead_letter_exchange: DEAD_LETTER_EXCHANGE.into(),
            dead_letter_queue: DEAD_LETTER_QUEUE.into(),
            output_exchange: OUTPUT_EXCHANGE.into(),
            commands_exchange: COMMANDS_EXCHANGE.into(),
            queue_base: EXCHANGE.into(),
            partitions: partitions.max(1),
        }
    }

    /// Partition `p`'s queue.
    pub fn queue(&self, p: u32) -> String {
        format!("{}.p{p}", self.queue_base)
    }

    /// Routing key of a message of `shard_id` named `event` (or
    /// [`BATCH_EVENT_NAME`]).
    pub fn routing_key(&self, shard_id: u32, event: &str) -> String {
        routing_key(partition(shard_id, self.partitions), event)
    }
}

#[cfg(feature = "lapin")]
pub use declare::{declare_topic, inspect_queue, private_queue};

#[cfg(feature = "lapin")]
mod declare {
    use super::{AmqpTopology, QUEUE_ARGUMENTS, QueueArgument, binding_key};
    use lapin::options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    use lapin::{Channel, ExchangeKind, Queue};

    /// Declares the durable topic exchange `name` (idempotent): the output
    /// and commands exchanges, which their consumers may declare first.
    pub async fn declare_topic(ch: &Channel, name: &str) -> Result<(), lapin::Error> {
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
    }

    /// A queue of this connection alone (server-named, exclusive, deleted
    /// with the connection) with `arguments`, bound to the topic exchange
    /// `exchange` for everything (`#`), which is declared first: how a
    /// relay reads every clean event and a sharder every command.
    pub async fn private_queue(
        ch: &Channel,
        exchange: &str,
        arguments: FieldTable,
    ) -> Result<Queue, lapin::Error> {
        declare_topic(ch, exchange).await?;
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        ch.queue_bind(
            q.name().as_str().into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(q)
    }

    /// Looks `queue` up without creating it (a passive declare): its ready
    /// messages (`message_count`) and consumers (`consumer_count`). A
    /// missing queue is an error, and the broker then closes `ch`, so use a
    /// channel of its own for a queue that may be gone.
    pub async fn inspect_queue(ch: &Channel, queue: &str) -> Result<Queue, lapin::Error> {
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
    }

    impl AmqpTopology {
        /// Arguments of every partition queue ([`QUEUE_ARGUMENTS`], with
        /// this topology's dead-letter exchange).
        pub fn queue_arguments(&self) -> FieldTable {
            let mut args = FieldTable::default();
            for (name, value) in QUEUE_ARGUMENTS {
                let v = match *value {
                    QueueArgument::Str(_) if *name == "x-dead-letter-exchange" => {
                        AMQPValue::LongString(LongString::from(self.dead_letter_exchange.as_str()))
                    }
                    QueueArgument::Str(s) => AMQPValue::LongString(LongString::from(s)),
                    QueueArgument::Bool(b) => AMQPValue::Boolean(b),
                };
                args.insert(ShortString::from(*name), v);
            }
            args
        }

        /// Declares both exchanges, the dead-letter exchange and queue, and
        /// every partition queue with its binding (idempotent).
        pub async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            let none = FieldTable::default;
            for (name, kind) in [
                (&self.exchange, ExchangeKind::Topic),
                (&self.output_exchange, ExchangeKind::Topic),
                (&self.dead_letter_exchange, ExchangeKind::Fanout),
            ] {
                ch.exchange_declare(name.as_str().into(), kind, durable, none())
                    .await?;
            }
            let qopts = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            ch.queue_declare(self.dead_letter_queue.as_str().into(), qopts, none())
                .await?;
            ch.queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                none(),
            )
            .await?;
            for p in 0..self.partitions {
                let queue = self.queue(p);
                ch.queue_declare(queue.as_str().into(), qopts, self.queue_arguments())
                    .await?;
                ch.queue_bind(
                    queue.as_str().into(),
                    self.exchange.as_str().into(),
                    binding_key(p).as_str().into(),
                    QueueBindOptions::default(),
                    none(),
                )
                .await?;
            }
            Ok(())
        }

        /// Deletes everything [`AmqpTopology::declare`] creates, messages
        /// included: for tests and benchmarks that declared their own
        /// topology, so none of it outlives them.
        pub async fn delete(&self, ch: &Channel) -> Result<(), lapin::Error> {
            for p in 0..self.partitions {
                ch.queue_delete(self.queue(p).as_str().into(), QueueDeleteOptions::default())
                    .await?;
            }
            ch.queue_delete(
                self.dead_letter_queue.as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await?;
            for name in [
                &self.exchange,
                &self.output_exchange,
                &self.dead_letter_exchange,
            ] {
                ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                    .await?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_names_are_the_shared_ones() {
        for t in [
            AmqpTopology::production(16),
            AmqpTopology::named(EXCHANGE, 16),
        ] {
            assert_eq!(t.exchange, EXCHANGE);
            assert_eq!(t.dead_letter_exchange, DEAD_LETTER_EXCHANGE);
            assert_eq!(t.dead_letter_queue, DEAD_LETTER_QUEUE);
            assert_eq!(t.output_exchange, OUTPUT_EXCHANGE);
            assert_eq!(t.queue(5), queue_name(5));
            assert_eq!(t.routing_key(37, "READY"), "5.READY");
        }
        assert_eq!(AmqpTopology::default().partitions, DEFAULT_PARTITIONS);
        let t = AmqpTopology::named("test.x", 0);
        assert_eq!(t.partitions, 1);
        assert_eq!(t.output_exchange, "test.x.events");
        assert_eq!(t.queue(0), "test.x.p0");
    }

    #[test]
    fn names_agree() {
        assert_eq!(partition(37, 16), 5);
        assert_eq!(partition(3, 0), 0);
        assert_eq!(routing_key(5, "GUILD_CREATE"), "5.GUILD_CREATE");
        assert_eq!(queue_name(5), "bulwark.gateway.p5");
        assert_eq!(binding_key(5), "5.*");
        assert!(QUEUE_ARGUMENTS.contains(&("x-single-active-consumer", QueueArgument::Bool(true))));
    }
}

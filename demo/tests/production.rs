//! The demo in the production shape: RabbitMQ (127.0.0.1:5672) between
//! the sharder and the worker's own partition consumers, and the Redis
//! store (127.0.0.1:6379), with `--relay`: the relay on that cache and
//! the clean stream, a twilight bot through it. Same verdict as
//! in-process, the bot got its snapshot and every world event after it
//! once and in order, and nothing left behind: the unique topology and key
//! prefix are gone afterwards.

#![allow(clippy::unwrap_used)]

mod common;

use bulwark_demo::{CacheKind, DemoOptions, QueueKind, unique_name};
use worker::{AmqpTopology, RedisStore};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS: &str = "redis://127.0.0.1:6379";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_and_redis_demo_ends_with_the_truth_and_cleans_up() {
    let opts = DemoOptions {
        shards: 32,
        guilds_per_shard: 8,
        queue: QueueKind::Rabbitmq,
        amqp_url: AMQP.into(),
        cache: CacheKind::Redis,
        redis_url: REDIS.into(),
        relay: true,
        ..common::small()
    };
    let base = unique_name();
    let summary = common::run_quiet(&opts, &base).await;
    common::assert_clean(&summary, &opts, true);
    assert_eq!(summary.queue, "RabbitMQ (4 partitions)");
    assert_eq!(summary.cache, "Redis");
    let bot = summary.relay.clone().unwrap();
    assert!(bot.ok(), "{}", summary.table());
    assert_eq!(bot.guilds.0, bot.guilds.1);
    assert!(
        bot.events > 50,
        "too few events to judge the relay: {bot:?}"
    );

    // Nothing left: every partition queue is gone, and no key remains.
    let topo = AmqpTopology::named(&base, opts.partitions);
    let conn = lapin::Connection::connect(AMQP, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    for p in 0..topo.partitions {
        let ch = conn.create_channel().await.unwrap();
        let passive = envelope::topology::inspect_queue(&ch, &topo.queue(p)).await;
        assert!(passive.is_err(), "queue {} survived", topo.queue(p));
    }
    let ch = conn.create_channel().await.unwrap();
    let passive = ch
        .exchange_declare(
            topo.output_exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(passive.is_err(), "{} survived", topo.output_exchange);
    let store = RedisStore::connect(REDIS, &base).await.unwrap();
    assert_eq!(store.purge().await.unwrap(), 0, "keys left under {base}");
}

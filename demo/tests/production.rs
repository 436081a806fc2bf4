//! The demo in the production shape: RabbitMQ (127.0.0.1:5672) between
//! the sharder and the worker's own partition consumers, and the Redis
//! store (127.0.0.1:6379). Same verdict as in-process, and nothing left
//! behind: the unique topology and key prefix are gone afterwards.

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
        ..common::small()
    };
    let base = unique_name();
    let summary = common::run_quiet(&opts, &base).await;
    common::assert_clean(&summary, &opts, true);
    assert_eq!(summary.queue, "RabbitMQ (4 partitions)");
    assert_eq!(summary.cache, "Redis");

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
    let store = RedisStore::connect(REDIS, &base).await.unwrap();
    assert_eq!(store.purge().await.unwrap(), 0, "keys left under {base}");
}

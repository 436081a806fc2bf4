//! A real client library nobody here wrote, twilight-gateway, connects two
//! shards through the relay to the whole pipeline ([`common::Pipeline`]).
//! Against the simulator's truth and ledger:
//!
//! 1. each client shard gets READY and one GUILD_CREATE per guild of its
//!    own split (`(guild_id >> 22) % 2`), equal to the truth;
//! 2. every world event of those guilds afterwards arrives exactly once,
//!    in the guild's order, with gapless `s`;
//! 3. a client that drops its connection RESUMEs and misses nothing (one
//!    RESUMED, no second READY);
//! 4. a sharder restart (every real shard resumes) is invisible: no READY,
//!    no GUILD_CREATE again, and the events after it arrive;
//! 5. so is a worker restart with events in flight (redeliveries and
//!    republished output are deduplicated).
#![allow(clippy::unwrap_used)]

mod common;

use common::Pipeline;
use common::twilight_client::{connect_both, phase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_shards_get_the_truth_every_event_once_and_survive_restarts() {
    let mut p = Pipeline::start("relay-twilight", 2, 12).await;

    // 1. READY and the truth, per client shard.
    let mut clients = connect_both(&p).await;

    // 2. Every world event after the snapshot, once, in order per guild.
    let mark = p.mark();
    p.sim.emit(300);
    phase(&p, &mut clients, mark, "live events").await;

    // 3. Client 0 drops its connection and resumes.
    let mark = p.mark();
    clients[0].resume.send(()).unwrap();
    p.sim.emit(200);
    phase(&p, &mut clients, mark, "after a client resume").await;
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.count("READY"), 1, "client {i}");
        assert_eq!(c.count("RESUMED"), usize::from(i == 0), "client {i}");
    }

    // 4. The sharder restarts: invisible to the clients.
    let before: Vec<usize> = clients.iter().map(|c| c.got.len()).collect();
    let counters = p.sim.counters();
    p.restart_sharder().await;
    let mark = p.mark();
    p.sim.emit(200);
    phase(&p, &mut clients, mark, "after a sharder restart").await;
    let after = p.sim.counters();
    assert!(
        after.resumes >= counters.resumes + 2,
        "both real shards resumed: {after:?}"
    );
    assert_eq!(
        after.identifies, counters.identifies,
        "no real shard identified again"
    );
    for (i, c) in clients.iter().enumerate() {
        let again = c.got[before[i]..]
            .iter()
            .filter(|(t, _, _)| matches!(t.as_str(), "READY" | "RESUMED"))
            .count();
        assert_eq!(again, 0, "client {i} got READY or the real shards' RESUMED");
    }

    // 5. The worker restarts while events flow: invisible too.
    let before: Vec<usize> = clients.iter().map(|c| c.got.len()).collect();
    let mark = p.mark();
    p.sim.emit(150);
    p.restart_worker().await;
    p.sim.emit(150);
    phase(&p, &mut clients, mark, "across a worker restart").await;
    for (i, c) in clients.iter().enumerate() {
        let again = c.got[before[i]..]
            .iter()
            .filter(|(t, _, _)| t == "READY")
            .count();
        assert_eq!(again, 0, "client {i} got READY again");
    }

    for c in clients {
        c.task.abort();
    }
    p.stop().await;
}

//! A relay pod's rolling update, seen by a real client library
//! (twilight-gateway, two shards) connected through a Service's stand-in
//! (the front, which READY also names as the resume URL):
//!
//! 1. a second relay starts and gets ready; the front sends new
//!    connections to it; the first relay stops while the world keeps
//!    sending events;
//! 2. each client shard RESUMEs on the second relay, which takes over its
//!    session: one RESUMED, no second READY, no GUILD_CREATE again, every
//!    world event of its guilds once and in order, `s` gapless across
//!    both relays; and so on across two more updates, the last onto a
//!    relay that ran before the one that stopped (its buffer holds older
//!    events, which must not be replayed);
//! 3. a relay that stops with no other relay consuming leaves sessions
//!    nobody can complete: the next relay answers their RESUME with op 9,
//!    and the clients identify again and get their guilds.
#![allow(clippy::unwrap_used)]

mod common;

use common::Pipeline;
use common::twilight_client::{Client, connect_both, phase};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_rolling_update_is_invisible_to_its_bots() {
    let mut p = Pipeline::start_fronted("relay-handover", 2, 12).await;
    let mut clients = connect_both(&p).await;
    let mark = p.mark();
    p.sim.emit(200);
    phase(&p, &mut clients, mark, "before the update").await;

    // The update, with events before, during and after it.
    let before: Vec<usize> = clients.iter().map(|c| c.got.len()).collect();
    let mark = p.mark();
    p.sim.emit(150);
    p.replace_relay().await;
    p.sim.emit(150);
    // Per guild exactly the world's events: a GUILD_CREATE sent again
    // would be one too many.
    phase(&p, &mut clients, mark, "across a relay rolling update").await;
    for (i, c) in clients.iter().enumerate() {
        let after = &c.got[before[i]..];
        let count = |name: &str| after.iter().filter(|(t, _, _)| t == name).count();
        assert_eq!(count("READY"), 0, "client {i} identified again");
        assert_eq!(count("RESUMED"), 1, "client {i} resumed once");
    }

    // And again, from the relay that took the sessions over to one that
    // ran before it: its buffer holds events older than anything the
    // stopping relay sent, which the bots have or never should.
    let older = p.spare_relay().await;
    let mark = p.mark();
    p.sim.emit(100);
    p.replace_relay().await;
    p.sim.emit(100);
    phase(&p, &mut clients, mark, "across a second rolling update").await;
    let mark = p.mark();
    p.switch_to(older).await;
    p.sim.emit(100);
    phase(
        &p,
        &mut clients,
        mark,
        "back to a relay older than the one that stopped",
    )
    .await;
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.count("READY"), 1, "client {i}");
        assert_eq!(c.count("RESUMED"), 3, "client {i}");
    }

    for c in clients {
        c.task.abort();
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_no_relay_could_follow_get_op_9_and_identify_again() {
    let mut p = Pipeline::start_fronted("relay-handover-gap", 2, 8).await;
    let token = p.sim.config().token.clone();
    let mut c = Client::start(0, &token, p.relay_addr);
    let n = p.guilds_of(0, 2).len();
    c.until("snapshot", |g| g.len() > n).await;

    // The first relay stops before the next one consumes: events in
    // between reach neither, so the handed-over session cannot be
    // completed.
    p.stop_relay().await;
    p.sim.emit(50);
    let before = c.got.len();
    p.start_relay_again().await;
    c.until("a new session", |g| {
        g[before..]
            .iter()
            .filter(|(t, _, _)| t == "GUILD_CREATE")
            .count()
            >= n
    })
    .await;
    let after = &c.got[before..];
    assert_eq!(
        after.iter().filter(|(t, _, _)| t == "READY").count(),
        1,
        "op 9, then IDENTIFY: a new READY"
    );
    assert_eq!(
        after.iter().filter(|(t, _, _)| t == "RESUMED").count(),
        0,
        "nothing resumed a session with a hole in it"
    );
    p.check_snapshot(0, 2, &c.got[before..]);
    c.task.abort();
    p.stop().await;
}

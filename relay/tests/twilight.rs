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

use common::{Dispatch, INTENTS, Pipeline, WAIT, check_events, per_guild, total};
use futures_util::StreamExt;
use serde_json::Value;
use std::net::SocketAddr;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use twilight_gateway::{CloseFrame, ConfigBuilder, Intents, Message, Shard, ShardId};

/// A twilight shard: its dispatches, its resume trigger, its task, and
/// what it received so far.
struct Client {
    rx: mpsc::UnboundedReceiver<Dispatch>,
    resume: mpsc::UnboundedSender<()>,
    task: JoinHandle<()>,
    got: Vec<Dispatch>,
}

impl Client {
    /// Drives shard `[id, 2]`; a message on `resume` makes it close its
    /// connection with a RESUME frame (twilight then resumes by itself).
    fn start(id: u32, token: &str, relay: SocketAddr) -> Self {
        let config = ConfigBuilder::new(token.to_owned(), Intents::from_bits_truncate(INTENTS))
            .proxy_url(format!("ws://{relay}"))
            .build();
        let mut shard = Shard::with_config(ShardId::new(id, 2), config);
        let (tx, rx) = mpsc::unbounded_channel();
        let (resume, mut resume_rx) = mpsc::unbounded_channel::<()>();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = resume_rx.recv() => shard.close(CloseFrame::RESUME),
                    msg = shard.next() => match msg {
                        None => return,
                        Some(Ok(Message::Text(text))) => {
                            let v: Value = serde_json::from_str(&text).unwrap();
                            if v["op"] == 0 {
                                let d = (v["t"].as_str().unwrap().to_owned(), v["s"].as_u64().unwrap(), v["d"].clone());
                                if tx.send(d).is_err() {
                                    return;
                                }
                            }
                        }
                        Some(Ok(Message::Close(_)) | Err(_)) => {}
                    },
                }
            }
        });
        Self {
            rx,
            resume,
            task,
            got: Vec::new(),
        }
    }

    /// Receives until `done` holds, within [`WAIT`].
    async fn until(&mut self, what: &str, done: impl Fn(&[Dispatch]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.got) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => self.got.push(m),
                Ok(None) => panic!("{what}: the client stopped"),
                Err(_) => panic!("{what}: timed out after {} dispatches", self.got.len()),
            }
        }
    }

    fn count(&self, name: &str) -> usize {
        self.got.iter().filter(|(t, _, _)| t == name).count()
    }
}

/// Every client gets the world events after `mark` of its guilds.
async fn phase(p: &Pipeline, clients: &mut [Client], mark: u64, what: &str) {
    for (id, c) in clients.iter_mut().enumerate() {
        let want = p.expected(u32::try_from(id).unwrap(), 2, mark);
        let start = c.got.len();
        c.until(what, |g| total(&per_guild(&g[start..])) >= total(&want))
            .await;
        check_events(&c.got, start, &want, &format!("{what}, client shard {id}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_shards_get_the_truth_every_event_once_and_survive_restarts() {
    let mut p = Pipeline::start("relay-twilight", 2, 12).await;
    let token = p.sim.config().token.clone();

    // 1. READY and the truth, per client shard.
    let mut clients = Vec::new();
    for id in 0..2u32 {
        let mut c = Client::start(id, &token, p.relay_addr);
        let n = p.guilds_of(id, 2).len();
        c.until("snapshot", |g| g.len() > n).await;
        p.check_snapshot(id, 2, &c.got);
        clients.push(c);
    }

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

//! A real client library nobody here wrote, twilight-gateway, as a test
//! client of the relay: one shard of `[id, 2]`, and the check of what it
//! received against the truth.

use super::{Dispatch, INTENTS, Pipeline, WAIT, check_events, per_guild, total};
use futures_util::StreamExt;
use serde_json::Value;
use std::net::SocketAddr;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use twilight_gateway::{CloseFrame, ConfigBuilder, Intents, Message, Shard, ShardId};

/// A twilight shard: its dispatches, its resume trigger, its task, and
/// what it received so far.
pub struct Client {
    rx: mpsc::UnboundedReceiver<Dispatch>,
    pub resume: mpsc::UnboundedSender<()>,
    pub task: JoinHandle<()>,
    pub got: Vec<Dispatch>,
}

impl Client {
    /// Drives shard `[id, 2]`; a message on `resume` makes it close its
    /// connection with a RESUME frame (twilight then resumes by itself).
    pub fn start(id: u32, token: &str, relay: SocketAddr) -> Self {
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
    pub async fn until(&mut self, what: &str, done: impl Fn(&[Dispatch]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.got) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => self.got.push(m),
                Ok(None) => panic!("{what}: the client stopped"),
                Err(_) => panic!("{what}: timed out after {} dispatches", self.got.len()),
            }
        }
    }

    pub fn count(&self, name: &str) -> usize {
        self.got.iter().filter(|(t, _, _)| t == name).count()
    }
}

/// Two shards, `[0, 2]` and `[1, 2]`, through the pipeline's relay, each
/// checked against the truth once its READY and guilds are in.
pub async fn connect_both(p: &Pipeline) -> Vec<Client> {
    let token = p.sim.config().token.clone();
    let mut clients = Vec::new();
    for id in 0..2u32 {
        let mut c = Client::start(id, &token, p.relay_addr);
        let n = p.guilds_of(id, 2).len();
        c.until("snapshot", |g| g.len() > n).await;
        p.check_snapshot(id, 2, &c.got);
        clients.push(c);
    }
    clients
}

/// Every client gets the world events after `mark` of its guilds.
pub async fn phase(p: &Pipeline, clients: &mut [Client], mark: u64, what: &str) {
    for (id, c) in clients.iter_mut().enumerate() {
        let want = p.expected(u32::try_from(id).unwrap(), 2, mark);
        let start = c.got.len();
        c.until(what, |g| total(&per_guild(&g[start..])) >= total(&want))
            .await;
        check_events(&c.got, start, &want, &format!("{what}, client shard {id}"));
    }
}

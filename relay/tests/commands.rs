//! A bot's commands through the relay reach Discord (the simulator) on the
//! real shard that owns the guild, and the answers come back to the bot
//! that asked, and to it alone. The client is twilight-gateway 0.18
//! sending its own command types, through the whole pipeline
//! ([`common::Pipeline`]: simulator -> sharder -> RabbitMQ -> worker ->
//! relay):
//!
//! 1. op 4 (join a voice channel): VOICE_STATE_UPDATE and
//!    VOICE_SERVER_UPDATE for that guild come back;
//! 2. op 8 the cache cannot answer (a user id it does not hold) is
//!    forwarded; GUILD_MEMBERS_CHUNK comes back with the bot's own nonce,
//!    the members Discord holds and the unknown id in `not_found`, though
//!    the cache already held those members (the worker passes answers
//!    on); another client shard whose split holds the same guild gets
//!    nothing; a second request within Discord's per-guild window gets
//!    RATE_LIMITED, with its nonce, to the asker alone;
//! 3. op 3 reaches every real shard, and so does the presence a bot
//!    IDENTIFYs with.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Dispatch, INTENTS, Pipeline, WAIT};
use futures_util::StreamExt;
use serde_json::Value;
use std::net::SocketAddr;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use twilight_gateway::{ConfigBuilder, Intents, Message, MessageSender, Shard, ShardId};
use twilight_model::gateway::payload::outgoing::update_presence::UpdatePresencePayload;
use twilight_model::gateway::payload::outgoing::{
    RequestGuildMembers, UpdatePresence, UpdateVoiceState,
};
use twilight_model::gateway::presence::{ActivityType, MinimalActivity, Status};
use twilight_model::id::Id;

/// The pipeline's intents and GUILD_VOICE_STATES, without which Discord
/// sends no VOICE_STATE_UPDATE.
const BOT_INTENTS: u64 = INTENTS | (1 << 7);

struct Client {
    rx: mpsc::UnboundedReceiver<Dispatch>,
    sender: MessageSender,
    task: JoinHandle<()>,
    got: Vec<Dispatch>,
}

impl Client {
    /// Shard `[id, count]`, IDENTIFYing with `presence` if given.
    fn start(
        id: u32,
        count: u32,
        token: &str,
        relay: SocketAddr,
        presence: Option<UpdatePresencePayload>,
    ) -> Self {
        let mut config =
            ConfigBuilder::new(token.to_owned(), Intents::from_bits_truncate(BOT_INTENTS))
                .proxy_url(format!("ws://{relay}"));
        if let Some(p) = presence {
            config = config.presence(p);
        }
        let config = config.build();
        let mut shard = Shard::with_config(ShardId::new(id, count), config);
        let sender = shard.sender();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(msg) = shard.next().await {
                if let Ok(Message::Text(text)) = msg {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if v["op"] == 0 {
                        let d = (
                            v["t"].as_str().unwrap().to_owned(),
                            v["s"].as_u64().unwrap(),
                            v["d"].clone(),
                        );
                        if tx.send(d).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            rx,
            sender,
            task,
            got: Vec::new(),
        }
    }

    /// Receives until a dispatch named `t` satisfying `f` arrived; returns
    /// its `d`.
    async fn wait_for(&mut self, t: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((_, _, d)) = self.got.iter().find(|(n, _, d)| n == t && f(d)) {
                return d.clone();
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => self.got.push(m),
                Ok(None) => panic!("waiting for {t}: the client stopped"),
                Err(_) => panic!("waiting for {t}: timed out; got {:?}", self.names()),
            }
        }
    }

    /// Takes whatever arrived so far without waiting.
    fn drain(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            self.got.push(m);
        }
    }

    fn names(&self) -> Vec<&str> {
        self.got.iter().map(|(t, _, _)| t.as_str()).collect()
    }

    fn count(&self, t: &str) -> usize {
        self.got.iter().filter(|(n, _, _)| n == t).count()
    }
}

fn playing(status: Status) -> UpdatePresencePayload {
    let activity = MinimalActivity {
        kind: ActivityType::Playing,
        name: "relay".into(),
        url: None,
    };
    UpdatePresencePayload::new(vec![activity.into()], false, None, status).unwrap()
}

/// Waits until the real shards sent `n` presence updates in all, then
/// checks no more came.
async fn presences_reach(p: &Pipeline, n: u64) {
    let deadline = Instant::now() + WAIT;
    while p.sim.counters().presence_updates < n {
        assert!(
            Instant::now() < deadline,
            "op 3 never reached both real shards ({} of {n})",
            p.sim.counters().presence_updates
        );
        // Polling the simulator's counters, not a synchronisation sleep.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(p.sim.counters().presence_updates, n);
}

fn guild_of(d: &Value) -> Option<u64> {
    d["guild_id"].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_the_owning_real_shard_and_answers_come_back_to_the_asker() {
    let p = Pipeline::start_with("relay-commands", 2, 8, BOT_INTENTS).await;
    let token = p.sim.config().token.clone();
    let truth = p.sim.truth();
    // A guild of client [0, 2] with members, and a second client shard
    // [k, n] (k >= 2: its own identify bucket) whose split holds it too.
    let (guild, (k, n)) = p
        .guilds_of(0, 2)
        .into_iter()
        .filter(|g| !truth.guilds[g].members.is_empty())
        .find_map(|g| {
            (3..200u64)
                .map(|n| ((g >> 22) % n, n))
                .find(|(k, _)| *k >= 2)
                .map(|(k, n)| (g, (k as u32, n as u32)))
        })
        .expect("a guild with members");
    // The asker starts with a presence in its IDENTIFY, as most libraries
    // set their status: it reaches both real shards (op 3).
    let mut asker = Client::start(0, 2, &token, p.relay_addr, Some(playing(Status::Online)));
    asker.wait_for("READY", |_| true).await;
    presences_reach(&p, 2).await;
    let mut other = Client::start(k, n, &token, p.relay_addr, None);
    other.wait_for("READY", |_| true).await;
    other
        .wait_for("GUILD_CREATE", |d| common::gid(d) == guild)
        .await;

    // 1. Voice: join a channel of the guild.
    let channel = *truth.guilds[&guild].channels.keys().next().unwrap();
    asker
        .sender
        .command(&UpdateVoiceState::new(
            Id::new(guild),
            Id::new(channel),
            false,
            true,
        ))
        .unwrap();
    let state = asker
        .wait_for("VOICE_STATE_UPDATE", |d| guild_of(d) == Some(guild))
        .await;
    assert_eq!(state["channel_id"], channel.to_string());
    assert_eq!(state["self_mute"], true);
    let server = asker
        .wait_for("VOICE_SERVER_UPDATE", |d| guild_of(d) == Some(guild))
        .await;
    assert_eq!(server["endpoint"], "voice.simulator.invalid:443");
    assert!(!server["token"].as_str().unwrap().is_empty());
    assert_eq!(p.sim.counters().voice_state_updates, 1, "sent once");

    // 2. op 8 for two members the cache holds and a user it does not: the
    // real shard answers, to the asker only, with its nonce.
    let members: Vec<u64> = truth.guilds[&guild]
        .members
        .keys()
        .copied()
        .take(2)
        .collect();
    let mut ids: Vec<_> = members.iter().map(|m| Id::new(*m)).collect();
    ids.push(Id::new(1));
    let request = RequestGuildMembers::builder(Id::new(guild))
        .nonce("mine")
        .user_ids(ids.clone())
        .unwrap();
    asker.sender.command(&request).unwrap();
    let chunk = asker
        .wait_for("GUILD_MEMBERS_CHUNK", |d| guild_of(d) == Some(guild))
        .await;
    assert_eq!(chunk["nonce"], "mine");
    assert_eq!(chunk["not_found"], serde_json::json!(["1"]));
    let got: Vec<u64> = chunk["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"]["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got, members, "Discord's members, though the cache had them");
    assert_eq!(p.sim.counters().member_requests, 1, "forwarded once");
    // Again within Discord's per-guild window: RATE_LIMITED, its nonce.
    let request = RequestGuildMembers::builder(Id::new(guild))
        .nonce("again")
        .user_ids(ids)
        .unwrap();
    asker.sender.command(&request).unwrap();
    let limited = asker.wait_for("RATE_LIMITED", |_| true).await;
    assert_eq!(limited["opcode"], 8);
    assert_eq!(limited["meta"]["nonce"], "again");

    // 3. Presence: every real shard sends it.
    let p3 = playing(Status::Idle);
    let presence = UpdatePresence::new(p3.activities, p3.afk, p3.since, p3.status).unwrap();
    asker.sender.command(&presence).unwrap();
    presences_reach(&p, 4).await;

    // The other client shard holds the guild, yet got no answer meant for
    // the asker; both got the voice events of their guild (Discord sends
    // the bot's voice state to every session of the guild).
    other
        .wait_for("VOICE_SERVER_UPDATE", |d| guild_of(d) == Some(guild))
        .await;
    other.drain();
    assert_eq!(other.count("GUILD_MEMBERS_CHUNK"), 0, "{:?}", other.names());
    assert_eq!(other.count("RATE_LIMITED"), 0, "{:?}", other.names());
    asker.drain();
    assert_eq!(asker.count("GUILD_MEMBERS_CHUNK"), 1, "{:?}", asker.names());

    asker.task.abort();
    other.task.abort();
    p.stop().await;
}

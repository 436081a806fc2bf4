//! The gateway protocol toward a bot, from Discord's side, with a raw
//! websocket client: every refusal has Discord's close code, bad input is
//! a close with a reason (never a panic, never a stuck connection), and
//! heartbeats, RESUME and op 8 behave as Discord's do, and op 3, 4 and 8
//! that Discord would refuse never leave the relay. No simulator or
//! sharder: the relay's cache (Redis) is empty, its feed consumes an
//! exchange nobody publishes to.
#![allow(clippy::unwrap_used)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "relay.protocol.token";
/// GUILDS | GUILD_MESSAGES: what the relay's bot receives in this test.
const INTENTS: u64 = 1 | (1 << 9);
const WAIT: Duration = Duration::from_secs(10);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A relay on an empty cache and an exchange of its own; stopping it
/// deletes the exchange.
struct Relay {
    addr: SocketAddr,
    base: String,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), relay::RelayError>>,
}

impl Relay {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let conn = lapin::Connection::connect(
            testkit::services::AMQP_URL,
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_delete(
            format!("{}.events", self.base).as_str().into(),
            lapin::options::ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    }
}

async fn relay(heartbeat_ms: u64) -> Relay {
    relay_on("redis://127.0.0.1:6379/", heartbeat_ms).await
}

async fn relay_on(redis_url: &str, heartbeat_ms: u64) -> Relay {
    relay_with(
        redis_url,
        heartbeat_ms,
        INTENTS,
        &testkit::unique_name("relay-protocol"),
    )
    .await
}

async fn relay_with(redis_url: &str, heartbeat_ms: u64, intents: u64, base: &str) -> Relay {
    let base = base.to_owned();
    let cfg = config::Config::from_toml_str(
        &format!(
            "[discord]\nintents = {intents}\n[redis]\nurl = \"{redis_url}\"\n\
             key_prefix = \"{base}\"\n[relay]\nlisten = \"127.0.0.1:0\"\n\
             heartbeat_interval = \"{heartbeat_ms}ms\"\nidentify_timeout = \"1s\"\n\
             resume_window = \"30s\"\namqp_topology_base = \"{base}\"\n"
        ),
        "test",
        vec![("BULWARK_DISCORD__TOKEN".into(), TOKEN.into())],
    )
    .unwrap();
    let stop = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(relay::run_with(cfg, stop.clone(), Some(tx)));
    let addr = tokio::time::timeout(WAIT, rx).await.unwrap().unwrap();
    Relay {
        addr,
        base,
        stop,
        run,
    }
}

async fn connect(addr: SocketAddr) -> (Ws, Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/?v=10&encoding=json"))
        .await
        .unwrap();
    let hello = next_payload(&mut ws).await.expect("HELLO");
    assert_eq!(hello["op"], 10);
    (ws, hello)
}

/// The next payload, or `Err(close code)` when the relay closed.
async fn next(ws: &mut Ws) -> Result<Value, u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the relay answers")
        {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return Err(1006),
        }
    }
}

async fn next_payload(ws: &mut Ws) -> Option<Value> {
    next(ws).await.ok()
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

fn identify(token: &str, shard: [u32; 2], intents: u64) -> Value {
    json!({"op": 2, "d": {"token": token, "intents": intents, "shard": shard,
        "properties": {"os": "linux", "browser": "t", "device": "t"}}})
}

/// What the relay answers to `payload` sent first: the close code.
async fn closes_with(addr: SocketAddr, payload: Message) -> u16 {
    let (mut ws, _) = connect(addr).await;
    ws.send(payload).await.unwrap();
    loop {
        match next(&mut ws).await {
            Ok(_) => {}
            Err(code) => return code,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_use_discords_close_codes_and_bad_input_is_closed_not_fatal() {
    let r = relay(45_000).await;
    let addr = r.addr;
    let text = |v: Value| Message::Text(v.to_string().into());
    for (what, payload, code) in [
        ("wrong token", text(identify("nope", [0, 1], INTENTS)), 4004),
        (
            "shard >= count",
            text(identify(TOKEN, [2, 2], INTENTS)),
            4010,
        ),
        ("zero shards", text(identify(TOKEN, [0, 0], INTENTS)), 4010),
        (
            "undefined intent bit",
            text(identify(TOKEN, [0, 1], 1 << 17)),
            4013,
        ),
        (
            "privileged intent the bot lacks",
            text(identify(TOKEN, [0, 1], 1 << 1)),
            4014,
        ),
        ("not JSON", Message::Text("{nope".into()), 4002),
        (
            "binary garbage",
            Message::Binary(vec![0xff, 0x00, 0x13].into()),
            4002,
        ),
        ("unknown opcode", text(json!({"op": 42, "d": null})), 4001),
        (
            "op 8 before IDENTIFY",
            text(json!({"op": 8, "d": {"guild_id": "1"}})),
            4003,
        ),
        (
            "IDENTIFY with a presence Discord would refuse",
            text(
                json!({"op": 2, "d": {"token": TOKEN, "intents": INTENTS, "shard": [0, 1],
                "properties": {}, "presence": {"status": "away", "activities": [], "afk": false}}}),
            ),
            4002,
        ),
        (
            "IDENTIFY without a token",
            text(json!({"op": 2, "d": {"intents": 1}})),
            4002,
        ),
        (
            "resume with a wrong token",
            text(json!({"op": 6, "d": {"token": "x", "session_id": "s", "seq": 0}})),
            4004,
        ),
    ] {
        assert_eq!(closes_with(addr, payload).await, code, "{what}");
    }
    // Commands Discord would refuse are refused by the relay, with
    // Discord's code, and never reach a real shard.
    for ((what, payload, code), bucket) in [
        (
            "op 8 for the whole list without GUILD_MEMBERS",
            text(json!({"op": 8, "d": {"guild_id": "1", "query": "", "limit": 0}})),
            4013,
        ),
        (
            "op 8 with a query and no limit",
            text(json!({"op": 8, "d": {"guild_id": "1", "query": "a"}})),
            4002,
        ),
        (
            "op 4 without self_deaf",
            text(json!({"op": 4, "d": {"guild_id": "1", "channel_id": null, "self_mute": false}})),
            4002,
        ),
        (
            "op 3 with an unknown status",
            text(json!({"op": 3, "d": {"since": null, "activities": [], "status": "away", "afk": false}})),
            4002,
        ),
    ]
    .into_iter()
    .zip(0u32..)
    {
        // One identify bucket each (the relay's limit is one per bucket
        // per window).
        let (mut ws, _) = connect(addr).await;
        send(&mut ws, identify(TOKEN, [bucket, 64], INTENTS)).await;
        assert_eq!(next(&mut ws).await.unwrap()["t"], "READY");
        ws.send(payload).await.unwrap();
        assert_eq!(next(&mut ws).await, Err(code), "{what}");
    }
    // A huge frame is refused by the websocket layer, and the relay lives on.
    let (mut ws, _) = connect(addr).await;
    let _ = ws.send(Message::Text("x".repeat(2 << 20).into())).await;
    assert!(next(&mut ws).await.is_err());
    // An unknown session gets op 9 (not resumable), as on Discord.
    let (mut ws, _) = connect(addr).await;
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": TOKEN, "session_id": "gone", "seq": 3}}),
    )
    .await;
    assert_eq!(next(&mut ws).await.unwrap(), json!({"op": 9, "d": false}));
    // No IDENTIFY in time: 4009.
    let (mut ws, _) = connect(addr).await;
    assert_eq!(next(&mut ws).await, Err(4009));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_resume_and_member_requests_work_and_zombies_are_closed() {
    let r = relay(300).await;
    let addr = r.addr;
    let (mut ws, hello) = connect(addr).await;
    assert_eq!(hello["d"]["heartbeat_interval"], 300);
    send(&mut ws, json!({"op": 1, "d": null})).await;
    assert_eq!(next(&mut ws).await.unwrap(), json!({"op": 11}));
    send(&mut ws, identify(&format!("Bot {TOKEN}"), [0, 1], INTENTS)).await;
    let ready = next(&mut ws).await.unwrap();
    assert_eq!(
        (
            ready["op"].as_u64(),
            ready["t"].as_str(),
            ready["s"].as_u64()
        ),
        (Some(0), Some("READY"), Some(1))
    );
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    assert_eq!(session.len(), 32);
    assert_eq!(ready["d"]["resume_gateway_url"], format!("ws://{addr}"));
    // A second IDENTIFY on the connection: 4005.
    send(&mut ws, identify(TOKEN, [0, 1], INTENTS)).await;
    assert_eq!(next(&mut ws).await, Err(4005));

    // RESUME from s = 0: READY again, then RESUMED.
    let (mut ws, _) = connect(addr).await;
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": TOKEN, "session_id": session, "seq": 0}}),
    )
    .await;
    let replay = next(&mut ws).await.unwrap();
    assert_eq!(
        (replay["t"].as_str(), replay["s"].as_u64()),
        (Some("READY"), Some(1))
    );
    let resumed = next(&mut ws).await.unwrap();
    assert_eq!(
        (resumed["t"].as_str(), resumed["s"].as_u64()),
        (Some("RESUMED"), Some(2))
    );
    // A client that stops heartbeating is closed (resumable 4000) after
    // 1.5 intervals.
    let started = tokio::time::Instant::now();
    assert_eq!(next(&mut ws).await, Err(4000));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed too early"
    );
    r.stop().await;
}

/// Redis down: the relay still starts (no crash loop), says it is not
/// ready, and refuses IDENTIFY with a resumable 4000 instead of READY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_cache_the_relay_runs_not_ready_and_refuses_identify() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let r = relay_on(&format!("redis://127.0.0.1:{port}/"), 45_000).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let s = testkit::http(r.addr, "GET", "/readyz", None, "").await;
        if s.1.contains("Redis") || tokio::time::Instant::now() > deadline {
            break s;
        }
        // Polling the probe until the feed is up, not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.0, 503, "{}", status.1);
    assert!(status.1.contains("unreachable"), "{}", status.1);
    let (mut ws, _) = connect(r.addr).await;
    send(&mut ws, identify(TOKEN, [0, 1], INTENTS)).await;
    assert_eq!(next(&mut ws).await, Err(4000));
    r.stop().await;
}

/// The relay's own limits: a second IDENTIFY of one bucket within the
/// window gets op 9 and the connection stays; `/gateway/bot` tells the
/// budget and the buckets, and only with the bot token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_buckets_and_budget_are_told_and_enforced() {
    let r = relay(45_000).await;
    let (mut first, _) = connect(r.addr).await;
    send(&mut first, identify(TOKEN, [0, 2], INTENTS)).await;
    assert_eq!(next(&mut first).await.unwrap()["t"], "READY");
    let (mut again, _) = connect(r.addr).await;
    send(&mut again, identify(TOKEN, [64, 128], INTENTS)).await;
    assert_eq!(
        next(&mut again).await.unwrap(),
        json!({"op": 9, "d": false})
    );
    send(&mut again, json!({"op": 1, "d": null})).await;
    assert_eq!(
        next(&mut again).await.unwrap(),
        json!({"op": 11}),
        "still connected"
    );
    let (mut other, _) = connect(r.addr).await;
    send(&mut other, identify(TOKEN, [1, 2], INTENTS)).await;
    assert_eq!(
        next(&mut other).await.unwrap()["t"],
        "READY",
        "bucket 1 is free"
    );

    let (status, _) = testkit::http(r.addr, "GET", "/api/v10/gateway/bot", None, "").await;
    assert_eq!(status, 401);
    let (status, body) = testkit::http_with(
        r.addr,
        "GET",
        "/api/v10/gateway/bot",
        &[("Authorization", &format!("Bot {TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    // Without relay.public_url, the host the bot asked for (the client
    // sends `Host: x`).
    assert_eq!(v["url"], "ws://x");
    assert_eq!(v["session_start_limit"]["max_concurrency"], 64);
    assert_eq!(v["session_start_limit"]["total"], 100_000);
    assert_eq!(v["session_start_limit"]["remaining"], 100_000 - 2);
    r.stop().await;
}

/// A large guild's GUILD_CREATE lists only the bot (no presences cached),
/// as Discord's `large_threshold` says, and op 8 returns its members in
/// chunks of 1,000; a small guild lists every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_guilds_list_few_members_and_op_8_answers_in_chunks() {
    const LARGE: u64 = 81384788765712384; // (G >> 22) even
    const SMALL: u64 = LARGE + (2 << 22);
    let intents = 1 | (1 << 1) | (1 << 9);
    let base = testkit::unique_name("relay-large");
    let store = std::sync::Arc::new(
        worker::RedisStore::connect("redis://127.0.0.1:6379/", &base)
            .await
            .unwrap(),
    );
    let w = worker::Worker::with_shared_store(store.clone());
    for (guild, members, seq) in [(LARGE, 1200u64, 1u64), (SMALL, 10, 2)] {
        let list: Vec<Value> = (0..members)
            .map(|i| {
                json!({"user": {"id": (90_000_000_000_000_000u64 + i).to_string(),
                "username": format!("m{i}")}, "roles": []})
            })
            .collect();
        let d = json!({"id": guild.to_string(), "name": "g", "owner_id": "1",
            "member_count": members, "channels": [], "roles": [], "members": list});
        let mut report = worker::Report::default();
        w.process_event(
            envelope::ShardRef::new(0, 1),
            &envelope::Event {
                epoch: 1,
                seq,
                received_at: 0,
                t: "GUILD_CREATE",
                guild_id: Some(guild),
                guild_create: Some(envelope::GuildCreateKind::Joined),
                d: d.to_string().as_bytes(),
            },
            &mut report,
        )
        .await
        .unwrap();
    }
    assert_eq!(store.guild_ids().await.unwrap(), vec![LARGE, SMALL]);
    let r = relay_with("redis://127.0.0.1:6379/", 45_000, intents, &base).await;
    let (mut ws, _) = connect(r.addr).await;
    send(&mut ws, identify(TOKEN, [0, 1], intents)).await;
    assert_eq!(next(&mut ws).await.unwrap()["t"], "READY");
    let mut creates = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let c = next(&mut ws).await.unwrap();
        assert_eq!(c["t"], "GUILD_CREATE");
        creates.insert(c["d"]["id"].as_str().unwrap().to_owned(), c["d"].clone());
    }
    let large = &creates[&LARGE.to_string()];
    assert_eq!(large["large"], true);
    assert_eq!(large["member_count"], 1200);
    assert_eq!(
        large["members"].as_array().unwrap().len(),
        0,
        "offline members of a large guild"
    );
    let small = &creates[&SMALL.to_string()];
    assert_eq!(small["large"], false);
    assert_eq!(small["members"].as_array().unwrap().len(), 10);

    send(
        &mut ws,
        json!({"op": 8, "d": {"guild_id": LARGE.to_string(), "query": "",
        "limit": 0, "nonce": "all"}}),
    )
    .await;
    let mut got = 0;
    for i in 0..2u64 {
        let c = next(&mut ws).await.unwrap();
        assert_eq!(c["t"], "GUILD_MEMBERS_CHUNK");
        assert_eq!(
            (
                c["d"]["chunk_index"].as_u64(),
                c["d"]["chunk_count"].as_u64()
            ),
            (Some(i), Some(2))
        );
        assert_eq!(c["d"]["nonce"], "all");
        got += c["d"]["members"].as_array().unwrap().len();
    }
    assert_eq!(got, 1200);
    r.stop().await;
    let client = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{base}:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut con)
            .await
            .unwrap();
    }
}

//! A hostile gateway on loopback: a real shard (zlib-stream, file session
//! store holding a corrupt session) talks to a websocket server that answers
//! IDENTIFY and RESUME faithfully and then sends mutated and hand-picked
//! malicious payloads and corrupt compressed messages, one at a time.
//!
//! The shard must never panic: every bad payload ends at most its
//! connection (the shard resumes on a new one), the sink receives only
//! events whose `d` is the JSON the gateway sent and that the envelope
//! either frames exactly or refuses with an error (the AMQP sink then skips
//! them), and the session the shard saves at shutdown is readable.
//!
//! After each payload the server sends op 1 (heartbeat request); the
//! shard's heartbeat answer tells that the payload was handled and the
//! connection lives on, a close that it ended the connection. No sleeps.
#![allow(clippy::unwrap_used)]

mod common;
mod hostile;

use common::TempDir;
use config::Secret;
use flate2::{Compress, Compression as Level, FlushCompress};
use futures_util::{SinkExt, StreamExt};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use sharder::{
    ChannelSink, Compression, FileSessionStore, PlainConnector, SessionKey, SessionOwner, Shard,
    ShardConfig, ShardEvent, ShardExit, load_session,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);
const PROBE_WAIT: Duration = Duration::from_secs(10);
const SENTINEL: &str = "HOSTILE_DONE";

/// What one hostile message is: a payload to compress, or raw bytes sent
/// as they are (corrupt compression).
enum Hostile {
    Payload(Vec<u8>),
    Raw(Vec<u8>),
}

#[derive(Default)]
struct Script {
    messages: Mutex<VecDeque<Hostile>>,
    /// IDENTIFY (2) and RESUME (6) in the order they came.
    opens: Mutex<Vec<u64>>,
    /// Probes the shard did not answer, nor close on, in time.
    stuck: Mutex<usize>,
    resume_url: Mutex<String>,
}

type Err = Box<dyn std::error::Error + Send + Sync>;

async fn send(
    ws: &mut WebSocketStream<TcpStream>,
    z: &mut Compress,
    payload: &[u8],
) -> Result<(), Err> {
    let mut out = Vec::with_capacity(payload.len() + 64);
    let mut offset = 0;
    loop {
        out.reserve(4096);
        let (before, written) = (z.total_in(), out.len());
        z.compress_vec(&payload[offset..], &mut out, FlushCompress::Sync)?;
        offset += usize::try_from(z.total_in() - before)?;
        // An empty payload right after a flush compresses to nothing.
        let stalled = out.len() == written;
        if offset == payload.len() && (out.ends_with(&[0, 0, 0xFF, 0xFF]) || stalled) {
            break;
        }
    }
    ws.send(Message::Binary(out.into())).await?;
    Ok(())
}

/// The next op the shard sent; `None` when the connection ended.
async fn next_op(ws: &mut WebSocketStream<TcpStream>) -> Option<(u64, serde_json::Value)> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).ok()?;
                return Some((v["op"].as_u64()?, v));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn connection(tcp: TcpStream, script: Arc<Script>) -> Result<(), Err> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let mut z = Compress::new(Level::fast(), true);
    send(
        &mut ws,
        &mut z,
        br#"{"op":10,"d":{"heartbeat_interval":45000}}"#,
    )
    .await?;
    let mut seq = loop {
        let Some((op, v)) = next_op(&mut ws).await else {
            return Ok(());
        };
        match op {
            1 => send(&mut ws, &mut z, br#"{"op":11,"d":null}"#).await?,
            2 => {
                script.opens.lock().unwrap().push(2);
                let url = script.resume_url.lock().unwrap().clone();
                let ready = serde_json::json!({"op": 0, "s": 1, "t": "READY", "d": {
                    "session_id": "hostile", "resume_gateway_url": url,
                    "guilds": [{"id": "81384788765712384", "unavailable": true}],
                    "user": {"id": "5"}}});
                send(&mut ws, &mut z, ready.to_string().as_bytes()).await?;
                break 1;
            }
            6 => {
                script.opens.lock().unwrap().push(6);
                let s = v["d"]["seq"].as_u64().unwrap_or(0) + 1;
                let resumed = format!(r#"{{"op":0,"s":{s},"t":"RESUMED","d":{{}}}}"#);
                send(&mut ws, &mut z, resumed.as_bytes()).await?;
                break s;
            }
            _ => {}
        }
    };
    loop {
        let next = script.messages.lock().unwrap().pop_front();
        match next {
            Some(Hostile::Payload(p)) => send(&mut ws, &mut z, &p).await?,
            Some(Hostile::Raw(r)) => ws.send(Message::Binary(r.into())).await?,
            None => {
                seq += 1_000_000;
                let done = format!(r#"{{"op":0,"s":{seq},"t":"{SENTINEL}","d":{{}}}}"#);
                send(&mut ws, &mut z, done.as_bytes()).await?;
                // Hold the connection until the shard closes it.
                while next_op(&mut ws).await.is_some() {}
                return Ok(());
            }
        }
        send(&mut ws, &mut z, br#"{"op":1,"d":null}"#).await?;
        match timeout(PROBE_WAIT, async {
            loop {
                match next_op(&mut ws).await {
                    Some((1, _)) => return true,
                    Some(_) => {}
                    None => return false,
                }
            }
        })
        .await
        {
            Ok(true) => send(&mut ws, &mut z, br#"{"op":11,"d":null}"#).await?,
            Ok(false) => return Ok(()),
            Err(_) => {
                *script.stuck.lock().unwrap() += 1;
                return Ok(());
            }
        }
    }
}

/// Mutated valid payloads, hand-picked malicious ones, and corrupt
/// compressed messages.
fn hostile_messages() -> VecDeque<Hostile> {
    let mut runner = TestRunner::deterministic();
    let strategy = (
        0..hostile::FRAMES.len(),
        proptest::collection::vec(hostile::mutation(), 1..4),
    );
    let mut out: VecDeque<Hostile> = (0..80)
        .map(|_| {
            let (i, m) = strategy.new_tree(&mut runner).unwrap().current();
            Hostile::Payload(hostile::mutated(hostile::FRAMES[i].as_bytes().to_vec(), &m))
        })
        .collect();
    let deep = format!(
        r#"{{"op":0,"s":9,"t":"MESSAGE_CREATE","d":{}1{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let long_name = format!(r#"{{"op":0,"s":9,"t":"{}","d":{{}}}}"#, "X".repeat(300));
    for p in [
        r#"{"op":0,"s":18446744073709551615,"t":"GUILD_CREATE","d":{"id":"18446744073709551615"}}"#,
        r#"{"op":0,"s":5,"t":"GUILD_CREATE","d":{"id":"99999999999999999999999"}}"#,
        r#"{"op":0,"s":5,"t":"GUILD_CREATE","d":{"id":7}}"#,
        r#"{"op":0,"s":5,"t":"GUILD_CREATE","d":[]}"#,
        r#"{"op":0,"s":6,"t":"lower_case","d":{"guild_id":"1"}}"#,
        r#"{"op":0,"s":6,"t":"MESSAGE_CREATE","d":"\ud800"}"#,
        r#"{"op":0,"s":0,"t":"READY","d":{"session_id":"","guilds":[{"id":"x"}]}}"#,
        r#"{"op":0,"s":7,"t":"READY","d":{"session_id":"s","resume_gateway_url":"http://evil","guilds":[]}}"#,
        r#"{"op":10,"d":{"heartbeat_interval":0}}"#,
        r#"{"op":10,"d":{"heartbeat_interval":18446744073709551615}}"#,
        r#"{"op":9,"d":true}"#,
        r#"{"op":255,"d":{}}"#,
        r#"{"op":7}"#,
        "\u{feff}{}",
        &deep,
        &long_name,
    ] {
        out.push_back(Hostile::Payload(p.as_bytes().to_vec()));
    }
    for raw in [
        vec![0x12, 0x34, 0x56, 0x00, 0x00, 0xFF, 0xFF],
        vec![0u8; 64],
        vec![0x00, 0x00, 0xFF, 0xFF],
    ] {
        out.push_back(Hostile::Raw(raw));
    }
    out
}

/// What the sink and a worker downstream rely on.
fn check_event(ev: &ShardEvent) -> bool {
    assert!(
        serde_json::from_slice::<serde::de::IgnoredAny>(&ev.data).is_ok(),
        "{}: d is not the JSON the gateway sent",
        ev.event
    );
    let env = ev.envelope();
    let mut enc = envelope::BatchEncoder::new(ev.shard_id, ev.num_shards).unwrap();
    if enc.push(&env).is_err() {
        return false; // the AMQP sink skips it, with a warning
    }
    let bytes = enc.finish();
    let batch = envelope::decode(&bytes).unwrap();
    assert_eq!(batch.events, vec![env]);
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_gateway_never_makes_the_shard_panic() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let script = Arc::new(Script::default());
    *script.messages.lock().unwrap() = hostile_messages();
    *script.resume_url.lock().unwrap() = format!("{url}/resume");
    let server = {
        let script = script.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(connection(tcp, script.clone()));
            }
        })
    };

    let dir = TempDir::new("hostile-gateway").unwrap();
    let store = Arc::new(FileSessionStore::new(&dir.0));
    // A stored session cut in half: ignored, so the shard identifies.
    let path = store.path(SessionKey::shard(1, 0));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, br#"{"format":1,"token_fingerprint":"#).unwrap();
    let scheduler = common::scheduler(Duration::from_millis(1));
    let token = Secret::new("hostile-token");
    let mut c = ShardConfig::new(0, 1, token.clone(), url);
    c.compression = Compression::ZlibStream;
    c.reconnect_base = Duration::from_millis(10);
    c.reconnect_max = Duration::from_millis(40);
    c.hello_timeout = Duration::from_secs(5);
    c.persist_interval = Duration::from_millis(50);
    c.send_window = Duration::from_millis(100);
    c.invalid_session_delay = (Duration::from_millis(5), Duration::from_millis(10));
    c.max_payload = 256 * 1024;
    let (sink, mut rx) = ChannelSink::new(1024, true);
    let (shard, handle) = Shard::new(
        c,
        scheduler,
        store.clone(),
        Arc::new(sink),
        Arc::new(PlainConnector),
    );
    let task = tokio::spawn(shard.run());

    let (mut framed, mut refused) = (0usize, 0usize);
    timeout(WAIT, async {
        loop {
            let ev = rx.recv().await.expect("the sink closed: the shard stopped");
            if ev.event == SENTINEL {
                return;
            }
            if check_event(&ev) {
                framed += 1;
            } else {
                refused += 1;
            }
        }
    })
    .await
    .expect("the shard never got through the hostile messages");

    handle.shutdown();
    let exit = timeout(WAIT, task)
        .await
        .expect("shutdown in time")
        .expect("the shard task panicked");
    assert!(matches!(exit, ShardExit::Shutdown), "{exit:?}");
    server.abort();

    let opens = script.opens.lock().unwrap().clone();
    assert_eq!(
        opens.first(),
        Some(&2),
        "a corrupt stored session must not be resumed"
    );
    assert!(
        opens.contains(&6),
        "bad payloads end in a resume: {opens:?}"
    );
    assert_eq!(
        *script.stuck.lock().unwrap(),
        0,
        "a payload left the shard unresponsive"
    );
    assert!(framed > 0, "no event reached the sink");
    let owner = SessionOwner::new(&token, 1);
    let saved = load_session(store.as_ref(), &owner, 0).await;
    assert!(saved.is_some(), "the session saved at shutdown is readable");
    eprintln!(
        "hostile gateway: {framed} events framed, {refused} refused by the envelope, \
         {} connections ({opens:?})",
        opens.len()
    );
}

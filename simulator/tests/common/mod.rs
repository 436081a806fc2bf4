//! A minimal gateway client for the simulator's tests: connects with
//! tokio-tungstenite, decompresses zlib-stream / zstd-stream, and waits for
//! payloads or close frames with a deadline (never a bare sleep).
#![allow(clippy::unwrap_used, dead_code)]

pub use discord_sim::{SimConfig, SimHandle, Simulator};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TOKEN: &str = "sim-token";
/// GUILDS | GUILD_MEMBERS | GUILD_EMOJIS_AND_STICKERS | GUILD_PRESENCES |
/// GUILD_MESSAGES | GUILD_MESSAGE_TYPING | MESSAGE_CONTENT
pub const ALL_USED_INTENTS: u64 =
    1 | (1 << 1) | (1 << 3) | (1 << 8) | (1 << 9) | (1 << 11) | (1 << 15);
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Fast windows for tests: 5 ms identify window; a 10 s heartbeat so that
/// slow, loaded machines do not time out tests that never heartbeat.
pub fn test_config() -> SimConfig {
    SimConfig {
        shards: 2,
        guilds: 6,
        members_per_guild: 5,
        channels_per_guild: 4,
        roles_per_guild: 3,
        identify_window: Duration::from_millis(5),
        heartbeat_interval: Duration::from_secs(10),
        ..SimConfig::default()
    }
}

pub async fn start(cfg: SimConfig) -> SimHandle {
    Simulator::start(cfg).await.unwrap()
}

enum Inflater {
    Plain,
    /// Transport compression, read with the sharder's own decoder.
    Stream(gateway_protocol::Decompressor),
}

/// What the client read.
#[derive(Debug)]
pub enum Recv {
    Payload(Value),
    /// A close frame with its code, or `None` when the TCP connection
    /// ended without one.
    Closed(Option<u16>),
    /// A message that did not decode (the test asked for a malformed frame).
    Garbage(String),
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    inflater: Inflater,
}

impl Client {
    /// Connects to `base` (`ws://host:port` or `.../resume`) with the v10
    /// JSON query and `compress` (None, "zlib-stream", "zstd-stream").
    pub async fn connect(base: &str, compress: Option<&str>) -> Client {
        let mut url = format!("{base}/?v=10&encoding=json");
        if let Some(c) = compress {
            url.push_str("&compress=");
            url.push_str(c);
        }
        Self::connect_url(&url, compress).await
    }

    pub async fn connect_url(url: &str, compress: Option<&str>) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let stream = match compress {
            Some("zlib-stream") => Some(gateway_protocol::Compression::ZlibStream),
            Some("zstd-stream") => Some(gateway_protocol::Compression::ZstdStream),
            _ => None,
        };
        let inflater = match stream {
            Some(c) => Inflater::Stream(
                gateway_protocol::Decompressor::new(c, gateway_protocol::DEFAULT_MAX_PAYLOAD)
                    .unwrap(),
            ),
            None => Inflater::Plain,
        };
        Client { ws, inflater }
    }

    /// The next payload or close, within [`DEADLINE`].
    pub async fn recv(&mut self) -> Recv {
        tokio::time::timeout(DEADLINE, self.recv_inner())
            .await
            .expect("nothing received before the deadline")
    }

    /// The next message within `d`, or `None` when nothing arrived.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Recv> {
        tokio::time::timeout(d, self.recv_inner()).await.ok()
    }

    async fn recv_inner(&mut self) -> Recv {
        loop {
            let msg = match self.ws.next().await {
                None | Some(Err(_)) => return Recv::Closed(None),
                Some(Ok(m)) => m,
            };
            let text = match msg {
                Message::Text(t) => t.as_str().to_owned(),
                Message::Binary(b) => match self.inflate(&b) {
                    Ok(Some(t)) => t,
                    Ok(None) => continue,
                    Err(e) => return Recv::Garbage(e),
                },
                Message::Close(f) => return Recv::Closed(f.map(|f| u16::from(f.code))),
                _ => continue,
            };
            return match serde_json::from_str(&text) {
                Ok(v) => Recv::Payload(v),
                Err(_) => Recv::Garbage(text),
            };
        }
    }

    fn inflate(&mut self, b: &[u8]) -> Result<Option<String>, String> {
        match &mut self.inflater {
            // Payload compression: a binary message is one whole zlib stream.
            Inflater::Plain => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut flate2::read::ZlibDecoder::new(b), &mut text)
                    .map_err(|e| e.to_string())?;
                Ok(Some(text))
            }
            Inflater::Stream(d) => match d.push(b).map_err(|e| e.to_string())? {
                Some(payload) => String::from_utf8(payload.to_vec())
                    .map(Some)
                    .map_err(|e| e.to_string()),
                None => Ok(None),
            },
        }
    }

    /// The next payload; panics on close or garbage.
    pub async fn payload(&mut self) -> Value {
        match self.recv().await {
            Recv::Payload(v) => v,
            other => panic!("expected a payload, got {other:?}"),
        }
    }

    /// Skips payloads until one with `op`; panics on close.
    pub async fn until_op(&mut self, op: u64) -> Value {
        loop {
            let v = self.payload().await;
            if v["op"] == op {
                return v;
            }
        }
    }

    /// Reads until a close frame or the end of the connection, skipping
    /// payloads; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.recv().await {
                Recv::Closed(c) => return c,
                _ => continue,
            }
        }
    }

    /// Reads until a close frame, skipping everything else; returns its
    /// code and reason (`None` when the connection ended without one).
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        let read = async {
            while let Some(Ok(msg)) = self.ws.next().await {
                if let Message::Close(f) = msg {
                    return f.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
            }
            None
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .expect("no close before the deadline")
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// Reads HELLO and returns its heartbeat interval.
    pub async fn hello(&mut self) -> u64 {
        let v = self.payload().await;
        assert_eq!(v["op"], 10, "{v}");
        v["d"]["heartbeat_interval"].as_u64().unwrap()
    }

    pub async fn identify(&mut self, shard: u32, num: u32, intents: u64) {
        self.send(identify_payload(TOKEN, Some([shard, num]), intents))
            .await;
    }

    pub async fn heartbeat(&mut self, seq: Option<u64>) {
        self.send(json!({"op": 1, "d": seq})).await;
    }

    pub async fn resume(&mut self, session_id: &str, seq: u64) {
        self.send(json!({"op": 6, "d": {"token": TOKEN, "session_id": session_id, "seq": seq}}))
            .await;
    }

    /// Reads dispatches until READY, returning it.
    pub async fn ready(&mut self) -> Value {
        let v = self.until_op(0).await;
        assert_eq!(v["t"], "READY", "{v}");
        v
    }

    /// Collects dispatches until `t` (inclusive).
    pub async fn dispatches_until(&mut self, t: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = self.payload().await;
            if v["op"] != 0 {
                continue;
            }
            let done = v["t"] == t;
            out.push(v);
            if done {
                return out;
            }
        }
    }

    /// Collects exactly `n` dispatches.
    pub async fn dispatches(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let v = self.payload().await;
            if v["op"] == 0 {
                out.push(v);
            }
        }
        out
    }

    /// Connects, reads HELLO, identifies and reads READY plus the shard's
    /// initial GUILD_CREATEs (`guilds` of them).
    pub async fn session(base: &str, shard: u32, num: u32, guilds: usize) -> (Client, Value) {
        let mut c = Client::connect(base, None).await;
        c.hello().await;
        c.identify(shard, num, ALL_USED_INTENTS).await;
        let ready = c.ready().await;
        let creates = c.dispatches(guilds).await;
        assert!(creates.iter().all(|v| v["t"] == "GUILD_CREATE"));
        (c, ready)
    }
}

pub fn identify_payload(token: &str, shard: Option<[u32; 2]>, intents: u64) -> Value {
    let mut d = json!({
        "token": token,
        "intents": intents,
        "properties": {"os": "linux", "browser": "bulwark-test", "device": "bulwark-test"},
    });
    if let Some(s) = shard {
        d["shard"] = json!(s);
    }
    json!({"op": 2, "d": d})
}

/// Waits until `f` holds, polling every few ms, within [`DEADLINE`].
pub async fn eventually(mut f: impl FnMut() -> bool, what: &str) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A plain HTTP/1.1 request; returns the status and the body.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    let body = body.unwrap_or("");
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(resp).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Keys of a GUILD_CREATE payload that are not guild fields in the truth.
pub const SNAPSHOT_ONLY: &[&str] = &[
    "roles",
    "emojis",
    "joined_at",
    "large",
    "unavailable",
    "member_count",
    "channels",
    "members",
    "threads",
    "presences",
    "voice_states",
    "stage_instances",
    "guild_scheduled_events",
    "soundboard_sounds",
];

/// A snowflake string as a number.
pub fn id(v: &Value) -> u64 {
    v.as_str().unwrap().parse().unwrap()
}

/// `v` without the top-level `keys`.
pub fn without(mut v: Value, keys: &[&str]) -> Value {
    for k in keys {
        v.as_object_mut().unwrap().remove(*k);
    }
    v
}

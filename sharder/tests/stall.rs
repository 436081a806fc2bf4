//! A shard whose thread stalls is not a zombie.
//!
//! After a stall (a starved core, a paused process) the heartbeat timer and
//! the ACK already sitting in the socket are ready at the same moment, and
//! `select!` picks either. A shard that picks the timer first must still
//! read the ACK before it calls its connection a zombie; otherwise every
//! such stall costs a reconnect and a resume.
//!
//! # How the stall is made
//! The simulator runs on its own runtime thread, so it keeps answering while
//! the shard's thread is stopped. The shard dials through a connector whose
//! stream, once armed, stops the shard's whole thread right after each
//! heartbeat is written (the only frame a settled shard sends), for longer
//! than the heartbeat interval. The ACK arrives during the stall; when the
//! thread resumes, the next beat is due and the ACK is unread. Each stall is
//! therefore a coin toss for a shard that judges before reading: eight of
//! them pass by chance 1 in 256 times. The stall itself is the fault under
//! test, not a wait: every wait is on an event, bounded by a timeout.

#![allow(clippy::unwrap_used)]

use config::Secret;
use discord_sim::{SimConfig, Simulator};
use sharder::{
    ChannelSink, Compression, ConnectError, Connector, FileSessionStore, Shard, ShardConfig,
    ShardEvent, ShardState,
};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

mod common;

const WAIT: Duration = Duration::from_secs(20);
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Past the next beat (1.0 interval), inside the simulator's grace for a
/// late heartbeat (1.5 intervals).
const STALL: Duration = Duration::from_millis(240);
const STALLS: u32 = 8;
/// The 120-per-60 s send limit scaled like the heartbeat (300 beats a
/// minute would not fit the real one).
const SEND_WINDOW: Duration = Duration::from_secs(4);
const IDENTIFY_WINDOW: Duration = Duration::from_millis(100);

/// Stops the thread after a write, once per write-then-read, when armed.
struct StallingStream {
    inner: TcpStream,
    armed: Arc<AtomicBool>,
    stalls: watch::Sender<u32>,
    stalled_since_read: bool,
}

impl AsyncRead for StallingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.stalled_since_read = false;
        }
        r
    }
}

impl AsyncWrite for StallingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(_)))
            && this.armed.load(Ordering::SeqCst)
            && !this.stalled_since_read
        {
            this.stalled_since_read = true;
            // The fault under test: the shard's thread stops, as on a
            // starved core.
            std::thread::sleep(STALL);
            this.stalls.send_modify(|n| *n += 1);
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

struct StallingConnector {
    armed: Arc<AtomicBool>,
    stalls: watch::Sender<u32>,
}

impl Connector for StallingConnector {
    type Stream = StallingStream;

    async fn connect(
        &self,
        url: &str,
        max_message: usize,
    ) -> Result<WebSocketStream<StallingStream>, ConnectError> {
        let fail = |e: String| ConnectError {
            url: url.to_owned(),
            message: e,
        };
        let host = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| fail("not a ws:// URL".into()))?;
        let inner = TcpStream::connect(host)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let stream = StallingStream {
            inner,
            armed: self.armed.clone(),
            stalls: self.stalls.clone(),
            stalled_since_read: false,
        };
        let config = WebSocketConfig::default().max_message_size(Some(max_message));
        tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| fail(e.to_string()))
    }
}

async fn until_ready(rx: &mut mpsc::Receiver<ShardEvent>) {
    loop {
        let ev = timeout(WAIT, rx.recv())
            .await
            .expect("no READY in time")
            .expect("sink closed");
        if ev.event == "READY" {
            return;
        }
    }
}

#[test]
fn a_stalled_shard_reads_its_ack_before_calling_itself_a_zombie() {
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sim = sim_rt
        .block_on(Simulator::start(SimConfig {
            shards: 1,
            guilds: 2,
            heartbeat_interval: HEARTBEAT,
            send_window: SEND_WINDOW,
            identify_window: IDENTIFY_WINDOW,
            // Heartbeats and their ACKs are the only traffic once READY.
            event_rate: 0.0,
            ..SimConfig::default()
        }))
        .unwrap();
    let dir = common::TempDir::new("stall").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let armed = Arc::new(AtomicBool::new(false));
        let (stalls, mut stalled) = watch::channel(0u32);
        let connector = StallingConnector {
            armed: armed.clone(),
            stalls,
        };
        let scheduler = common::scheduler(IDENTIFY_WINDOW + Duration::from_millis(20));
        let mut config = ShardConfig::new(0, 1, Secret::new("sim-token"), sim.gateway_url());
        config.compression = Compression::ZlibStream;
        config.intents = discord_sim::VALID_INTENTS;
        config.reconnect_base = Duration::from_millis(20);
        config.reconnect_max = Duration::from_millis(200);
        config.send_window = SEND_WINDOW;
        let (sink, mut rx) = ChannelSink::new(1024, true);
        let (shard, handle) = Shard::new(
            config,
            scheduler,
            Arc::new(FileSessionStore::new(&dir.0)),
            Arc::new(sink),
            Arc::new(connector),
        );
        let task = tokio::spawn(shard.run());
        until_ready(&mut rx).await;
        armed.store(true, Ordering::SeqCst);
        timeout(WAIT, stalled.wait_for(|n| *n >= STALLS))
            .await
            .expect("the shard stopped sending heartbeats")
            .unwrap();
        let c = sim.counters();
        assert_eq!(
            (c.identifies, c.resumes, c.heartbeat_timeouts),
            (1, 0, 0),
            "a stall was taken for a zombie: {c:?}"
        );
        assert!(c.heartbeats >= u64::from(STALLS), "{c:?}");
        assert_eq!(handle.state(), ShardState::Active);
        task.abort();
    });
}

//! Throughput benchmark: how many dispatch events per second the simulator
//! delivers, on one core, to many zlib-stream connections.
//!
//! The simulator runs on a single-threaded tokio runtime on its own thread
//! (one core); the clients run on another thread and only count websocket
//! messages, except client 0, which inflates and parses every message to
//! prove the stream is valid. Each run starts a fresh simulator, identifies
//! every shard, lets the stream warm up, then counts messages received over
//! the measuring window. Besides the wall-clock rate, it reports events per
//! CPU-second of the simulator thread (from `/proc/thread-self/schedstat`),
//! which stays meaningful when other work shares the machine.
//!
//! ```sh
//! cargo bench -p discord-sim --bench throughput -- --connections 256 --seconds 5 --runs 5
//! ```
#![forbid(unsafe_code)]

use anyhow::{Context as _, bail};
use clap::Parser;
use discord_sim::{SimConfig, Simulator};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use testkit::bench_report::Stats;
use tokio_tungstenite::tungstenite::Message;

/// Measures dispatch throughput of the simulator on one core.
#[derive(Debug, Parser)]
struct Args {
    /// Gateway connections (one shard each).
    #[arg(long, default_value_t = 256)]
    connections: u32,
    /// Guilds per shard.
    #[arg(long, default_value_t = 4)]
    guilds_per_shard: u32,
    /// Seconds measured per run (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Runs; min, median and max are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Offered event rate per second (the simulator's token bucket).
    #[arg(long, default_value_t = 2_000_000.0)]
    rate: f64,
    /// Transport compression: zlib-stream, zstd-stream or none.
    #[arg(long, default_value = "zlib-stream")]
    compress: String,
    /// Only time the pure world model (no sockets): events generated per second.
    #[arg(long)]
    world_only: bool,
    /// Only time zlib-stream compression of generated payloads (no sockets),
    /// each into the compression context of its shard (`--connections`).
    #[arg(long)]
    deflate_only: bool,
    /// With `--deflate-only`: time flate2's zlib-rs level-1 contexts instead
    /// of the simulator's own zlib-stream compressor (for comparison).
    #[arg(long)]
    flate2: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.connections == 0 || args.runs == 0 || args.seconds == 0 {
        bail!("--connections, --runs and --seconds must be at least 1");
    }
    let mut results = Vec::new();
    let mut per_cpu = Vec::new();
    for run in 1..=args.runs {
        let r = if args.world_only {
            world_run(&args).map(|r| (r, None))
        } else if args.deflate_only {
            deflate_run(&args).map(|r| (r, None))
        } else {
            one_run(&args).map(|(r, c)| (r, Some(c)))
        };
        let (r, cpu) = r.with_context(|| format!("run {run}"))?;
        match cpu {
            Some(c) => {
                println!("run {run}: {r:.0} events/s, {c:.0} events per simulator CPU-second");
                per_cpu.push(c);
            }
            None => println!("run {run}: {r:.0} events/s"),
        }
        results.push(r);
    }
    let summary = |v: &mut Vec<f64>| {
        let s = Stats::middle_of(v).context("no finite run")?;
        anyhow::Ok(format!(
            "min {:.0} median {:.0} max {:.0}",
            s.min, s.median, s.max
        ))
    };
    println!(
        "connections={} compress={} runs={} seconds={}: {} events/s",
        args.connections,
        args.compress,
        args.runs,
        args.seconds,
        summary(&mut results)?
    );
    if !per_cpu.is_empty() {
        println!(
            "  per simulator CPU-second: {} events",
            summary(&mut per_cpu)?
        );
    }
    Ok(())
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn world_run(args: &Args) -> anyhow::Result<f64> {
    let cfg = discord_sim::WorldConfig {
        shards: args.connections,
        guilds: args.connections * args.guilds_per_shard,
        ..discord_sim::WorldConfig::default()
    };
    let mut w = discord_sim::World::new(1, cfg)?;
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        for _ in 0..1000 {
            std::hint::black_box(w.next_dispatch());
        }
        n += 1000;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn deflate_run(args: &Args) -> anyhow::Result<f64> {
    let cfg = discord_sim::WorldConfig {
        shards: args.connections,
        guilds: args.connections * args.guilds_per_shard,
        ..discord_sim::WorldConfig::default()
    };
    let mut w = discord_sim::World::new(1, cfg)?;
    // Each payload goes to its shard's context, as on the wire; enough of
    // them that no context sees a payload twice within a 32 KiB window.
    let count = (args.connections as usize * 64).max(4096);
    let mut seqs = vec![0u64; args.connections as usize];
    let payloads: Vec<(usize, String)> = (0..count)
        .map(|_| {
            let d = w.next_dispatch();
            let k = d.shard as usize % seqs.len();
            seqs[k] += 1;
            let text = format!(
                "{{\"op\":0,\"s\":{},\"t\":\"{}\",\"d\":{}}}",
                seqs[k], d.event, d.payload
            );
            (k, text)
        })
        .collect();
    let mut flate2_contexts: Vec<flate2::Compress> = (0..args.connections)
        .filter(|_| args.flate2)
        .map(|_| flate2::Compress::new(flate2::Compression::fast(), true))
        .collect();
    let mut contexts: Vec<gateway_protocol::ZlibStream> = (0..args.connections)
        .filter(|_| !args.flate2)
        .map(|_| gateway_protocol::ZlibStream::new())
        .collect();
    let mut out = Vec::with_capacity(1 << 20);
    let t0 = Instant::now();
    let mut n = 0usize;
    let (mut bytes_in, mut bytes_out) = (0usize, 0usize);
    while t0.elapsed() < Duration::from_secs(args.seconds) {
        for _ in 0..1000 {
            let (k, p) = &payloads[n % payloads.len()];
            let k = *k;
            out.clear();
            if args.flate2 {
                flate2_contexts[k].compress_vec(
                    p.as_bytes(),
                    &mut out,
                    flate2::FlushCompress::Sync,
                )?;
            } else {
                contexts[k].compress_sync(p.as_bytes(), &mut out);
            }
            bytes_in += p.len();
            bytes_out += out.len();
            n += 1;
        }
    }
    println!(
        "  mean payload {} bytes, compressed {} bytes",
        bytes_in / n,
        bytes_out / n
    );
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn one_run(args: &Args) -> anyhow::Result<(f64, f64)> {
    let cfg = SimConfig {
        shards: args.connections,
        guilds: args.connections * args.guilds_per_shard,
        max_concurrency: args.connections,
        identify_window: Duration::from_millis(1),
        heartbeat_interval: Duration::from_secs(600),
        replay_buffer: 2000,
        seed: 1,
        ..SimConfig::default()
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (rate_tx, rate_rx) = tokio::sync::oneshot::channel::<f64>();
    let (cpu_tx, mut cpu_rx) =
        tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<u64>>();
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let sim = Simulator::start(cfg).await?;
            // Answers CPU-time probes from the simulator's own thread.
            tokio::spawn(async move {
                while let Some(reply) = cpu_rx.recv().await {
                    let _ = reply.send(thread_cpu_ns());
                }
            });
            addr_tx.send(sim.gateway_url())?;
            if let Ok(rate) = rate_rx.await {
                sim.set_event_rate(rate)?;
            }
            let _ = stop_rx.await;
            let c = sim.counters();
            println!(
                "  server: generated {} dispatched {} live sessions {}",
                c.events_generated,
                c.events_dispatched,
                sim.connected_sessions(&[])
            );
            sim.shutdown().await;
            Ok(())
        })
    });
    let url = addr_rx.recv().context("simulator did not start")?;
    let received = Arc::new(AtomicU64::new(0));
    let wire = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cpu_now = || {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = cpu_tx.send(tx);
        async move {
            sent.ok().context("simulator thread gone")?;
            rx.await.context("no CPU time from the simulator thread")
        }
    };
    let rate = rt.block_on(async {
        let mut tasks = Vec::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.connections as usize);
        for shard in 0..args.connections {
            let url = match args.compress.as_str() {
                "none" => format!("{url}/?v=10&encoding=json"),
                c => format!("{url}/?v=10&encoding=json&compress={c}"),
            };
            let received = received.clone();
            let wire = wire.clone();
            let stop = stop.clone();
            let ready_tx = ready_tx.clone();
            let n = args.connections;
            tasks.push(tokio::spawn(async move {
                client(url, shard, n, (received, wire), stop, ready_tx).await
            }));
        }
        for _ in 0..args.connections {
            ready_rx
                .recv()
                .await
                .context("a client failed to identify")?;
        }
        let _ = rate_tx.send(args.rate);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = received.load(Ordering::Relaxed);
        let wire0 = wire.load(Ordering::Relaxed);
        let cpu0 = cpu_now().await?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let got = received.load(Ordering::Relaxed) - start;
        let bytes = wire.load(Ordering::Relaxed) - wire0;
        println!(
            "  mean message {} bytes on the wire (payload, not framing)",
            bytes / got.max(1)
        );
        let rate = got as f64 / t0.elapsed().as_secs_f64();
        let cpu = (cpu_now().await? - cpu0) as f64 / 1e9;
        let per_cpu = got as f64 / cpu.max(1e-9);
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
        anyhow::Ok((rate, per_cpu))
    })?;
    let _ = stop_tx.send(());
    server
        .join()
        .map_err(|_| anyhow::anyhow!("simulator thread panicked"))??;
    Ok(rate)
}

async fn client(
    url: String,
    shard: u32,
    shards: u32,
    (received, wire): (Arc<AtomicU64>, Arc<AtomicU64>),
    stop: Arc<AtomicBool>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    // tungstenite zero-fills its read buffer up to read_buffer_size on
    // every read: keep it near the message size so the client stays cheap.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(&url, Some(config), true).await?;
    let identify = serde_json::json!({"op": 2, "d": {
        "token": "sim-token", "intents": 1 | (1 << 1) | (1 << 8) | (1 << 9) | (1 << 11),
        "shard": [shard, shards],
        "properties": {"os": "linux", "browser": "bench", "device": "bench"},
    }});
    ws.send(Message::Text(identify.to_string().into())).await?;
    let mut inflate = (shard == 0).then(|| flate2::Decompress::new(true));
    let mut buf = Vec::new();
    // Message 1 is HELLO, message 2 READY; every later one is a dispatch
    // (heartbeats are never due during a run).
    let mut messages = 0u64;
    while let Some(msg) = ws.next().await {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let msg = msg?;
        if let (Message::Binary(b), Some(d)) = (&msg, inflate.as_mut()) {
            let text = inflate_one(d, &mut buf, b)?;
            let v: serde_json::Value = serde_json::from_slice(&text)?;
            if messages >= 1 && v["op"] != 0 {
                bail!("expected a dispatch, got {v}");
            }
        }
        if !matches!(msg, Message::Binary(_) | Message::Text(_)) {
            continue;
        }
        messages += 1;
        if messages == 2 {
            let _ = ready.send(()).await;
        } else if messages > 2 {
            received.fetch_add(1, Ordering::Relaxed);
            let len = match &msg {
                Message::Binary(b) => b.len(),
                Message::Text(t) => t.len(),
                _ => 0,
            };
            wire.fetch_add(len as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn inflate_one(d: &mut flate2::Decompress, buf: &mut Vec<u8>, b: &[u8]) -> anyhow::Result<Vec<u8>> {
    if !b.ends_with(&[0, 0, 0xff, 0xff]) {
        bail!("zlib-stream message without the sync-flush suffix");
    }
    buf.clear();
    buf.reserve(b.len() * 8 + 64);
    let start = d.total_in();
    loop {
        let consumed = (d.total_in() - start) as usize;
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        d.decompress_vec(&b[consumed..], buf, flate2::FlushDecompress::Sync)?;
        if (d.total_in() - start) as usize == b.len() && buf.len() < buf.capacity() {
            return Ok(buf.clone());
        }
    }
}

//! The frame scan alone, on the simulator's dispatch stream: deterministic
//! and quick, for comparing changes to `frame_scan.rs` without the noise of
//! the whole pipeline (`events_per_cpu`), beside twilight-model's
//! `GatewayEventDeserializer` (what the twilight forwarder in
//! `events_per_cpu` does per message) on the same frames.
//!
//! ```sh
//! cargo bench -p sharder --bench frame_scan -- --frames 200000 --rounds 5
//! ```
//!
//! # Algorithm
//! Frames are built once from `discord_sim::World` (seed 42, the default
//! mix), exactly as the simulator frames them (`{"op":0,"s":..,"t":..,"d":..}`).
//! Each round times one pass over all frames for each reader, on this
//! thread, and reports nanoseconds per frame and MB/s; the table gives
//! min / median / max over the rounds.

mod support;

use sharder::Frame;
use std::hint::black_box;
use std::time::Instant;
use support::args::Flags;
use support::report::{Table, machine};
use twilight_model::gateway::event::GatewayEventDeserializer;

fn main() -> anyhow::Result<()> {
    let f = Flags::from_env()?;
    let n: usize = f.get("frames", 200_000)?;
    let rounds: usize = f.get("rounds", 5)?;
    let mut world = discord_sim::World::new(42, discord_sim::WorldConfig::default())?;
    let frames: Vec<Vec<u8>> = (1..=n)
        .map(|seq| {
            let d = world.next_dispatch();
            format!(
                r#"{{"op":0,"s":{seq},"t":"{}","d":{}}}"#,
                d.event, d.payload
            )
            .into_bytes()
        })
        .collect();
    let bytes: usize = frames.iter().map(Vec::len).sum();
    println!("{}", machine());
    println!(
        "{n} frames, {:.0} bytes per frame on average",
        bytes as f64 / n as f64
    );
    let mut table = Table::default();
    for _ in 0..rounds {
        let start = Instant::now();
        let mut guilds = 0u64;
        for p in &frames {
            let frame = Frame::parse(p)?;
            if let Ok(k) = frame.dispatch_keys() {
                guilds = guilds.wrapping_add(k.guild_id.unwrap_or(0));
            }
            black_box(frame.d);
        }
        black_box(guilds);
        let ours = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for p in &frames {
            let text = std::str::from_utf8(p)?;
            let de = GatewayEventDeserializer::from_json(text);
            black_box(de.map(|d| (d.op(), d.sequence(), d.event_type().map(str::len))));
        }
        let twilight = start.elapsed().as_secs_f64();
        let per = |s: f64| s * 1e9 / n as f64;
        table.add("ours: Frame::parse + dispatch_keys", "ns/frame", per(ours));
        table.add("ours: throughput", "MB/s", bytes as f64 / ours / 1e6);
        table.add(
            "twilight: from_utf8 + GatewayEventDeserializer",
            "ns/frame",
            per(twilight),
        );
        table.add("ratio ours / twilight (time)", "x", ours / twilight);
    }
    println!("{}", table.render());
    Ok(())
}

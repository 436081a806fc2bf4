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
//! The sharder reads a payload right after inflating it: from cache, but
//! one of a stream of different frames, with other code in between. So
//! each frame is first copied into a scratch buffer (as inflate writes it),
//! then read, and the frames are many and distinct (200,000, 130 MB), so
//! no branch predictor learns them. Each round times one pass per reader
//! and one pass that only copies; a reader's figure is its pass minus the
//! copy pass, in nanoseconds per frame. The table gives min / median / max
//! over the rounds.
//!
//! Reading 2,000 frames 100 times over (`--frames 2000 --passes 100`)
//! flatters code whose cost is mispredicted branches: after a few passes
//! the predictor knows every frame. A change that sped ours up 1.3x there
//! changed nothing in the pipeline (sharder/BENCHMARKS.md, section 9).

mod support;

use gateway_protocol::Frame;
use std::hint::black_box;
use std::time::Instant;
use support::args::Flags;
use support::report::{Table, machine};
use twilight_model::gateway::event::GatewayEventDeserializer;

fn main() -> anyhow::Result<()> {
    let f = Flags::from_env()?;
    let n: usize = f.get("frames", 200_000)?;
    let passes: usize = f.get("passes", 1)?;
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
        "{n} frames, {:.0} bytes per frame on average, {passes} passes per round",
        bytes as f64 / n as f64
    );
    for p in &frames {
        Frame::parse(p)?;
    }
    let longest = frames.iter().map(Vec::len).max().unwrap_or(0);
    let time = |read: &dyn Fn(&[u8]) -> u64| {
        let mut scratch = Vec::with_capacity(longest);
        let start = Instant::now();
        let mut acc = 0u64;
        for _ in 0..passes {
            for p in &frames {
                scratch.clear();
                scratch.extend_from_slice(p);
                acc = acc.wrapping_add(read(black_box(&scratch)));
            }
        }
        black_box(acc);
        start.elapsed().as_secs_f64() * 1e9 / (n * passes) as f64
    };
    let mut table = Table::default();
    for _ in 0..rounds {
        let copy = time(&|p| u64::from(p.first().copied().unwrap_or(0)));
        let ours = time(&|p| match Frame::parse(p) {
            Ok(frame) => frame.dispatch_keys().map_or(0, |k| k.guild_id.unwrap_or(0)),
            Err(_) => 1,
        });
        let twilight = time(&|p| {
            let Ok(text) = std::str::from_utf8(p) else {
                return 1;
            };
            GatewayEventDeserializer::from_json(text).map_or(0, |d| {
                let t = d.event_type().map_or(0, str::len) as u64;
                d.sequence().unwrap_or(0) + u64::from(d.op()) + t
            })
        });
        let (ours, twilight) = (ours - copy, twilight - copy);
        table.add(
            "copy into the scratch buffer (subtracted)",
            "ns/frame",
            copy,
        );
        table.add("ours: Frame::parse + dispatch_keys", "ns/frame", ours);
        table.add(
            "twilight: from_utf8 + GatewayEventDeserializer",
            "ns/frame",
            twilight,
        );
        table.add("ratio ours / twilight (time)", "x", ours / twilight);
    }
    println!("{}", table.render());
    Ok(())
}

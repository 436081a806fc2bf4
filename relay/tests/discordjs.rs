//! discord.js's gateway client, `@discordjs/ws` from npm run by node, with
//! `@discordjs/rest` asking the relay's `/api/v10/gateway/bot`, connects
//! three shards (the real bot runs two) with zlib-stream through the relay
//! to the whole pipeline ([`common::Pipeline`]), through a Service's
//! stand-in. Each client shard gets READY and its split's guilds equal to
//! the truth, then every world event of them once, in the guild's order;
//! and so on across a rolling update of the relay (the stopping relay
//! hands the sessions over, discord.js RESUMEs on the next): no READY
//! again, `s` gapless.
//!
//! The node packages are installed by `.ci/services` (`npm ci` in
//! `relay/tests/discordjs`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Dispatch, INTENTS, Pipeline, WAIT, check_events, per_guild, total};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

const SHARDS: u32 = 3;

/// What each client shard received, by shard id.
type Received = BTreeMap<u32, Vec<Dispatch>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discordjs_shards_get_the_truth_and_every_event_once() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/discordjs");
    assert!(
        dir.join("node_modules/@discordjs/ws").is_dir(),
        "@discordjs/ws is not installed: run .ci/services (npm ci in {})",
        dir.display()
    );
    let mut p = Pipeline::start_fronted("relay-discordjs", 2, 12).await;
    let mut child = Command::new("node")
        .arg(dir.join("client.mjs"))
        .env("RELAY_HTTP", format!("http://{}", p.relay_addr))
        .env("BOT_TOKEN", &p.sim.config().token)
        .env("INTENTS", INTENTS.to_string())
        .env("SHARD_COUNT", SHARDS.to_string())
        .env("COMPRESSION", "zlib")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (Debian's nodejs) runs the client");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Received::new();
    let mut until = async |got: &mut Received, what: &str, done: &dyn Fn(&Received) -> bool| {
        let deadline = Instant::now() + WAIT;
        while !done(got) {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{what}: timed out; got {got:?}"))
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: node exited"));
            let v: Value = serde_json::from_str(&line).unwrap();
            let shard = u32::try_from(v["shard"].as_u64().unwrap()).unwrap();
            got.entry(shard).or_default().push((
                v["t"].as_str().unwrap().to_owned(),
                v["s"].as_u64().unwrap(),
                v["d"].clone(),
            ));
        }
    };

    let sizes: Vec<usize> = (0..SHARDS)
        .map(|id| p.guilds_of(id, SHARDS).len())
        .collect();
    until(&mut got, "snapshots", &|g| {
        (0..SHARDS).all(|id| g.get(&id).is_some_and(|d| d.len() > sizes[id as usize]))
    })
    .await;
    for id in 0..SHARDS {
        p.check_snapshot(id, SHARDS, &got[&id]);
    }

    for phase in ["live events", "across a relay rolling update"] {
        let mark = p.mark();
        let starts: Vec<usize> = (0..SHARDS).map(|id| got[&id].len()).collect();
        if phase == "live events" {
            p.sim.emit(300);
        } else {
            p.sim.emit(150);
            p.replace_relay().await;
            p.sim.emit(150);
        }
        let want: Vec<_> = (0..SHARDS).map(|id| p.expected(id, SHARDS, mark)).collect();
        until(&mut got, phase, &|g| {
            (0..SHARDS).all(|id| {
                let i = id as usize;
                total(&per_guild(&g[&id][starts[i]..])) >= total(&want[i])
            })
        })
        .await;
        for id in 0..SHARDS {
            let i = id as usize;
            check_events(
                &got[&id],
                starts[i],
                &want[i],
                &format!("{phase}: discord.js shard {id}"),
            );
            let ready = got[&id][starts[i]..]
                .iter()
                .filter(|(t, _, _)| t == "READY")
                .count();
            assert_eq!(ready, 0, "{phase}: discord.js shard {id} identified again");
        }
    }

    drop(child.stdin.take());
    tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    p.stop().await;
}

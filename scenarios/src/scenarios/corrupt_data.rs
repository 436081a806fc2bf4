//! Incident 5: corrupt data (Discord, 2020: an empty value written to
//! service discovery made every watcher crash-loop until supervisors
//! restarted whole nodes).
//!
//! # Algorithm
//! 1. **Config.** The sharder and the worker are started with bad values
//!    (an out-of-bounds key, a wrong type, an empty token, a file that is
//!    not TOML). Each must exit once with code 78 and name the key: a
//!    configuration error is told apart from a crash and never loops.
//! 2. **Queue messages.** With the worker consuming alone, publish an empty
//!    message, random bytes, a truncated envelope and a well-framed
//!    GUILD_CREATE whose `d` is not JSON, then one good GUILD_CREATE.
//! 3. **Session files.** A sharder boots and stops with `SIGTERM` (every
//!    session saved); then `k` session files are corrupted (empty, random
//!    bytes, JSON of another format, another shard's session) and the
//!    sharder starts again.
//! 4. **Gateway frames.** The simulator sends every shard invalid JSON, a
//!    truncated frame and an unknown opcode, then buffers in every session
//!    a dispatch whose `d` is not JSON (a bad event of Discord's own, which
//!    every resume replays).
//!
//! Asserts: exit 78 naming the key for every bad config; exactly the four
//! bad messages dead-lettered (worker counter and the dead-letter queue's
//! depth), the good message after them cached;
//! exactly `k` sessions rejected, `k` identifies and `shards - k` resumes;
//! every bad frame counted, zero identifies for them, every shard active
//! again; the replayed bad dispatch skipped once per shard after one resume
//! (not a reconnect loop); zero exits of the long-running processes (no
//! crash loop).

use super::{Env, ScenarioInfo};
use crate::bulwark::TomlConfig;
use crate::child::ChildGuard;
use crate::http;
use crate::prometheus;
use crate::report::{ScenarioReport, Size};
use crate::sim::{STEADY_MIX, SimArgs};
use crate::{Result, ScenarioError, wait_until};
use envelope::{BatchEncoder, Event, GuildCreateKind};
use std::process::Command;
use std::time::Duration;

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "corrupt-data",
    incident: "bad config values, poison queue messages, corrupt session files, malformed frames",
    asserts: "exit 78 naming the key, 4 poison messages dead-lettered and only them, k sessions \
              rejected -> k identifies, bad frames counted and resumed, 0 crash loops",
};

const WAIT: Duration = Duration::from_secs(60);
/// A guild id no simulator guild has.
const INJECTED_GUILD: u64 = 81_384_788_765_712_384;

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut env = Env::new(INFO.name, 2).await?;
    let outcome = body(&mut env, size).await;
    env.finish(outcome).await
}

/// Runs `bin` once with `env_vars` and optional config text; returns the
/// exit code and the output.
async fn run_once(
    env: &Env,
    bin: &std::path::Path,
    label: &str,
    env_vars: &[(&str, &str)],
    file: Option<&str>,
) -> Result<(i32, String)> {
    let log = env.dir.join(&format!("{label}.log"));
    let mut cmd = Command::new(bin);
    if let Some(text) = file {
        let path = env.dir.join(&format!("{label}.toml"));
        std::fs::write(&path, text).map_err(|e| ScenarioError::io("writing a config", e))?;
        cmd.arg("--config").arg(path);
    }
    for (k, _) in std::env::vars() {
        if k.starts_with("BULWARK_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("POD_NAME").env("RUST_LOG", "warn");
    for (k, v) in env_vars {
        cmd.env(k, v);
    }
    let mut child = ChildGuard::spawn(label, cmd, &log)?;
    let status = child.wait_exit(Duration::from_secs(20)).await?;
    Ok((status.code().unwrap_or(-1), child.log_tail(20)))
}

/// A bad configuration: label, executable, environment, file, the key the
/// error must name.
type BadConfig<'a> = (
    &'a str,
    std::path::PathBuf,
    Vec<(&'a str, &'a str)>,
    Option<&'a str>,
    &'a str,
);

async fn bad_configs(env: &mut Env) -> Result<()> {
    let token = ("BULWARK_DISCORD__TOKEN", crate::sim::TOKEN);
    let cases: Vec<BadConfig> = vec![
        (
            "sharder-sink-buffer",
            env.bins.sharder.clone(),
            vec![token, ("BULWARK_SHARDER__SINK_BUFFER", "1")],
            None,
            "sharder.sink_buffer",
        ),
        (
            "sharder-empty-token",
            env.bins.sharder.clone(),
            vec![("BULWARK_DISCORD__TOKEN", "")],
            None,
            "discord.token",
        ),
        (
            "sharder-not-toml",
            env.bins.sharder.clone(),
            vec![token],
            Some("[sharder\ntotal_shards = "),
            "toml",
        ),
        (
            "worker-partitions",
            env.bins.worker.clone(),
            vec![("BULWARK_AMQP__PARTITIONS", "0")],
            None,
            "amqp.partitions",
        ),
        (
            "worker-prefetch-type",
            env.bins.worker.clone(),
            vec![],
            Some("[worker]\nprefetch = \"lots\"\n"),
            "prefetch",
        ),
    ];
    let mut exits_78 = 0;
    for (label, bin, vars, file, key) in &cases {
        let (code, out) = run_once(env, bin, label, vars, *file).await?;
        let named = out.to_ascii_lowercase().contains(key);
        if env.checks.expect(
            &format!("{label}: exit 78 naming {key}"),
            code == 78 && named,
            format!("exit {code}: {out}"),
        ) {
            exits_78 += 1;
        }
    }
    env.checks.figure(
        "bad configs refused with 78",
        format!("{exits_78}/{}", cases.len()),
    );
    Ok(())
}

fn envelope_of(shard_id: u32, num_shards: u32, d: &[u8]) -> Result<Vec<u8>> {
    let mut enc =
        BatchEncoder::new(shard_id, num_shards).map_err(|e| ScenarioError::Setup(e.to_string()))?;
    enc.push(&Event {
        epoch: 1,
        seq: 1,
        received_at: crate::unix_ms(),
        t: "GUILD_CREATE",
        guild_id: Some(INJECTED_GUILD),
        guild_create: Some(GuildCreateKind::Joined),
        d,
    })
    .map_err(|e| ScenarioError::Setup(e.to_string()))?;
    Ok(enc.finish())
}

async fn poison_messages(env: &mut Env, worker: &crate::bulwark::Process) -> Result<()> {
    let good_d = serde_json::json!({"id": INJECTED_GUILD.to_string(), "name": "survivor",
        "owner_id": "1", "member_count": 1, "channels": [], "roles": [], "members": []})
    .to_string();
    let good = envelope_of(0, 1, good_d.as_bytes())?;
    let truncated = good[..good.len() / 2].to_vec();
    let bad_d = envelope_of(0, 1, b"{\"id\": ")?;
    let key = env.topo.routing_key(0, "GUILD_CREATE");
    for body in [
        Vec::new(),
        b"\x00\xffnot an envelope".to_vec(),
        truncated,
        bad_d,
        good,
    ] {
        env.broker.publish(&env.topo.exchange, &key, &body).await?;
    }
    let cached = wait_until("the good guild cached", WAIT, async || {
        http::status(worker.http, &format!("/v1/guilds/{INJECTED_GUILD}")).await == Some(200)
    })
    .await;
    env.checks.expect(
        "the good message after the bad ones is applied",
        cached.is_ok(),
        format!("{cached:?}"),
    );
    let dead = &env.topo.dead_letter_queue;
    let mut in_dlq = 0;
    let _ = wait_until(
        "poison messages dead-lettered",
        Duration::from_secs(10),
        async || {
            in_dlq = env.broker.queue_count(dead).await.unwrap_or(0);
            in_dlq >= 4
        },
    )
    .await;
    let m = worker.metrics().await;
    env.checks.expect_eq(
        "worker_poison_messages_total",
        prometheus::count(&m, "worker_poison_messages_total", &[]),
        4,
    );
    env.checks
        .expect_eq("messages in the dead-letter queue", u64::from(in_dlq), 4);
    env.checks.figure(
        "worker_events_invalid_total (bad d)",
        prometheus::count(&m, "worker_events_invalid_total", &[]),
    );
    Ok(())
}

async fn body(env: &mut Env, size: Size) -> Result<()> {
    let shards = size.pick(16, 64);
    let corrupted: u32 = 4;
    bad_configs(env).await?;

    let mut wcfg: TomlConfig = env.worker_config()?;
    wcfg.set("worker", "ready_backlog", "100000");
    let mut worker = env.start_worker("worker", &wcfg)?;
    worker.wait_ready(WAIT).await?;
    poison_messages(env, &worker).await?;

    let sim = env.sim(SimArgs {
        shards,
        guilds: shards * 2,
        event_rate: 100.0,
        event_mix: Some(STEADY_MIX.into()),
        ..SimArgs::default()
    })?;
    let cfg = env.sharder_config(&sim, 50)?;
    let mut first = env.start_sharder("sharder-1", &cfg, &[])?;
    first.wait_ready(WAIT).await?;
    // One directory per generation (shard total) in the file store.
    let sessions = env.dir.join("sessions").join(format!("total-{shards}"));
    wait_until("every session saved", WAIT, async || {
        (0..shards).all(|s| sessions.join(format!("shard-{s}.json")).exists())
    })
    .await?;
    first.child.terminate()?;
    let code = first.child.wait_exit(WAIT).await?.code();
    env.checks
        .expect_eq("first sharder exit code", code.unwrap_or(-1), 0);

    // Session files: empty, random bytes, another format, another shard's.
    let other = std::fs::read(sessions.join(format!("shard-{}.json", shards - 1)))
        .map_err(|e| ScenarioError::io("reading a session", e))?;
    let bad: [Vec<u8>; 4] = [
        Vec::new(),
        b"\x00\x01 definitely not json".to_vec(),
        br#"{"format": 999, "session_id": ""}"#.to_vec(),
        other,
    ];
    for (shard, bytes) in bad.iter().enumerate() {
        std::fs::write(sessions.join(format!("shard-{shard}.json")), bytes)
            .map_err(|e| ScenarioError::io("corrupting a session", e))?;
    }
    let c0 = sim.counters().await?;
    let mut second = env.start_sharder("sharder-2", &cfg, &[])?;
    second.wait_ready(WAIT).await?;
    let c1 = sim.counters().await?;
    let m = second.metrics().await;
    let rejected = prometheus::count(&m, "sharder_session_rejected_total", &[])
        + prometheus::count(&m, "sharder_session_load_errors_total", &[]);
    env.checks
        .expect_eq("corrupt sessions rejected", rejected, u64::from(corrupted));
    env.checks.expect_eq(
        "identifies after the corrupt sessions",
        c1.identifies - c0.identifies,
        u64::from(corrupted),
    );
    env.checks.expect_eq(
        "resumes of the intact sessions",
        c1.resumes - c0.resumes,
        u64::from(shards - corrupted),
    );

    // Gateway frames, one kind at a time: a bad frame may end its
    // connection (a resume), never its session.
    for kind in ["invalid_json", "truncated", "unknown_op", "invalid_data"] {
        let before = second.counter("sharder_bad_frames_total", &[]).await;
        let skipped_before = second.counter("sharder_frames_skipped_total", &[]).await;
        let sent = sim
            .control("faults/malformed", &format!("{{\"kind\": \"{kind}\"}}"))
            .await?;
        let mut counted = 0;
        if kind != "unknown_op" {
            let _ = wait_until("bad frames counted", Duration::from_secs(10), async || {
                counted = second.counter("sharder_bad_frames_total", &[]).await - before;
                counted >= sent
            })
            .await;
            env.checks.expect_eq(
                &format!("{kind} frames counted"),
                counted,
                u64::from(shards),
            );
        }
        if kind == "invalid_data" {
            // Unreadable once (a resume), then again from the replay: skipped.
            let mut skipped = 0;
            let _ = wait_until("replayed bad dispatches skipped", WAIT, async || {
                skipped =
                    second.counter("sharder_frames_skipped_total", &[]).await - skipped_before;
                skipped >= sent
            })
            .await;
            env.checks.expect_eq(
                "replayed bad dispatches skipped after one resume",
                skipped,
                u64::from(shards),
            );
        }
        let back = wait_until("every shard active again", WAIT, async || {
            second.readyz().await == Some(200)
                && sim.attached().await.is_ok_and(|n| n == u64::from(shards))
        })
        .await;
        env.checks.expect(
            &format!("every shard active after {kind}"),
            back.is_ok(),
            format!("{back:?}"),
        );
    }
    let c2 = sim.counters().await?;
    env.checks.expect_eq(
        "identifies after bad frames",
        c2.identifies - c1.identifies,
        0,
    );
    env.checks
        .figure("resumes after bad frames", c2.resumes - c1.resumes);
    env.checks.expect_eq("failed resumes", c2.failed_resumes, 0);
    env.checks.expect(
        "no crash loop: sharder and worker running",
        second.child.running() && worker.child.running(),
        "a process exited",
    );
    Ok(())
}

//! The status page in a real browser: every shard of a two-process cluster
//! at a glance, live (issue: "a status page for the whole cluster").
//!
//! # Algorithm
//! 1. The simulator and two sharder processes (`process_count = 2`) with
//!    Redis, so each publishes its shards and either serves the cluster.
//! 2. Once `/status.json` of the first process shows every shard active
//!    across both, pick a shard the *other* process runs: the page must
//!    show it through Redis, not from its own process.
//! 3. `node scenarios/status_page/check.mjs` drives Debian's Chromium
//!    with playwright-core: the grid has one cell per shard, all
//!    `active`; the simulator is told to hold that shard's next RESUME
//!    (`/sim/faults/slow-resume`) and to send it op 7; the cell turns
//!    `resuming`, then `active`, without a reload; no console error; a
//!    screenshot is kept (`ci-artifacts/status-page.png` under the target
//!    directory, or `BULWARK_ARTIFACTS`).
//!
//! Asserts: what the browser saw (above), `/status.json` is the cluster's
//! (scope, both processes, every shard once), and neither the page nor
//! its JSON holds the bot token or the broker's password.

use super::{Env, ScenarioInfo};
use crate::bulwark::Process;
use crate::report::{ScenarioReport, Size};
use crate::sim::SimArgs;
use crate::{Result, ScenarioError, wait_until};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

pub const INFO: ScenarioInfo = ScenarioInfo {
    name: "status-page",
    incident: "an operator watches every shard of two sharder processes in Chromium while one \
               resumes",
    asserts: "one cell per shard, all active; the other process's shard turns resuming and back \
              without a reload; 0 console errors; cluster scope; no secret in page or JSON; the \
              DNS column says the pods dial IP literals only",
};

const WAIT: Duration = Duration::from_secs(60);

pub async fn run(size: Size) -> Result<ScenarioReport> {
    let mut env = Env::new(INFO.name, 2).await?;
    let outcome = body(&mut env, size).await;
    env.finish(outcome).await
}

async fn status_json(pod: &Process) -> Option<Value> {
    let a = crate::http::get(pod.http, "/status.json").await.ok()?;
    serde_json::from_str(&a.body).ok()
}

async fn body(env: &mut Env, size: Size) -> Result<()> {
    let shards = size.pick(64, 256);
    let check_js = super::node_project("status_page", "playwright-core")?;
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(ScenarioError::Setup(format!(
            "{chromium} is missing: run .ci/services (it installs Debian's chromium)"
        )));
    }
    let sim = env.sim(SimArgs {
        shards,
        guilds: shards * 2,
        event_rate: 100.0,
        ..SimArgs::default()
    })?;
    let mut pod0 = env.start_sharder("sharder-0", &env.redis_pod_config(&sim, 50, 0)?, &[])?;
    let mut pod1 = env.start_sharder("sharder-1", &env.redis_pod_config(&sim, 50, 1)?, &[])?;
    pod0.wait_ready(WAIT).await?;
    pod1.wait_ready(WAIT).await?;
    let mut last = Value::Null;
    let whole = wait_until("the cluster view of every shard active", WAIT, async || {
        last = status_json(&pod0).await.unwrap_or(Value::Null);
        last["summary"]["active"] == u64::from(shards)
            && last["processes"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    env.checks.expect(
        "/status.json: both processes, every shard active",
        whole.is_ok(),
        format!("{whole:?}; last view: {last}"),
    );
    whole?;
    env.checks.expect_eq(
        "/status.json scope",
        last["scope"].as_str().unwrap_or("none"),
        "cluster",
    );
    let ids: Vec<u64> = last["shards"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["id"].as_u64()).collect())
        .unwrap_or_default();
    env.checks.expect(
        "/status.json lists every shard once, in order",
        ids == (0..u64::from(shards)).collect::<Vec<_>>(),
        format!("{} ids", ids.len()),
    );
    // Every address the pods dial here is an IP literal: DNS is never
    // asked, and the page must say so rather than show zeros.
    let literal_only = |p: &Value| {
        let d = &p["dns"];
        d["literals"].as_u64().unwrap_or(0) > 0
            && ["hits", "misses", "stale"]
                .iter()
                .all(|k| d[*k].as_u64() == Some(0))
    };
    let processes = last["processes"].as_array().cloned().unwrap_or_default();
    env.checks.expect(
        "/status.json: both processes counted IP-literal lookups and no DNS lookup",
        processes.len() == 2 && processes.iter().all(literal_only),
        format!(
            "{:?}",
            processes.iter().map(|p| &p["dns"]).collect::<Vec<_>>()
        ),
    );
    let served_by = last["served_by"].as_str().unwrap_or_default().to_owned();
    let Some(other) = last["shards"].as_array().and_then(|a| {
        a.iter()
            .find(|s| s["process"].as_str() != Some(&served_by))
            .and_then(|s| s["id"].as_u64())
    }) else {
        return Err(ScenarioError::Setup(format!(
            "no shard of the other process in the view: {last}"
        )));
    };
    let page = crate::http::get(pod0.http, "/")
        .await
        .map_err(|e| ScenarioError::Setup(e.to_string()))?;
    for (what, text) in [
        ("the page", &page.body),
        ("/status.json", &last.to_string()),
    ] {
        env.checks.expect(
            &format!("{what} holds no secret"),
            !text.contains(crate::sim::TOKEN) && !text.contains("guest:guest"),
            "the bot token or the broker's credentials are in it",
        );
    }

    let artifacts = crate::artifacts_dir();
    std::fs::create_dir_all(&artifacts)
        .map_err(|e| ScenarioError::io(format!("creating {}", artifacts.display()), e))?;
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let run = tokio::process::Command::new("node")
        .arg(check_js.join("check.mjs"))
        .env("PAGE_URL", format!("http://{}/", pod0.http))
        .env("SIM_URL", format!("http://{}", sim.addr))
        .env("SHARDS", shards.to_string())
        .env("SHARD", other.to_string())
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", &chromium)
        .env("TIMEOUT_MS", WAIT.as_millis().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT * 3, run)
        .await
        .map_err(|_| ScenarioError::Timeout {
            what: "the browser check (node check.mjs)".into(),
            after: WAIT * 3,
        })?
        .map_err(|e| ScenarioError::io("starting node (Debian's nodejs)", e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            ScenarioError::Setup(format!(
                "check.mjs printed no result ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
    env.checks.expect(
        "the browser check ran to its end",
        seen["error"].is_null() && out.status.success(),
        format!("{}: {}", out.status, seen["error"]),
    );
    env.checks.expect_eq(
        "cells in the grid",
        seen["cells"].as_u64().unwrap_or(0),
        u64::from(shards),
    );
    env.checks.figure(
        "page load to every cell active (ms)",
        &seen["all_active_ms"],
    );
    env.checks.expect_eq(
        "the processes table's DNS column",
        seen["dns_cells"].to_string(),
        r#"["IP literals only","IP literals only"]"#.to_owned(),
    );
    env.checks.expect_eq(
        "fault requests answered (slow-resume, reconnect)",
        seen["faults"].to_string(),
        "[200,200]".to_owned(),
    );
    env.checks.expect(
        &format!("shard {other} (the other process's) shown resuming"),
        seen["saw_resuming"] == true,
        format!("{seen}"),
    );
    env.checks.expect(
        &format!("shard {other} shown active again"),
        seen["back_active"] == true,
        format!("{seen}"),
    );
    env.checks
        .figure("fault to resuming on the page (ms)", &seen["resuming_ms"]);
    env.checks.figure(
        "resuming to active on the page (ms)",
        &seen["active_again_ms"],
    );
    env.checks.expect(
        "the page was not reloaded",
        seen["reloaded"] == false,
        format!("reloaded: {}", seen["reloaded"]),
    );
    let errors = seen["console_errors"]
        .as_array()
        .map_or(usize::MAX, Vec::len);
    env.checks.expect(
        "console errors",
        errors == 0,
        format!("{}", seen["console_errors"]),
    );
    let shot = std::fs::metadata(&screenshot).map_or(0, |m| m.len());
    env.checks.expect(
        "screenshot kept",
        shot > 1000,
        format!("{} ({shot} bytes)", screenshot.display()),
    );
    env.checks.figure("screenshot", screenshot.display());
    env.checks.expect(
        "no process exited",
        pod0.child.running() && pod1.child.running(),
        "a sharder exited",
    );
    Ok(())
}

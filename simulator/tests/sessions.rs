//! Session rules: resume and replay, expiry, identify concurrency, the
//! session start budget, the send limit, intents, and fault injection.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::Duration;

fn one_shard() -> SimConfig {
    SimConfig {
        shards: 1,
        guilds: 3,
        ..test_config()
    }
}

fn session_id(ready: &Value) -> String {
    ready["d"]["session_id"].as_str().unwrap().to_owned()
}

/// Waits until shard 0's session has lost its connection, then resumes it
/// from `seq` on a new connection to the resume URL.
async fn resume_detached(sim: &SimHandle, sid: &str, seq: u64) -> Client {
    eventually(
        || sim.connected_sessions(&[0]) == 0,
        "the session to detach",
    )
    .await;
    let mut r = Client::connect(&sim.resume_url(), None).await;
    r.hello().await;
    r.resume(sid, seq).await;
    r
}

#[tokio::test]
async fn resume_replays_missed_and_buffered_dispatches_then_resumed() {
    let sim = start(one_shard()).await;
    let (mut c, ready) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
    let sid = session_id(&ready);
    sim.emit(20);
    let live = c.dispatches(20).await;
    let seqs: Vec<u64> = live.iter().map(|v| v["s"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (5..=24).collect::<Vec<_>>(),
        "seq continues after READY + 3 GUILD_CREATE"
    );
    // The client "processed" up to seq 14 when its connection dies.
    assert_eq!(sim.drop_connections(&[0]), 1);
    assert_eq!(c.closed().await, None, "dropped without a close frame");
    eventually(
        || sim.connected_sessions(&[0]) == 0,
        "the session to detach",
    )
    .await;
    // Events for the shard keep coming while it is disconnected.
    sim.emit(15);
    let mut r = Client::connect(&sim.resume_url(), None).await;
    r.hello().await;
    r.resume(&sid, 14).await;
    let replay = r.dispatches_until("RESUMED").await;
    let seqs: Vec<u64> = replay.iter().map(|v| v["s"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (15..=40).collect::<Vec<_>>());
    // Replayed frames are the very frames sent before.
    for v in &replay[..10] {
        let before = &live[(v["s"].as_u64().unwrap() - 5) as usize];
        assert_eq!(v, before);
    }
    let counters = sim.counters();
    assert_eq!(counters.identifies, 1);
    assert_eq!(counters.resumes, 1);
    assert_eq!(counters.replayed_events, 25);
    assert_eq!(counters.connections.get("/"), Some(&1));
    assert_eq!(counters.connections.get("/resume"), Some(&1));
    // Live events flow on after RESUMED.
    sim.emit(1);
    assert_eq!(r.dispatches(1).await[0]["s"], 41);
    let ledger = sim.ledger();
    let entries = &ledger.shards[&0];
    assert_eq!(entries.len(), 41);
    assert!(entries.iter().all(|e| e.session_id == sid));
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=41).collect::<Vec<_>>()
    );
    assert_eq!(entries[0].event, "READY");
    assert_eq!(entries[39].event, "RESUMED");
    sim.shutdown().await;
}

/// `slow-resume` holds RESUMED back on the next RESUME only, as a loaded
/// gateway would (the status-page scenario watches a shard sit in
/// `resuming` this way).
#[tokio::test]
async fn slow_resume_holds_the_next_resumed_only() {
    const HOLD: Duration = Duration::from_millis(1_500);
    let sim = start(one_shard()).await;
    let (_c, ready) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
    let sid = session_id(&ready);
    let addr = sim.addr();
    let post = |body: &'static str| async move {
        let (status, body) = http(addr, "POST", "/sim/faults/slow-resume", None, Some(body)).await;
        (status, serde_json::from_str::<Value>(&body).unwrap())
    };
    for bad in [r#"{"shards":[0]}"#, r#"{"shards":[0],"ms":60001}"#] {
        let (s, v) = post(bad).await;
        assert_eq!(s, 400, "{bad}");
        assert!(v["message"].as_str().unwrap().contains("ms"), "{v}");
    }
    let (s, v) = post(r#"{"shards":[0],"ms":1500}"#).await;
    assert_eq!((s, v["affected"].as_u64()), (200, Some(1)));
    let timed_resume = async |seq: u64| {
        assert_eq!(sim.drop_connections(&[0]), 1);
        let mut r = resume_detached(&sim, &sid, seq).await;
        let sent = std::time::Instant::now();
        let replay = r.dispatches_until("RESUMED").await;
        assert_eq!(replay.last().unwrap()["t"], "RESUMED");
        (r, sent.elapsed())
    };
    let (_r, held) = timed_resume(4).await;
    assert!(held >= HOLD, "RESUMED came after {held:?}, before the hold");
    let (_r, next) = timed_resume(5).await;
    assert!(next < HOLD, "the hold applies once; the next took {next:?}");
    assert_eq!(sim.counters().resumes, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn expired_unknown_and_too_old_sessions_get_invalid_session() {
    let sim = start(SimConfig {
        session_expiry: Duration::from_millis(30),
        replay_buffer: 5,
        ..one_shard()
    })
    .await;
    // Unknown session.
    let mut c = Client::connect(&sim.resume_url(), None).await;
    c.hello().await;
    c.resume("0123456789abcdef0123456789abcdef", 1).await;
    assert_eq!(c.until_op(9).await["d"], false);
    // Too far back for the replay buffer (5 frames kept, 1 + 3 + 10 sent).
    let (mut a, ready) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
    let sid = session_id(&ready);
    sim.emit(10);
    a.dispatches(10).await;
    let mut r = Client::connect(&sim.resume_url(), None).await;
    r.hello().await;
    r.resume(&sid, 2).await;
    assert_eq!(r.until_op(9).await["d"], false);
    // Expired: drop, wait until the simulator expires it, resume.
    sim.drop_connections(&[0]);
    assert_eq!(a.closed().await, None);
    eventually(
        || sim.counters().expired_sessions == 1,
        "the session to expire",
    )
    .await;
    let mut r = Client::connect(&sim.resume_url(), None).await;
    r.hello().await;
    r.resume(&sid, 14).await;
    assert_eq!(r.until_op(9).await["d"], false);
    assert_eq!(sim.counters().failed_resumes, 3);
    assert_eq!(sim.counters().resumes, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn resume_with_a_seq_from_the_future_is_closed_4007() {
    let sim = start(one_shard()).await;
    let (mut c, ready) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
    c.ws.close(None).await.unwrap();
    let mut r = Client::connect(&sim.resume_url(), None).await;
    r.hello().await;
    r.resume(&session_id(&ready), 99).await;
    assert_eq!(r.closed().await, Some(4007));
    sim.shutdown().await;
}

#[tokio::test]
async fn close_1000_ends_the_session_but_other_codes_keep_it() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let sim = start(one_shard()).await;
    for (code, resumable) in [(4000u16, true), (1000, false)] {
        let (mut c, ready) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
        let frame = CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        };
        c.ws.close(Some(frame)).await.unwrap();
        c.closed().await;
        let mut r = resume_detached(&sim, &session_id(&ready), 4).await;
        let v = r.until_op(if resumable { 0 } else { 9 }).await;
        if resumable {
            assert_eq!(v["t"], "RESUMED");
        } else {
            assert_eq!(v["d"], false);
        }
        r.ws.close(None).await.unwrap();
        // Next identify must wait for the identify window.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn identify_concurrency_is_enforced_per_bucket() {
    let window = Duration::from_millis(1500);
    let sim = start(SimConfig {
        shards: 4,
        guilds: 4,
        max_concurrency: 2,
        identify_window: window,
        heartbeat_interval: Duration::from_secs(30),
        ..test_config()
    })
    .await;
    let t0 = tokio::time::Instant::now();
    let connect = || async {
        let mut c = Client::connect(&sim.gateway_url(), None).await;
        c.hello().await;
        c
    };
    let mut s0 = connect().await;
    s0.identify(0, 4, 1).await;
    s0.ready().await;
    // Bucket 0 was taken no later than now.
    let bucket0_taken = tokio::time::Instant::now();
    let mut s1 = connect().await;
    s1.identify(1, 4, 1).await;
    s1.ready().await;
    // Shard 2 shares bucket 0 with shard 0: refused within the window.
    let mut s2 = connect().await;
    s2.identify(2, 4, 1).await;
    let v = s2.payload().await;
    assert!(t0.elapsed() < window, "test too slow to observe the window");
    assert_eq!(v["op"], 9, "{v}");
    assert_eq!(v["d"], false);
    assert_eq!(sim.counters().identify_violations, 1);
    assert_eq!(sim.counters().identifies, 2);
    // After the window the same bucket admits one identify again.
    tokio::time::sleep_until(bucket0_taken + window).await;
    s2.identify(2, 4, 1).await;
    assert_eq!(s2.ready().await["d"]["shard"], json!([2, 4]));
    // The budget was spent by the two identifies only, not by the refusal.
    let auth = format!("Bot {TOKEN}");
    let (_, body) = http(sim.addr(), "GET", "/api/v10/gateway/bot", Some(&auth), None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["session_start_limit"]["remaining"], 997);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_session_start_budget_is_spent_by_identify_only() {
    let sim = start(SimConfig {
        session_start_total: 2,
        ..one_shard()
    })
    .await;
    let (mut a, ready) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
    a.ws.close(None).await.unwrap();
    // RESUME spends nothing.
    let mut r = resume_detached(&sim, &session_id(&ready), 4).await;
    r.dispatches_until("RESUMED").await;
    tokio::time::sleep(Duration::from_millis(6)).await;
    let (_b, _) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
    tokio::time::sleep(Duration::from_millis(6)).await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.identify(0, 1, ALL_USED_INTENTS).await;
    assert_eq!(c.until_op(9).await["d"], false);
    let counters = sim.counters();
    assert_eq!((counters.identifies, counters.budget_exhausted), (2, 1));
    let auth = format!("Bot {TOKEN}");
    let (_, body) = http(sim.addr(), "GET", "/api/v10/gateway/bot", Some(&auth), None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["session_start_limit"]["remaining"], 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn exceeding_the_send_limit_closes_4008_heartbeats_included() {
    let sim = start(SimConfig {
        send_limit: 5,
        send_window: Duration::from_secs(30),
        ..one_shard()
    })
    .await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.identify(0, 1, 1).await;
    c.ready().await;
    for _ in 0..4 {
        c.heartbeat(None).await;
        c.until_op(11).await;
    }
    c.heartbeat(None).await;
    assert_eq!(c.closed().await, Some(4008));
    assert_eq!(sim.counters().rate_limit_closes, 1);
    assert_eq!(sim.counters().heartbeats, 4, "the 6th command was refused");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_send_window_resets() {
    let window = Duration::from_millis(100);
    let sim = start(SimConfig {
        send_limit: 3,
        send_window: window,
        ..one_shard()
    })
    .await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    for _ in 0..3 {
        let t0 = tokio::time::Instant::now();
        for _ in 0..3 {
            c.heartbeat(None).await;
            c.until_op(11).await;
        }
        tokio::time::sleep_until(t0 + window + Duration::from_millis(5)).await;
    }
    assert_eq!(sim.counters().rate_limit_closes, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn dispatches_are_filtered_by_intents() {
    let sim = start(one_shard()).await;
    let mut c = Client::connect(&sim.gateway_url(), None).await;
    c.hello().await;
    c.identify(0, 1, 1).await; // GUILDS only
    c.ready().await;
    c.dispatches(3).await;
    sim.emit(300);
    let ledger = sim.ledger();
    let n = ledger.shards[&0].len() - 4;
    let got = c.dispatches(n).await;
    assert!(n > 0 && n < 150, "{n} of 300 events need only GUILDS");
    for v in got {
        let t = v["t"].as_str().unwrap();
        assert!(
            t.starts_with("GUILD_") && !t.starts_with("GUILD_MEMBER") || t.starts_with("CHANNEL_"),
            "{t} delivered without its intent"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn fault_injection_reconnect_zombie_invalid_session_and_malformed() {
    let sim = start(one_shard()).await;
    let (mut c, _) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
    assert_eq!(sim.reconnect(&[0]), 1);
    assert_eq!(c.payload().await["op"], 7);
    assert_eq!(sim.invalid_session(&[], true), 1);
    assert_eq!(
        c.payload().await,
        json!({"op": 9, "d": true, "s": null, "t": null})
    );
    assert_eq!(sim.malformed(&[0], discord_sim::Malformed::UnknownOp), 1);
    assert_eq!(c.payload().await["op"], 42);
    sim.malformed(&[0], discord_sim::Malformed::InvalidJson);
    assert!(matches!(c.recv().await, Recv::Garbage(_)));
    // Zombie: heartbeats are no longer ACKed; a server heartbeat request
    // still arrives after the (un-ACKed) heartbeat, proving order.
    c.heartbeat(None).await;
    c.until_op(11).await;
    assert_eq!(sim.zombie(&[0]), 1);
    c.heartbeat(None).await;
    sim.request_heartbeat(&[0]);
    assert_eq!(c.payload().await["op"], 1, "no ACK before the request");
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_data_is_a_dispatch_that_every_resume_replays() {
    let sim = start(one_shard()).await;
    let (mut c, ready) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
    let sid = session_id(&ready);
    // READY and three GUILD_CREATE took seqs 1-4: the bad one is 5.
    assert_eq!(sim.malformed(&[0], discord_sim::Malformed::InvalidData), 1);
    sim.emit(1);
    let Recv::Garbage(text) = c.recv().await else {
        panic!("expected an unreadable frame");
    };
    assert!(text.contains(r#""s":5"#), "{text}");
    assert_eq!(c.dispatches(1).await[0]["s"], 6);
    let ledger = sim.ledger();
    let bad: Vec<_> = ledger.shards[&0].iter().filter(|r| r.seq == 5).collect();
    assert_eq!(bad[0].event, "MESSAGE_CREATE");
    // A resume from seq 4 gets the same bytes again, then seq 6.
    assert_eq!(sim.drop_connections(&[0]), 1);
    let mut r = resume_detached(&sim, &sid, 4).await;
    assert!(matches!(r.recv().await, Recv::Garbage(again) if again == text));
    assert_eq!(r.dispatches(1).await[0]["s"], 6);
    sim.shutdown().await;
}

#[tokio::test]
async fn truncated_compressed_frames_break_the_stream() {
    let sim = start(one_shard()).await;
    let mut c = Client::connect(&sim.gateway_url(), Some("zlib-stream")).await;
    c.hello().await;
    c.identify(0, 1, 1).await;
    c.ready().await;
    c.dispatches(3).await;
    sim.malformed(&[0], discord_sim::Malformed::Truncated);
    sim.request_heartbeat(&[0]);
    // The truncated message lacks the sync-flush suffix, so it merges with
    // the next one and the stream no longer decodes.
    assert!(matches!(c.recv().await, Recv::Garbage(_)));
    sim.shutdown().await;
}

#[tokio::test]
async fn http_control_api_drives_faults_outages_and_rate() {
    let sim = start(SimConfig {
        event_mix: "MESSAGE_CREATE=1".parse().unwrap(),
        ..one_shard()
    })
    .await;
    let (mut c, ready) = Client::session(&sim.gateway_url(), 0, 1, 3).await;
    let addr = sim.addr();
    let post = |path: &'static str, body: String| async move {
        let (status, body) = http(addr, "POST", path, None, Some(&body)).await;
        (status, serde_json::from_str::<Value>(&body).unwrap())
    };
    let (s, v) = post("/sim/faults/reconnect", r#"{"shards":[0]}"#.into()).await;
    assert_eq!((s, v["affected"].as_u64()), (200, Some(1)));
    assert_eq!(c.payload().await["op"], 7);
    let guild = ready["d"]["guilds"][0]["id"].as_str().unwrap().to_owned();
    let (s, _) = post("/sim/faults/outage", format!(r#"{{"guild_id":"{guild}"}}"#)).await;
    assert_eq!(s, 200);
    let v = c.dispatches(1).await.remove(0);
    assert_eq!(
        (v["t"].as_str(), &v["d"]),
        (
            Some("GUILD_DELETE"),
            &json!({"id": guild, "unavailable": true})
        )
    );
    assert!(sim.truth().guilds[&guild.parse::<u64>().unwrap()].unavailable);
    let (s, _) = post("/sim/faults/restore", format!(r#"{{"guild_id":{guild}}}"#)).await;
    assert_eq!(s, 200);
    let v = c.dispatches(1).await.remove(0);
    assert_eq!(v["t"], "GUILD_CREATE");
    assert_eq!(v["d"]["id"], guild);
    // Rate: events start flowing, then stop.
    let (s, _) = post("/sim/event-rate", r#"{"events_per_sec": 2000}"#.into()).await;
    assert_eq!(s, 200);
    assert_eq!(c.dispatches(20).await.len(), 20);
    let (s, _) = post("/sim/event-rate", r#"{"events_per_sec": 0}"#.into()).await;
    assert_eq!(s, 200);
    // Bad requests are clear 400s.
    for (path, body) in [
        ("/sim/event-rate", r#"{"events_per_sec": -1}"#),
        ("/sim/event-rate", r#"{"events_per_sec": "fast"}"#),
        ("/sim/faults/malformed", r#"{"kind":"weird"}"#),
        ("/sim/faults/outage", r#"{"guild_id":"abc"}"#),
        ("/sim/faults/drop", r#"{"shard":[0]}"#),
        ("/sim/faults/drop", "not json"),
    ] {
        let (s, v) = post(path, body.into()).await;
        assert_eq!(s, 400, "{path} {body}");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    let (s, v) = post("/sim/faults/drop", String::new()).await;
    assert_eq!((s, v["affected"].as_u64()), (200, Some(1)));
    assert_eq!(c.closed().await, None);
    let (s, body) = http(addr, "GET", "/sim/counters", None, None).await;
    assert_eq!(s, 200);
    let counters: discord_sim::Counters = serde_json::from_str(&body).unwrap();
    assert_eq!(counters.identifies, 1);
    sim.shutdown().await;
}

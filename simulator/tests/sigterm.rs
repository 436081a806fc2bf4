//! The binary stops cleanly on SIGTERM (exit 0), through the signal path
//! every Bulwark binary shares (`bulwark_process::cancel_on_signal`).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn sigterm_shuts_the_simulator_down_with_exit_0() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_discord-sim"))
        .args(["--listen", "127.0.0.1:0", "--event-rate", "0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The first line says it listens; the handlers are registered before.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("discord-sim listening"), "{first}");
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no exit within 10 s of SIGTERM");
        }
        // Polling interval of try_wait, not a synchronisation sleep.
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("SIGTERM: shutting down")),
        "the log does not say which signal: {rest:?}"
    );
}

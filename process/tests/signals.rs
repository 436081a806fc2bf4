//! The shared signal path against real signals: `kill` sends SIGTERM, then
//! SIGINT, to this test process, which survives both (the handlers are
//! registered before the signal is sent) and sees which one arrived. One
//! test in its own binary, so no other test shares the signals.

use bulwark_process::{StopSignal, StopSignals, cancel_on_signal};
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn kill(signal: &str) {
    let pid = std::process::id().to_string();
    let status = Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_then_sigint_cancel_and_say_which() {
    let token = CancellationToken::new();
    let watch = cancel_on_signal(token.clone());
    assert!(!token.is_cancelled());
    kill("-TERM");
    let got = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("no cancellation within 10 s of SIGTERM")
        .expect("the signal task panicked");
    assert_eq!(got, StopSignal::Terminate);
    assert!(token.is_cancelled());

    let mut signals = StopSignals::listen();
    kill("-INT");
    let got = tokio::time::timeout(Duration::from_secs(10), signals.recv())
        .await
        .expect("no SIGINT seen within 10 s");
    assert_eq!(got, StopSignal::Interrupt);
}

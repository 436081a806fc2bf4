//! SIGTERM and SIGINT as a cancellation.
//!
//! Kubernetes stops a pod with SIGTERM, a terminal with SIGINT (Ctrl-C);
//! both mean "drain and exit", so both cancel the one
//! [`CancellationToken`] the binary's `run` watches, and the log says
//! which arrived.
//!
//! # Algorithm
//! The handlers are registered when [`StopSignals::listen`] is called, not
//! when first awaited: from then on a signal is recorded (and no longer
//! kills the process) even if it arrives before anyone waits. A handler
//! that cannot be registered is logged and the other one still works.
//! Tokio keeps a registered handler for the life of the process, so a
//! second signal during the drain is swallowed, not fatal: the drain's own
//! grace bounds the stop.

use std::fmt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A signal that stops a Bulwark process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (Kubernetes, `kill`).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Terminate => "SIGTERM",
            Self::Interrupt => "SIGINT",
        })
    }
}

/// Registered SIGTERM and SIGINT handlers.
#[derive(Debug)]
pub struct StopSignals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Registers the handlers now. Must be called inside a tokio runtime.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let register = |kind: SignalKind, name: StopSignal| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for {name}; only the other signal stops this process");
                    None
                }
            };
            Self {
                terminate: register(SignalKind::terminate(), StopSignal::Terminate),
                interrupt: register(SignalKind::interrupt(), StopSignal::Interrupt),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next stop signal.
    pub async fn recv(&mut self) -> StopSignal {
        #[cfg(unix)]
        {
            tokio::select! {
                () = next(&mut self.terminate) => StopSignal::Terminate,
                () = next(&mut self.interrupt) => StopSignal::Interrupt,
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => StopSignal::Interrupt,
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// The next delivery of `signal`; never, when it is not registered (or the
/// runtime's signal driver is gone).
#[cfg(unix)]
async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(s) = signal
        && s.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

/// Cancels `token` on the first SIGTERM or SIGINT, logging which; the task
/// returns it. The handlers are registered before this returns. Must be
/// called inside a tokio runtime.
pub fn cancel_on_signal(token: CancellationToken) -> JoinHandle<StopSignal> {
    let mut signals = StopSignals::listen();
    tokio::spawn(async move {
        let signal = signals.recv().await;
        tracing::info!(%signal, "{signal}: shutting down");
        token.cancel();
        signal
    })
}

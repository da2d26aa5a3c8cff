//! Process lifecycle: signal handling (the app is PID 1, which gets no default
//! signal actions) and the short drain of in-flight requests before exiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::output;

/// How long a shutdown waits for in-flight requests before exiting anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Requests (including streamed bodies) that have started and not yet finished.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts one request as in flight for as long as it is alive.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight(())
    }

    /// Requests in flight now, this one included.
    pub fn count() -> usize {
        IN_FLIGHT.load(Ordering::SeqCst)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Installs the SIGTERM and SIGINT handlers and returns a receiver that flips to
/// `true` once the server should stop accepting connections.
///
/// Handlers are installed before anything else so that a container stopped during a
/// startup delay, or one that never listens, still exits on SIGTERM.
pub fn install(ignore_sigterm: bool) -> watch::Receiver<bool> {
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("cannot install the SIGINT handler");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let name = loop {
            tokio::select! {
                _ = term.recv() => {
                    if ignore_sigterm {
                        output::line("ignoring SIGTERM");
                        continue;
                    }
                    break "SIGTERM";
                }
                _ = int.recv() => break "SIGINT",
            }
        };
        output::line(&format!("received {name}, shutting down"));
        let _ = stop_tx.send(true);
        drain().await;
        std::process::exit(0);
    });
    stop_rx
}

/// Waits until no request is in flight, or until the drain limit passes.
async fn drain() {
    let deadline = Instant::now() + DRAIN_LIMIT;
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

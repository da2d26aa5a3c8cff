//! Ctrl-C and SIGTERM: the first asks for a graceful stop (drain, SIGTERM the containers),
//! the second for an immediate one (SIGKILL); containers are removed either way.

use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Default)]
pub struct Signals {
    /// Cancelled by the first Ctrl-C or SIGTERM.
    pub graceful: CancellationToken,
    /// Cancelled by the second.
    pub immediate: CancellationToken,
}

impl Signals {
    /// Starts listening for Ctrl-C and SIGTERM.
    pub fn install() -> Self {
        let signals = Signals::default();
        let tokens = signals.clone();
        tokio::spawn(async move {
            let mut sigterm = match terminate_signal() {
                Some(s) => s,
                None => return,
            };
            for token in [&tokens.graceful, &tokens.immediate] {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = sigterm.recv() => {}
                }
                token.cancel();
            }
        });
        signals
    }
}

fn terminate_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
}

//! Ctrl-C, SIGTERM and SIGHUP (the terminal closed): the first asks for a graceful stop
//! (drain, SIGTERM the containers), the second for an immediate one (SIGKILL); containers are
//! removed either way.

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
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut sigterm), Ok(mut sighup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            for token in [&tokens.graceful, &tokens.immediate] {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = sigterm.recv() => {}
                    _ = sighup.recv() => {}
                }
                token.cancel();
            }
        });
        signals
    }
}

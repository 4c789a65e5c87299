//! The one signal handler of a k3rs binary: SIGINT/SIGTERM cancel a token that every component watches.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGINT or SIGTERM. A second signal exits the process at once.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        // Cancel before logging: nothing that can fail may stand between the signal and the stop.
        child.cancel();
        tracing::info!("shutdown signal received, stopping (send again to exit immediately)");
        wait_for_signal().await;
        tracing::warn!("second shutdown signal, exiting immediately");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(%err, "cannot install SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

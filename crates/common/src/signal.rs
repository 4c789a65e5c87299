//! The one signal handler of a k3rs binary: SIGINT/SIGTERM cancel a token that every component watches;
//! `run_daemon` is a binary's `main` around it (runtime, shutdown token, exit status), on all cores or one.

use std::fmt::Display;
use std::future::Future;
use std::io::Write as _;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// Runs a component until it returns: a multi-threaded runtime, the shutdown token, and the exit status
/// (failure with the error logged and printed as `<name>: <error>`).
pub fn run_daemon<F, Fut, E>(name: &str, run: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    run_daemon_on(name, tokio::runtime::Builder::new_multi_thread(), run)
}

/// As [`run_daemon`] on one thread: for a component that mostly waits on the network, where one thread
/// is as fast on a small machine and one allocator arena keeps the memory freed after a burst reusable.
pub fn run_daemon_single_threaded<F, Fut, E>(name: &str, run: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    run_daemon_on(name, tokio::runtime::Builder::new_current_thread(), run)
}
fn run_daemon_on<F, Fut, E>(name: &str, mut builder: tokio::runtime::Builder, run: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "{name}: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match run(shutdown_token()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!("{err}");
                let _ = writeln!(std::io::stderr(), "{name}: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

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

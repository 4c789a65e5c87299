//! The components of one `k3rs` process as tasks on one runtime: started in readiness order (a phase
//! waits for the previous one's readiness flag, or fails when a component exits first), stopped
//! together by the one shutdown token, and — when any component fails — all stopped with its error.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use k3rs_common::Readiness;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// How long components get to stop after the shutdown token is cancelled.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Running components.
pub struct Group {
    tasks: JoinSet<(&'static str, Result<(), String>)>,
    shutdown: CancellationToken,
}

impl Group {
    /// A group stopped by `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            tasks: JoinSet::new(),
            shutdown,
        }
    }

    /// The token components watch.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Starts a component.
    pub fn spawn<Fut, E>(&mut self, name: &'static str, fut: Fut)
    where
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display,
    {
        tracing::info!(component = name, "starting");
        self.tasks
            .spawn(async move { (name, fut.await.map_err(|e| e.to_string())) });
    }

    /// Waits until `ready` is set; fails if a component exits first or shutdown comes.
    pub async fn wait_ready(&mut self, name: &str, ready: &Readiness) -> Result<(), Error> {
        tokio::select! {
            _ = ready.wait() => {
                tracing::info!(component = name, "ready");
                Ok(())
            }
            _ = self.shutdown.cancelled() => Err(Error::Interrupted),
            Some(done) = self.tasks.join_next() => Err(exited(done)),
        }
    }

    /// Ends start-up: when it failed, stops what had started (gracefully: the kubelet stops its
    /// containerd) and passes the error on — except a shutdown signal during start-up, which is a
    /// clean stop. Returns whether everything started.
    pub async fn finish_start(&mut self, started: Result<(), Error>) -> Result<bool, Error> {
        match started {
            Ok(()) => Ok(true),
            Err(e) => {
                self.stop().await;
                match e {
                    Error::Interrupted => Ok(false),
                    e => Err(e),
                }
            }
        }
    }

    /// Runs until shutdown or until a component exits (an error then), then stops the rest.
    pub async fn run(mut self) -> Result<(), Error> {
        let result = tokio::select! {
            _ = self.shutdown.cancelled() => Ok(()),
            Some(done) = self.tasks.join_next() => Err(exited(done)),
        };
        self.stop().await;
        result
    }

    /// Cancels the token and waits (bounded) for every component to return.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        let drain = async {
            while let Some(done) = self.tasks.join_next().await {
                match done {
                    Ok((name, Ok(()))) => tracing::info!(component = name, "stopped"),
                    Ok((name, Err(err))) => {
                        tracing::warn!(component = name, %err, "stopped with an error")
                    }
                    Err(err) => tracing::warn!(%err, "a component task failed"),
                }
            }
        };
        if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
            tracing::warn!("components did not stop within {STOP_GRACE:?}; leaving them");
            self.tasks.abort_all();
        }
    }
}

fn exited(done: Result<(&'static str, Result<(), String>), tokio::task::JoinError>) -> Error {
    match done {
        Ok((name, Ok(()))) => Error::Component {
            name: name.into(),
            message: "stopped unexpectedly".into(),
        },
        Ok((name, Err(message))) => Error::Component {
            name: name.into(),
            message,
        },
        Err(err) => Error::Component {
            name: "task".into(),
            message: err.to_string(),
        },
    }
}

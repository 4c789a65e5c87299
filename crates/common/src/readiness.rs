//! Readiness signalling between start-up phases (a `tokio::sync::watch` flag, never a sleep).

use tokio::sync::watch;

/// A cloneable readiness flag: a component sets it once it serves; others wait for it.
#[derive(Debug, Clone)]
pub struct Readiness {
    tx: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// A flag that starts not ready.
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(false),
        }
    }

    /// Marks ready (or not ready again, e.g. when a dependency is lost).
    pub fn set(&self, ready: bool) {
        self.tx.send_replace(ready);
    }

    /// Whether the component is ready now.
    pub fn is_ready(&self) -> bool {
        *self.tx.borrow()
    }

    /// Waits until the component is ready.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we hold it.
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

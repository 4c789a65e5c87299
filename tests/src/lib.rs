//! Shared test support for k3rs: start component processes and real fixtures (etcd, databases), wait for
//! them with timeouts, drive them with real clients, and clean up (by PID) even when a test fails.

pub mod apiserver;
pub mod etcdctl;
pub mod kubelet_api;
pub mod launcher;
pub mod podnet;
pub mod process;
pub mod procstat;
pub mod store;
pub mod testbed;

pub use apiserver::Cluster;

/// Declares a test module `$name` that runs `$body` once on kine/SQLite and once on etcd, through the
/// calling test crate's `run(backend, body)` (which starts what the body needs).
// `crate::run` is the calling test crate's on purpose: each suite starts its own fixtures.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! per_backend {
    ($name:ident, $body:path) => {
        mod $name {
            #[test]
            fn kine_sqlite() {
                crate::run($crate::Backend::Sqlite, $body);
            }
            #[test]
            fn etcd() {
                crate::run($crate::Backend::Etcd, $body);
            }
        }
    };
}
pub use process::{Proc, free_port, http_get, target_bin};
pub use store::{Backend, Server, ServerOptions};

/// Runs an async test body on a multi-threaded runtime with an overall timeout, so a hung test fails
/// instead of stalling CI.
pub fn run_test<F>(timeout: std::time::Duration, body: F)
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the test runtime");
    match rt.block_on(async { tokio::time::timeout(timeout, body).await }) {
        Ok(Ok(())) => {}
        Ok(Err(err)) => panic!("{err:#}"),
        Err(_) => panic!("test timed out after {timeout:?}"),
    }
}

/// A name unique to this process and call, for databases and directories.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `check` every 100 ms until it holds, or fails once `timeout` has passed.
pub async fn eventually<F: FnMut() -> anyhow::Result<bool>>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("{what}: not after {timeout:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

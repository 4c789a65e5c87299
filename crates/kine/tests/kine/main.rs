//! Black-box tests of `k3rs-kine` as a separate process, driven by etcd-client and Debian's etcdctl, on
//! SQLite, PostgreSQL and MariaDB, and the same scenarios against Debian's real etcd.

mod compaction;
mod concurrency;
mod crash;
mod etcdctl;
mod semantics;
mod transport;

use anyhow::{Result, anyhow};
use etcd_client::Error;
use tonic::Code;

/// The gRPC status of a failed call.
pub fn status(err: Error) -> Result<(Code, String)> {
    match err {
        Error::GRpcStatus(s) => Ok((s.code(), s.message().to_string())),
        other => Err(anyhow!("expected a gRPC status, got {other}")),
    }
}

/// Asserts a call failed with etcd's code and message.
pub fn expect_status<T: std::fmt::Debug>(
    res: Result<T, Error>,
    code: Code,
    message: &str,
) -> Result<()> {
    match res {
        Ok(v) => Err(anyhow!("expected {code:?} {message:?}, got success: {v:?}")),
        Err(e) => {
            let (c, m) = status(e)?;
            if c != code || m != message {
                return Err(anyhow!("expected {code:?} {message:?}, got {c:?} {m:?}"));
            }
            Ok(())
        }
    }
}

/// Generates one test per backend (kine on SQLite, PostgreSQL, MariaDB, and real etcd) for a scenario
/// `async fn(&Server) -> Result<()>`.
#[macro_export]
macro_rules! per_backend {
    ($scenario:ident, $secs:expr) => {
        mod $scenario {
            use k3rs_tests::{Backend, Server, run_test};
            use std::time::Duration;

            fn go(backend: Backend) {
                run_test(Duration::from_secs($secs), async move {
                    let server = Server::start(backend).await?;
                    super::$scenario(&server).await.map_err(|e| {
                        e.context(format!(
                            "on {}\n--- server log ---\n{}",
                            backend.name(),
                            server.log()
                        ))
                    })
                });
            }

            #[test]
            fn kine_sqlite() {
                go(Backend::Sqlite)
            }
            #[test]
            fn kine_postgres() {
                go(Backend::Postgres)
            }
            #[test]
            fn kine_mysql() {
                go(Backend::Mysql)
            }
            #[test]
            fn etcd() {
                go(Backend::Etcd)
            }
        }
    };
}

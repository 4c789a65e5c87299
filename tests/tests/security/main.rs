//! End-to-end tests of the apiserver's security (issue: PKI, authentication, RBAC, node authorizer,
//! admission): k3rs-apiserver over kine on SQLite, with k3rs-controller-manager's ClusterRole aggregation
//! beside it, driven with the real kubectl as different identities.

mod admission;
mod audit;
mod authn;
mod encryption;
mod fuzz;
mod join;
mod node;
mod rbac;

use std::time::Duration;

use anyhow::Result;
use k3rs_tests::{Backend, Cluster};

/// The bearer tokens of the static token file every test cluster starts with.
pub const TOKENS: &str = "alice-token,alice,1001,\"devs\"\nbob-token,bob,1002\n";

pub fn run<F, Fut>(body: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    run_with(&[], body)
}

/// As [`run`], with more apiserver flags (`{dir}` is the cluster's data dir).
pub fn run_with<F, Fut>(extra: &[&str], body: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    k3rs_tests::run_test(Duration::from_secs(300), async move {
        let files = tempfile::tempdir()?;
        let tokens = files.path().join("tokens.csv");
        std::fs::write(&tokens, TOKENS)?;
        let flag = format!("--token-auth-file={}", tokens.display());
        let mut args = vec![flag.as_str()];
        args.extend_from_slice(extra);
        let c = Cluster::start_with(Backend::Sqlite, &args).await?;
        body(c).await
    });
}

/// Whitespace-normalised lines of a kubectl table.
pub fn table_lines(out: &str) -> Vec<String> {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

pub use k3rs_tests::eventually;

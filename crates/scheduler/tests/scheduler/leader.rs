//! Two schedulers with leader election (lease 4 s, renew deadline 3 s, retry 500 ms): only the holder of
//! the `kube-system/kube-scheduler` Lease is ready and schedules; stopped with SIGTERM, it hands over and
//! the other takes the Lease, becomes ready and schedules the next pod.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

use crate::{Env, http_get, node, pod, spawn_scheduler, until};

async fn holder(env: &Env) -> Result<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kube-system");
    Ok(leases
        .get_opt("kube-scheduler")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .unwrap_or_default())
}

fn ready(port: u16) -> bool {
    http_get(port, "/readyz").is_ok_and(|(code, _)| code == 200)
}

async fn failover(env: Env) -> Result<()> {
    env.create_node(&node("le-1", "4", "8Gi")).await?;
    let args: Vec<String> = [
        "--leader-elect=true",
        "--leader-elect-lease-duration=4s",
        "--leader-elect-renew-deadline=3s",
        "--leader-elect-retry-period=500ms",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (port_a, port_b) = (k3rs_tests::free_port(), k3rs_tests::free_port());
    let mut a = spawn_scheduler(&env.c, "scheduler-a", port_a, &args, "/readyz").await?;
    // The second one is healthy but waits for the Lease.
    let _b = spawn_scheduler(&env.c, "scheduler-b", port_b, &args, "/healthz").await?;
    let first = holder(&env).await?;
    ensure!(!first.is_empty(), "no holder of kube-system/kube-scheduler");
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        holder(&env).await? == first,
        "the Lease moved while its holder lived"
    );
    ensure!(ready(port_a), "the leader is not ready");
    ensure!(!ready(port_b), "the waiting scheduler says it is ready");

    env.create_pod(&pod("before")).await?;
    env.expect_bound("before", "le-1").await?;
    ensure!(!ready(port_b), "the waiting scheduler became ready");

    let stopped = Instant::now();
    ensure!(
        a.terminate(Duration::from_secs(10)),
        "the leader did not stop on SIGTERM"
    );
    until(
        "the second scheduler leads",
        Duration::from_secs(20),
        || async move { Ok(ready(port_b).then_some(())) },
    )
    .await?;
    let took = stopped.elapsed();
    eprintln!("the second scheduler was ready {took:?} after the leader was stopped");
    ensure!(took < Duration::from_secs(10), "takeover took {took:?}");
    let now = holder(&env).await?;
    ensure!(
        !now.is_empty() && now != first,
        "the Lease is held by {now:?} (was {first:?})"
    );

    env.create_pod(&pod("after")).await?;
    env.expect_bound("after", "le-1").await?;
    Ok(())
}

#[test]
fn leader_election() {
    crate::run(failover);
}

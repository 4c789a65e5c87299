//! Two controller-managers: only the one holding the `kube-system/kube-controller-manager` Lease acts;
//! killed, the other takes the Lease over within 15 s (lease 10 s, retry 1 s here) and carries on,
//! and nothing is done twice: a ReplicaSet ends with exactly its replicas, each created once.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k3rs_tests::{Backend, Cluster, free_port};
use serde_json::{Value, json};

use crate::{Env, Setup, eventually, http_get, spawn_cm_as};

const WAIT: Duration = Duration::from_secs(30);

fn get(c: &Cluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = c.kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("parsing {out}"))
}

fn holder(c: &Cluster) -> Result<String> {
    let l = get(
        c,
        &[
            "get",
            "lease",
            "kube-controller-manager",
            "-n",
            "kube-system",
        ],
    )?;
    Ok(l["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

fn pods(c: &Cluster) -> Result<usize> {
    let list = get(c, &["get", "pods", "-l", "app=lead"])?;
    Ok(list["items"].as_array().map_or(0, Vec::len))
}

/// SuccessfulCreate events of the ReplicaSet (each pod created once).
fn creations(c: &Cluster) -> Result<usize> {
    let ev = get(
        c,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=lead,reason=SuccessfulCreate",
        ],
    )?;
    Ok(ev["items"].as_array().map_or(0, Vec::len))
}

async fn failover(mut env: Env) -> Result<()> {
    let first = holder(&env.c)?;
    ensure!(!first.is_empty(), "no leader");
    // A second controller-manager waits: healthy, not ready, not acting.
    let port = free_port();
    let args = env.cm_args().to_vec();
    let mut second = spawn_cm_as(&env.c, port, &args, "controller-manager-2", "/healthz").await?;
    let c = &env.c;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        holder(c)? == first,
        "the lease moved while its holder lived"
    );
    let (code, _) = http_get(port, "/readyz")?;
    ensure!(code != 200, "a waiting candidate says it is ready");

    c.kubectl_in(&["apply", "-f", "-"], &json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "lead"},
        "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "lead"}},
                 "template": {"metadata": {"labels": {"app": "lead"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}).to_string())?;
    eventually("5 pods", WAIT, || Ok(pods(c)? == 5)).await?;
    eventually("5 creations recorded", WAIT, || Ok(creations(c)? == 5)).await?;
    let log2 =
        std::fs::read_to_string(c.data_dir().join("controller-manager-2.log")).unwrap_or_default();
    ensure!(!log2.contains("became leader"), "the standby led:\n{log2}");

    // The leader dies; the standby takes over.
    env.cm.kill9();
    let killed = Instant::now();
    eventually("the standby leads", WAIT, || {
        Ok(!holder(c)?.is_empty() && holder(c)? != first)
    })
    .await?;
    let took = killed.elapsed();
    eprintln!("leadership moved {took:?} after the leader was killed");
    ensure!(took < Duration::from_secs(15), "takeover took {took:?}");
    eventually("the new leader is ready", WAIT, || {
        Ok(http_get(port, "/readyz").is_ok_and(|(c, _)| c == 200))
    })
    .await?;

    // It acts, and nothing was done twice.
    c.kubectl(&["scale", "rs", "lead", "--replicas=8"])?;
    eventually("8 pods", WAIT, || Ok(pods(c)? == 8)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(pods(c)? == 8, "more pods than replicas");
    eventually("8 creations recorded", WAIT, || Ok(creations(c)? == 8)).await?;
    // A clean stop releases the lease at once.
    ensure!(
        second.terminate(Duration::from_secs(10)),
        "the second controller-manager did not stop"
    );
    eventually("lease released", WAIT, || Ok(holder(c)?.is_empty())).await?;
    Ok(())
}

#[test]
fn leader_election_failover() {
    crate::run_setup(
        Backend::Sqlite,
        Setup {
            cm_args: &[
                "--leader-elect-lease-duration=10s",
                "--leader-elect-renew-deadline=7s",
                "--leader-elect-retry-period=1s",
            ],
            ..Setup::default()
        },
        failover,
    );
}

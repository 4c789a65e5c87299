//! DefaultPreemption on a full one-node cluster: a high-priority pod preempts exactly the lowest-priority
//! pods it needs gone (deleted gracefully, with a `Preempted` event each), is nominated to the node while
//! they terminate, and is bound there once the test, playing the kubelet, finished their deletion; pods
//! of a class with `preemptionPolicy: Never` preempt nobody.

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::json;

use crate::{Env, WAIT, node, node_of, pod, same_preemption, until};

async fn preempt(mut env: Env) -> Result<()> {
    env.create_node(&node("pn", "2", "4Gi")).await?;
    for (name, value, policy) in [
        ("low", 100, "PreemptLowerPriority"),
        ("mid", 500, "PreemptLowerPriority"),
        ("high", 1000, "PreemptLowerPriority"),
        ("high-never", 1000, "Never"),
    ] {
        env.create(
            &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": name}, "value": value, "preemptionPolicy": policy}),
        )?;
    }
    env.start(&[]).await?;

    // 4 × 500m fill the node's 2 cpus.
    let fillers = [
        ("low-1", "low"),
        ("low-2", "low"),
        ("mid-1", "mid"),
        ("mid-2", "mid"),
    ];
    for (name, class) in fillers {
        env.create_pod(&pod(name).priority_class(class).requests("500m", ""))
            .await?;
    }
    for (name, _) in fillers {
        env.expect_bound(name, "pn").await?;
    }

    // The high pod needs 1000m: both low pods must go, the mid ones are kept.
    let high = env
        .create_pod(&pod("high").priority_class("high").requests("1", ""))
        .await?;
    let uid = high.metadata.uid.clone().unwrap_or_default();
    let e = &env;
    until("high nominated to pn", WAIT, || async move {
        let p = e.pod("default", "high").await?;
        let nominated = p.status.and_then(|s| s.nominated_node_name);
        Ok((nominated.as_deref() == Some("pn")).then_some(()))
    })
    .await?;
    until("both low pods terminating", WAIT, || async move {
        for name in ["low-1", "low-2"] {
            if e.pod("default", name)
                .await?
                .metadata
                .deletion_timestamp
                .is_none()
            {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    let want = format!("Preempted by pod {uid} on node pn");
    for name in ["low-1", "low-2"] {
        let want = want.as_str();
        until(
            &format!("the Preempted event of {name}"),
            WAIT,
            || async move {
                let events = e.events_for("default", name).await?;
                Ok(events
                    .iter()
                    .any(|ev| ev.reason == "Preempted" && ev.message == want)
                    .then_some(()))
            },
        )
        .await?;
    }
    // The victims still hold their cpu while they terminate.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = env.pod("default", "high").await?;
    ensure!(
        node_of(&p).is_none(),
        "high was bound while its victims still ran"
    );
    for name in ["mid-1", "mid-2"] {
        let p = env.pod("default", name).await?;
        ensure!(
            p.metadata.deletion_timestamp.is_none(),
            "{name} was preempted too"
        );
    }

    // The kubelet's part: the victims' containers stopped.
    for name in ["low-1", "low-2"] {
        env.force_delete("default", name).await?;
    }
    env.expect_bound("high", "pn").await?;

    // Full again (mid-1, mid-2, high): a Never pod waits and preempts nothing.
    env.create_pod(&pod("never").priority_class("high-never").requests("1", ""))
        .await?;
    let pre = env
        .unschedulable("never", "0/1 nodes are available: 1 Insufficient cpu.")
        .await?;
    same_preemption(&pre, "not eligible due to preemptionPolicy=Never.")?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["mid-1", "mid-2", "high"] {
        let p = env.pod("default", name).await?;
        ensure!(
            p.metadata.deletion_timestamp.is_none() && node_of(&p).as_deref() == Some("pn"),
            "{name} was disturbed by a pod that may not preempt"
        );
    }
    Ok(())
}

#[test]
fn preemption() {
    crate::run(preempt);
}
